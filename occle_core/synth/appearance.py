"""Realistic appearance of camera images (``--appearance realistic``), in place of flat class colours.

Procedural materials per surface (all in world or facade metres, so they stick to the scene):
asphalt (patches, aggregate grain, cracks), worn lane paint, paver sidewalks with joints, grass with dry
patches, gravel, leaf clusters with a hue per plant, bark, brick or plaster facades with framed windows and a
plinth, wooden fence slats, car paint and glass. Fine detail fades with distance (the pixel footprint).
Light: a sun of per-sequence colour and strength with cast shadows (:func:`~occle_core.synth.raycast.sun_shadow`),
hemispherical sky and ground light, Fresnel-weighted reflections of the sky and sun highlights on glossy
materials, clouds and a sun glow in the sky, aerial perspective. The result is linear radiance, made an 8-bit
image by :mod:`occle_core.synth.isp`. Everything is deterministic per seed (streams ``(seed, 8, *)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occle_core.synth.classes import (
    BUILDING,
    BUS,
    CAR,
    FENCE,
    LANE_MARKING,
    MOTORCYCLE,
    OTHER_GROUND,
    PARKING,
    POLE,
    ROAD,
    SIDEWALK,
    TERRAIN,
    TEX_FOLIAGE,
    TEX_GLASS,
    TEX_WINDOWS,
    TRAFFIC_SIGN,
    TRUCK,
    TRUNK,
)
from occle_core.synth.isp import camera_response, develop
from occle_core.synth.noise import hash01, stream, value_noise
from occle_core.synth.raycast import Hits, sun_shadow
from occle_core.synth.render import SKY_HORIZON, SKY_ZENITH, base_colors, facade_coords, sky_gradient, window_mask
from occle_core.synth.scene import Scene

APPEARANCES = ("flat", "realistic")
#: display colours of sidewalk pavers (grey concrete, red clinker, beige stone), one per scene
PAVERS = ((0.62, 0.60, 0.57), (0.62, 0.45, 0.40), (0.70, 0.65, 0.56))
VEHICLES = (CAR, TRUCK, BUS, MOTORCYCLE)


@dataclass
class Lighting:
    """Per-sequence light: sun colour (3,) and strength, sky strength and cloud cover (0..1)."""

    sun_color: np.ndarray
    sun_power: float
    sky_power: float
    clouds: float


def lighting(seed: int) -> Lighting:
    """The light of the sequence of ``seed`` (stream ``(seed, 8, 0)``)."""
    rng = stream(seed, 8, 0)
    warmth = rng.uniform(0.0, 1.0)
    clouds = float(rng.uniform(0.0, 0.7))
    return Lighting(
        sun_color=np.array([1.0, 0.96 - 0.06 * warmth, 0.9 - 0.15 * warmth], np.float32),
        sun_power=float(rng.uniform(2.5, 4.0) * (1.0 - 0.6 * clouds)),
        sky_power=float(rng.uniform(0.7, 1.0)),
        clouds=clouds,
    )


def _linear(color: np.ndarray) -> np.ndarray:
    return np.asarray(color, np.float32) ** 2.2


def sky_radiance(dirs: np.ndarray, sun: np.ndarray, light: Lighting, seed: int) -> np.ndarray:
    """(..., 3) linear radiance of the sky along unit directions ``dirs`` (..., 3): gradient, clouds, sun glow."""
    base = _linear(sky_gradient(dirs)) * light.sky_power
    up = np.maximum(dirs[..., 2], 0.03)
    cx, cy = dirs[..., 0] / up, dirs[..., 1] / up  # on a cloud plane one unit up
    c = 0.65 * value_noise(cx, cy, 1.2, seed + 31) + 0.35 * value_noise(cx, cy, 0.3, seed + 32)
    cover = np.clip((c - (1.0 - light.clouds)) / 0.2, 0.0, 1.0) * np.clip(dirs[..., 2] * 10.0, 0.0, 1.0)
    cloud = np.float32(light.sky_power * 0.85) * (0.8 + 0.35 * c)[..., None]
    glow = np.clip(dirs @ sun.astype(np.float32), 0.0, 1.0) ** 48 * np.float32(0.4 * light.sun_power)
    return base * (1 - cover[..., None]) + cloud * cover[..., None] + glow[..., None] * light.sun_color


def materials(
    scene: Scene, pts: np.ndarray, nrm: np.ndarray, raw: np.ndarray, prim: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Material of hits at world points ``pts`` (n, 3) with normals ``nrm`` (n, 3) of raw classes ``raw``
    (n,) on primitives ``prim`` (n,) (< 0: ground) at distances ``t`` (n,).

    Returns:
        albedo: (n, 3) float32 linear; spec: (n,) reflectance at normal incidence; shine: (n,) highlight
        exponent.
    """
    prims, seed = scene.prims, scene.seed
    n = len(pts)
    alb = _linear(base_colors(prims, raw, prim))
    is_obj = prim >= 0
    pp = np.maximum(prim, 0)
    tex = np.where(is_obj, prims.tex[pp], -1)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    near = np.clip(1.0 - t / 25.0, 0.0, 1.0).astype(np.float32)  # fine detail fades with the pixel footprint
    grain = (hash01(np.floor(x * 30), np.floor(y * 30), np.floor(z * 30), seed=seed + 10) - 0.5) * near
    f = np.ones(n, np.float32)  # brightness factor on the albedo
    spec = np.full(n, 0.03, np.float32)
    shine = np.full(n, 8.0, np.float32)
    ground = ~is_obj

    m = ground & np.isin(raw, (ROAD, PARKING))  # asphalt
    xm, ym = x[m], y[m]
    crack = (np.abs(value_noise(xm, ym, 1.7, seed + 13) - 0.5) < 0.004) & (near[m] > 0.5)
    f[m] = (0.75 + 0.4 * value_noise(xm, ym, 6.0, seed + 11) + 0.2 * value_noise(xm, ym, 0.8, seed + 12)) * (
        1.0 + 0.6 * grain[m]
    )
    f[m] *= np.where(crack, 0.75, 1.0)
    m = ground & (raw == LANE_MARKING)  # worn paint
    f[m] = 0.55 + 0.5 * value_noise(x[m], y[m], 0.35, seed + 14) + 0.3 * grain[m]
    m = ground & (raw == SIDEWALK)  # pavers of the scene's colour, a light curb stone along the road
    ti, tj = np.floor(x[m] / 0.4), np.floor(y[m] / 0.4)
    joint = (np.mod(x[m], 0.4) < 0.015) | (np.mod(y[m], 0.4) < 0.015)
    alb[m] = _linear(PAVERS[int(stream(seed, 8, 2).integers(len(PAVERS)))])
    f[m] = (0.8 + 0.3 * hash01(ti, tj, seed=seed + 15) + 0.4 * grain[m]) * np.where(joint, 0.6, 1.0)
    curb = np.zeros(int(m.sum()), bool)
    for dx, dy in ((0.2, 0.0), (-0.2, 0.0), (0.0, 0.2), (0.0, -0.2)):
        curb |= np.isin(scene.ground.lookup(x[m] + dx, y[m] + dy), (ROAD, PARKING, LANE_MARKING))
    f[m] = np.where(curb, 1.35, f[m])
    m = ground & (raw == TERRAIN)  # grass with dry patches
    spec[m] = 0.0
    dry = np.clip((value_noise(x[m], y[m], 3.0, seed + 16) - 0.45) * 3.0, 0.0, 1.0)[:, None]
    grass = _linear([0.30, 0.42, 0.14]) * (1 - dry) + _linear([0.50, 0.45, 0.28]) * dry
    alb[m] = grass * (0.7 + 0.5 * value_noise(x[m], y[m], 0.3, seed + 17) + 1.2 * grain[m])[:, None]
    m = ground & (raw == OTHER_GROUND)  # gravel
    f[m] = 0.8 + 1.4 * grain[m] + 0.3 * value_noise(x[m], y[m], 1.0, seed + 18)

    obj_of = prims.obj[pp]
    m = tex == TEX_FOLIAGE  # leaf clusters, a hue per plant
    lx, ly = x[m] + 0.6 * z[m], y[m] - 0.4 * z[m]
    leaves = 0.6 * value_noise(lx, ly, 0.5, seed + 19) + 0.4 * value_noise(lx, ly, 0.12, seed + 26)
    f[m] = 0.2 + 2.0 * leaves**2 + 1.2 * grain[m]
    spec[m] = 0.0  # rough: no sheen
    hue = (hash01(obj_of[m], seed=seed + 20) - 0.5)[:, None] * np.array([0.5, 0.2, -0.4], np.float32)
    alb[m] *= 1.0 + hue
    m = is_obj & (raw == TRUNK)  # bark: vertical streaks
    f[m] = 0.6 + 0.7 * value_noise(4.0 * (x[m] + y[m]), 0.15 * z[m], 0.1, seed + 21)
    m = is_obj & (raw == FENCE)  # wooden slats
    u, _ = facade_coords(prims, prim[m], pts[m])
    f[m] = np.where(np.mod(u, 0.14) < 0.11, 1.0, 0.45) * (1.0 + 0.5 * grain[m])
    m = is_obj & (raw == BUILDING)  # brick or plaster facades, plinth
    u, zb = facade_coords(prims, prim[m], pts[m])
    brick = hash01(obj_of[m], seed=seed + 22) < 0.4
    row = np.floor(zb / 0.075)
    uo = u + np.mod(row, 2) * 0.11
    mortar = (np.mod(zb, 0.075) < 0.012) | (np.mod(uo, 0.22) < 0.012)
    f_brick = np.where(mortar, 1.5, 0.8 + 0.35 * hash01(row, np.floor(uo / 0.22), seed=seed + 23))
    f_plaster = 0.8 + 0.3 * value_noise(u, zb, 2.0, seed + 24) + 0.2 * value_noise(6.0 * u, 0.3 * zb, 1.0, seed + 25)
    f[m] = np.where(brick, f_brick, f_plaster) * np.where(zb < 0.6, 0.65, 1.0)
    m = is_obj & np.isin(raw, VEHICLES)  # paint
    spec[m], shine[m] = 0.06, 80.0
    m = is_obj & np.isin(raw, (POLE, TRAFFIC_SIGN))  # metal
    spec[m], shine[m] = 0.15, 30.0
    glass = np.zeros(n, bool)
    cab = np.flatnonzero(tex == TEX_GLASS)  # vehicle cabins: a band of windows on the sides, painted roof
    if cab.size:
        _, zb = facade_coords(prims, prim[cab], pts[cab])
        rel_z = zb / (2.0 * prims.half[prim[cab], 2])
        sill = np.where(prims.raw[prim[cab]] == TRUCK, 0.5, 0.12)
        glass[cab] = (np.abs(nrm[cab, 2]) < 0.5) & (rel_z > sill) & (rel_z < 0.92)
    win = np.flatnonzero(tex == TEX_WINDOWS)
    if win.size:  # framed windows of buildings and buses
        u, zb = facade_coords(prims, prim[win], pts[win])
        w = window_mask(prims, prim[win], u, zb)
        fu, fz = np.mod(u, 3.0), np.mod(zb, 3.2)
        frame = w & ((np.abs(fu - 0.75) < 0.06) | (np.abs(fu - 2.25) < 0.06) | (np.abs(fz - 1.05) < 0.06))
        frame &= prims.raw[prim[win]] != BUS
        alb[win[frame]] = _linear([0.85, 0.85, 0.82])
        glass[win[w & ~frame]] = True
    alb[glass] = alb[glass] * 0.1 + 0.01
    spec[glass], shine[glass] = 0.25, 300.0
    return np.clip(alb * f[:, None], 0.0, 1.0), spec, shine


