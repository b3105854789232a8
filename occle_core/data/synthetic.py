"""Procedural driving scenes written in the SemanticKITTI layout (``occle-synth``).

Real datasets cannot be downloaded here, so every later stage (training, evaluation, the ROS node, the demo)
runs on sequences made by this module, written byte-compatible with SemanticKITTI (see
:mod:`occle_core.data.semantic_kitti`).

Scene
    A main street made of straight pieces, curves (arcs of radius 25-60 m) and intersections / T-junctions
    with crossing streets; its first piece differs per seed (``straight``, ``intersection``, ``t-junction``
    or ``curve``). Each street has 1 or 2 lanes per direction with lane markings (raw class 60 -> road),
    parking bays on stretches of its edges, an optional grass verge, sidewalks and crosswalks at
    intersections; the ground is a 0.1 m class raster with two levels (road level and sidewalks / terrain
    raised by a 0.12 m curb). Objects are primitives (oriented boxes, vertical cylinders, oriented
    ellipsoids): buildings with windows, gardens with fences, hedges, bushes and trees (trunk + crown),
    gravel yards (other-ground), street lights (poles), traffic signs, parked and standing cars, trucks,
    buses and motorcycles, persons and parked bicycles; density and style (urban / suburban / green) vary
    per seed. Every 30 m of the main street near the ego path holds at least one person, bicycle, car,
    truck, tree and fence, so that each frame shows the common classes (>= 12 of the 19 in the voxel labels
    of every seed tried). Objects never overlap each other, the ego lane, or ground of the wrong kind
    (footprints are checked against the raster). Nothing moves except the ego vehicle, which drives in a
    lane of the right-hand side at 0.6-1.3 m per frame (10 Hz) with suspension pitch / roll (about 0.5 deg).
    Random streams are split per purpose, so a longer sequence of a seed extends the same scene.

Sensors (geometry of KITTI odometry sequence 00)
    LiDAR: a Velodyne HDL-64E pattern mounted 1.73 m above the road: 64 beams from +2.0 to -24.9 deg
    (upper block 1/3 deg, lower block 1/2 deg spacing), ``azimuth_steps`` (2000) columns, 2.5-80 m range,
    Gaussian range noise of 2 cm, random dropouts (2 % plus more for dark and far surfaces), foliage
    penetration on vegetation, intensity = class reflectivity x incidence falloff x range falloff + noise.
    Camera: image_2 of KITTI with seq 00's P2 and Tr (376 x 1241 px, or scaled by ``image_scale``), every
    pixel ray-cast against the same scene; per-class colours (per-instance for cars, buildings, clothes),
    Lambert shading under a seeded sun, window patterns, texture noise, sky gradient and haze.
    Both are vectorised: rays are grouped per primitive by its screen / range-image rectangle, so there is
    a loop over primitives in view but none over rays.

Ground truth (as SemanticKITTI builds it)
    ``voxels/*.label``: LiDAR hits of a window of ``window`` scans ``stride`` frames apart (default 5 and
    2: the current scan and those 2, 4, 6 and 8 frames ahead along the trajectory) accumulated in the
    current 256 x 256 x 32 grid, majority raw label per voxel. ``.invalid``: voxels never observed by the
    window: not hit and not traversed by a returned ray of any of its scans (a ray traverses a voxel when it
    passes within half a voxel of its centre before its return; voxels under the ground or above every
    scan's top beam are unobservable and skipped). ``.occluded``: voxels behind the return of the nearest
    ray of the current scan. ``.bin``: the voxelised current scan. Far ground (beyond ~25 m) shows the ring
    pattern of the few accumulated scans; a larger ``--window`` makes it denser at a higher cost.

2D pseudo labels (``pseudo_2d/*.png``), a noise model of a foundation segmenter (never the exact truth)
    Starting from the rendered per-pixel learning classes (sky and misses are 255):

    1. Missed small objects: each instance of pole, traffic-sign, person, bicycle, motorcycle and trunk
       is dropped in a frame with probability ``clip((d - 12 m) / 30 m, 0, 0.85)`` at mean distance ``d``,
       and always when it covers fewer than 40 px (scaled by ``image_scale**2``); dropped pixels take the
       label of the nearest kept pixel to their left (the background the segmenter sees through them).
    2. Instance confusions: a whole instance is relabelled (the same way in every frame) with the
       probabilities of
       :data:`INSTANCE_CONFUSIONS` (truck -> car 0.3, car -> truck 0.04, other-vehicle -> truck 0.3,
       motorcycle -> bicycle 0.3, bicycle -> motorcycle 0.05, traffic-sign -> pole 0.1).
    3. Region confusions of stuff classes: a smooth random field (about 60 px blobs) per pair of
       :data:`REGION_CONFUSIONS` flips the class inside its blobs over the given share of the area
       (sidewalk <-> road, parking -> road / sidewalk, terrain <-> vegetation, trunk -> vegetation,
       fence <-> building, other-ground -> sidewalk / terrain).
    4. Boundary errors: the label image is resampled through a smooth random displacement field of about
       2.5 px (scaled) amplitude, so class edges wobble while region interiors stay put.

Everything is deterministic per seed: the scene comes from ``seed``, each frame's noise from
``(seed, frame)``, independent of the order frames are made in. Besides the SemanticKITTI files, a
sequence folder holds ``synthetic.json`` (seed, layout and generator settings).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from occle_core.geometry import SEMANTIC_KITTI_GRID, Calib, VoxelGrid, voxelize_labels, write_kitti_calib
from occle_core.labels import IGNORE_INDEX, class_table

# ----------------------------------------------------------------------------------------------- constants

#: KITTI odometry sequence 00, ``calib.txt``: P2 (left colour camera) and Tr (velodyne -> cam0).
KITTI_P2 = np.array(
    [
        [7.188560000000e02, 0.0, 6.071928000000e02, 4.538225000000e01],
        [0.0, 7.188560000000e02, 1.852157000000e02, -1.130887000000e-01],
        [0.0, 0.0, 1.0, 3.779761000000e-03],
    ]
)
KITTI_P0 = np.array(
    [
        [7.188560000000e02, 0.0, 6.071928000000e02, 0.0],
        [0.0, 7.188560000000e02, 1.852157000000e02, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ]
)
KITTI_TR = np.array(
    [
        [4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02],
        [-7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02],
        [9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
KITTI_IMAGE_SIZE = (376, 1241)
LIDAR_HEIGHT = 1.73
HDL64_ELEVATIONS_DEG = np.r_[np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.9, 32)]
FRAME_PERIOD = 0.1  # s, 10 Hz

# raw SemanticKITTI ids used by the generator
CAR, BICYCLE, BUS, MOTORCYCLE, TRUCK, PERSON = 10, 11, 13, 15, 18, 30
ROAD, PARKING, SIDEWALK, OTHER_GROUND, BUILDING, FENCE, LANE_MARKING = 40, 44, 48, 49, 50, 51, 60
VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN = 70, 71, 72, 80, 81
THING_CLASSES = (CAR, BICYCLE, BUS, MOTORCYCLE, TRUCK, PERSON)

CURB_HEIGHT = 0.12
RAISED = (SIDEWALK, TERRAIN, OTHER_GROUND)  # ground classes one curb above the road level

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
TEX_PLAIN, TEX_WINDOWS, TEX_GLASS, TEX_FOLIAGE = 0, 1, 2, 3

_BASE_COLOR = {
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
_REFLECTIVITY = {
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
for _k, _v in _REFLECTIVITY.items():
    REFLECTIVITY[_k] = _v
LEVEL = np.zeros(256, np.float32)  # ground height above the road level per raw class
LEVEL[list(RAISED)] = CURB_HEIGHT

_CAR_PALETTE = [(0.85, 0.85, 0.86), (0.08, 0.08, 0.09), (0.55, 0.56, 0.58), (0.60, 0.08, 0.07), (0.10, 0.20, 0.50)]
_CAR_PALETTE += [(0.30, 0.32, 0.35), (0.75, 0.70, 0.60), (0.15, 0.30, 0.20)]
_BUILDING_PALETTE = [(0.78, 0.72, 0.60), (0.62, 0.35, 0.28), (0.70, 0.70, 0.68), (0.88, 0.86, 0.80)]
_BUILDING_PALETTE += [(0.50, 0.50, 0.52), (0.80, 0.66, 0.45), (0.55, 0.45, 0.38)]
_CLOTHES_PALETTE = [(0.10, 0.10, 0.12), (0.20, 0.25, 0.45), (0.60, 0.10, 0.10), (0.85, 0.85, 0.80)]
_CLOTHES_PALETTE += [(0.35, 0.30, 0.20), (0.20, 0.40, 0.25)]
_SIGN_PALETTE = [(0.80, 0.12, 0.10), (0.10, 0.25, 0.65), (0.92, 0.75, 0.10), (0.90, 0.90, 0.90)]

#: (from learning class, to learning class, probability) of whole-instance relabelling in the pseudo labels.
INSTANCE_CONFUSIONS: tuple[tuple[str, str, float], ...] = (
    ("truck", "car", 0.30),
    ("car", "truck", 0.04),
    ("other-vehicle", "truck", 0.30),
    ("motorcycle", "bicycle", 0.30),
    ("bicycle", "motorcycle", 0.05),
    ("traffic-sign", "pole", 0.10),
)
#: (from, to, share of the class area) of blob-shaped region confusions in the pseudo labels.
REGION_CONFUSIONS: tuple[tuple[str, str, float], ...] = (
    ("sidewalk", "road", 0.08),
    ("road", "sidewalk", 0.03),
    ("parking", "road", 0.30),
    ("parking", "sidewalk", 0.10),
    ("terrain", "vegetation", 0.15),
    ("vegetation", "terrain", 0.06),
    ("trunk", "vegetation", 0.25),
    ("fence", "building", 0.12),
    ("building", "fence", 0.03),
    ("other-ground", "sidewalk", 0.30),
    ("other-ground", "terrain", 0.20),
)
#: learning classes whose small or distant instances the segmenter misses.
MISSABLE = ("pole", "traffic-sign", "person", "bicycle", "motorcycle", "trunk")


# ------------------------------------------------------------------------------------------------ helpers


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]])


def _hash01(*coords: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic pseudo-random float32 in [0, 1) per integer lattice point (vectorised integer hash)."""
    h = np.full(np.shape(coords[0]), np.uint32((seed * 0x9E3779B1) & 0xFFFFFFFF), np.uint32)
    for c, m in zip(coords, (0x8DA6B343, 0xD8163841, 0xCB1AB31F)):
        h ^= np.asarray(c).astype(np.int64).astype(np.uint32) * np.uint32(m)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _value_noise(x: np.ndarray, y: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth 2D value noise in [0, 1) at lattice spacing ``scale`` metres (bilinear, vectorised)."""
    fx, fy = x / scale, y / scale
    ix, iy = np.floor(fx), np.floor(fy)
    tx, ty = (fx - ix).astype(np.float32), (fy - iy).astype(np.float32)
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    a, b = _hash01(ix, iy, seed=seed), _hash01(ix + 1, iy, seed=seed)
    c, d = _hash01(ix, iy + 1, seed=seed), _hash01(ix + 1, iy + 1, seed=seed)
    return (a + (b - a) * tx) * (1 - ty) + (c + (d - c) * tx) * ty


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """(H, W) float32 smooth Gaussian-like random field (unit-variance lattice every ``cell`` pixels,
    smoothstep-weighted bilinear upsampling)."""
    H, W = shape
    gh, gw = int(np.ceil(H / cell)) + 2, int(np.ceil(W / cell)) + 2
    lattice = rng.standard_normal((gh, gw)).astype(np.float32)
    fy = np.arange(H, dtype=np.float32) / cell
    fx = np.arange(W, dtype=np.float32) / cell
    iy, ix = fy.astype(np.int64), fx.astype(np.int64)
    ty, tx = (fy - iy)[:, None], (fx - ix)[None, :]
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)  # smoothstep: no creases along lattice lines
    top = lattice[iy][:, ix] * (1 - tx) + lattice[iy][:, ix + 1] * tx
    bottom = lattice[iy + 1][:, ix] * (1 - tx) + lattice[iy + 1][:, ix + 1] * tx
    return top * (1 - ty) + bottom * ty


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = _yaw_matrix(yaw)
    T[:3, 3] = (x, y, z)
    return T


# -------------------------------------------------------------------------------------------- primitives


@dataclass
class Primitives:
    """Scene objects as arrays (P primitives).

    Attributes:
        kind: (P,) BOX / CYLINDER / ELLIPSOID.
        center: (P, 3) world centre.
        yaw: (P,) rotation about z (boxes and ellipsoids).
        half: (P, 3) half extents (cylinders: radius, radius, half height; ellipsoids: radii).
        raw: (P,) raw SemanticKITTI class.
        instance: (P,) instance id of things (0 for stuff).
        obj: (P,) object id (several primitives form one object).
        color: (P, 3) float32 RGB in [0, 1].
        tex: (P,) texture kind.
    """

    kind: np.ndarray
    center: np.ndarray
    yaw: np.ndarray
    half: np.ndarray
    raw: np.ndarray
    instance: np.ndarray
    obj: np.ndarray
    color: np.ndarray
    tex: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        """(P, 3) min and max corners of the world axis-aligned bounding boxes."""
        c, s = np.abs(np.cos(self.yaw)), np.abs(np.sin(self.yaw))
        hx, hy, hz = self.half.T
        rot = self.kind != CYLINDER
        ex = np.where(rot, c * hx + s * hy, hx)
        ey = np.where(rot, s * hx + c * hy, hy)
        ext = np.stack([ex, ey, hz], axis=1)
        return self.center - ext, self.center + ext


class _PrimBuilder:
    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.next_obj = 1
        self.next_instance = 1

    def new_object(self, thing: bool) -> tuple[int, int]:
        obj = self.next_obj
        self.next_obj += 1
        inst = 0
        if thing:
            inst = self.next_instance
            self.next_instance = self.next_instance % 65535 + 1
        return obj, inst

    def add(self, kind, center, yaw, half, raw, obj, inst, color, tex=TEX_PLAIN) -> None:
        self.rows.append((kind, tuple(center), float(yaw), tuple(half), raw, inst, obj, tuple(color), tex))

    def build(self) -> Primitives:
        if not self.rows:
            z3 = np.zeros((0, 3))
            e = np.zeros(0, np.int64)
            return Primitives(e, z3, np.zeros(0), z3, e, e, e, z3.astype(np.float32), e)
        k, c, y, h, r, i, o, col, t = zip(*self.rows)
        return Primitives(
            kind=np.asarray(k, np.int8),
            center=np.asarray(c, np.float64),
            yaw=np.asarray(y, np.float64),
            half=np.asarray(h, np.float64),
            raw=np.asarray(r, np.uint16),
            instance=np.asarray(i, np.uint16),
            obj=np.asarray(o, np.int32),
            color=np.asarray(col, np.float32),
            tex=np.asarray(t, np.int8),
        )


# ------------------------------------------------------------------------------------------------- roads


@dataclass
class Road:
    """A street: centreline polyline and cross-section.

    Attributes:
        vertices: (M, 2) centreline.
        lanes: lanes per direction.
        lane_width: metres.
        parking_width / verge / sidewalk: widths of the bands beyond the carriageway (metres).
        parking: (K, 3) rows (side +1 left / -1 right, s0, s1) of parking bays.
        crossings: (C, 2) rows (s, clear half length) of intersections along this road.
    """

    vertices: np.ndarray
    lanes: int
    lane_width: float
    parking_width: float
    verge: float
    sidewalk: float
    parking: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    crossings: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def half_width(self) -> float:
        return self.lanes * self.lane_width

    @property
    def sidewalk_inner(self) -> float:
        return self.half_width + self.parking_width + self.verge

    @property
    def reach(self) -> float:
        return self.sidewalk_inner + self.sidewalk

    @property
    def cum_s(self) -> np.ndarray:
        return np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(self.vertices, axis=0), axis=1))]

    @property
    def length(self) -> float:
        return float(self.cum_s[-1])

    def frame_at(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point (…, 2), unit tangent (…, 2) and left normal (…, 2) at arc length ``s`` (smoothed tangent)."""
        s = np.asarray(s, np.float64)
        cum = self.cum_s

        def point(q: np.ndarray) -> np.ndarray:
            q = np.clip(q, 0.0, cum[-1])
            k = np.clip(np.searchsorted(cum, q, side="right") - 1, 0, len(cum) - 2)
            seg = np.maximum(cum[k + 1] - cum[k], 1e-9)
            w = ((q - cum[k]) / seg)[..., None]
            return self.vertices[k] * (1 - w) + self.vertices[k + 1] * w

        p = point(s)
        tan = point(s + 1.5) - point(s - 1.5)
        tan /= np.maximum(np.linalg.norm(tan, axis=-1, keepdims=True), 1e-9)
        normal = np.stack([-tan[..., 1], tan[..., 0]], axis=-1)
        return p, tan, normal

    def parking_active(self, side: np.ndarray, s: np.ndarray) -> np.ndarray:
        out = np.zeros(np.shape(s), bool)
        for sd, s0, s1 in self.parking:
            out |= (side == sd) & (s >= s0) & (s <= s1)
        return out


# ------------------------------------------------------------------------------------------------ ground


@dataclass
class GroundMap:
    """Ground class raster (raw ids) over the scene; road level at ``z_road``, raised classes one curb up."""

    origin: np.ndarray  # (2,) world x, y of cell (0, 0)'s corner
    res: float
    raw: np.ndarray  # (NY, NX) uint8
    z_road: float

    def lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Raw ground class at world (x, y); terrain outside the raster."""
        ix = np.floor((x - self.origin[0]) / self.res).astype(np.int64)
        iy = np.floor((y - self.origin[1]) / self.res).astype(np.int64)
        ny, nx = self.raw.shape
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        out = np.full(np.shape(x), TERRAIN, np.uint8)
        out[inside] = self.raw[iy[inside], ix[inside]]
        return out

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.z_road + LEVEL[self.lookup(x, y)]


# ------------------------------------------------------------------------------------------------- scene


@dataclass
class Scene:
    """A generated world: ground raster, primitives and the ego LiDAR poses (LiDAR -> scene frame)."""

    ground: GroundMap
    prims: Primitives
    poses: np.ndarray  # (F, 4, 4)
    layout: str
    roads: list[Road]
    sun: np.ndarray  # (3,) unit vector towards the sun
    seed: int


class _SceneBuilder:
    """Builds roads, the ground raster and the objects of one scene from a seed."""

    S0 = 60.0  # arc length of the ego's first pose on the main road

    def __init__(self, seed: int, num_poses: int) -> None:
        self.seed = int(seed)
        self.rng = _rng(seed, 0)
        self.num_poses = num_poses
        self.prims = _PrimBuilder()

    # ---- layout
    def build(self) -> Scene:
        # independent random streams per purpose, so that a longer sequence of the same seed extends the
        # scene instead of changing it (its first frames match the shorter sequence)
        rng = _rng(self.seed, 0)
        self.layout = str(rng.choice(["straight", "intersection", "t-junction", "curve"]))
        self.style = str(rng.choice(["urban", "suburban", "green"], p=[0.45, 0.35, 0.2]))
        self.speed = float(rng.uniform(0.6, 1.3))
        inner_lane = rng.random() < 0.3
        el, az = np.deg2rad(rng.uniform(30, 60)), rng.uniform(-np.pi, np.pi)
        sun = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        travel = self.S0 + self.num_poses * self.speed * 1.1 + 90.0
        self.rng = _rng(self.seed, 1)
        self.roads = self._roads(travel)
        main = self.roads[0]
        self.ego_lane = (0.5 if inner_lane else main.lanes - 0.5) * main.lane_width
        self._raster()
        self.taken = np.zeros(
            (
                int(np.ceil(self.ground.raw.shape[0] * self.ground.res / 0.25)) + 1,
                int(np.ceil(self.ground.raw.shape[1] * self.ground.res / 0.25)) + 1,
            ),
            bool,
        )
        self.rng = _rng(self.seed, 4)
        poses = self._ego_poses()
        self._mark_ego_corridor(poses)
        for k, road in enumerate(self.roads):
            self.rng = _rng(self.seed, 5, k)
            self._gravel_yards(road)
        self.rng = _rng(self.seed, 6)
        self._quotas(main)
        for k, road in enumerate(self.roads):
            self._populate(road, k)
        return Scene(self.ground, self.prims.build(), poses, self.layout, self.roads, sun, self.seed)

    def _cross_section(self, main: bool) -> dict:
        rng = self.rng
        lanes = 2 if (rng.random() < (0.35 if main else 0.2)) else 1
        return dict(
            lanes=lanes,
            lane_width=float(rng.uniform(3.1, 3.6)),
            parking_width=float(rng.uniform(2.2, 2.6)) if rng.random() < 0.85 else 0.0,
            verge=float(rng.uniform(1.2, 2.8)) if rng.random() < (0.3 if self.style == "urban" else 0.6) else 0.0,
            sidewalk=float(rng.uniform(1.8, 3.5)),
        )

    def _roads(self, needed: float) -> list[Road]:
        rng = self.rng
        verts = [np.zeros(2)]
        heading = 0.0
        s = 0.0
        crossings: list[tuple[float, float, bool]] = []  # (s on main, angle offset, t-junction)

        def straight(length: float) -> None:
            nonlocal s
            verts.append(verts[-1] + length * np.array([np.cos(heading), np.sin(heading)]))
            s += length

        def curve(radius: float, angle: float) -> None:
            nonlocal heading, s
            n = max(2, int(np.ceil(abs(angle) * radius / 3.0)))
            sign = np.sign(angle)
            center = verts[-1] + radius * np.array([-np.sin(heading), np.cos(heading)]) * sign
            a0 = heading - sign * np.pi / 2
            for k in range(1, n + 1):
                a = a0 + angle * k / n
                verts.append(center + radius * np.array([np.cos(a), np.sin(a)]))
            heading += angle
            s += abs(angle) * radius

        first = self.layout
        if first == "straight":
            straight(self.S0 + rng.uniform(90, 140))
        elif first in ("intersection", "t-junction"):
            ahead = rng.uniform(16, 40)
            straight(self.S0 + ahead)
            crossings.append((s, rng.uniform(-0.25, 0.25), first == "t-junction"))
            straight(rng.uniform(35, 60))
        else:
            straight(self.S0 + rng.uniform(6, 25))
            curve(rng.uniform(25, 60), np.deg2rad(rng.uniform(35, 90)) * rng.choice([-1, 1]))
            straight(rng.uniform(30, 50))
        while s < needed:
            piece = rng.choice(["straight", "curve", "intersection"], p=[0.4, 0.3, 0.3])
            if piece == "straight":
                straight(rng.uniform(30, 80))
            elif piece == "curve":
                # alternate towards the initial heading so long routes do not spiral
                direction = -np.sign(heading) if abs(heading) > 0.3 else rng.choice([-1, 1])
                curve(rng.uniform(25, 60), np.deg2rad(rng.uniform(30, 80)) * direction)
            else:
                straight(rng.uniform(25, 45))
                crossings.append((s, rng.uniform(-0.25, 0.25), rng.random() < 0.35))
                straight(rng.uniform(25, 45))
        self.rng = _rng(self.seed, 2, 0)
        main = Road(np.asarray(verts), **self._cross_section(main=True))
        roads = [main]
        main_cross = []
        for k, (s_c, dangle, t_junction) in enumerate(crossings):
            self.rng = _rng(self.seed, 2, k + 1)
            sec = self._cross_section(main=False)
            p, tan, _ = main.frame_at(s_c)
            ang = np.arctan2(tan[1], tan[0]) + np.pi / 2 + dangle
            d = np.array([np.cos(ang), np.sin(ang)])
            length = 110.0
            start = p - d * (main.half_width + main.parking_width + 0.5) if t_junction else p - d * length
            road = Road(np.stack([start, p + d * length]), **sec)
            s_on_cross = float(np.linalg.norm(p - start))
            clear_cross = main.half_width + main.parking_width + 1.0
            road.crossings = np.array([[s_on_cross, clear_cross]])
            roads.append(road)
            main_cross.append((s_c, road.half_width + road.parking_width + 1.0))
        if main_cross:
            main.crossings = np.asarray(main_cross)
        for k, road in enumerate(roads):
            self.rng = _rng(self.seed, 3, k)
            road.parking = self._parking_bays(road)
        return roads

    def _parking_bays(self, road: Road) -> np.ndarray:
        if road.parking_width <= 0:
            return np.zeros((0, 3))
        rng = self.rng
        rows = []
        for side in (1.0, -1.0):
            s = rng.uniform(0, 10)
            while s < road.length:
                on = rng.uniform(15, 50)
                s0, s1 = s, s + on
                # no bays across intersections
                for s_c, clear in road.crossings:
                    if s0 < s_c + clear + 8 and s1 > s_c - clear - 8:
                        if s0 < s_c - clear - 8:
                            rows.append((side, s0, s_c - clear - 8))
                        s0 = s_c + clear + 8
                if s1 > s0 + 6:
                    rows.append((side, s0, s1))
                s = s1 + rng.uniform(5, 25)
        return np.asarray(rows, np.float64).reshape(-1, 3)

    # ---- ground raster
    def _raster(self) -> None:
        res = 0.1
        allv = np.concatenate([r.vertices for r in self.roads])
        margin = max(r.reach for r in self.roads) + 45.0
        lo = allv.min(axis=0) - margin
        hi = allv.max(axis=0) + margin
        if np.prod((hi - lo) / res) > 6e7:
            res = 0.2
        nx, ny = (np.ceil((hi - lo) / res)).astype(int)
        prio = np.zeros((ny, nx), np.uint8)
        mark = np.zeros((ny, nx), bool)
        for road in self.roads:
            self._paint_road(road, lo, res, prio, mark)
        lut = np.array([TERRAIN, TERRAIN, SIDEWALK, PARKING, ROAD], np.uint8)
        raw = lut[prio]
        raw[mark & (prio == 4)] = LANE_MARKING
        self.ground = GroundMap(lo, res, raw, -LIDAR_HEIGHT)

    @staticmethod
    def _paint_road(road: Road, lo: np.ndarray, res: float, prio: np.ndarray, mark: np.ndarray) -> None:
        reach = road.reach
        hw = road.half_width
        cum = road.cum_s
        ny, nx = prio.shape
        for k in range(len(road.vertices) - 1):
            p0, p1 = road.vertices[k], road.vertices[k + 1]
            seg_len = float(np.linalg.norm(p1 - p0))
            if seg_len < 1e-6:
                continue
            d = (p1 - p0) / seg_len
            nsub = int(np.ceil(seg_len / 15.0))
            for j in range(nsub):
                q0 = p0 + d * seg_len * j / nsub
                sub = seg_len / nsub
                q1 = q0 + d * sub
                bmin = np.minimum(q0, q1) - reach - res
                bmax = np.maximum(q0, q1) + reach + res
                ix0, iy0 = np.maximum(np.floor((bmin - lo) / res).astype(int), 0)
                ix1 = min(int(np.ceil((bmax[0] - lo[0]) / res)), nx)
                iy1 = min(int(np.ceil((bmax[1] - lo[1]) / res)), ny)
                if ix1 <= ix0 or iy1 <= iy0:
                    continue
                xs = (lo[0] + (np.arange(ix0, ix1) + 0.5) * res - q0[0]).astype(np.float32)[None, :]
                ys = (lo[1] + (np.arange(iy0, iy1) + 0.5) * res - q0[1]).astype(np.float32)[:, None]
                along = xs * np.float32(d[0]) + ys * np.float32(d[1])  # (h, w)
                lat = xs * np.float32(-d[1]) + ys * np.float32(d[0])  # (h, w) signed, + = left
                a = np.clip(along, 0, sub)
                dist = np.sqrt((along - a) ** 2 + lat**2)
                s = cum[k] + seg_len * j / nsub + a
                side = np.where(lat >= 0, 1.0, -1.0)
                parking = road.parking_active(side, s) if road.parking_width > 0 else np.zeros(dist.shape, bool)
                p = np.zeros(dist.shape, np.uint8)
                p[dist <= reach] = 2  # sidewalk
                p[(dist > hw + road.parking_width) & (dist <= road.sidewalk_inner)] = 1  # verge
                p[dist <= hw + road.parking_width] = 4
                p[(dist > hw) & (dist <= hw + road.parking_width) & parking] = 3
                on_road = dist <= hw
                # markings
                alat = np.abs(lat)
                dash = np.mod(s, 9.0) < 3.0
                m = np.abs(alat - (hw - 0.25)) < 0.07  # edge lines
                if road.lanes == 1:
                    m |= (alat < 0.07) & dash
                else:
                    m |= np.abs(alat - 0.11) < 0.05  # double centre line
                    m |= (np.abs(alat - road.lane_width) < 0.07) & dash
                for s_c, clear in road.crossings:
                    ds = np.abs(s - s_c)
                    m &= ds >= clear
                    m |= (ds >= clear) & (ds < clear + 3.0) & (np.mod(lat, 1.0) < 0.5)
                m &= on_road
                view = prio[iy0:iy1, ix0:ix1]
                np.maximum(view, p, out=view)
                mark[iy0:iy1, ix0:ix1] |= m

    # ---- ego
    def _ego_poses(self) -> np.ndarray:
        """LiDAR poses along the ego lane: yaw from the road, plus suspension pitch / roll / bounce."""
        main = self.roads[0]
        rng = self.rng
        n = self.num_poses
        k = np.arange(n)
        freq = rng.uniform([0.05, 0.3, 0.2, 0.5], [0.15, 0.7, 0.5, 0.9])  # speed, pitch, roll, bounce
        phase = rng.uniform(0, 2 * np.pi, 4)
        jitter = _rng(self.seed, 4, 1).normal(0, 1, (n, 2))  # per-frame pitch / roll noise
        wobble = 1.0 + 0.08 * np.sin(k * freq[0] + phase[0])
        steps = self.speed * wobble
        s = self.S0 + np.r_[0.0, np.cumsum(steps[:-1])]
        p, tan, normal = main.frame_at(s)
        xy = p - normal * self.ego_lane
        yaw = np.arctan2(tan[:, 1], tan[:, 0])
        pitch = np.deg2rad(0.5 * np.sin(k * freq[1] + phase[1]) + 0.12 * jitter[:, 0])
        roll = np.deg2rad(0.3 * np.sin(k * freq[2] + phase[2]) + 0.08 * jitter[:, 1])
        bounce = 0.015 * np.sin(k * freq[3] + phase[3])
        self.ego_s = s
        poses = []
        for i in range(n):
            T = _pose(xy[i, 0], xy[i, 1], bounce[i], yaw[i])
            cp, sp, cr, sr = np.cos(pitch[i]), np.sin(pitch[i]), np.cos(roll[i]), np.sin(roll[i])
            Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
            Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
            T[:3, :3] = T[:3, :3] @ Ry @ Rx
            poses.append(T)
        return np.stack(poses)

    # ---- placement
    def _cells(self, center: np.ndarray, yaw: float, half: tuple[float, float], spacing: float = 0.25):
        hx, hy = half
        ux = np.linspace(-hx, hx, max(2, int(np.ceil(2 * hx / spacing)) + 1))
        uy = np.linspace(-hy, hy, max(2, int(np.ceil(2 * hy / spacing)) + 1))
        gx, gy = np.meshgrid(ux, uy, indexing="ij")
        c, s = np.cos(yaw), np.sin(yaw)
        x = center[0] + c * gx - s * gy
        y = center[1] + s * gx + c * gy
        return x.ravel(), y.ravel()

    def _taken_index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ix = np.floor((x - self.ground.origin[0]) / 0.25).astype(np.int64)
        iy = np.floor((y - self.ground.origin[1]) / 0.25).astype(np.int64)
        ok = (ix >= 0) & (ix < self.taken.shape[1]) & (iy >= 0) & (iy < self.taken.shape[0])
        return iy, ix, ok

    def _try_place(self, center, yaw, half, allowed: tuple[int, ...], margin: float = 0.2) -> bool:
        """Reserve an oriented footprint if it lies on ``allowed`` ground and overlaps nothing placed."""
        x, y = self._cells(np.asarray(center), yaw, (half[0] + margin, half[1] + margin))
        iy, ix, ok = self._taken_index(x, y)
        if not ok.all() or self.taken[iy, ix].any():
            return False
        xi, yi = self._cells(np.asarray(center), yaw, half)
        if not np.isin(self.ground.lookup(xi, yi), allowed).all():
            return False
        self.taken[iy, ix] = True
        return True

    def _mark_ego_corridor(self, poses: np.ndarray) -> None:
        main = self.roads[0]
        s = np.arange(0.0, main.length, 0.5)
        p, _, normal = main.frame_at(s)
        for off in np.linspace(-1.8, 1.8, 15):
            xy = p - normal * (self.ego_lane + off)
            iy, ix, ok = self._taken_index(xy[:, 0], xy[:, 1])
            self.taken[iy[ok], ix[ok]] = True

    def _ground_z(self, x: float, y: float) -> float:
        return float(self.ground.height(np.array([x]), np.array([y]))[0])

    # ---- objects
    def _car(self, xy, yaw, raw=CAR) -> bool:
        rng = self.rng
        if raw == CAR:
            L, W = rng.uniform(3.8, 4.9), rng.uniform(1.65, 1.9)
        else:
            L, W = rng.uniform(2.0, 2.3), rng.uniform(0.7, 0.85)
        if not self._try_place(xy, yaw, (L / 2, W / 2), (ROAD, PARKING, LANE_MARKING, OTHER_GROUND), 0.35):
            return False
        obj, inst = self.prims.new_object(thing=True)
        z = self._ground_z(*xy)
        color = _CAR_PALETTE[rng.integers(len(_CAR_PALETTE))]
        R = _yaw_matrix(yaw)[:2, :2]
        if raw == MOTORCYCLE:
            self.prims.add(BOX, (*xy, z + 0.65), yaw, (L * 0.35, 0.2, 0.3), raw, obj, inst, color)
            for fx in (-0.38, 0.38):
                c = xy + R @ np.array([fx * L, 0.0])
                self.prims.add(ELLIPSOID, (*c, z + 0.32), yaw, (0.32, 0.07, 0.32), raw, obj, inst, (0.1, 0.1, 0.1))
            return True
        h_body = rng.uniform(0.65, 0.8)
        self.prims.add(BOX, (*xy, z + 0.3 + h_body / 2), yaw, (L / 2, W / 2, h_body / 2), raw, obj, inst, color)
        cab_c = xy + R @ np.array([-0.06 * L, 0.0])
        h_cab = rng.uniform(0.4, 0.55)
        self.prims.add(
            BOX,
            (*cab_c, z + 0.3 + h_body + h_cab / 2),
            yaw,
            (0.27 * L, 0.44 * W, h_cab / 2),
            raw,
            obj,
            inst,
            color,
            TEX_GLASS,
        )
        for fx in (-0.33, 0.33):
            for fy in (-1, 1):
                c = xy + R @ np.array([fx * L, fy * (W / 2 - 0.12)])
                self.prims.add(ELLIPSOID, (*c, z + 0.33), yaw, (0.33, 0.12, 0.33), raw, obj, inst, (0.06,) * 3)
        return True

    def _truck(self, xy, yaw, raw=TRUCK) -> bool:
        rng = self.rng
        L = rng.uniform(7.0, 10.0) if raw == TRUCK else rng.uniform(11.0, 12.5)
        W = rng.uniform(2.35, 2.55)
        if not self._try_place(xy, yaw, (L / 2, W / 2), (ROAD, PARKING, LANE_MARKING, OTHER_GROUND), 0.4):
            return False
        obj, inst = self.prims.new_object(thing=True)
        z = self._ground_z(*xy)
        R = _yaw_matrix(yaw)[:2, :2]
        if raw == BUS:
            color = [(0.9, 0.75, 0.1), (0.85, 0.85, 0.85), (0.7, 0.1, 0.1)][rng.integers(3)]
            self.prims.add(BOX, (*xy, z + 1.85), yaw, (L / 2, W / 2, 1.45), raw, obj, inst, color, TEX_WINDOWS)
            wheels = (-0.33, 0.3)
        else:
            color = _CAR_PALETTE[rng.integers(len(_CAR_PALETTE))]
            cargo = (0.85, 0.85, 0.83) if rng.random() < 0.6 else color
            cab_len = 2.2
            cab = xy + R @ np.array([L / 2 - cab_len / 2, 0.0])
            box = xy + R @ np.array([-cab_len / 2, 0.0])
            h = rng.uniform(3.0, 3.6)
            self.prims.add(BOX, (*cab, z + 1.75), yaw, (cab_len / 2, W / 2, 1.2), raw, obj, inst, color, TEX_GLASS)
            self.prims.add(
                BOX,
                (*box, z + 0.9 + h / 2 - 0.3),
                yaw,
                ((L - cab_len) / 2 - 0.1, W / 2, h / 2 - 0.3),
                raw,
                obj,
                inst,
                cargo,
            )
            wheels = (-0.35, -0.2, 0.35)
        for fx in wheels:
            for fy in (-1, 1):
                c = xy + R @ np.array([fx * L, fy * (W / 2 - 0.15)])
                self.prims.add(ELLIPSOID, (*c, z + 0.5), yaw, (0.5, 0.15, 0.5), raw, obj, inst, (0.05,) * 3)
        return True

    def _person(self, xy) -> bool:
        rng = self.rng
        r = rng.uniform(0.2, 0.26)
        if not self._try_place(xy, 0.0, (r, r), (SIDEWALK, TERRAIN, OTHER_GROUND, PARKING), 0.15):
            return False
        obj, inst = self.prims.new_object(thing=True)
        z = self._ground_z(*xy)
        h = rng.uniform(1.45, 1.65)
        color = _CLOTHES_PALETTE[rng.integers(len(_CLOTHES_PALETTE))]
        self.prims.add(CYLINDER, (*xy, z + h / 2), 0.0, (r, r, h / 2), PERSON, obj, inst, color)
        skin = [(0.85, 0.68, 0.55), (0.55, 0.38, 0.26), (0.35, 0.24, 0.17)][rng.integers(3)]
        self.prims.add(ELLIPSOID, (*xy, z + h + 0.11), 0.0, (0.1, 0.1, 0.12), PERSON, obj, inst, skin)
        return True

    def _bicycle(self, xy, yaw) -> bool:
        if not self._try_place(xy, yaw, (0.88, 0.25), (SIDEWALK, TERRAIN, OTHER_GROUND, PARKING), 0.1):
            return False
        obj, inst = self.prims.new_object(thing=True)
        z = self._ground_z(*xy)
        R = _yaw_matrix(yaw)[:2, :2]
        color = _CAR_PALETTE[self.rng.integers(len(_CAR_PALETTE))]
        dark = _BASE_COLOR[BICYCLE]
        for fx in (-0.52, 0.52):
            c = xy + R @ np.array([fx, 0.0])
            self.prims.add(ELLIPSOID, (*c, z + 0.35), yaw, (0.35, 0.025, 0.35), BICYCLE, obj, inst, dark)
        self.prims.add(BOX, (*xy, z + 0.6), yaw, (0.45, 0.025, 0.035), BICYCLE, obj, inst, color)
        seat = xy + R @ np.array([-0.2, 0.0])
        self.prims.add(BOX, (*seat, z + 0.72), yaw, (0.03, 0.025, 0.2), BICYCLE, obj, inst, color)
        bar = xy + R @ np.array([0.42, 0.0])
        self.prims.add(BOX, (*bar, z + 0.95), yaw, (0.03, 0.28, 0.02), BICYCLE, obj, inst, dark)
        return True

    def _pole(self, xy, toward: np.ndarray) -> bool:
        if not self._try_place(xy, 0.0, (0.12, 0.12), (SIDEWALK, TERRAIN), 0.3):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*xy)
        h = self.rng.uniform(6.0, 8.5)
        color = _BASE_COLOR[POLE]
        self.prims.add(CYLINDER, (*xy, z + h / 2), 0.0, (0.09, 0.09, h / 2), POLE, obj, 0, color)
        arm = xy + toward * 0.8
        yaw = float(np.arctan2(toward[1], toward[0]))
        self.prims.add(BOX, (*arm, z + h - 0.1), yaw, (0.8, 0.05, 0.05), POLE, obj, 0, color)
        lamp = xy + toward * 1.5
        self.prims.add(BOX, (*lamp, z + h - 0.2), yaw, (0.3, 0.15, 0.08), POLE, obj, 0, (0.8, 0.8, 0.75))
        return True

    def _sign(self, xy, yaw) -> bool:
        if not self._try_place(xy, 0.0, (0.08, 0.08), (SIDEWALK, TERRAIN), 0.25):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*xy)
        h = self.rng.uniform(2.1, 2.7)
        self.prims.add(CYLINDER, (*xy, z + h / 2), 0.0, (0.035, 0.035, h / 2), POLE, obj, 0, _BASE_COLOR[POLE])
        color = _SIGN_PALETTE[self.rng.integers(len(_SIGN_PALETTE))]
        size = self.rng.uniform(0.28, 0.4)
        self.prims.add(BOX, (*xy, z + h + size), yaw, (0.02, size, size), TRAFFIC_SIGN, obj, 0, color)
        if self.rng.random() < 0.35:
            c2 = _SIGN_PALETTE[self.rng.integers(len(_SIGN_PALETTE))]
            self.prims.add(BOX, (*xy, z + h - size - 0.05), yaw, (0.02, size, size * 0.6), TRAFFIC_SIGN, obj, 0, c2)
        return True

    def _tree(self, xy, allowed=(TERRAIN, SIDEWALK, OTHER_GROUND)) -> bool:
        rng = self.rng
        crown = rng.uniform(1.2, 2.8)
        if not self._try_place(xy, 0.0, (0.3, 0.3), allowed, 0.5):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*xy)
        trunk_r, trunk_h = rng.uniform(0.1, 0.25), rng.uniform(1.8, 3.5)
        self.prims.add(
            CYLINDER, (*xy, z + trunk_h / 2), 0.0, (trunk_r,) * 2 + (trunk_h / 2,), TRUNK, obj, 0, _BASE_COLOR[TRUNK]
        )
        green = np.clip(np.array(_BASE_COLOR[VEGETATION]) * rng.uniform(0.75, 1.3), 0, 1)
        rz = crown * rng.uniform(0.8, 1.3)
        for _ in range(rng.integers(1, 3)):
            off = rng.normal(0, 0.35 * crown, 2)
            self.prims.add(
                ELLIPSOID,
                (xy[0] + off[0], xy[1] + off[1], z + trunk_h + 0.6 * rz),
                rng.uniform(0, np.pi),
                (crown * rng.uniform(0.8, 1.1), crown * rng.uniform(0.8, 1.1), rz),
                VEGETATION,
                obj,
                0,
                green,
                TEX_FOLIAGE,
            )
        return True

    def _bush(self, xy) -> bool:
        rng = self.rng
        r = rng.uniform(0.5, 1.4)
        if not self._try_place(xy, 0.0, (r, r), (TERRAIN, OTHER_GROUND), 0.1):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*xy)
        h = rng.uniform(0.4, 1.0)
        green = np.clip(np.array(_BASE_COLOR[VEGETATION]) * rng.uniform(0.8, 1.4), 0, 1)
        self.prims.add(
            ELLIPSOID,
            (*xy, z + 0.5 * h),
            rng.uniform(0, np.pi),
            (r, r * 0.8, h),
            VEGETATION,
            obj,
            0,
            green,
            TEX_FOLIAGE,
        )
        return True

    def _wall(self, center, yaw, length, thick, height, raw, color, tex=TEX_PLAIN, allowed=(TERRAIN,)) -> bool:
        if not self._try_place(center, yaw, (length / 2, thick / 2), allowed, 0.05):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*center)
        self.prims.add(
            BOX, (*center, z + height / 2), yaw, (length / 2, thick / 2, height / 2), raw, obj, 0, color, tex
        )
        return True

    def _gravel_yards(self, road: Road) -> None:
        """Paint other-ground (gravel) yards next to the sidewalks of ``road``, one per ~120 m."""
        rng = self.rng
        g = self.ground
        s = rng.exponential(120.0)
        while s < road.length:
            side = rng.choice([-1.0, 1.0])
            p, tan, normal = road.frame_at(s)
            depth, length = rng.uniform(6, 14), rng.uniform(8, 18)
            c = p + normal * side * (road.reach + 0.3 + depth / 2)
            yaw = float(np.arctan2(tan[1], tan[0]))
            x, y = self._cells(c, yaw, (length / 2, depth / 2), spacing=g.res * 0.7)
            ix = np.floor((x - g.origin[0]) / g.res).astype(np.int64)
            iy = np.floor((y - g.origin[1]) / g.res).astype(np.int64)
            ok = (ix >= 0) & (ix < g.raw.shape[1]) & (iy >= 0) & (iy < g.raw.shape[0])
            ix, iy = ix[ok], iy[ok]
            free = g.raw[iy, ix] == TERRAIN
            g.raw[iy[free], ix[free]] = OTHER_GROUND
            s += rng.exponential(120.0)

    def _populate(self, road: Road, k: int) -> None:
        dens = {"urban": 1.0, "suburban": 0.7, "green": 0.45}[self.style]
        for side in (1.0, -1.0):
            sid = 0 if side > 0 else 1
            # vehicles in the parking bays
            rng = self.rng = _rng(self.seed, 7, k, sid, 0)
            for sd, s0, s1 in road.parking:
                if sd != side:
                    continue
                s = s0 + rng.uniform(0.5, 3.0)
                while s < s1 - 2.5:
                    p, tan, normal = road.frame_at(s)
                    xy = p + normal * side * (road.half_width + road.parking_width / 2)
                    yaw = float(np.arctan2(tan[1], tan[0])) + rng.normal(0, 0.03) + (np.pi if side > 0 else 0.0)
                    u = rng.random()
                    if u < 0.62 * dens + 0.1:
                        if u < 0.08:
                            flush = p + normal * side * (road.half_width + road.parking_width - 1.3)
                            ok = self._truck(flush + tan * 2.5, yaw)
                            s += 5.5 if ok else 0.0
                        elif u < 0.1:
                            self._car(xy, yaw, MOTORCYCLE)
                        else:
                            self._car(xy, yaw)
                    s += rng.uniform(5.6, 7.0)
            # standing traffic in the lanes other than the ego lane
            rng = self.rng = _rng(self.seed, 7, k, sid, 1)
            for lane in range(road.lanes):
                off = (lane + 0.5) * road.lane_width
                s = rng.uniform(0, 15)
                while s < road.length:
                    p, tan, normal = road.frame_at(s)
                    xy = p + normal * side * off
                    yaw = float(np.arctan2(tan[1], tan[0])) + (np.pi if side > 0 else 0.0)
                    u = rng.random()
                    if u < 0.12:
                        self._truck(xy, yaw, BUS if rng.random() < 0.25 else TRUCK)
                    else:
                        self._car(xy, yaw)
                    s += rng.uniform(12, 35) / dens
            # street furniture on the sidewalk
            rng = self.rng = _rng(self.seed, 7, k, sid, 2)
            s = rng.uniform(0, 10)
            while s < road.length:
                p, tan, normal = road.frame_at(s)
                edge = road.sidewalk_inner + 0.45
                self._pole(p + normal * side * edge, -normal * side)
                s += rng.uniform(18, 30)
            s = rng.uniform(0, 20)
            while s < road.length:
                p, tan, normal = road.frame_at(s)
                yaw = float(np.arctan2(tan[1], tan[0]))
                self._sign(p + normal * side * (road.sidewalk_inner + 0.35), yaw)
                s += rng.uniform(20, 45)
            for s_c, clear in road.crossings:  # signs at intersections
                for ds in (-clear - 3.5, clear + 3.5):
                    p, tan, normal = road.frame_at(s_c + ds)
                    self._sign(p + normal * side * (road.sidewalk_inner + 0.35), float(np.arctan2(tan[1], tan[0])))
            # trees in the verge or in sidewalk pits
            rng = self.rng = _rng(self.seed, 7, k, sid, 3)
            if road.verge > 0 or self.style != "urban":
                s = rng.uniform(0, 8)
                while s < road.length:
                    p, tan, normal = road.frame_at(s)
                    off = road.half_width + road.parking_width + road.verge / 2 if road.verge > 0 else road.reach - 0.6
                    self._tree(p + normal * side * off)
                    s += rng.uniform(7, 14) / dens
            # persons and bicycles on the sidewalk
            rng = self.rng = _rng(self.seed, 7, k, sid, 4)
            mid = road.sidewalk_inner + road.sidewalk / 2
            s = rng.exponential(1.0 / (0.045 * dens))
            while s < road.length:
                p, tan, normal = road.frame_at(s)
                self._person(p + normal * side * (mid + rng.uniform(-0.6, 0.6)))
                s += rng.exponential(1.0 / (0.045 * dens))
            rng = self.rng = _rng(self.seed, 7, k, sid, 5)
            s = rng.exponential(1.0 / (0.02 * dens))
            while s < road.length:
                p, tan, normal = road.frame_at(s)
                self._bicycle(p + normal * side * (road.reach - 0.45), float(np.arctan2(tan[1], tan[0])))
                s += rng.exponential(1.0 / (0.02 * dens))
            # lots beyond the sidewalk
            rng = self.rng = _rng(self.seed, 7, k, sid, 6)
            s = rng.uniform(-5, 5)
            while s < road.length:
                length = rng.uniform(9, 24)
                self._lot(road, side, s + length / 2, length)
                s += length + rng.uniform(0.5, 4.0)

    def _lot(self, road: Road, side: float, s: float, length: float) -> None:
        rng = self.rng
        p, tan, normal = road.frame_at(s)
        yaw = float(np.arctan2(tan[1], tan[0]))
        base = road.reach + 0.4
        weights = {
            "urban": [0.7, 0.12, 0.08, 0.1],
            "suburban": [0.35, 0.4, 0.15, 0.1],
            "green": [0.15, 0.3, 0.4, 0.15],
        }[self.style]
        kind = rng.choice(["building", "garden", "hedge", "open"], p=weights)
        if kind == "building":
            setback = rng.uniform(0.0, 4.0)
            depth = rng.uniform(8, 16)
            height = rng.uniform(6, 18) if self.style == "urban" else rng.uniform(4.5, 9)
            color = _BUILDING_PALETTE[rng.integers(len(_BUILDING_PALETTE))]
            for shrink in (1.0, 0.6):  # inner side of curves: try a shallower building
                d = depth * shrink
                c = p + normal * side * (base + setback + d / 2)
                if self._wall(c, yaw, length - 1.0, d, height, BUILDING, color, TEX_WINDOWS):
                    break
            if setback > 1.8 and rng.random() < 0.5:
                c = p + normal * side * (base + 0.3)
                self._wall(c, yaw, length - 1.5, 0.08, rng.uniform(1.0, 1.8), FENCE, _BASE_COLOR[FENCE])
        elif kind == "garden":
            c = p + normal * side * (base + 0.3)
            fence_color = _BASE_COLOR[FENCE] if rng.random() < 0.6 else (0.45, 0.46, 0.47)
            gate = rng.uniform(-length / 4, length / 4)
            for a, b in ((-length / 2 + 0.5, gate - 0.7), (gate + 0.7, length / 2 - 0.5)):
                if b - a > 1.0:
                    cc = c + tan * (a + b) / 2
                    self._wall(cc, yaw, b - a, 0.06, rng.uniform(1.0, 2.0), FENCE, fence_color)
            for _ in range(rng.integers(1, 4)):
                q = p + normal * side * (base + rng.uniform(2.5, 9)) + tan * rng.uniform(-length / 2, length / 2)
                self._tree(q, (TERRAIN,))
            for _ in range(rng.integers(0, 4)):
                q = p + normal * side * (base + rng.uniform(1.5, 8)) + tan * rng.uniform(-length / 2, length / 2)
                self._bush(q)
            if rng.random() < 0.6:
                color = _BUILDING_PALETTE[rng.integers(len(_BUILDING_PALETTE))]
                d = rng.uniform(7, 11)
                c = p + normal * side * (base + rng.uniform(8, 12) + d / 2)
                self._wall(c, yaw, length * 0.7, d, rng.uniform(4.5, 8), BUILDING, color, TEX_WINDOWS)
        elif kind == "hedge":
            c = p + normal * side * (base + 0.8)
            green = np.clip(np.array(_BASE_COLOR[VEGETATION]) * rng.uniform(0.8, 1.2), 0, 1)
            self._wall(
                c, yaw, length - 0.5, rng.uniform(0.8, 1.5), rng.uniform(1.0, 2.4), VEGETATION, green, TEX_FOLIAGE
            )
            for _ in range(rng.integers(1, 4)):
                q = p + normal * side * (base + rng.uniform(3, 10)) + tan * rng.uniform(-length / 2, length / 2)
                self._tree(q, (TERRAIN,))
        else:
            for _ in range(rng.integers(0, 3)):
                q = p + normal * side * (base + rng.uniform(1, 8)) + tan * rng.uniform(-length / 2, length / 2)
                self._bush(q)
            q = p + normal * side * (base + rng.uniform(3, 8))
            if rng.random() < 0.5:
                self._car(q, yaw + rng.normal(0, 0.3))  # car parked on a yard (gravel or grass)

    def _quotas(self, main: Road) -> None:
        """Per 30 m of the main street around the ego path: at least one person, bicycle, car, truck, tree
        and fence (placed before everything else, so that every frame shows the common classes)."""
        rng = self.rng
        kinds = ("person", "bicycle", "car", "truck", "tree", "fence")
        for s0 in np.arange(self.S0 - 10.0, min(main.length - 10.0, self.ego_s[-1] + 60.0), 30.0):
            for kind in kinds:
                for _ in range(30):
                    s = s0 + rng.uniform(5, 35)
                    side = rng.choice([-1.0, 1.0])
                    p, tan, normal = main.frame_at(s)
                    yaw = float(np.arctan2(tan[1], tan[0]))
                    back = yaw + (np.pi if side > 0 else 0.0)
                    if kind == "person":
                        ok = self._person(p + normal * side * (main.sidewalk_inner + rng.uniform(0.3, main.sidewalk)))
                    elif kind == "bicycle":
                        ok = self._bicycle(p + normal * side * (main.reach - 0.45), yaw)
                    elif kind == "car":
                        off = main.half_width + main.parking_width / 2 if main.parking_width else 1.5 * main.lane_width
                        ok = self._car(p + normal * side * off, back)
                    elif kind == "truck":  # the opposite lanes or the left parking band
                        lane = rng.integers(main.lanes)
                        off = (lane + 0.5) * main.lane_width
                        if main.parking_width and rng.random() < 0.5:
                            off = main.half_width + main.parking_width - 1.3
                        ok = self._truck(p + normal * off, yaw + np.pi)
                    elif kind == "tree":
                        off = main.half_width + main.parking_width + main.verge / 2 if main.verge else main.reach + 1.5
                        ok = self._tree(p + normal * side * (off + (rng.uniform(0, 3) if not main.verge else 0.0)))
                    else:
                        length = rng.uniform(4, 10)
                        ok = self._wall(
                            p + normal * side * (main.reach + 0.7),
                            yaw,
                            length,
                            0.06,
                            rng.uniform(1.0, 1.8),
                            FENCE,
                            _BASE_COLOR[FENCE],
                        )
                    if ok:
                        break


def build_scene(seed: int, num_poses: int) -> Scene:
    """Generate the world of one synthetic sequence: roads, ground raster, objects and ``num_poses`` poses."""
    if num_poses < 1:
        raise ValueError(f"num_poses must be >= 1, got {num_poses}")
    return _SceneBuilder(seed, num_poses).build()


# -------------------------------------------------------------------------------------------- ray casting


@dataclass
class Hits:
    """First hits of a grid of rays.

    Attributes:
        t: (R, C) float32 distance along the unit ray, inf where nothing was hit.
        raw: (R, C) uint8 raw class (0 where nothing was hit).
        prim: (R, C) int32 primitive index, -1 ground, -2 nothing.
        normal: (R, C, 3) float32 unit surface normal (world frame).
    """

    t: np.ndarray
    raw: np.ndarray
    prim: np.ndarray
    normal: np.ndarray


def _ground_hits(ground: GroundMap, o: np.ndarray, D: np.ndarray, max_t: float):
    """Ground intersection of rays ``o + t D`` (D (n, 3) unit), with curbs between the two levels."""
    n = len(D)
    t = np.full(n, np.inf, np.float32)
    raw = np.zeros(n, np.uint8)
    normal = np.zeros((n, 3), np.float32)
    normal[:, 2] = 1.0
    down = np.flatnonzero(D[:, 2] < -1e-4)
    if down.size == 0:
        return t, raw, normal
    Dd = D[down]
    z_hi = ground.z_road + CURB_HEIGHT
    t_hi = (z_hi - o[2]) / Dd[:, 2]
    t_lo = (ground.z_road - o[2]) / Dd[:, 2]
    c_hi = ground.lookup(o[0] + t_hi * Dd[:, 0], o[1] + t_hi * Dd[:, 1])
    c_lo = ground.lookup(o[0] + t_lo * Dd[:, 0], o[1] + t_lo * Dd[:, 1])
    raised_hi = LEVEL[c_hi] > 0
    raised_lo = LEVEL[c_lo] > 0
    th = np.where(raised_hi, t_hi, t_lo).astype(np.float32)
    ch = np.where(raised_hi, c_hi, c_lo)
    curb = ~raised_hi & raised_lo  # the ray enters a raised area between the two planes: it hits the curb face
    if curb.any():
        idx = np.flatnonzero(curb)
        a, b = t_hi[idx].copy(), t_lo[idx].copy()
        for _ in range(8):
            mid = 0.5 * (a + b)
            up = LEVEL[ground.lookup(o[0] + mid * Dd[idx, 0], o[1] + mid * Dd[idx, 1])] > 0
            b = np.where(up, mid, b)
            a = np.where(up, a, mid)
        th[idx] = b
        ch[idx] = ground.lookup(o[0] + b * Dd[idx, 0], o[1] + b * Dd[idx, 1])
        horiz = -Dd[idx, :2] / np.maximum(np.linalg.norm(Dd[idx, :2], axis=1, keepdims=True), 1e-6)
        nrm = np.zeros((idx.size, 3), np.float32)
        nrm[:, :2] = horiz
        normal[down[idx]] = nrm
    ok = th <= max_t
    t[down[ok]] = th[ok]
    raw[down[ok]] = ch[ok]
    return t, raw, normal


def _intersect(prims: Primitives, p: int, o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray):
    """Distance of the first hit of rays ``o + t (dx, dy, dz)`` with primitive ``p`` (inf: miss).

    ``dx``, ``dy``, ``dz`` are the direction components, arrays of one shape; the result has that shape.
    """
    kind = prims.kind[p]
    rel = (o - prims.center[p]).astype(np.float32)
    h = prims.half[p].astype(np.float32)
    eps = np.float32(1e-3)
    inf = np.float32(np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == CYLINDER:
            a = dx * dx + dy * dy
            b = rel[0] * dx + rel[1] * dy
            c = rel[0] ** 2 + rel[1] ** 2 - h[0] ** 2
            disc = b * b - a * c
            ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
            zs = rel[2] + ts * dz
            t = np.where((disc >= 0) & (ts > eps) & (np.abs(zs) <= h[2]), ts, inf)
            if abs(rel[2]) > h[2]:
                zc = np.sign(rel[2]) * h[2]
                tc = (zc - rel[2]) / dz
                xc, yc = rel[0] + tc * dx, rel[1] + tc * dy
                t = np.where((tc > eps) & (xc * xc + yc * yc <= h[0] ** 2) & (tc < t), tc, t)
            return t
        cy, sy = np.float32(np.cos(prims.yaw[p])), np.float32(np.sin(prims.yaw[p]))
        ox, oy, oz = cy * rel[0] + sy * rel[1], -sy * rel[0] + cy * rel[1], rel[2]
        lx = cy * dx + sy * dy
        ly = dy * cy - sy * dx
        if kind == BOX:
            tn = tf = None
            for oc, hc, lc in ((ox, h[0], lx), (oy, h[1], ly), (oz, h[2], dz)):
                inv = np.float32(1.0) / lc
                ta = (-hc - oc) * inv
                tb = (hc - oc) * inv
                lo, hi = np.minimum(ta, tb), np.maximum(ta, tb)
                tn = lo if tn is None else np.maximum(tn, lo)
                tf = hi if tf is None else np.minimum(tf, hi)
            return np.where((tn <= tf) & (tn > eps), tn, inf)
        ox, oy, oz = ox / h[0], oy / h[1], oz / h[2]
        lx, ly, lz = lx / h[0], ly / h[1], dz / h[2]
        a = lx * lx + ly * ly + lz * lz
        b = lx * ox + ly * oy + lz * oz
        c = ox * ox + oy * oy + oz * oz - 1.0
        disc = b * b - a * c
        t = (-b - np.sqrt(np.maximum(disc, 0))) / a
        return np.where((disc >= 0) & (t > eps), t, inf)


def _normals(prims: Primitives, prim: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 3) unit outward normals at hit ``points`` (n, 3) of primitives ``prim`` (n,), vectorised."""
    c = prims.center[prim].astype(np.float32)
    h = prims.half[prim].astype(np.float32)
    yaw = prims.yaw[prim]
    cy, sy = np.cos(yaw).astype(np.float32), np.sin(yaw).astype(np.float32)
    rel = points - c
    lx = cy * rel[:, 0] + sy * rel[:, 1]
    ly = -sy * rel[:, 0] + cy * rel[:, 1]
    lz = rel[:, 2]
    kind = prims.kind[prim]
    n = np.zeros_like(points)
    # boxes: the face whose normalised coordinate is largest
    q = np.abs(np.stack([lx, ly, lz], axis=1)) / np.maximum(h, 1e-6)
    ax = q.argmax(axis=1)
    loc = np.zeros_like(points)
    loc[np.arange(len(ax)), ax] = np.sign(np.stack([lx, ly, lz], axis=1)[np.arange(len(ax)), ax])
    # ellipsoids: gradient of the implicit surface
    ell = kind == ELLIPSOID
    loc[ell] = np.stack([lx, ly, lz], axis=1)[ell] / np.maximum(h[ell] ** 2, 1e-6)
    rot = kind != CYLINDER
    n[rot, 0] = cy[rot] * loc[rot, 0] - sy[rot] * loc[rot, 1]
    n[rot, 1] = sy[rot] * loc[rot, 0] + cy[rot] * loc[rot, 1]
    n[rot, 2] = loc[rot, 2]
    # cylinders: caps or radial
    cyl = kind == CYLINDER
    cap = cyl & (np.abs(lz) >= h[:, 2] - 1e-3)
    side = cyl & ~cap
    n[cap, 2] = np.sign(lz[cap])
    n[side, 0] = rel[side, 0]
    n[side, 1] = rel[side, 1]
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-6)


