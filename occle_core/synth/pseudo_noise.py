"""2D pseudo labels of the synthetic world: a noise model of a foundation segmenter (never the exact truth).

Written as ``pseudo_2d/*.png``. Starting from the rendered per-pixel learning classes (sky and misses are 255):

1. Missed small objects: each instance of pole, traffic-sign, person, bicycle, motorcycle and trunk
   is dropped in a frame with probability ``clip((d - 12 m) / 30 m, 0, 0.85)`` at mean distance ``d``,
   and always when it covers fewer than 40 px (scaled by ``image_scale**2``); dropped pixels take the
   label of the nearest kept pixel to their left (the background the segmenter sees through them).
2. Instance confusions: a whole instance is relabelled (the same way in every frame) with the
   probabilities of :data:`INSTANCE_CONFUSIONS` (truck -> car 0.3, car -> truck 0.04, other-vehicle -> truck 0.3,
   motorcycle -> bicycle 0.3, bicycle -> motorcycle 0.05, traffic-sign -> pole 0.1).
3. Region confusions of stuff classes: a smooth random field (about 60 px blobs) per pair of
   :data:`REGION_CONFUSIONS` flips the class inside its blobs over the given share of the area
   (sidewalk <-> road, parking -> road / sidewalk, terrain <-> vegetation, trunk -> vegetation,
   fence <-> building, other-ground -> sidewalk / terrain).
4. Boundary errors: the label image is resampled through a smooth random displacement field of about
   2.5 px (scaled) amplitude, so class edges wobble while region interiors stay put.

The noise of a frame comes from ``(seed, frame)`` only; instance confusions from ``(seed, object)``.

Noise levels (:data:`NOISE_LEVELS`, ``occle-synth --pseudo-noise``): ``default`` is the model above; ``oracle``
returns the rendered truth unchanged (sky and misses 255); ``x2`` doubles every component: each probability
and area share ``p`` (miss chance at every distance, instance confusions, region-confusion shares) becomes
``1 - (1 - p)**2`` (the error gets two independent chances; about ``2 p`` when small), the always-missed area
40 px -> 80 px, and the boundary displacement amplitude 2.5 px -> 5 px. The random draws are the same at every
level, so ``x2`` drops, relabels and flips wherever ``default`` does, and more.
"""

from __future__ import annotations

import numpy as np

from occle_core.labels import IGNORE_INDEX, class_table
from occle_core.synth.noise import hash01, normal_quantile, smooth_field, stream
from occle_core.synth.render import CameraFrame

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
#: ``occle-synth --pseudo-noise`` levels (see the module docstring).
NOISE_LEVELS = ("oracle", "default", "x2")


def _twice(p: np.ndarray | float, noise: str) -> np.ndarray | float:
    """Probability ``p`` at ``noise``: unchanged for ``default``, ``1 - (1 - p)**2`` for ``x2``."""
    return 1.0 - (1.0 - p) ** 2 if noise == "x2" else p


def pseudo_labels(seed: int, frame: int, cam: CameraFrame, image_scale: float, noise: str = "default") -> np.ndarray:
    """(H, W) uint8 2D pseudo labels of frame ``frame`` of the sequence of ``seed`` (255 = none), from the
    rendered ``cam`` of an image ``image_scale`` times KITTI's size, by the noise model of this module at level
    ``noise`` (one of :data:`NOISE_LEVELS`)."""
    if noise not in NOISE_LEVELS:
        raise ValueError(f"pseudo-label noise must be one of {NOISE_LEVELS}, got {noise!r}")
    if noise == "oracle":
        return cam.truth.astype(np.uint8, copy=True)
    gain = 2.0 if noise == "x2" else 1.0  # area threshold and displacement amplitude
    rng = stream(seed, 3, frame)
    names = {n: i for i, n in enumerate(class_table("semantic_kitti").names)}
    lab = cam.truth.copy()
    H, W = lab.shape
    scale = image_scale
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
    p_miss = _twice(np.clip((mean_depth - 12.0) / 30.0, 0.0, 0.85), noise)
    missed = missable & ((rng.random(len(uniq)) < p_miss) | (area < gain * 40 * scale**2))
    # 2. whole-instance confusions, fixed per object over the sequence (a systematic error)
    u = hash01(u_obj, seed=seed + 17)
    new_cls = u_cls.copy()
    done = np.zeros(len(uniq), bool)
    for src, dst, prob in INSTANCE_CONFUSIONS:
        sel = is_obj & ~done & (u_cls == names[src]) & (u < _twice(prob, noise))
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
        field_ = smooth_field(rng, (H, W), max(4.0, 60.0 * scale))
        thr = np.float32(normal_quantile(1.0 - _twice(share, noise)) * 0.6)  # bilinear smoothing shrinks the variance
        sel = (orig == names[src]) & (field_ > thr)
        lab[sel] = names[dst]
    # 4. boundary errors: resample through a smooth displacement field
    amp = gain * 2.5 * max(scale, 0.25)
    dx = smooth_field(rng, (H, W), max(4.0, 24.0 * scale)) * amp
    dy = smooth_field(rng, (H, W), max(4.0, 24.0 * scale)) * amp
    rows = np.clip(np.rint(np.arange(H)[:, None] + dy), 0, H - 1).astype(np.int64)
    cols = np.clip(np.rint(np.arange(W)[None, :] + dx), 0, W - 1).astype(np.int64)
    return lab[rows, cols].astype(np.uint8)