def radiance(scene: Scene, origin: np.ndarray, dirs: np.ndarray, hits: Hits, light: Lighting) -> np.ndarray:
    """(H, W, 3) float32 linear radiance of camera rays ``dirs`` (H, W, 3) from ``origin`` (3,) with ``hits``."""
    sun = scene.sun.astype(np.float32)
    img = sky_radiance(dirs, sun, light, scene.seed)
    hit = hits.prim != -2
    if not hit.any():
        return img
    t = hits.t[hit]
    d = dirs[hit]
    pts = origin.astype(np.float32) + d * t[:, None]  # (n, 3) world
    nrm = hits.normal[hit]
    alb, spec, shine = materials(scene, pts, nrm, hits.raw[hit], hits.prim[hit], t)
    ndl = np.clip(nrm @ sun, 0.0, 1.0)
    lit = ndl > 0
    lit[lit] = ~sun_shadow(scene, pts[lit] + 0.03 * nrm[lit], sun)
    direct = (ndl * lit)[:, None] * light.sun_color * np.float32(light.sun_power)
    hemi = (0.5 + 0.5 * nrm[:, 2])[:, None]
    sky_light = _linear(0.5 * (SKY_HORIZON + SKY_ZENITH)) * np.float32(light.sky_power * 0.45)
    ambient = sky_light * hemi + _linear([0.35, 0.33, 0.30]) * np.float32(0.3 * light.sky_power) * (1 - hemi)
    refl = d - 2.0 * (d * nrm).sum(axis=1, keepdims=True) * nrm  # mirror direction
    cos_v = np.clip(-(d * nrm).sum(axis=1), 0.0, 1.0)
    w = np.clip(spec * (1.0 + 3.0 * (1.0 - cos_v) ** 5), 0.0, 0.9)[:, None]  # Schlick-like Fresnel weight
    env = np.where(refl[:, 2:] > 0, sky_radiance(refl, sun, light, scene.seed), ambient * 0.25)
    highlight = (lit * spec * np.clip(refl @ sun, 0.0, 1.0) ** shine * 4.0 * light.sun_power)[:, None]
    color = alb * (direct + ambient) * (1 - w) + env * w + highlight * light.sun_color
    haze = (1.0 - np.exp(-t / 350.0))[:, None]
    img[hit] = color * (1 - haze) + _linear(SKY_HORIZON) * np.float32(light.sky_power) * haze
    return img


def realistic_image(
    scene: Scene, frame: int, origin: np.ndarray, dirs: np.ndarray, hits: Hits, image_scale: float
) -> np.ndarray:
    """(H, W, 3) uint8 realistic camera image of ``frame`` (see the module and :mod:`occle_core.synth.isp`)."""
    linear = radiance(scene, origin, dirs, hits, lighting(scene.seed))
    return develop(linear, camera_response(scene.seed), stream(scene.seed, 9, frame), image_scale)
