"""Zero-copy reading of serialized (CDR) ``sensor_msgs/PointCloud2`` and ``sensor_msgs/Image`` messages.

A normal rclpy subscription converts a received cloud or image into a Python message whose ``data`` is a new
``array.array`` (a 1.9 MB cloud of 120k points, a 1.4 MB KITTI image). The node instead subscribes to these
two topics with ``raw=True`` (the callback gets the serialized bytes) and reads them here: the few small
fields are unpacked with :mod:`struct`, and ``data`` is a read-only ``memoryview`` of the received bytes (no
copy). :mod:`occle_ros.msgs.pointcloud` and :mod:`occle_ros.msgs.image` accept the results like the messages
(same attribute names).

Wire format (OMG CDR as used by the ROS 2 RMWs, XCDR version 1, "plain" encapsulation): a 4-byte
encapsulation header (``00 01``: little endian, ``00 00``: big endian, then two option bytes), then the
fields in declaration order, each primitive aligned to its size relative to the byte after the encapsulation
header; strings are a uint32 length counting a terminating NUL, then the bytes; sequences are a uint32
element count, then the elements; booleans are one byte, 0 or 1. Other encapsulations (XCDR2, parameter lists)
raise :class:`UnsupportedEncapsulationError`, so that a caller can fall back to rclpy's deserialiser.

Malformed input (truncated, lengths past the end, a non-UTF-8 or unterminated string, a boolean that is not
0/1) raises :class:`occle_ros.msgs.base.ConversionError` naming the message type and the field being read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from occle_ros.msgs.base import ConversionError

__all__ = [
    "CloudField",
    "RawImage",
    "RawPointCloud2",
    "UnsupportedEncapsulationError",
    "deserialize_image",
    "deserialize_pointcloud2",
]

#: encapsulation identifier (first two bytes) -> struct byte order: plain CDR (XCDR1), big and little endian
_ENCAPSULATIONS: dict[bytes, str] = {b"\x00\x00": ">", b"\x00\x01": "<"}
_START = 4  # encapsulation header bytes; alignment counts from the byte after it
_MIN_FIELD = 4 + 1 + 3 + 4 + 1 + 3 + 4  # smallest serialized PointField: name "" (len 1), offset, datatype, count


class UnsupportedEncapsulationError(ConversionError):
    """Serialized bytes in an encapsulation other than plain CDR (XCDR1); the message may still be valid."""


class CloudField(NamedTuple):
    """A ``sensor_msgs/PointField`` read from the wire (same attribute names)."""

    name: str
    offset: int
    datatype: int
    count: int


@dataclass(slots=True)
class RawPointCloud2:
    """A ``sensor_msgs/PointCloud2`` read from serialized bytes without copying its payload.

    Same attribute names as the message; ``header`` is a real ``std_msgs/Header``, ``data`` a read-only
    ``memoryview`` into the received bytes (which it keeps alive).
    """

    header: Header
    height: int
    width: int
    fields: tuple[CloudField, ...]
    is_bigendian: bool
    point_step: int
    row_step: int
    data: memoryview
    is_dense: bool


@dataclass(slots=True)
class RawImage:
    """A ``sensor_msgs/Image`` read from serialized bytes without copying its pixels (see :class:`RawPointCloud2`)."""

    header: Header
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


_STRUCTS = {
    order: (
        struct.Struct(order + "iII"),  # header.stamp.sec, .nanosec, header.frame_id length
        struct.Struct(order + "I"),  # a string or sequence length
        struct.Struct(order + "II"),  # two uint32 (height, width / step, data length)
        struct.Struct(order + "IB3xI"),  # PointField offset, datatype, (padding), count
        struct.Struct(order + "B3xIII"),  # PointCloud2 is_bigendian, (padding), point_step, row_step, data length
    )
    for order in ("<", ">")
}


class _Reader:
    """The parts every message shares: encapsulation, bounds checks, alignment, strings, the header."""

    __slots__ = ("buf", "end", "structs", "what")

    def __init__(self, raw: bytes | bytearray | memoryview, what: str) -> None:
        buf = memoryview(raw)
        if buf.ndim != 1 or buf.itemsize != 1:
            buf = buf.cast("B")
        self.buf, self.end, self.what = buf, len(buf), what
        if self.end < _START:
            raise ConversionError(f"{what} CDR: {self.end} bytes, shorter than the 4-byte encapsulation header")
        kind = bytes(buf[:2])
        order = _ENCAPSULATIONS.get(kind)
        if order is None:
            raise UnsupportedEncapsulationError(
                f"{what} CDR: encapsulation 0x{kind.hex()} is not supported (expected plain CDR: 0x0000 big "
                "endian or 0x0001 little endian)"
            )
        self.structs = _STRUCTS[order]

    def need(self, pos: int, size: int, field: str) -> None:
        if pos + size > self.end:
            raise ConversionError(
                f"{self.what} CDR: message ends while reading {field} (needs {size} bytes at offset {pos}, "
                f"message has {self.end} bytes)"
            )

    def string(self, pos: int, length: int, field: str) -> str:
        """The string of ``length`` bytes (NUL included) at ``pos``."""
        self.need(pos, length, field)
        if length == 0:  # some writers send an empty string without its NUL
            return ""
        if self.buf[pos + length - 1] != 0:
            raise ConversionError(f"{self.what} CDR: {field} (length {length}) is not NUL-terminated")
        try:
            return str(self.buf[pos : pos + length - 1], "utf-8")
        except UnicodeDecodeError as exc:
            raise ConversionError(f"{self.what} CDR: {field} is not valid UTF-8 ({exc.reason})") from exc

    def boolean(self, value: int, field: str) -> bool:
        if value > 1:
            raise ConversionError(f"{self.what} CDR: {field} is {value} (a boolean: expected 0 or 1)")
        return bool(value)

    def header(self) -> tuple[Header, int]:
        """``std_msgs/Header`` at the start; returns it and the (aligned) offset after it."""
        self.need(_START, 12, "header")
        sec, nanosec, length = self.structs[0].unpack_from(self.buf, _START)
        frame_id = self.string(_START + 12, length, "header.frame_id")
        return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id), _aligned(_START + 12 + length)

    def data(self, pos: int, size: int, field: str) -> memoryview:
        self.need(pos, size, field)
        return self.buf[pos : pos + size]


def _aligned(pos: int) -> int:
    """The next offset aligned to 4 bytes, counted from the end of the encapsulation header."""
    return pos + (-(pos - _START) & 3)


def deserialize_pointcloud2(raw: bytes | bytearray | memoryview) -> RawPointCloud2:
    """Read a serialized ``sensor_msgs/PointCloud2`` (what a ``raw=True`` subscription delivers).

    Only the small fields are unpacked; ``data`` stays a view of ``raw`` (keep ``raw`` unchanged while the
    result is in use: a ``bytes`` object, as rclpy delivers, always is). Trailing padding is ignored, as rclpy
    does.

    Raises:
        UnsupportedEncapsulationError: not plain CDR (the bytes may be fine for rclpy's deserialiser).
        ConversionError: naming the field that could not be read and why.
    """
    r = _Reader(raw, "PointCloud2")
    buf, end = r.buf, r.end
    _, len_s, two_s, field_s, tail_s = r.structs
    header, pos = r.header()
    r.need(pos, 12, "height, width, fields length")
    height, width = two_s.unpack_from(buf, pos)
    (n_fields,) = len_s.unpack_from(buf, pos + 8)
    pos += 12
    if n_fields * _MIN_FIELD > end - pos:
        raise ConversionError(f"PointCloud2 CDR: fields length {n_fields} does not fit in the {end - pos} bytes left")
    fields = []
    for k in range(n_fields):
        pos = _aligned(pos)
        r.need(pos, 4, f"fields[{k}].name length")
        (length,) = len_s.unpack_from(buf, pos)
        name = r.string(pos + 4, length, f"fields[{k}].name")
        pos = _aligned(pos + 4 + length)
        r.need(pos, 12, f"fields[{k}] offset, datatype, count")
        offset, datatype, count = field_s.unpack_from(buf, pos)
        pos += 12
        fields.append(CloudField(name, offset, datatype, count))
    pos = _aligned(pos)
    r.need(pos, 16, "is_bigendian, point_step, row_step, data length")
    is_bigendian, point_step, row_step, size = tail_s.unpack_from(buf, pos)
    pos += 16
    data = r.data(pos, size + 1, "data and is_dense")
    return RawPointCloud2(
        header=header,
        height=height,
        width=width,
        fields=tuple(fields),
        is_bigendian=r.boolean(is_bigendian, "is_bigendian"),
        point_step=point_step,
        row_step=row_step,
        data=data[:size],
        is_dense=r.boolean(data[size], "is_dense"),
    )


def deserialize_image(raw: bytes | bytearray | memoryview) -> RawImage:
    """Read a serialized ``sensor_msgs/Image`` (what a ``raw=True`` subscription delivers); ``data`` stays a view
    of ``raw`` (see :func:`deserialize_pointcloud2`).

    Raises:
        UnsupportedEncapsulationError: not plain CDR (the bytes may be fine for rclpy's deserialiser).
        ConversionError: naming the field that could not be read and why.
    """
    r = _Reader(raw, "Image")
    buf = r.buf
    _, len_s, two_s, _, _ = r.structs
    header, pos = r.header()
    r.need(pos, 12, "height, width, encoding length")
    height, width = two_s.unpack_from(buf, pos)
    (length,) = len_s.unpack_from(buf, pos + 8)
    encoding = r.string(pos + 12, length, "encoding")
    pos += 12 + length
    r.need(pos, 1, "is_bigendian")
    is_bigendian = buf[pos]  # uint8 in Image (not a bool): kept as sent
    pos = _aligned(pos + 1)
    r.need(pos, 8, "step, data length")
    step, size = two_s.unpack_from(buf, pos)
    return RawImage(
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=is_bigendian,
        step=step,
        data=r.data(pos + 8, size, "data"),
    )
