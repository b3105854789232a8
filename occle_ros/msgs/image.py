"""``sensor_msgs/Image`` <-> numpy for rgb8, bgr8, rgba8, bgra8, mono8 (8UC1), mono16 (16UC1), honouring ``step``
padding and ``is_bigendian``; :func:`image_to_rgb` gives the (H, W, 3) uint8 RGB the predictor takes."""

from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from occle_ros.msgs.base import ConversionError, byte_buffer, to_time


@dataclass(frozen=True)
class _Encoding:
    dtype: str  # numpy type code without byte order
    channels: int


#: Supported ``Image.encoding`` values.
IMAGE_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding("u1", 3),
    "bgr8": _Encoding("u1", 3),
    "rgba8": _Encoding("u1", 4),
    "bgra8": _Encoding("u1", 4),
    "mono8": _Encoding("u1", 1),
    "8UC1": _Encoding("u1", 1),
    "mono16": _Encoding("u2", 1),
    "16UC1": _Encoding("u2", 1),
}


#: What to do with common camera encodings the node does not decode (prefix -> hint).
_HINTS = {
    "bayer_": "debayer first (image_proc's debayer node publishes image_color) or set the driver to rgb8",
    "yuv422": "convert to rgb8 first (image_proc, or the driver's rgb8 pixel format)",
    "uyvy": "convert to rgb8 first (image_proc, or the driver's rgb8 pixel format)",
    "yuyv": "convert to rgb8 first (image_proc, or the driver's rgb8 pixel format)",
}


def _encoding(name: str) -> _Encoding:
    enc = IMAGE_ENCODINGS.get(name)
    if enc is None:
        hint = next((f"; hint: {h}" for prefix, h in _HINTS.items() if name.lower().startswith(prefix)), "")
        raise ConversionError(
            f"Image.encoding {name!r} is not supported (expected one of {sorted(IMAGE_ENCODINGS)}){hint}"
        )
    return enc


def image_to_array(msg: Image) -> np.ndarray:
    """Decode an ``Image`` into (H, W) (one channel) or (H, W, C) in the encoding's channel order and type.

    16-bit images come back in native byte order. ``step`` padding is dropped.
    """
    enc = _encoding(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ConversionError(f"Image is empty: height={h}, width={w} (expected both > 0)")
    pixel = np.dtype(enc.dtype).itemsize * enc.channels
    if step < w * pixel:
        raise ConversionError(f"Image.step {step} is smaller than width*{pixel} bytes = {w * pixel} ({msg.encoding})")
    buf = byte_buffer(msg.data, "Image")
    if buf.size != step * h:
        raise ConversionError(f"Image.data has {buf.size} bytes, expected step*height = {step}*{h} = {step * h}")
    rows = buf.reshape(h, step)[:, : w * pixel]  # (H, W * pixel) bytes
    order = ">" if msg.is_bigendian else "<"
    dt = np.dtype(order + enc.dtype) if np.dtype(enc.dtype).itemsize > 1 else np.dtype(enc.dtype)
    img = np.ascontiguousarray(rows).view(dt).reshape(h, w, enc.channels)
    if dt.itemsize > 1 and not dt.isnative:
        img = img.astype(dt.newbyteorder("="))
    return img[:, :, 0] if enc.channels == 1 else img


def array_to_image(
    arr: np.ndarray,
    encoding: str,
    frame_id: str = "",
    stamp: Time | int | None = None,
    step: int | None = None,
    is_bigendian: bool = False,
) -> Image:
    """Encode an (H, W) or (H, W, C) array laid out in ``encoding``'s channel order into an ``Image``.

    Args:
        step: bytes per row (>= width * pixel bytes); extra bytes are zero padding. Defaults to no padding.
        is_bigendian: byte order of 16-bit encodings.
    """
    enc = _encoding(encoding)
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != enc.channels:
        raise ConversionError(f"{encoding} image needs shape (H, W, {enc.channels}), got {arr.shape}")
    if arr.dtype != np.dtype(enc.dtype):
        raise ConversionError(f"{encoding} image needs dtype {np.dtype(enc.dtype)}, got {arr.dtype}")
    h, w, _ = arr.shape
    pixel = arr.dtype.itemsize * enc.channels
    step = w * pixel if step is None else int(step)
    if step < w * pixel:
        raise ConversionError(f"step {step} is smaller than width*{pixel} = {w * pixel}")
    order = ">" if is_bigendian else "<"
    data = np.ascontiguousarray(arr, dtype=np.dtype(order + enc.dtype)).view(np.uint8).reshape(h, w * pixel)
    if step > w * pixel:
        data = np.concatenate([data, np.zeros((h, step - w * pixel), np.uint8)], axis=1)
    msg = Image()
    msg.header = Header(frame_id=frame_id, stamp=to_time(stamp))
    msg.height, msg.width, msg.encoding, msg.step = h, w, encoding, step
    msg.is_bigendian = int(bool(is_bigendian))
    msg.data = array.array("B", data.tobytes())
    return msg


def image_to_rgb(msg: Image) -> np.ndarray:
    """Decode any supported ``Image`` into (H, W, 3) uint8 RGB (a new contiguous, writable array; 16-bit keeps
    the high byte)."""
    img = image_to_array(msg)
    enc = msg.encoding
    if enc == "rgb8":
        return img.copy() if not img.flags.writeable else np.ascontiguousarray(img)
    if enc == "bgr8":
        return np.ascontiguousarray(img[:, :, ::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(img[:, :, :3])
    if enc == "bgra8":
        return np.ascontiguousarray(img[:, :, 2::-1])
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2)


def rgb_to_image(rgb: np.ndarray, frame_id: str = "", stamp: Time | int | None = None) -> Image:
    """(H, W, 3) uint8 RGB -> ``rgb8`` ``Image``."""
    return array_to_image(rgb, "rgb8", frame_id, stamp)
