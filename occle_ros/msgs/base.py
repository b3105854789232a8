"""What every message family shares: the conversion error, header stamps and byte payloads."""

from __future__ import annotations

import array
from typing import Protocol

import numpy as np
from builtin_interfaces.msg import Time


class ConversionError(ValueError):
    """A message that cannot be converted; the text names the field and the expected value."""


class Stamp(Protocol):
    """What :func:`stamp_ns` reads: a ``builtin_interfaces/Time`` or anything with its two fields."""

    sec: int
    nanosec: int


def to_time(stamp: Time | int | None) -> Time:
    """``builtin_interfaces/Time`` from a message stamp, integer nanoseconds, or None (time 0)."""
    if stamp is None:
        return Time()
    if isinstance(stamp, Time):
        return stamp
    ns = int(stamp)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def stamp_ns(stamp: Stamp) -> int:
    """builtin_interfaces/Time -> int nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def byte_buffer(data: object, what: str) -> np.ndarray:
    """A message's ``uint8[]`` payload as a read-only (L,) uint8 view without copying where possible."""
    if isinstance(data, (bytes, bytearray, memoryview, array.array, np.ndarray)):
        return np.frombuffer(data, np.uint8)
    try:  # a list of ints (older message classes)
        return np.asarray(data, np.uint8).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{what}.data must be a byte sequence, got {type(data).__name__}") from exc
