"""Vectorised ray casting against the synthetic world: the ground raster (two levels with curb faces between
them) and the primitives (boxes, cylinders, ellipsoids). Rays are grouped per primitive by the rectangle of
the ray grid it may cover, so there is a loop over primitives in view but none over rays. Shadow rays towards
the sun (:func:`sun_shadow`) start at many points in one direction, culled per primitive by its shadow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occle_core.synth.classes import BOX, CURB_HEIGHT, CYLINDER, ELLIPSOID, LEVEL
from occle_core.synth.primitives import Primitives
from occle_core.synth.roads import GroundMap
from occle_core.synth.scene import Scene


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

    ``o`` is one origin (3,) or one per ray (n, 3); ``dx``, ``dy``, ``dz`` are the direction components
    (arrays of one shape, or scalars with per-ray origins); the result has the broadcast shape.
    """
    kind = prims.kind[p]
    rx, ry, rz = np.moveaxis((o - prims.center[p]).astype(np.float32), -1, 0)
    h = prims.half[p].astype(np.float32)
    eps = np.float32(1e-3)
    inf = np.float32(np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == CYLINDER:
            a = dx * dx + dy * dy
            b = rx * dx + ry * dy
            c = rx**2 + ry**2 - h[0] ** 2
            disc = b * b - a * c
            ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
            zs = rz + ts * dz
            t = np.where((disc >= 0) & (ts > eps) & (np.abs(zs) <= h[2]), ts, inf)
            outside = np.abs(rz) > h[2]  # above or below: the ray may enter through a cap
            if np.any(outside):
                zc = np.sign(rz) * h[2]
                tc = (zc - rz) / dz
                xc, yc = rx + tc * dx, ry + tc * dy
                t = np.where(outside & (tc > eps) & (xc * xc + yc * yc <= h[0] ** 2) & (tc < t), tc, t)
            return t
        cy, sy = np.float32(np.cos(prims.yaw[p])), np.float32(np.sin(prims.yaw[p]))
        ox, oy, oz = cy * rx + sy * ry, -sy * rx + cy * ry, rz
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


def sun_shadow(scene: Scene, pts: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """(n,) bool: world points ``pts`` (n, 3) whose ray towards the sun (unit (3,), above the horizon) hits a
    primitive. Points are culled per primitive by the footprint of its shadow (its bounding box swept along
    the sun down to the lowest point), found by a search in the points sorted by x."""
    prims = scene.prims
    shadow = np.zeros(len(pts), bool)
    if len(pts) == 0 or len(prims) == 0:
        return shadow
    lo, hi = prims.aabb()
    run = sun[:2] / max(float(sun[2]), 1e-3)  # horizontal run per metre of rise towards the sun
    rise = np.maximum(hi[:, 2] - pts[:, 2].min(), 0.0)  # (P,)
    shift = -run[None, :] * rise[:, None]  # (P, 2) offset of the shadow of a primitive's top
    f_lo = np.minimum(lo[:, :2], lo[:, :2] + shift)  # (P, 2) shadow footprint
    f_hi = np.maximum(hi[:, :2], hi[:, :2] + shift)
    p_lo, p_hi = pts[:, :2].min(axis=0), pts[:, :2].max(axis=0)
    cand = np.flatnonzero(np.all((f_lo <= p_hi) & (f_hi >= p_lo), axis=1) & (rise > 0))
    order = np.argsort(pts[:, 0], kind="stable")
    xs = pts[order, 0]
    d = sun.astype(np.float32)
    for p in cand:
        i0, i1 = np.searchsorted(xs, f_lo[p, 0]), np.searchsorted(xs, f_hi[p, 0], side="right")
        idx = order[i0:i1]
        q = pts[idx]
        idx = idx[(q[:, 1] >= f_lo[p, 1]) & (q[:, 1] <= f_hi[p, 1]) & (q[:, 2] <= hi[p, 2]) & ~shadow[idx]]
        if idx.size:
            t = _intersect(prims, p, pts[idx], d[0], d[1], d[2])
            shadow[idx[np.isfinite(t)]] = True
    return shadow
