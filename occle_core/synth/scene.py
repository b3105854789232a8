"""The procedural world of one synthetic sequence: streets, ground, objects and the ego trajectory.

Streets and ground come from :mod:`occle_core.synth.roads`, objects from :mod:`occle_core.synth.objects`.
Density and style (urban / suburban / green) vary per seed. Every 30 m of the main street near the ego path
holds at least one person, bicycle, car, truck, tree and fence, so that each frame shows the common classes
(>= 12 of the 19 in the voxel labels of every seed tried). Nothing moves except the ego vehicle, which drives
in a lane of the right-hand side at 0.6-1.3 m per frame (10 Hz) with suspension pitch / roll (about 0.5 deg).
Random streams are split per purpose, so a longer sequence of a seed extends the same scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occle_core.synth.classes import (
    BASE_COLOR,
    BUILDING,
    BUILDING_PALETTE,
    BUS,
    FENCE,
    MOTORCYCLE,
    TERRAIN,
    TEX_FOLIAGE,
    TEX_WINDOWS,
    TRUCK,
    VEGETATION,
)
from occle_core.synth.noise import stream
from occle_core.synth.objects import ObjectPlacer
from occle_core.synth.primitives import PrimBuilder, Primitives, pose
from occle_core.synth.roads import GroundMap, Road, build_roads, paint_gravel_yards, paint_ground
from occle_core.synth.sensors import LIDAR_HEIGHT


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

    def __init__(self, seed: int, num_poses: int, lidar_height: float) -> None:
        self.seed = int(seed)
        self.num_poses = num_poses
        self.lidar_height = float(lidar_height)

    def build(self) -> Scene:
        """The whole scene: layout and style, streets, ground, ego poses and objects."""
        # independent random streams per purpose, so that a longer sequence of the same seed extends the
        # scene instead of changing it (its first frames match the shorter sequence)
        rng = stream(self.seed, 0)
        self.layout = str(rng.choice(["straight", "intersection", "t-junction", "curve"]))
        self.style = str(rng.choice(["urban", "suburban", "green"], p=[0.45, 0.35, 0.2]))
        self.speed = float(rng.uniform(0.6, 1.3))
        inner_lane = rng.random() < 0.3
        el, az = np.deg2rad(rng.uniform(30, 60)), rng.uniform(-np.pi, np.pi)
        sun = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        travel = self.S0 + self.num_poses * self.speed * 1.1 + 90.0
        self.roads = build_roads(self.seed, self.layout, self.style, travel, self.S0)
        main = self.roads[0]
        self.ego_lane = (0.5 if inner_lane else main.lanes - 0.5) * main.lane_width
        ground = paint_ground(self.roads, -self.lidar_height)
        prims = PrimBuilder()
        self.place = ObjectPlacer(ground, prims)
        poses = self._ego_poses(stream(self.seed, 4))
        self._mark_ego_corridor()
        for k, road in enumerate(self.roads):
            paint_gravel_yards(stream(self.seed, 5, k), ground, road)
        self.place.rng = stream(self.seed, 6)
        self._quotas(main)
        for k, road in enumerate(self.roads):
            self._populate(road, k)
        return Scene(ground, prims.build(), poses, self.layout, self.roads, sun, self.seed)

    def _ego_poses(self, rng: np.random.Generator) -> np.ndarray:
        """LiDAR poses along the ego lane: yaw from the road, plus suspension pitch / roll / bounce."""
        main = self.roads[0]
        n = self.num_poses
        k = np.arange(n)
        freq = rng.uniform([0.05, 0.3, 0.2, 0.5], [0.15, 0.7, 0.5, 0.9])  # speed, pitch, roll, bounce
        phase = rng.uniform(0, 2 * np.pi, 4)
        jitter = stream(self.seed, 4, 1).normal(0, 1, (n, 2))  # per-frame pitch / roll noise
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
            T = pose(xy[i, 0], xy[i, 1], bounce[i], yaw[i])
            cp, sp, cr, sr = np.cos(pitch[i]), np.sin(pitch[i]), np.cos(roll[i]), np.sin(roll[i])
            Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
            Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
            T[:3, :3] = T[:3, :3] @ Ry @ Rx
            poses.append(T)
        return np.stack(poses)

    def _mark_ego_corridor(self) -> None:
        """Reserve the ego lane (+-1.8 m) along the whole main street: nothing is placed in the ego's way."""
        main = self.roads[0]
        s = np.arange(0.0, main.length, 0.5)
        p, _, normal = main.frame_at(s)
        for off in np.linspace(-1.8, 1.8, 15):
            xy = p - normal * (self.ego_lane + off)
            self.place.reserve(xy[:, 0], xy[:, 1])

    def _populate(self, road: Road, k: int) -> None:
        """Objects along both sides of street ``k``: parked and standing vehicles, street lights, signs, trees,
        persons, bicycles and the lots beyond the sidewalks (one stream per side and kind)."""
        dens = {"urban": 1.0, "suburban": 0.7, "green": 0.45}[self.style]
        for side in (1.0, -1.0):
            sid = 0 if side > 0 else 1
            # vehicles in the parking bays
            rng = self.place.rng = stream(self.seed, 7, k, sid, 0)
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
                            ok = self.place.truck(flush + tan * 2.5, yaw)
                            s += 5.5 if ok else 0.0
                        elif u < 0.1:
                            self.place.car(xy, yaw, MOTORCYCLE)
                        else:
                            self.place.car(xy, yaw)
                    s += rng.uniform(5.6, 7.0)
            # standing traffic in the lanes other than the ego lane
            rng = self.place.rng = stream(self.seed, 7, k, sid, 1)
            for lane in range(road.lanes):
                off = (lane + 0.5) * road.lane_width
                s = rng.uniform(0, 15)
                while s < road.length:
                    p, tan, normal = road.frame_at(s)
                    xy = p + normal * side * off
                    yaw = float(np.arctan2(tan[1], tan[0])) + (np.pi if side > 0 else 0.0)
                    u = rng.random()
                    if u < 0.12:
                        self.place.truck(xy, yaw, BUS if rng.random() < 0.25 else TRUCK)
                    else:
                        self.place.car(xy, yaw)
                    s += rng.uniform(12, 35) / dens
            # street furniture on the sidewalk
            rng = self.place.rng = stream(self.seed, 7, k, sid, 2)
            s = rng.uniform(0, 10)
            while s < road.length:
                p, tan, normal = road.frame_at(s)
                edge = road.sidewalk_inner + 0.45
                self.place.pole(p + normal * side * edge, -normal * side)
                s += rng.uniform(18, 30)
            s = rng.uniform(0, 20)
            while s < road.length:
                p, tan, normal = road.frame_at(s)
                yaw = float(np.arctan2(tan[1], tan[0]))
                self.place.sign(p + normal * side * (road.sidewalk_inner + 0.35), yaw)
                s += rng.uniform(20, 45)
            for s_c, clear in road.crossings:  # signs at intersections
                for ds in (-clear - 3.5, clear + 3.5):
                    p, tan, normal = road.frame_at(s_c + ds)
                    self.place.sign(p + normal * side * (road.sidewalk_inner + 0.35), float(np.arctan2(tan[1], tan[0])))
            # trees in the verge or in sidewalk pits
            rng = self.place.rng = stream(self.seed, 7, k, sid, 3)
            if road.verge > 0 or self.style != "urban":
                s = rng.uniform(0, 8)
                while s < road.length:
                    p, tan, normal = road.frame_at(s)
                    off = road.half_width + road.parking_width + road.verge / 2 if road.verge > 0 else road.reach - 0.6
                    self.place.tree(p + normal * side * off)
                    s += rng.uniform(7, 14) / dens
            # persons and bicycles on the sidewalk
            rng = self.place.rng = stream(self.seed, 7, k, sid, 4)
            mid = road.sidewalk_inner + road.sidewalk / 2
            s = rng.exponential(1.0 / (0.045 * dens))
            while s < road.length:
                p, tan, normal = road.frame_at(s)
                self.place.person(p + normal * side * (mid + rng.uniform(-0.6, 0.6)))
                s += rng.exponential(1.0 / (0.045 * dens))
            rng = self.place.rng = stream(self.seed, 7, k, sid, 5)
            s = rng.exponential(1.0 / (0.02 * dens))
            while s < road.length:
                p, tan, normal = road.frame_at(s)
                self.place.bicycle(p + normal * side * (road.reach - 0.45), float(np.arctan2(tan[1], tan[0])))
                s += rng.exponential(1.0 / (0.02 * dens))
            # lots beyond the sidewalk
            rng = self.place.rng = stream(self.seed, 7, k, sid, 6)
            s = rng.uniform(-5, 5)
            while s < road.length:
                length = rng.uniform(9, 24)
                self._lot(road, side, s + length / 2, length)
                s += length + rng.uniform(0.5, 4.0)

    def _lot(self, road: Road, side: float, s: float, length: float) -> None:
        """One lot beyond the sidewalk: a building, a garden, a hedge or open ground, by the scene's style."""
        rng = self.place.rng
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
            color = BUILDING_PALETTE[rng.integers(len(BUILDING_PALETTE))]
            for shrink in (1.0, 0.6):  # inner side of curves: try a shallower building
                d = depth * shrink
                c = p + normal * side * (base + setback + d / 2)
                if self.place.wall(c, yaw, length - 1.0, d, height, BUILDING, color, TEX_WINDOWS):
                    break
            if setback > 1.8 and rng.random() < 0.5:
                c = p + normal * side * (base + 0.3)
                self.place.wall(c, yaw, length - 1.5, 0.08, rng.uniform(1.0, 1.8), FENCE, BASE_COLOR[FENCE])
        elif kind == "garden":
            c = p + normal * side * (base + 0.3)
            fence_color = BASE_COLOR[FENCE] if rng.random() < 0.6 else (0.45, 0.46, 0.47)
            gate = rng.uniform(-length / 4, length / 4)
            for a, b in ((-length / 2 + 0.5, gate - 0.7), (gate + 0.7, length / 2 - 0.5)):
                if b - a > 1.0:
                    cc = c + tan * (a + b) / 2
                    self.place.wall(cc, yaw, b - a, 0.06, rng.uniform(1.0, 2.0), FENCE, fence_color)
            for _ in range(rng.integers(1, 4)):
                q = p + normal * side * (base + rng.uniform(2.5, 9)) + tan * rng.uniform(-length / 2, length / 2)
                self.place.tree(q, (TERRAIN,))
            for _ in range(rng.integers(0, 4)):
                q = p + normal * side * (base + rng.uniform(1.5, 8)) + tan * rng.uniform(-length / 2, length / 2)
                self.place.bush(q)
            if rng.random() < 0.6:
                color = BUILDING_PALETTE[rng.integers(len(BUILDING_PALETTE))]
                d = rng.uniform(7, 11)
                c = p + normal * side * (base + rng.uniform(8, 12) + d / 2)
                self.place.wall(c, yaw, length * 0.7, d, rng.uniform(4.5, 8), BUILDING, color, TEX_WINDOWS)
        elif kind == "hedge":
            c = p + normal * side * (base + 0.8)
            green = np.clip(np.array(BASE_COLOR[VEGETATION]) * rng.uniform(0.8, 1.2), 0, 1)
            self.place.wall(
                c, yaw, length - 0.5, rng.uniform(0.8, 1.5), rng.uniform(1.0, 2.4), VEGETATION, green, TEX_FOLIAGE
            )
            for _ in range(rng.integers(1, 4)):
                q = p + normal * side * (base + rng.uniform(3, 10)) + tan * rng.uniform(-length / 2, length / 2)
                self.place.tree(q, (TERRAIN,))
        else:
            for _ in range(rng.integers(0, 3)):
                q = p + normal * side * (base + rng.uniform(1, 8)) + tan * rng.uniform(-length / 2, length / 2)
                self.place.bush(q)
            q = p + normal * side * (base + rng.uniform(3, 8))
            if rng.random() < 0.5:
                self.place.car(q, yaw + rng.normal(0, 0.3))  # car parked on a yard (gravel or grass)

    def _quotas(self, main: Road) -> None:
        """Per 30 m of the main street around the ego path: at least one person, bicycle, car, truck, tree
        and fence (placed before everything else, so that every frame shows the common classes)."""
        rng = self.place.rng
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
                        off = main.sidewalk_inner + rng.uniform(0.3, main.sidewalk)
                        ok = self.place.person(p + normal * side * off)
                    elif kind == "bicycle":
                        ok = self.place.bicycle(p + normal * side * (main.reach - 0.45), yaw)
                    elif kind == "car":
                        off = main.half_width + main.parking_width / 2 if main.parking_width else 1.5 * main.lane_width
                        ok = self.place.car(p + normal * side * off, back)
                    elif kind == "truck":  # the opposite lanes or the left parking band
                        lane = rng.integers(main.lanes)
                        off = (lane + 0.5) * main.lane_width
                        if main.parking_width and rng.random() < 0.5:
                            off = main.half_width + main.parking_width - 1.3
                        ok = self.place.truck(p + normal * off, yaw + np.pi)
                    elif kind == "tree":
                        off = main.half_width + main.parking_width + main.verge / 2 if main.verge else main.reach + 1.5
                        ok = self.place.tree(p + normal * side * (off + (rng.uniform(0, 3) if not main.verge else 0.0)))
                    else:
                        length = rng.uniform(4, 10)
                        ok = self.place.wall(
                            p + normal * side * (main.reach + 0.7),
                            yaw,
                            length,
                            0.06,
                            rng.uniform(1.0, 1.8),
                            FENCE,
                            BASE_COLOR[FENCE],
                        )
                    if ok:
                        break


def build_scene(seed: int, num_poses: int, lidar_height: float = LIDAR_HEIGHT) -> Scene:
    """Generate the world of one synthetic sequence: roads, ground raster, objects and ``num_poses`` poses of a
    LiDAR ``lidar_height`` metres above the road."""
    if num_poses < 1:
        raise ValueError(f"num_poses must be >= 1, got {num_poses}")
    return _SceneBuilder(seed, num_poses, lidar_height).build()