def cast_rays(scene: Scene, origin: np.ndarray, dirs: np.ndarray, rects: np.ndarray, max_t: float) -> Hits:
    """First hits of a grid of rays from one origin.

    Args:
        origin: (3,) world ray origin.
        dirs: (R, C, 3) float32 unit world directions.
        rects: (M, 5) int rows (primitive, r0, r1, c0, c1): the sub-grid of rays each primitive may hit.
        max_t: rays hit nothing beyond this distance.
    """
    R, C, _ = dirs.shape
    flat = dirs.reshape(-1, 3)
    t, raw, normal = _ground_hits(scene.ground, origin, flat, max_t)
    t, raw, normal = t.reshape(R, C), raw.reshape(R, C), normal.reshape(R, C, 3)
    prim = np.where(np.isfinite(t), -1, -2).astype(np.int32)
    prims = scene.prims
    planar = np.ascontiguousarray(np.moveaxis(dirs, -1, 0))  # (3, R, C)
    for p, r0, r1, c0, c1 in rects:
        dx, dy, dz = planar[:, r0:r1, c0:c1]
        tp = _intersect(prims, p, origin, dx, dy, dz)  # (h, w)
        view_t = t[r0:r1, c0:c1]
        closer = tp < view_t
        if closer.any():
            view_t[closer] = tp[closer]
            prim[r0:r1, c0:c1][closer] = p
    obj_hit = prim >= 0
    far = obj_hit & (t > max_t)
    t[far], prim[far] = np.inf, -2
    obj_hit &= ~far
    if obj_hit.any():
        pid = prim[obj_hit]
        raw[obj_hit] = prims.raw[pid]
        pts = origin.astype(np.float32) + dirs[obj_hit] * t[obj_hit][:, None]
        normal[obj_hit] = _normals(prims, pid, pts)
    raw[prim == -2] = 0
    return Hits(t, raw, prim, normal)


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(P, 8, 3) corners of axis-aligned boxes."""
    sel = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], bool)
    return np.where(sel[None], hi[:, None, :], lo[:, None, :])


def _split_columns(p, r0, r1, c0, c1, width: int, wrap: bool) -> np.ndarray:
    """Rows (p, r0, r1, c0, c1); with ``wrap`` column ranges are taken modulo ``width`` (split in two)."""
    if not wrap:
        c0, c1 = np.clip(c0, 0, width), np.clip(c1, 0, width)
        keep = (c1 > c0) & (r1 > r0)
        return np.stack([p, r0, r1, c0, c1], axis=1)[keep]
    length = np.minimum(c1 - c0, width)
    start = np.mod(c0, width)
    end = start + length
    first = np.stack([p, r0, r1, start, np.minimum(end, width)], axis=1)
    over = end > width
    second = np.stack([p, r0, r1, np.zeros_like(start), end - width], axis=1)[over]
    out = np.concatenate([first, second])
    return out[(out[:, 4] > out[:, 3]) & (out[:, 2] > out[:, 1])]


# ------------------------------------------------------------------------------------------------ sensors


@dataclass
class LidarModel:
    """HDL-64E-like spinning LiDAR (LiDAR frame: x forward, y left, z up)."""

    azimuth_steps: int = 2000
    elevations: np.ndarray = field(default_factory=lambda: np.deg2rad(HDL64_ELEVATIONS_DEG))  # (64,) descending
    min_range: float = 2.5
    max_range: float = 80.0
    range_noise: float = 0.02
    dropout: float = 0.02

    def __post_init__(self) -> None:
        if self.azimuth_steps < 8:
            raise ValueError(f"azimuth_steps must be >= 8, got {self.azimuth_steps}")
        self.elevations = np.asarray(self.elevations, np.float64)
        if np.any(np.diff(self.elevations) >= 0):
            raise ValueError("LiDAR elevations must be strictly descending")
        self.azimuths = -np.pi + (np.arange(self.azimuth_steps) + 0.5) * (2 * np.pi / self.azimuth_steps)
        ce, se = np.cos(self.elevations)[:, None], np.sin(self.elevations)[:, None]
        ca, sa = np.cos(self.azimuths)[None, :], np.sin(self.azimuths)[None, :]
        self.dirs = np.stack(np.broadcast_arrays(ce * ca, ce * sa, se), axis=-1).astype(np.float32)  # (64, A, 3)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.elevations), self.azimuth_steps

    def rects(self, corners: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Range-image rectangles of primitives whose sensor-frame AABB corners are ``corners`` (P, 8, 3)."""
        xy = corners[..., :2]
        lo, hi = xy.min(axis=1), xy.max(axis=1)
        dx = np.maximum(np.maximum(lo[:, 0], -hi[:, 0]), 0)
        dy = np.maximum(np.maximum(lo[:, 1], -hi[:, 1]), 0)
        dmin = np.hypot(dx, dy)
        dmax = np.linalg.norm(xy, axis=2).max(axis=1)
        zmin, zmax = corners[..., 2].min(axis=1), corners[..., 2].max(axis=1)
        keep = dmin < self.max_range
        emax = np.arctan2(zmax, np.where(zmax > 0, dmin, dmax))
        emin = np.arctan2(zmin, np.where(zmin < 0, dmin, dmax))
        neg = -self.elevations  # ascending
        margin = 1e-3
        r0 = np.searchsorted(neg, -(emax + margin))
        r1 = np.searchsorted(neg, -(emin - margin), side="right")
        center = xy.mean(axis=1)
        phic = np.arctan2(center[:, 1], center[:, 0])
        rel = np.angle(np.exp(1j * (np.arctan2(xy[..., 1], xy[..., 0]) - phic[:, None])))
        step = 2 * np.pi / self.azimuth_steps
        c0 = np.floor((phic + rel.min(axis=1) + np.pi) / step - 0.5).astype(np.int64) - 1
        c1 = np.ceil((phic + rel.max(axis=1) + np.pi) / step - 0.5).astype(np.int64) + 2
        full = (dmin <= 0) | (c1 - c0 >= self.azimuth_steps)
        c0 = np.where(full, 0, c0)
        c1 = np.where(full, self.azimuth_steps, c1)
        rows = _split_columns(ids[keep], r0[keep], r1[keep], c0[keep], c1[keep], self.azimuth_steps, wrap=True)
        return rows


