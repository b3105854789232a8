"""Streets and the ground raster of the synthetic world.

A main street made of straight pieces, curves (arcs of radius 25-60 m) and intersections / T-junctions with
crossing streets; its first piece differs per seed (``straight``, ``intersection``, ``t-junction`` or
``curve``). Each street has 1 or 2 lanes per direction with lane markings (raw class 60 -> road), parking bays
on stretches of its edges, an optional grass verge, sidewalks and crosswalks at intersections; the ground is a
0.1 m class raster with two levels (road level and sidewalks / terrain raised by a 0.12 m curb), with gravel
yards (other-ground) beside the sidewalks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from occle_core.synth.classes import LANE_MARKING, LEVEL, OTHER_GROUND, PARKING, ROAD, SIDEWALK, TERRAIN
from occle_core.synth.noise import stream
from occle_core.synth.primitives import footprint_cells


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
        """Ground height at world (x, y): the road level, one curb higher on raised classes."""
        return self.z_road + LEVEL[self.lookup(x, y)]


def _cross_section(rng: np.random.Generator, main: bool, style: str) -> dict:
    """Lanes, lane width and the widths of parking band, verge and sidewalk of a street."""
    lanes = 2 if (rng.random() < (0.35 if main else 0.2)) else 1
    return dict(
        lanes=lanes,
        lane_width=float(rng.uniform(3.1, 3.6)),
        parking_width=float(rng.uniform(2.2, 2.6)) if rng.random() < 0.85 else 0.0,
        verge=float(rng.uniform(1.2, 2.8)) if rng.random() < (0.3 if style == "urban" else 0.6) else 0.0,
        sidewalk=float(rng.uniform(1.8, 3.5)),
    )


def build_roads(seed: int, layout: str, style: str, needed: float, s0: float) -> list[Road]:
    """The main street (first piece ``layout``, at least ``needed`` metres long, ``s0`` metres before the ego's
    first pose) and its crossing streets, with parking bays; streams ``(seed, 1)``, ``(seed, 2, k)`` and
    ``(seed, 3, k)``."""
    rng = stream(seed, 1)
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

    first = layout
    if first == "straight":
        straight(s0 + rng.uniform(90, 140))
    elif first in ("intersection", "t-junction"):
        ahead = rng.uniform(16, 40)
        straight(s0 + ahead)
        crossings.append((s, rng.uniform(-0.25, 0.25), first == "t-junction"))
        straight(rng.uniform(35, 60))
    else:
        straight(s0 + rng.uniform(6, 25))
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
    main = Road(np.asarray(verts), **_cross_section(stream(seed, 2, 0), main=True, style=style))
    roads = [main]
    main_cross = []
    for k, (s_c, dangle, t_junction) in enumerate(crossings):
        sec = _cross_section(stream(seed, 2, k + 1), main=False, style=style)
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
        road.parking = _parking_bays(stream(seed, 3, k), road)
    return roads


def _parking_bays(rng: np.random.Generator, road: Road) -> np.ndarray:
    """(K, 3) parking bays (side, s0, s1) along both edges of ``road``, none across intersections."""
    if road.parking_width <= 0:
        return np.zeros((0, 3))
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


def paint_ground(roads: list[Road], z_road: float) -> GroundMap:
    """The ground class raster of ``roads`` (0.1 m cells, 0.2 m for very large scenes), road level ``z_road``."""
    res = 0.1
    allv = np.concatenate([r.vertices for r in roads])
    margin = max(r.reach for r in roads) + 45.0
    lo = allv.min(axis=0) - margin
    hi = allv.max(axis=0) + margin
    if np.prod((hi - lo) / res) > 6e7:
        res = 0.2
    nx, ny = (np.ceil((hi - lo) / res)).astype(int)
    prio = np.zeros((ny, nx), np.uint8)
    mark = np.zeros((ny, nx), bool)
    for road in roads:
        _paint_road(road, lo, res, prio, mark)
    lut = np.array([TERRAIN, TERRAIN, SIDEWALK, PARKING, ROAD], np.uint8)
    raw = lut[prio]
    raw[mark & (prio == 4)] = LANE_MARKING
    return GroundMap(lo, res, raw, z_road)


def _paint_road(road: Road, lo: np.ndarray, res: float, prio: np.ndarray, mark: np.ndarray) -> None:
    """Paint ``road`` into the priority raster ``prio`` (NY, NX) (1 verge, 2 sidewalk, 3 parking, 4 road; the
    larger wins) and its lane markings into ``mark`` (NY, NX), piece by piece of at most 15 m."""
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


def paint_gravel_yards(rng: np.random.Generator, g: GroundMap, road: Road) -> None:
    """Paint other-ground (gravel) yards into ``g`` next to the sidewalks of ``road``, one per ~120 m."""
    s = rng.exponential(120.0)
    while s < road.length:
        side = rng.choice([-1.0, 1.0])
        p, tan, normal = road.frame_at(s)
        depth, length = rng.uniform(6, 14), rng.uniform(8, 18)
        c = p + normal * side * (road.reach + 0.3 + depth / 2)
        yaw = float(np.arctan2(tan[1], tan[0]))
        x, y = footprint_cells(c, yaw, (length / 2, depth / 2), spacing=g.res * 0.7)
        ix = np.floor((x - g.origin[0]) / g.res).astype(np.int64)
        iy = np.floor((y - g.origin[1]) / g.res).astype(np.int64)
        ok = (ix >= 0) & (ix < g.raw.shape[1]) & (iy >= 0) & (iy < g.raw.shape[0])
        ix, iy = ix[ok], iy[ok]
        free = g.raw[iy, ix] == TERRAIN
        g.raw[iy[free], ix[free]] = OTHER_GROUND
        s += rng.exponential(120.0)
