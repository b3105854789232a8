"""Random streams and procedural noise of the synthetic world.

Everything is deterministic per seed: :func:`stream` splits one seed into independent generators per purpose
(keys), so a longer sequence of a seed extends the same scene and each frame's noise depends on
``(seed, frame)`` only, not on the order frames are made in.
"""

from __future__ import annotations

import numpy as np


def stream(seed: int, *keys: int) -> np.random.Generator:
    """The random generator of ``seed`` for the purpose ``keys`` (independent of every other key tuple)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]])


def hash01(*coords: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic pseudo-random float32 in [0, 1) per integer lattice point (vectorised integer hash)."""
    h = np.full(np.shape(coords[0]), np.uint32((seed * 0x9E3779B1) & 0xFFFFFFFF), np.uint32)
    for c, m in zip(coords, (0x8DA6B343, 0xD8163841, 0xCB1AB31F)):
        h ^= np.asarray(c).astype(np.int64).astype(np.uint32) * np.uint32(m)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def value_noise(x: np.ndarray, y: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth 2D value noise in [0, 1) at lattice spacing ``scale`` metres (bilinear, vectorised)."""
    fx, fy = x / scale, y / scale
    ix, iy = np.floor(fx), np.floor(fy)
    tx, ty = (fx - ix).astype(np.float32), (fy - iy).astype(np.float32)
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    a, b = hash01(ix, iy, seed=seed), hash01(ix + 1, iy, seed=seed)
    c, d = hash01(ix, iy + 1, seed=seed), hash01(ix + 1, iy + 1, seed=seed)
    return (a + (b - a) * tx) * (1 - ty) + (c + (d - c) * tx) * ty


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
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


def normal_quantile(p: float) -> float:
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
        return -normal_quantile(1 - p)
    q = p - 0.5
    r = q * q
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )
