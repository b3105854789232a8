"""Camera images of the synthetic world: colour, texture and shading of ray-cast pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occle_core.synth.classes import BASE_COLOR, BUS, SIDEWALK, TERRAIN, TEX_FOLIAGE, TEX_GLASS, TEX_PLAIN, TEX_WINDOWS
from occle_core.synth.noise import hash01, stream, value_noise
from occle_core.synth.primitives import Primitives
from occle_core.synth.raycast import Hits
from occle_core.synth.scene import Scene


@dataclass
class CameraFrame:
    """Rendered image (H, W, 3) uint8, truth learning labels (H, W) uint8, depth (H, W) and object ids."""

    image: np.ndarray
    truth: np.ndarray
    depth: np.ndarray
    obj: np.ndarray


SKY_HORIZON = np.array([0.86, 0.90, 0.95], np.float32)
SKY_ZENITH = np.array([0.38, 0.56, 0.86], np.float32)


def sky_gradient(dirs: np.ndarray) -> np.ndarray:
    """(..., 3) float32 display colour of the clear sky along unit directions ``dirs`` (..., 3)."""
    sky_w = np.clip(dirs[..., 2] * 3.0, 0, 1)[..., None] ** 0.7
    return SKY_HORIZON * (1 - sky_w) + SKY_ZENITH * sky_w


def base_colors(prims: Primitives, raw: np.ndarray, prim: np.ndarray) -> np.ndarray:
    """(n, 3) float32 display colours of hits of raw classes ``raw`` (n,) on primitives ``prim`` (n,) (< 0:
    ground): the class colour, or the primitive's own (per-instance) colour."""
    base_lut = np.full((256, 3), 0.5, np.float32)
    for k, v in BASE_COLOR.items():
        base_lut[k] = v
    color = base_lut[raw]
    is_obj = prim >= 0
    color[is_obj] = prims.color[prim[is_obj]]
    return color


def facade_coords(prims: Primitives, prim: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates on the vertical faces of box primitives ``prim`` (n,) at world points ``pts`` (n, 3):
    ``u`` (n,) along the face and ``zb`` (n,) height above the object's base, in metres."""
    rel = pts - prims.center[prim].astype(np.float32)
    cy, sy = np.cos(prims.yaw[prim]), np.sin(prims.yaw[prim])
    lx = cy * rel[:, 0] + sy * rel[:, 1]
    ly = -sy * rel[:, 0] + cy * rel[:, 1]
    on_x_face = np.abs(np.abs(lx) - prims.half[prim, 0]) < 0.02
    return np.where(on_x_face, ly, lx), rel[:, 2] + prims.half[prim, 2]


def window_mask(prims: Primitives, prim: np.ndarray, u: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """(n,) bool: the face points (``u``, ``zb``, see :func:`facade_coords`) of primitives ``prim`` (n,) that
    are window glass (a 3 m x 3.2 m grid of windows on buildings, a band of windows on buses)."""
    is_bus = prims.raw[prim] == BUS
    fu, fz = np.mod(u, 3.0), np.mod(zb, 3.2)
    window = (fu > 0.7) & (fu < 2.3) & (fz > 1.0) & (fz < 2.5) & (zb > 1.0) & (~is_bus)
    window |= is_bus & (zb > 1.5) & (zb < 2.6) & (np.mod(u, 1.6) > 0.12)
    return window


def shade(scene: Scene, frame: int, origin: np.ndarray, dirs: np.ndarray, hits: Hits) -> np.ndarray:
    """(H, W, 3) uint8 image of camera rays ``dirs`` (H, W, 3) from ``origin`` (3,) with their ``hits``.

    Per-class colours (per-instance for cars, buildings, clothes), texture noise, sidewalk tiles, window and
    glass patterns, Lambert shading under the scene's sun plus ambient light, haze, a sky gradient and pixel
    noise of the stream ``(scene.seed, 2, frame)``.
    """
    prims = scene.prims
    H, W = hits.t.shape
    seed = scene.seed
    img = sky_gradient(dirs)  # (H, W, 3)
    hit = hits.prim != -2
    if hit.any():
        t = hits.t[hit]
        pts = origin.astype(np.float32) + dirs[hit] * t[:, None]  # (n, 3) world
        raw = hits.raw[hit]
        prim = hits.prim[hit]
        color = base_colors(prims, raw, prim)
        is_obj = prim >= 0
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        fine = hash01(np.floor(x * 20), np.floor(y * 20), np.floor(z * 20), seed=seed)
        coarse = value_noise(x + 0.37 * z, y - 0.21 * z, 1.5, seed + 1)
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
            u, zb = facade_coords(prims, prim[win], pts[win])
            window = window_mask(prims, prim[win], u, zb)
            color[win[window]] = np.array([0.16, 0.2, 0.26], np.float32) + 0.1 * fine[win[window], None]
        glass = tex == TEX_GLASS
        color[glass] = color[glass] * 0.35 + np.array([0.05, 0.07, 0.1], np.float32)
        # Lambert shading under the sun plus ambient light
        nrm = hits.normal[hit]
        lam = np.clip(nrm @ scene.sun.astype(np.float32), 0, 1)
        color = color * (0.45 + 0.6 * lam)[:, None]
        haze = (1.0 - np.exp(-t / 180.0))[:, None]
        color = color * (1 - haze) + SKY_HORIZON * haze
        img[hit] = color
    rng = stream(seed, 2, frame)
    img = img + rng.normal(0.0, 0.008, img.shape).astype(np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
