"""The camera of the realistic appearance: linear scene radiance -> an 8-bit image as a real camera makes it.

Per sequence (stream ``(seed, 8, 1)``): exposure bias, white balance (a red / blue gain
pair, like a colour temperature), vignetting, lens blur, sensor noise levels and a JPEG quality. Per frame
(stream ``(seed, 9, frame)``): auto-exposure on the mean log luminance of the image with a small jitter, and
the noise. Order as in a
camera: exposure, white balance, vignetting, optics blur, Poisson-Gaussian sensor noise, a filmic
tone curve (the ACES fit) with the sRGB-like gamma, JPEG compression (decoded again: its blocks and ringing
stay).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from occle_core.synth.noise import stream

#: Rec. 709 luminance weights of linear RGB.
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


@dataclass
class CameraResponse:
    """Per-sequence camera settings.

    Attributes:
        exposure: multiplier on the auto-exposed image (log-normal around 1).
        white_balance: (3,) RGB gains (green 1).
        vignette: relative darkening at the image corners.
        blur: Gaussian lens blur sigma in pixels of a full-size (376 x 1241) image.
        shot_noise, read_noise: variance per unit signal and standard deviation of the sensor noise.
        jpeg_quality: JPEG quality factor (PIL scale, 1..95).
    """

    exposure: float
    white_balance: np.ndarray
    vignette: float
    blur: float
    shot_noise: float
    read_noise: float
    jpeg_quality: int


def camera_response(seed: int) -> CameraResponse:
    """The camera settings of the sequence of ``seed``."""
    rng = stream(seed, 8, 1)
    warm = rng.uniform(-1.0, 1.0)  # < 0 cool, > 0 warm
    return CameraResponse(
        exposure=float(np.exp(rng.normal(0.0, 0.2))),
        white_balance=np.array([1.0 + 0.08 * warm, 1.0, 1.0 - 0.08 * warm], np.float32),
        vignette=float(rng.uniform(0.1, 0.35)),
        blur=float(rng.uniform(0.3, 0.8)),
        shot_noise=float(rng.uniform(5e-5, 3e-4)),
        read_noise=float(rng.uniform(5e-4, 2e-3)),
        jpeg_quality=int(rng.integers(85, 96)),
    )


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, C) separable Gaussian blur with edge replication (sigma in pixels; < 0.2: unchanged)."""
    if sigma < 0.2:
        return img
    r = max(1, int(np.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    H, W = img.shape[:2]
    pad = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="edge")
    rows = sum(w * pad[i : i + H] for i, w in enumerate(k))
    pad = np.pad(rows, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(w * pad[:, i : i + W] for i, w in enumerate(k)).astype(np.float32)


def develop(radiance: np.ndarray, resp: CameraResponse, frame_rng: np.random.Generator, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 image from linear scene radiance (H, W, 3) float32 of an image ``scale`` times
    KITTI's size, with this camera's response and the frame's own noise stream."""
    H, W, _ = radiance.shape
    lum = radiance @ LUMA
    key = float(np.exp(np.mean(np.log(lum + 1e-4))))  # log-average luminance: auto exposure to middle grey
    gain = 0.18 / max(key, 1e-4) * resp.exposure * float(np.exp(frame_rng.normal(0.0, 0.06)))
    img = radiance * (gain * resp.white_balance)
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    r2 = ((u - W / 2) ** 2 + (v - H / 2) ** 2) / (W / 2) ** 2
    img *= (1.0 - resp.vignette * np.clip(r2, 0.0, 1.0))[..., None]
    img = gaussian_blur(img, resp.blur * scale)
    sd = np.sqrt(resp.shot_noise * np.clip(img, 0.0, None) + resp.read_noise**2)
    img = img + frame_rng.standard_normal(img.shape).astype(np.float32) * sd
    img = np.clip(img, 0.0, None)
    img = img * (2.51 * img + 0.03) / (img * (2.43 * img + 0.59) + 0.14)  # filmic (ACES fit) tone curve
    out = (np.clip(img, 0.0, 1.0) ** (1 / 2.2) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out, "RGB").save(buf, format="JPEG", quality=resp.jpeg_quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))
