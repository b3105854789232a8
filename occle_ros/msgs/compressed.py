"""``sensor_msgs/CompressedImage`` (JPEG or PNG) -> (H, W, 3) uint8 RGB, and back for tests and tools.

The format is read from the payload's signature (JPEG ``FF D8 FF``, PNG ``89 P N G``), not from the free-text
``format`` field (``jpeg``, ``rgb8; jpeg compressed bgr8``, ``png``... all occur in bags). JPEG goes through
libjpeg-turbo's SIMD decoder (``simplejpeg``, the ``ros`` extra) when importable: 1.7-1.8x faster than Pillow
for six 1600 x 900 nuScenes frames (docs/performance.md); Pillow is the fallback and decodes PNG.
"""

from __future__ import annotations

import io

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header

from occle_ros.msgs.base import ConversionError, byte_buffer, to_time

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG"

try:
    import simplejpeg as _simplejpeg
except ImportError:  # Pillow decodes JPEG too, slower
    _simplejpeg = None

#: the JPEG decoder in use: "simplejpeg" (libjpeg-turbo SIMD) or "pillow"
JPEG_DECODER = "simplejpeg" if _simplejpeg is not None else "pillow"


def _pillow_rgb(data: bytes | memoryview, what: str) -> np.ndarray:
    from PIL import Image as PilImage

    try:
        with PilImage.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for truncated or corrupt data
        raise ConversionError(f"CompressedImage.data is not a decodable {what}: {exc}") from exc


def decode_jpeg(data: bytes | memoryview, decoder: str | None = None) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB with ``decoder`` ("simplejpeg" | "pillow"; default :data:`JPEG_DECODER`)."""
    decoder = decoder or JPEG_DECODER
    if decoder == "simplejpeg" and _simplejpeg is not None:
        try:
            return _simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:  # e.g. a CMYK or 12-bit JPEG libjpeg-turbo's fast path refuses: let Pillow try
            pass
    return _pillow_rgb(data, "JPEG")


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a JPEG or PNG ``CompressedImage`` (grey and RGBA PNGs converted).

    Raises:
        ConversionError: empty data, a payload that is neither JPEG nor PNG, or undecodable bytes.
    """
    buf = byte_buffer(msg.data, "CompressedImage")
    if buf.size == 0:
        raise ConversionError("CompressedImage.data is empty (expected JPEG or PNG bytes)")
    head = buf[:4].tobytes()
    data = memoryview(buf)
    if head.startswith(_JPEG):
        return decode_jpeg(data)
    if head.startswith(_PNG):
        return _pillow_rgb(data, "PNG")
    raise ConversionError(
        f"CompressedImage (format {msg.format!r}) holds neither JPEG (FF D8 FF) nor PNG (89 50 4E 47) data, "
        f"starts with {head.hex(' ')}"
    )


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", frame_id: str = "", stamp: Time | int | None = None,
                      quality: int = 90) -> CompressedImage:  # fmt: skip
    """(H, W, 3) uint8 RGB -> ``CompressedImage`` in ``fmt`` ("jpeg" | "png"), ``format`` as image_transport
    writes it (``rgb8; jpeg compressed bgr8`` / ``rgb8; png compressed bgr8``)."""
    from PIL import Image as PilImage

    if fmt not in ("jpeg", "png"):
        raise ValueError(f"fmt must be jpeg or png, got {fmt!r}")
    out = io.BytesIO()
    PilImage.fromarray(np.ascontiguousarray(rgb, np.uint8)).save(out, format=fmt.upper(), quality=quality)
    msg = CompressedImage()
    msg.header = Header(frame_id=frame_id, stamp=to_time(stamp))
    msg.format = f"rgb8; {fmt} compressed bgr8"
    msg.data = out.getvalue()
    return msg