@dataclass
class CameraModel:
    """Pinhole camera image_2 with KITTI P2 (scaled to the image size)."""

    calib: Calib

    def __post_init__(self) -> None:
        P = self.calib.P
        M = P[:, :3]
        center_cam0 = -np.linalg.solve(M, P[:, 3])  # camera centre in cam0 coordinates
        T_lidar_cam = np.linalg.inv(self.calib.T_cam_lidar)
        self.center = (T_lidar_cam[:3, :3] @ center_cam0 + T_lidar_cam[:3, 3]).astype(np.float64)  # LiDAR frame
        H, W = self.calib.image_size
        u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # (H, W, 3)
        d_cam0 = pix @ np.linalg.inv(M).T
        d = d_cam0 @ T_lidar_cam[:3, :3].T
        self.dirs = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)  # (H, W, 3) LiDAR frame
        self.max_range = 200.0

    @property
    def shape(self) -> tuple[int, int]:
        return self.calib.image_size

    def rects(self, corners: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Image rectangles of primitives whose LiDAR-frame AABB corners are ``corners`` (P, 8, 3).

        Boxes that cross the plane ``depth = near`` are clipped to it (their edges are cut where they cross),
        so only the part in front of the camera is projected. No visible surface can lie nearer than 1 m:
        at that depth the image covers less than +-0.9 m around the camera, inside the ego vehicle.
        """
        H, W = self.calib.image_size
        near = 1.0
        M = self.calib.lidar_to_image
        hom = corners @ M[:, :3].T + M[:, 3]  # (P, 8, 3) homogeneous pixels, [..., 2] = depth
        depth = hom[..., 2]
        front = depth >= near
        edges = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])
        ha, hb = hom[:, edges[:, 0]], hom[:, edges[:, 1]]  # (P, 12, 3)
        da, db = ha[..., 2], hb[..., 2]
        cross = (da >= near) != (db >= near)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(cross, (near - da) / (db - da), 0.0)[..., None]
            hc = ha + w * (hb - ha)  # (P, 12, 3) points on the near plane
            uv_c = hc[..., :2] / near
            uv_f = hom[..., :2] / np.where(front, depth, 1.0)[..., None]
        pts = np.concatenate([uv_f, uv_c], axis=1)  # (P, 20, 2)
        valid = np.concatenate([front, cross], axis=1)  # (P, 20)
        keep = valid.any(axis=1) & (depth.min(axis=1) < self.max_range)
        lo = np.where(valid[..., None], pts, np.inf).min(axis=1)
        hi = np.where(valid[..., None], pts, -np.inf).max(axis=1)
        keep &= (lo[:, 0] < W) & (hi[:, 0] >= 0) & (lo[:, 1] < H) & (hi[:, 1] >= 0)
        lo, hi = np.clip(lo[keep], -1, W + 1), np.clip(hi[keep], -1, W + 1)
        c0, c1 = np.floor(lo[:, 0]).astype(np.int64) - 1, np.ceil(hi[:, 0]).astype(np.int64) + 2
        r0 = np.clip(np.floor(lo[:, 1]).astype(np.int64) - 1, 0, H)
        r1 = np.clip(np.ceil(hi[:, 1]).astype(np.int64) + 2, 0, H)
        return _split_columns(ids[keep], r0, r1, c0, c1, W, wrap=False)


def kitti_calib(image_scale: float = 1.0) -> Calib:
    """KITTI odometry seq 00 camera-2 calibration, for an image scaled by ``image_scale``."""
    if not image_scale > 0:
        raise ValueError(f"image_scale must be > 0, got {image_scale}")
    base = Calib(KITTI_P2, KITTI_TR, KITTI_IMAGE_SIZE)
    if image_scale == 1.0:
        return base
    H = max(8, int(round(KITTI_IMAGE_SIZE[0] * image_scale)))
    W = max(8, int(round(KITTI_IMAGE_SIZE[1] * image_scale)))
    return base.resized(H, W)


# ---------------------------------------------------------------------------------------------- sequence


@dataclass
class Scan:
    """One LiDAR scan: points (N, 4) in the LiDAR frame, uint32 labels (N,), range image (64, A) of returns."""

    points: np.ndarray
    labels: np.ndarray
    depth: np.ndarray  # (64, A) float32 measured range, inf where no return
    world: np.ndarray  # (N, 3) float32 points in the scene frame


@dataclass
class CameraFrame:
    """Rendered image (H, W, 3) uint8, truth learning labels (H, W) uint8, depth (H, W) and object ids."""

    image: np.ndarray
    truth: np.ndarray
    depth: np.ndarray
    obj: np.ndarray


_GRID_RAYS: dict[tuple, dict[str, np.ndarray]] = {}  # SyntheticSequence._ray_index of a grid, own scan


class SyntheticSequence:
    """A procedural sequence: scene, sensors and per-frame products (scans, images, pseudo labels, voxels).

    Args:
        seed: scene and noise seed.
        frames: number of frames.
        image_scale: camera image size relative to KITTI's 376 x 1241.
        azimuth_steps: LiDAR columns per revolution (2000 ~ HDL-64E at 10 Hz).
        window: scans accumulated for the voxel ground truth: the current one and ``window - 1`` next ones,
            ``stride`` frames apart (SemanticKITTI accumulates future scans along the trajectory).
        stride: frames between two accumulated scans.
        grid: voxel grid (SemanticKITTI's by default).
    """

    def __init__(
        self,
        seed: int,
        frames: int,
        image_scale: float = 1.0,
        azimuth_steps: int = 2000,
        window: int = 5,
        stride: int = 2,
        grid: VoxelGrid = SEMANTIC_KITTI_GRID,
    ) -> None:
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.seed = int(seed)
        self.frames = int(frames)
        self.window = int(window)
        self.grid = grid
        self.classes = class_table("semantic_kitti")
        self.scene = build_scene(seed, frames + (window - 1) * stride)
        self.lidar = LidarModel(azimuth_steps=azimuth_steps)
        self.calib = kitti_calib(image_scale)
        self.camera = CameraModel(self.calib)
        self.image_scale = float(image_scale)
        T0 = self.scene.poses[0]
        self.poses = np.linalg.inv(T0) @ self.scene.poses  # (F + (window - 1) * stride, 4, 4), first = identity
        self._scans: dict[int, Scan] = {}
        lo, hi = self.scene.prims.aabb()
        self._corners = _corners(lo, hi)  # (P, 8, 3) world
        self._prim_ids = np.arange(len(self.scene.prims))
        self._centers = grid.centers()  # (X, Y, Z, 3) float32
        self._grid_rays: dict[str, np.ndarray] | None = None  # rays near each voxel of the grid, own scan

    def _check_frame(self, frame: int) -> None:
        if not 0 <= frame < len(self.scene.poses):
            raise IndexError(f"frame {frame} out of range: this sequence has poses 0..{len(self.scene.poses) - 1}")

    # ---- sensors
    def _sensor_corners(self, frame: int, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
        T = self.scene.poses[frame]
        rel = self._corners - T[:3, 3]
        near = np.linalg.norm(rel[:, :, :2].mean(axis=1), axis=1) < max_dist + 30.0
        local = rel[near] @ T[:3, :3]  # world -> LiDAR frame (rotation transpose)
        return local, self._prim_ids[near]

    def scan(self, frame: int) -> Scan:
        """The LiDAR scan of ``frame`` (cached while the voxel window needs it)."""
        if frame in self._scans:
            return self._scans[frame]
        self._check_frame(frame)
        lid = self.lidar
        T = self.scene.poses[frame]
        R = T[:3, :3].astype(np.float32)
        dirs_w = lid.dirs @ R.T  # (64, A, 3)
        corners, ids = self._sensor_corners(frame, lid.max_range)
        rects = lid.rects(corners, ids)
        hits = cast_rays(self.scene, T[:3, 3], dirs_w, rects, lid.max_range)
        rng = _rng(self.seed, 1, frame)
        t = hits.t
        hit = np.isfinite(t) & (t >= lid.min_range)
        rng_noise = rng.normal(0.0, lid.range_noise, t.shape).astype(np.float32)
        veg = hits.raw == VEGETATION
        rng_noise[veg] += rng.uniform(0.0, 0.35, veg.sum()).astype(np.float32)  # foliage penetration
        measured = t + rng_noise
        refl = REFLECTIVITY[hits.raw]
        refl = np.where((hits.prim >= 0) & (self.scene.prims.tex[np.maximum(hits.prim, 0)] == TEX_GLASS), 0.08, refl)
        cos_inc = np.abs((hits.normal * dirs_w).sum(axis=-1))
        frac = np.where(hit, t, 0.0) / lid.max_range
        p_drop = lid.dropout + 0.25 * frac**2 * (1.0 - refl) + np.where(veg, 0.08, 0.0) + 0.3 * (cos_inc < 0.05)
        keep = hit & (rng.random(t.shape) >= p_drop) & (measured < lid.max_range)
        intensity = refl * (0.35 + 0.65 * cos_inc) * (1.0 - 0.35 * frac) + rng.normal(0, 0.02, t.shape)
        intensity = np.clip(intensity, 0.0, 0.99).astype(np.float32)
        depth = np.where(keep, measured, np.inf).astype(np.float32)
        r = measured[keep][:, None]
        local = lid.dirs[keep] * r  # (N, 3) LiDAR frame
        points = np.concatenate([local, intensity[keep][:, None]], axis=1).astype(np.float32)
        raw = hits.raw[keep].astype(np.uint32)
        prim = hits.prim[keep]
        inst = np.where(prim >= 0, self.scene.prims.instance[np.maximum(prim, 0)], 0).astype(np.uint32)
        labels = raw | (inst << 16)
        world = (local @ R.T + T[:3, 3]).astype(np.float32)
        scan = Scan(points, labels, depth, world)
        self._scans[frame] = scan
        return scan

    def render(self, frame: int) -> CameraFrame:
        """Ray-cast camera image of ``frame`` with its truth labels, depth and object ids."""
        self._check_frame(frame)
        cam = self.camera
        T = self.scene.poses[frame]
        R = T[:3, :3].astype(np.float32)
        origin = T[:3, :3] @ cam.center + T[:3, 3]
        dirs_w = cam.dirs @ R.T  # (H, W, 3)
        corners, ids = self._sensor_corners(frame, cam.max_range)
        rects = cam.rects(corners, ids)
        hits = cast_rays(self.scene, origin, dirs_w, rects, cam.max_range)
        image = self._shade(frame, origin, dirs_w, hits)
        truth = self.classes.map_raw(hits.raw)
        truth[hits.prim == -2] = IGNORE_INDEX
        obj = np.where(hits.prim >= 0, self.scene.prims.obj[np.maximum(hits.prim, 0)], 0).astype(np.int32)
        return CameraFrame(image, truth, hits.t, obj)

    def _shade(self, frame: int, origin: np.ndarray, dirs: np.ndarray, hits: Hits) -> np.ndarray:
        scene = self.scene
        prims = scene.prims
        H, W = hits.t.shape
        seed = self.seed
        sky_w = np.clip(dirs[..., 2] * 3.0, 0, 1)[..., None] ** 0.7
        horizon, zenith = np.array([0.86, 0.90, 0.95], np.float32), np.array([0.38, 0.56, 0.86], np.float32)
        sky = horizon * (1 - sky_w) + zenith * sky_w  # (H, W, 3)
        img = sky.copy()
        hit = hits.prim != -2
        if hit.any():
            t = hits.t[hit]
            pts = origin.astype(np.float32) + dirs[hit] * t[:, None]  # (n, 3) world
            raw = hits.raw[hit]
            prim = hits.prim[hit]
            base_lut = np.full((256, 3), 0.5, np.float32)
            for k, v in _BASE_COLOR.items():
                base_lut[k] = v
            color = base_lut[raw]
            is_obj = prim >= 0
            color[is_obj] = prims.color[prim[is_obj]]
            x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
            fine = _hash01(np.floor(x * 20), np.floor(y * 20), np.floor(z * 20), seed=seed)
            coarse = _value_noise(x + 0.37 * z, y - 0.21 * z, 1.5, seed + 1)
            tex = np.where(is_obj, prims.tex[np.maximum(prim, 0)], TEX_PLAIN)
            foliage = (tex == TEX_FOLIAGE) | (raw == TERRAIN)
            amp_f = np.where(foliage, 0.45, np.where(is_obj, 0.06, 0.16)).astype(np.float32)
            amp_c = np.where(foliage, 0.35, 0.12).astype(np.float32)
            color = color * (1 + amp_f * (fine - 0.5) + amp_c * (coarse - 0.5))[:, None]
            # sidewalk tiles
            tiles = (raw == SIDEWALK) & ((np.mod(x, 0.5) < 0.03) | (np.mod(y, 0.5) < 0.03))
            color[tiles] *= 0.8
            # building windows and car / truck glass
            win = np.flatnonzero(tex == TEX_WINDOWS)
            if win.size:
                pw = prim[win]
                rel = pts[win] - prims.center[pw].astype(np.float32)
                cy, sy = np.cos(prims.yaw[pw]), np.sin(prims.yaw[pw])
                lx = cy * rel[:, 0] + sy * rel[:, 1]
                ly = -sy * rel[:, 0] + cy * rel[:, 1]
                hx = prims.half[pw, 0]
                on_x_face = np.abs(np.abs(lx) - hx) < 0.02
                u = np.where(on_x_face, ly, lx)
                zb = rel[:, 2] + prims.half[pw, 2]  # height above the object's base
                is_bus = prims.raw[pw] == BUS
                fu, fz = np.mod(u, 3.0), np.mod(zb, 3.2)
                window = (fu > 0.7) & (fu < 2.3) & (fz > 1.0) & (fz < 2.5) & (zb > 1.0) & (~is_bus)
                window |= is_bus & (zb > 1.5) & (zb < 2.6) & (np.mod(u, 1.6) > 0.12)
                color[win[window]] = np.array([0.16, 0.2, 0.26], np.float32) + 0.1 * fine[win[window], None]
            glass = tex == TEX_GLASS
            color[glass] = color[glass] * 0.35 + np.array([0.05, 0.07, 0.1], np.float32)
            # Lambert shading under the sun plus ambient light
            nrm = hits.normal[hit]
            lam = np.clip(nrm @ scene.sun.astype(np.float32), 0, 1)
            color = color * (0.45 + 0.6 * lam)[:, None]
            haze = (1.0 - np.exp(-t / 180.0))[:, None]
            color = color * (1 - haze) + horizon * haze
            img[hit] = color
        rng = _rng(seed, 2, frame)
        img = img + rng.normal(0.0, 0.008, img.shape).astype(np.float32)
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    # ---- pseudo labels
    def pseudo_labels(self, frame: int, cam: CameraFrame) -> np.ndarray:
        """(H, W) uint8 2D pseudo labels of the documented segmenter noise model (255 = none)."""
        rng = _rng(self.seed, 3, frame)
        names = {n: i for i, n in enumerate(self.classes.names)}
        lab = cam.truth.copy()
        H, W = lab.shape
        scale = self.image_scale
        # per (object, class) statistics: area and mean depth
        key = cam.obj.astype(np.int64) * 256 + lab  # (H, W); object 0 = ground / sky
        uniq, inv = np.unique(key.ravel(), return_inverse=True)
        inv = inv.reshape(H, W)
        u_obj, u_cls = uniq // 256, uniq % 256
        area = np.bincount(inv.ravel(), minlength=len(uniq))
        depth = np.where(np.isfinite(cam.depth), cam.depth, 0.0).ravel()
        mean_depth = np.bincount(inv.ravel(), weights=depth, minlength=len(uniq)) / np.maximum(area, 1)
        is_obj = u_obj > 0
        # 1. missed small / distant instances
        missable = is_obj & np.isin(u_cls, [names[n] for n in MISSABLE])
        p_miss = np.clip((mean_depth - 12.0) / 30.0, 0.0, 0.85)
        missed = missable & ((rng.random(len(uniq)) < p_miss) | (area < 40 * scale**2))
        # 2. whole-instance confusions, fixed per object over the sequence (a systematic error)
        u = _hash01(u_obj, seed=self.seed + 17)
        new_cls = u_cls.copy()
        done = np.zeros(len(uniq), bool)
        for src, dst, prob in INSTANCE_CONFUSIONS:
            sel = is_obj & ~done & (u_cls == names[src]) & (u < prob)
            new_cls[sel] = names[dst]
            done |= sel
        lab = new_cls[inv].astype(np.uint8)
        drop = missed[inv]
        if drop.any():
            cols = np.where(~drop, np.arange(W)[None, :], -1)
            left = np.maximum.accumulate(cols, axis=1)
            fill = lab[np.arange(H)[:, None], np.maximum(left, 0)]
            lab = np.where(drop, np.where(left >= 0, fill, IGNORE_INDEX), lab).astype(np.uint8)
        # 3. blob-shaped region confusions of stuff classes
        orig = lab.copy()
        for src, dst, share in REGION_CONFUSIONS:
            if not (orig == names[src]).any():
                continue
            field_ = _smooth_field(rng, (H, W), max(4.0, 60.0 * scale))
            thr = np.float32(_normal_quantile(1.0 - share) * 0.6)  # bilinear smoothing shrinks the variance
            sel = (orig == names[src]) & (field_ > thr)
            lab[sel] = names[dst]
        # 4. boundary errors: resample through a smooth displacement field
        amp = 2.5 * max(scale, 0.25)
        dx = _smooth_field(rng, (H, W), max(4.0, 24.0 * scale)) * amp
        dy = _smooth_field(rng, (H, W), max(4.0, 24.0 * scale)) * amp
        rows = np.clip(np.rint(np.arange(H)[:, None] + dy), 0, H - 1).astype(np.int64)
        cols = np.clip(np.rint(np.arange(W)[None, :] + dx), 0, W - 1).astype(np.int64)
        return lab[rows, cols].astype(np.uint8)

    # ---- voxels
    def _ray_index(self, centers: np.ndarray) -> dict[str, np.ndarray]:
        """Which rays of a scan pass near voxel ``centers`` (V, 3), given in that scan's LiDAR frame.

        Independent of what the scan measured, so the grid's own index (the grid is fixed in the LiDAR frame)
        is computed once. A ray "passes within half a voxel" when its beam elevation and column azimuth are
        within ``0.5 * voxel_size / range`` of the centre's; the two beams around the centre's elevation in
        the nearest column are considered.

        Returns:
            idx: (2, V) int32 flat range-image index of the beams below / above the centre.
            near: (2, V) bool, that ray passes within half a voxel of the centre.
            nearest: (V,) int32 flat index of the nearest ray; fov: (V,) bool, the centre is inside the
            vertical field of view (nearest beam within half a beam spacing); r: (V,) float32 range.
        """
        lid = self.lidar
        vs = np.float32(self.grid.voxel_size)
        x, y, z = (np.ascontiguousarray(centers[:, k], np.float32) for k in range(3))
        rh = np.sqrt(x * x + y * y)
        r = np.sqrt(rh * rh + z * z)
        tan_e = z / np.maximum(rh, np.float32(1e-3))
        tan_asc = np.tan(lid.elevations[::-1]).astype(np.float32)  # (64,) ascending
        n_rows, A = lid.shape
        k = np.searchsorted(tan_asc, tan_e)
        col = ((np.arctan2(y, x) + np.float32(np.pi)) * np.float32(A / (2 * np.pi))).astype(np.int64)
        np.minimum(col, A - 1, out=col)
        slope = np.float32(1.0) + tan_e * tan_e  # d tan / d elevation
        tol = np.float32(0.5) * vs / np.maximum(r, np.float32(1e-3)) * slope
        idx = np.empty((2, len(r)), np.int32)
        near = np.empty((2, len(r)), bool)
        gaps = np.empty((2, len(r)), np.float32)
        for m, kk in enumerate((k - 1, k)):
            kc = np.clip(kk, 0, n_rows - 1)
            gaps[m] = np.where((kk >= 0) & (kk < n_rows), np.abs(tan_asc[kc] - tan_e), np.inf)
            idx[m] = (n_rows - 1 - kc) * A + col
            near[m] = gaps[m] <= tol
        best = gaps[1] < gaps[0]
        fov = np.minimum(gaps[0], gaps[1]) <= np.float32(np.deg2rad(0.5)) * slope
        return {"idx": idx, "near": near, "nearest": np.where(best, idx[1], idx[0]), "fov": fov, "r": r}

    def _seen(self, depth: np.ndarray, ray: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(traversed-or-hit, behind-the-return) per centre of ``ray`` (see :meth:`_ray_index`) for a scan's
        range image ``depth`` (64, A), inf where no return."""
        half = np.float32(0.5 * self.grid.voxel_size)
        d = depth.reshape(-1)
        r = ray["r"]
        seen = (ray["near"][0] & (d[ray["idx"][0]] >= r - half)) | (ray["near"][1] & (d[ray["idx"][1]] >= r - half))
        behind = ray["fov"] & (r > d[ray["nearest"]] + np.float32(1.74) * half)
        return seen, behind

    def voxels(self, frame: int) -> dict[str, np.ndarray]:
        """SemanticKITTI voxel files of ``frame``: ``label`` (uint16 raw), ``invalid``, ``occluded``, ``bin``."""
        grid = self.grid
        poses = self.scene.poses
        T_i_inv = np.linalg.inv(poses[frame])
        window = range(frame, min(frame + self.window * self.stride, len(poses)), self.stride)
        pts, raws = [], []
        for j in window:
            sc = self.scan(j)
            T = T_i_inv @ poses[j]  # scan j LiDAR -> frame LiDAR
            local = sc.points[:, :3] @ T[:3, :3].T.astype(np.float32) + T[:3, 3].astype(np.float32)
            _, inside = grid.point_indices(local)
            pts.append(local[inside])
            raws.append((sc.labels[inside] & 0xFFFF).astype(np.int64))
        voted = voxelize_labels(grid, np.concatenate(pts), np.concatenate(raws), num_classes=100)  # 255 = none
        label = np.where(voted == IGNORE_INDEX, 0, voted).astype(np.uint16)
        hit_any = (voted != IGNORE_INDEX).reshape(-1)
        centers = self._centers.reshape(-1, 3)
        # voxels no ray of the window can reach: under the ground, or above the top beam of every scan
        X, Y, Z = grid.shape
        col = self._centers[:, :, 0, :]  # (X, Y, 3) column centres
        col_pts = np.concatenate([col[..., :2].reshape(-1, 2), np.zeros((X * Y, 1), np.float32)], axis=1)
        world = col_pts @ poses[frame][:3, :3].T + poses[frame][:3, 3]  # (X*Y, 3)
        ground_z = self.scene.ground.height(world[:, 0], world[:, 1]) - world[:, 2]  # in the frame, ~vertical
        top = np.tan(self.lidar.elevations[0] + np.deg2rad(1.5))
        h_max = np.full(X * Y, -np.inf)
        for j in window:
            s_j = (T_i_inv @ poses[j])[:3, 3]  # scan j's sensor in the frame
            h_max = np.maximum(h_max, s_j[2] + top * np.hypot(col_pts[:, 0] - s_j[0], col_pts[:, 1] - s_j[1]))
        zc = self._centers[0, 0, :, 2]  # (Z,)
        reachable = (zc[None, :] >= (ground_z - 0.15)[:, None]) & (zc[None, :] <= (h_max + 0.3)[:, None])
        reachable = reachable.reshape(-1)  # (X*Y*Z,), C order (x, y, z)
        if self._grid_rays is None:
            key = (grid, self.lidar.azimuth_steps, self.lidar.elevations.tobytes())
            if key not in _GRID_RAYS:
                _GRID_RAYS.clear()  # keep one grid's index (~40 MB)
                _GRID_RAYS[key] = self._ray_index(centers)
            self._grid_rays = _GRID_RAYS[key]
        seen, behind = self._seen(self.scan(frame).depth, self._grid_rays)
        observed = hit_any | (seen & reachable)
        for j in window[1:]:
            cand = np.flatnonzero(reachable & ~observed)
            if cand.size == 0:
                break
            T = np.linalg.inv(poses[j]) @ poses[frame]  # frame LiDAR -> scan j LiDAR
            cj = centers[cand] @ T[:3, :3].T.astype(np.float32) + T[:3, 3].astype(np.float32)
            seen_j, _ = self._seen(self.scan(j).depth, self._ray_index(cj))
            observed[cand[seen_j]] = True
        current = self.scan(frame)
        ijk, _ = grid.point_indices(current.points)
        occ_bin = np.zeros(grid.num_voxels, bool)
        occ_bin[grid.flat_index(ijk)] = True
        return {
            "label": label,
            "invalid": ~observed.reshape(grid.shape),
            "occluded": (behind & ~occ_bin).reshape(grid.shape),
            "bin": occ_bin.reshape(grid.shape),
        }

    def forget_before(self, frame: int) -> None:
        """Drop cached scans older than ``frame``."""
        for k in [k for k in self._scans if k < frame]:
            del self._scans[k]

    def camera_poses(self) -> np.ndarray:
        """(frames, 4, 4) cam0 poses in the first cam0 frame (``poses.txt``)."""
        Tr = self.calib.T_cam_lidar
        return Tr @ self.poses[: self.frames] @ np.linalg.inv(Tr)


def _normal_quantile(p: float) -> float:
    """Standard normal quantile (Acklam's rational approximation, |error| < 1e-8)."""
    a = [-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02]
    a += [-3.066479806614716e01, 2.506628277459239e00]
    b = [-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01]
    b += [-1.328068155288572e01]
    c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00]
    c += [4.374664141464968e00, 2.938163982698783e00]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00]
    p = min(max(p, 1e-12), 1 - 1e-12)
    if p < 0.02425:
        q = np.sqrt(-2 * np.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    if p > 1 - 0.02425:
        return -_normal_quantile(1 - p)
    q = p - 0.5
    r = q * q
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )


# ----------------------------------------------------------------------------------------------- writing


def write_sequence(
    out: str | Path,
    seed: int,
    frames: int,
    sequence: str = "00",
    image_scale: float = 1.0,
    voxel_every: int = 1,
    window: int = 5,
    window_stride: int = 2,
    azimuth_steps: int = 2000,
    progress: bool = True,
) -> Path:
    """Generate one sequence into ``out/sequences/<sequence>/`` in the SemanticKITTI layout.

    Returns:
        The sequence folder.
    """
    from tqdm import tqdm

    from occle_core.data import semantic_kitti as sk

    if voxel_every < 1:
        raise ValueError(f"voxel_every must be >= 1, got {voxel_every}")
    if not (str(sequence).isdigit() and len(str(sequence)) <= 2):
        raise ValueError(f"sequence must be a 1-2 digit id like '00', got {sequence!r}")
    seq = SyntheticSequence(
        seed, frames, image_scale=image_scale, azimuth_steps=azimuth_steps, window=window, stride=window_stride
    )
    seq_dir = Path(out) / "sequences" / f"{int(sequence):02d}"
    for sub in ("velodyne", "labels", "image_2", "voxels", "pseudo_2d"):
        (seq_dir / sub).mkdir(parents=True, exist_ok=True)
    write_kitti_calib(seq_dir / "calib.txt", seq.calib, P0=_scaled_p0(seq.calib))
    sk.write_poses(seq_dir / "poses.txt", seq.camera_poses())
    sk.write_times(seq_dir / "times.txt", np.arange(frames) * FRAME_PERIOD)
    for i in tqdm(range(frames), desc="occle-synth", unit="frame", disable=not progress):
        name = f"{i:06d}"
        scan = seq.scan(i)
        sk.write_points(seq_dir / "velodyne" / f"{name}.bin", scan.points)
        sk.write_point_labels(seq_dir / "labels" / f"{name}.label", scan.labels)
        cam = seq.render(i)
        sk.write_image(seq_dir / "image_2" / f"{name}.png", cam.image)
        sk.write_label_image(seq_dir / "pseudo_2d" / f"{name}.png", seq.pseudo_labels(i, cam))
        if i % voxel_every == 0:
            vox = seq.voxels(i)
            sk.write_voxel_labels(seq_dir / "voxels" / f"{name}.label", vox["label"])
            for key, suffix in (("bin", ".bin"), ("invalid", ".invalid"), ("occluded", ".occluded")):
                sk.write_voxel_bits(seq_dir / "voxels" / f"{name}{suffix}", vox[key])
        seq.forget_before(i + 1)
    meta = {
        "generator": "occle_core.data.synthetic",
        "seed": int(seed),
        "frames": int(frames),
        "layout": seq.scene.layout,
        "image_size": list(seq.calib.image_size),
        "azimuth_steps": int(azimuth_steps),
        "window": int(window),
        "window_stride": int(window_stride),
        "voxel_every": int(voxel_every),
        "primitives": len(seq.scene.prims),
    }
    (seq_dir / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return seq_dir


def _scaled_p0(calib: Calib) -> np.ndarray:
    sy, sx = calib.image_size[0] / KITTI_IMAGE_SIZE[0], calib.image_size[1] / KITTI_IMAGE_SIZE[1]
    return np.diag([sx, sy, 1.0]) @ KITTI_P0


def main(argv: Sequence[str] | None = None) -> int:
    """``occle-synth --out DIR --seed S --frames N [--sequence 00] [--image-scale 1.0] [--quiet]``."""
    p = argparse.ArgumentParser(
        prog="occle-synth", description="Write procedural driving scenes in the SemanticKITTI layout."
    )
    p.add_argument("--out", required=True, help="dataset root; the sequence goes to OUT/sequences/SS/")
    p.add_argument("--seed", type=int, default=0, help="scene and noise seed (default 0)")
    p.add_argument("--frames", type=int, default=10, help="number of frames (default 10)")
    p.add_argument("--sequence", default="00", help="sequence id (default 00)")
    p.add_argument("--image-scale", type=float, default=1.0, help="image size relative to 376x1241 (default 1)")
    p.add_argument("--voxel-every", type=int, default=1, help="write voxel labels every N frames (default 1)")
    p.add_argument("--window", type=int, default=5, help="scans accumulated per voxel label (default 5)")
    p.add_argument("--window-stride", type=int, default=2, help="frames between accumulated scans (default 2)")
    p.add_argument("--azimuth-steps", type=int, default=2000, help="LiDAR columns per turn (default 2000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--preview", metavar="PNG", help="also render frame 0 (image, pseudo labels, voxels) to PNG")
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error(f"--frames must be >= 1, got {args.frames}")
    if not args.image_scale > 0 or args.image_scale > 4:
        p.error(f"--image-scale must be in (0, 4], got {args.image_scale}")
    if args.voxel_every < 1:
        p.error(f"--voxel-every must be >= 1, got {args.voxel_every}")
    if args.window < 1:
        p.error(f"--window must be >= 1, got {args.window}")
    if args.window_stride < 1:
        p.error(f"--window-stride must be >= 1, got {args.window_stride}")
    if args.azimuth_steps < 8:
        p.error(f"--azimuth-steps must be >= 8, got {args.azimuth_steps}")
    if not (args.sequence.isdigit() and len(args.sequence) <= 2):
        p.error(f"--sequence must be a 1-2 digit id like 00, got {args.sequence!r}")
    seq_dir = write_sequence(
        args.out,
        args.seed,
        args.frames,
        sequence=args.sequence,
        image_scale=args.image_scale,
        voxel_every=args.voxel_every,
        window=args.window,
        window_stride=args.window_stride,
        azimuth_steps=args.azimuth_steps,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(f"wrote {args.frames} frames to {seq_dir}")
    if args.preview:
        from occle_core.data.semantic_kitti import SemanticKittiDataset
        from occle_core.render import render_sample_overview

        sample = SemanticKittiDataset(args.out, [args.sequence])[0]
        render_sample_overview(
            sample.image, sample.voxel_labels, class_table("semantic_kitti"), sample.pseudo2d, args.preview
        )
    return 0
