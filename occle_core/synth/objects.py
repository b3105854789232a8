"""Objects of the synthetic world and where they may stand.

Objects are primitives (:mod:`occle_core.synth.primitives`): buildings with windows, fences, hedges, bushes
and trees (trunk + crown), street lights (poles), traffic signs, cars, trucks, buses and motorcycles, persons
and bicycles. They never overlap each other, the ego lane, or ground of the wrong kind: footprints are checked
against the ground raster and a 0.25 m occupancy lattice of everything placed.
"""

from __future__ import annotations

import numpy as np

from occle_core.synth.classes import (
    BASE_COLOR,
    BICYCLE,
    BOX,
    BUS,
    CAR,
    CAR_PALETTE,
    CLOTHES_PALETTE,
    CYLINDER,
    ELLIPSOID,
    LANE_MARKING,
    MOTORCYCLE,
    OTHER_GROUND,
    PARKING,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN_PALETTE,
    TERRAIN,
    TEX_FOLIAGE,
    TEX_GLASS,
    TEX_PLAIN,
    TEX_WINDOWS,
    TRAFFIC_SIGN,
    TRUCK,
    TRUNK,
    VEGETATION,
)
from occle_core.synth.primitives import PrimBuilder, footprint_cells, yaw_matrix
from occle_core.synth.roads import GroundMap


