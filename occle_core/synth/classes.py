"""Raw SemanticKITTI classes of the synthetic world and their materials: base colours, palettes of
instances, LiDAR reflectivity and ground level (the curb)."""

from __future__ import annotations

import numpy as np

# raw SemanticKITTI ids used by the generator
CAR, BICYCLE, BUS, MOTORCYCLE, TRUCK, PERSON = 10, 11, 13, 15, 18, 30
ROAD, PARKING, SIDEWALK, OTHER_GROUND, BUILDING, FENCE, LANE_MARKING = 40, 44, 48, 49, 50, 51, 60
VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN = 70, 71, 72, 80, 81
THING_CLASSES = (CAR, BICYCLE, BUS, MOTORCYCLE, TRUCK, PERSON)

CURB_HEIGHT = 0.12
RAISED = (SIDEWALK, TERRAIN, OTHER_GROUND)  # ground classes one curb above the road level

#: primitive shapes and surface textures
BOX, CYLINDER, ELLIPSOID = 0, 1, 2
TEX_PLAIN, TEX_WINDOWS, TEX_GLASS, TEX_FOLIAGE = 0, 1, 2, 3

BASE_COLOR = {
    ROAD: (0.30, 0.30, 0.31),
    LANE_MARKING: (0.86, 0.86, 0.82),
    PARKING: (0.40, 0.39, 0.37),
    SIDEWALK: (0.62, 0.60, 0.57),
    OTHER_GROUND: (0.56, 0.50, 0.41),
    TERRAIN: (0.40, 0.48, 0.22),
    VEGETATION: (0.17, 0.38, 0.13),
    TRUNK: (0.33, 0.23, 0.14),
    FENCE: (0.52, 0.43, 0.33),
    POLE: (0.55, 0.56, 0.58),
    TRAFFIC_SIGN: (0.80, 0.12, 0.10),
    BICYCLE: (0.14, 0.14, 0.16),
}
RAW_REFLECTIVITY = {
    ROAD: 0.22,
    LANE_MARKING: 0.80,
    PARKING: 0.26,
    SIDEWALK: 0.32,
    OTHER_GROUND: 0.30,
    TERRAIN: 0.36,
    VEGETATION: 0.40,
    TRUNK: 0.30,
    BUILDING: 0.28,
    FENCE: 0.34,
    POLE: 0.42,
    TRAFFIC_SIGN: 0.95,
    CAR: 0.45,
    TRUCK: 0.40,
    BUS: 0.42,
    MOTORCYCLE: 0.38,
    BICYCLE: 0.30,
    PERSON: 0.24,
}
REFLECTIVITY = np.full(256, 0.3, np.float32)
for _k, _v in RAW_REFLECTIVITY.items():
    REFLECTIVITY[_k] = _v
LEVEL = np.zeros(256, np.float32)  # ground height above the road level per raw class
LEVEL[list(RAISED)] = CURB_HEIGHT

CAR_PALETTE = [(0.85, 0.85, 0.86), (0.08, 0.08, 0.09), (0.55, 0.56, 0.58), (0.60, 0.08, 0.07), (0.10, 0.20, 0.50)]
CAR_PALETTE += [(0.30, 0.32, 0.35), (0.75, 0.70, 0.60), (0.15, 0.30, 0.20)]
BUILDING_PALETTE = [(0.78, 0.72, 0.60), (0.62, 0.35, 0.28), (0.70, 0.70, 0.68), (0.88, 0.86, 0.80)]
BUILDING_PALETTE += [(0.50, 0.50, 0.52), (0.80, 0.66, 0.45), (0.55, 0.45, 0.38)]
CLOTHES_PALETTE = [(0.10, 0.10, 0.12), (0.20, 0.25, 0.45), (0.60, 0.10, 0.10), (0.85, 0.85, 0.80)]
CLOTHES_PALETTE += [(0.35, 0.30, 0.20), (0.20, 0.40, 0.25)]
SIGN_PALETTE = [(0.80, 0.12, 0.10), (0.10, 0.25, 0.65), (0.92, 0.75, 0.10), (0.90, 0.90, 0.90)]