class ObjectPlacer:
    """Adds objects to ``prims`` where their footprint is free; ``rng`` is the stream of the current purpose.

    Each object method returns whether it placed the object (False: nothing added, the footprint was not free).

    Args:
        ground: the ground raster (footprints must lie on allowed classes; objects stand on its height).
        prims: the builder the objects are added to.
    """

    def __init__(self, ground: GroundMap, prims: PrimBuilder) -> None:
        self.ground = ground
        self.prims = prims
        self.rng = np.random.default_rng(0)
        self.taken = np.zeros(
            (
                int(np.ceil(ground.raw.shape[0] * ground.res / 0.25)) + 1,
                int(np.ceil(ground.raw.shape[1] * ground.res / 0.25)) + 1,
            ),
            bool,
        )

    def _taken_index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ix = np.floor((x - self.ground.origin[0]) / 0.25).astype(np.int64)
        iy = np.floor((y - self.ground.origin[1]) / 0.25).astype(np.int64)
        ok = (ix >= 0) & (ix < self.taken.shape[1]) & (iy >= 0) & (iy < self.taken.shape[0])
        return iy, ix, ok

    def _try_place(self, center, yaw, half, allowed: tuple[int, ...], margin: float = 0.2) -> bool:
        """Reserve an oriented footprint if it lies on ``allowed`` ground and overlaps nothing placed."""
        x, y = footprint_cells(np.asarray(center), yaw, (half[0] + margin, half[1] + margin))
        iy, ix, ok = self._taken_index(x, y)
        if not ok.all() or self.taken[iy, ix].any():
            return False
        xi, yi = footprint_cells(np.asarray(center), yaw, half)
        if not np.isin(self.ground.lookup(xi, yi), allowed).all():
            return False
        self.taken[iy, ix] = True
        return True

    def reserve(self, x: np.ndarray, y: np.ndarray) -> None:
        """Mark the cells of world points (x, y) (n,) taken (outside the raster: ignored)."""
        iy, ix, ok = self._taken_index(x, y)
        self.taken[iy[ok], ix[ok]] = True

    def _ground_z(self, x: float, y: float) -> float:
        """Ground height at one world point."""
        return float(self.ground.height(np.array([x]), np.array([y]))[0])

    def car(self, xy, yaw, raw=CAR) -> bool:
        """A car (or, with ``raw`` MOTORCYCLE, a motorcycle) at ``xy`` facing ``yaw`` on drivable ground."""
        rng = self.rng
        if raw == CAR:
            L, W = rng.uniform(3.8, 4.9), rng.uniform(1.65, 1.9)
        else:
            L, W = rng.uniform(2.0, 2.3), rng.uniform(0.7, 0.85)
        if not self._try_place(xy, yaw, (L / 2, W / 2), (ROAD, PARKING, LANE_MARKING, OTHER_GROUND), 0.35):
            return False
        obj, inst = self.prims.new_object(thing=True)
        z = self._ground_z(*xy)
        color = CAR_PALETTE[rng.integers(len(CAR_PALETTE))]
        R = yaw_matrix(yaw)[:2, :2]
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

    def truck(self, xy, yaw, raw=TRUCK) -> bool:
        """A truck (or, with ``raw`` BUS, a bus) at ``xy`` facing ``yaw`` on drivable ground."""
        rng = self.rng
        L = rng.uniform(7.0, 10.0) if raw == TRUCK else rng.uniform(11.0, 12.5)
        W = rng.uniform(2.35, 2.55)
        if not self._try_place(xy, yaw, (L / 2, W / 2), (ROAD, PARKING, LANE_MARKING, OTHER_GROUND), 0.4):
            return False
        obj, inst = self.prims.new_object(thing=True)
        z = self._ground_z(*xy)
        R = yaw_matrix(yaw)[:2, :2]
        if raw == BUS:
            color = [(0.9, 0.75, 0.1), (0.85, 0.85, 0.85), (0.7, 0.1, 0.1)][rng.integers(3)]
            self.prims.add(BOX, (*xy, z + 1.85), yaw, (L / 2, W / 2, 1.45), raw, obj, inst, color, TEX_WINDOWS)
            wheels = (-0.33, 0.3)
        else:
            color = CAR_PALETTE[rng.integers(len(CAR_PALETTE))]
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

    def person(self, xy) -> bool:
        """A person (body cylinder and head) standing at ``xy``."""
        rng = self.rng
        r = rng.uniform(0.2, 0.26)
        if not self._try_place(xy, 0.0, (r, r), (SIDEWALK, TERRAIN, OTHER_GROUND, PARKING), 0.15):
            return False
        obj, inst = self.prims.new_object(thing=True)
        z = self._ground_z(*xy)
        h = rng.uniform(1.45, 1.65)
        color = CLOTHES_PALETTE[rng.integers(len(CLOTHES_PALETTE))]
        self.prims.add(CYLINDER, (*xy, z + h / 2), 0.0, (r, r, h / 2), PERSON, obj, inst, color)
        skin = [(0.85, 0.68, 0.55), (0.55, 0.38, 0.26), (0.35, 0.24, 0.17)][rng.integers(3)]
        self.prims.add(ELLIPSOID, (*xy, z + h + 0.11), 0.0, (0.1, 0.1, 0.12), PERSON, obj, inst, skin)
        return True

    def bicycle(self, xy, yaw) -> bool:
        """A parked bicycle at ``xy`` along ``yaw``."""
        if not self._try_place(xy, yaw, (0.88, 0.25), (SIDEWALK, TERRAIN, OTHER_GROUND, PARKING), 0.1):
            return False
        obj, inst = self.prims.new_object(thing=True)
        z = self._ground_z(*xy)
        R = yaw_matrix(yaw)[:2, :2]
        color = CAR_PALETTE[self.rng.integers(len(CAR_PALETTE))]
        dark = BASE_COLOR[BICYCLE]
        for fx in (-0.52, 0.52):
            c = xy + R @ np.array([fx, 0.0])
            self.prims.add(ELLIPSOID, (*c, z + 0.35), yaw, (0.35, 0.025, 0.35), BICYCLE, obj, inst, dark)
        self.prims.add(BOX, (*xy, z + 0.6), yaw, (0.45, 0.025, 0.035), BICYCLE, obj, inst, color)
        seat = xy + R @ np.array([-0.2, 0.0])
        self.prims.add(BOX, (*seat, z + 0.72), yaw, (0.03, 0.025, 0.2), BICYCLE, obj, inst, color)
        bar = xy + R @ np.array([0.42, 0.0])
        self.prims.add(BOX, (*bar, z + 0.95), yaw, (0.03, 0.28, 0.02), BICYCLE, obj, inst, dark)
        return True

    def pole(self, xy, toward: np.ndarray) -> bool:
        """A street light at ``xy`` with its arm towards ``toward`` (2,)."""
        if not self._try_place(xy, 0.0, (0.12, 0.12), (SIDEWALK, TERRAIN), 0.3):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*xy)
        h = self.rng.uniform(6.0, 8.5)
        color = BASE_COLOR[POLE]
        self.prims.add(CYLINDER, (*xy, z + h / 2), 0.0, (0.09, 0.09, h / 2), POLE, obj, 0, color)
        arm = xy + toward * 0.8
        yaw = float(np.arctan2(toward[1], toward[0]))
        self.prims.add(BOX, (*arm, z + h - 0.1), yaw, (0.8, 0.05, 0.05), POLE, obj, 0, color)
        lamp = xy + toward * 1.5
        self.prims.add(BOX, (*lamp, z + h - 0.2), yaw, (0.3, 0.15, 0.08), POLE, obj, 0, (0.8, 0.8, 0.75))
        return True

    def sign(self, xy, yaw) -> bool:
        """A traffic sign (one or two plates on a post) at ``xy`` facing ``yaw``."""
        if not self._try_place(xy, 0.0, (0.08, 0.08), (SIDEWALK, TERRAIN), 0.25):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*xy)
        h = self.rng.uniform(2.1, 2.7)
        self.prims.add(CYLINDER, (*xy, z + h / 2), 0.0, (0.035, 0.035, h / 2), POLE, obj, 0, BASE_COLOR[POLE])
        color = SIGN_PALETTE[self.rng.integers(len(SIGN_PALETTE))]
        size = self.rng.uniform(0.28, 0.4)
        self.prims.add(BOX, (*xy, z + h + size), yaw, (0.02, size, size), TRAFFIC_SIGN, obj, 0, color)
        if self.rng.random() < 0.35:
            c2 = SIGN_PALETTE[self.rng.integers(len(SIGN_PALETTE))]
            self.prims.add(BOX, (*xy, z + h - size - 0.05), yaw, (0.02, size, size * 0.6), TRAFFIC_SIGN, obj, 0, c2)
        return True

    def tree(self, xy, allowed=(TERRAIN, SIDEWALK, OTHER_GROUND)) -> bool:
        """A tree (trunk and one or two crown ellipsoids) at ``xy`` on ``allowed`` ground."""
        rng = self.rng
        crown = rng.uniform(1.2, 2.8)
        if not self._try_place(xy, 0.0, (0.3, 0.3), allowed, 0.5):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*xy)
        trunk_r, trunk_h = rng.uniform(0.1, 0.25), rng.uniform(1.8, 3.5)
        self.prims.add(
            CYLINDER, (*xy, z + trunk_h / 2), 0.0, (trunk_r,) * 2 + (trunk_h / 2,), TRUNK, obj, 0, BASE_COLOR[TRUNK]
        )
        green = np.clip(np.array(BASE_COLOR[VEGETATION]) * rng.uniform(0.75, 1.3), 0, 1)
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

    def bush(self, xy) -> bool:
        """A bush at ``xy`` on terrain or gravel."""
        rng = self.rng
        r = rng.uniform(0.5, 1.4)
        if not self._try_place(xy, 0.0, (r, r), (TERRAIN, OTHER_GROUND), 0.1):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*xy)
        h = rng.uniform(0.4, 1.0)
        green = np.clip(np.array(BASE_COLOR[VEGETATION]) * rng.uniform(0.8, 1.4), 0, 1)
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

    def wall(self, center, yaw, length, thick, height, raw, color, tex=TEX_PLAIN, allowed=(TERRAIN,)) -> bool:
        """A box object (building, fence, hedge) of ``length`` x ``thick`` x ``height`` on ``allowed`` ground."""
        if not self._try_place(center, yaw, (length / 2, thick / 2), allowed, 0.05):
            return False
        obj, _ = self.prims.new_object(thing=False)
        z = self._ground_z(*center)
        self.prims.add(
            BOX, (*center, z + height / 2), yaw, (length / 2, thick / 2, height / 2), raw, obj, 0, color, tex
        )
        return True
