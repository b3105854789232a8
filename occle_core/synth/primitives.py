"""Scene objects as arrays of primitives (oriented boxes, vertical cylinders, oriented ellipsoids), the builder
that collects them, and the planar transforms objects are placed with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occle_core.synth.classes import CYLINDER, TEX_PLAIN


def yaw_matrix(yaw: float) -> np.ndarray:
    """(3, 3) rotation about z by ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    """(4, 4) rigid transform: rotation ``yaw`` about z, then translation (x, y, z)."""
    T = np.eye(4)
    T[:3, :3] = yaw_matrix(yaw)
    T[:3, 3] = (x, y, z)
    return T


def footprint_cells(
    center: np.ndarray, yaw: float, half: tuple[float, float], spacing: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """World x and y (n,) of a lattice ``spacing`` apart over the oriented rectangle ``center`` +- ``half``."""
    hx, hy = half
    ux = np.linspace(-hx, hx, max(2, int(np.ceil(2 * hx / spacing)) + 1))
    uy = np.linspace(-hy, hy, max(2, int(np.ceil(2 * hy / spacing)) + 1))
    gx, gy = np.meshgrid(ux, uy, indexing="ij")
    c, s = np.cos(yaw), np.sin(yaw)
    x = center[0] + c * gx - s * gy
    y = center[1] + s * gx + c * gy
    return x.ravel(), y.ravel()


@dataclass
class Primitives:
    """Scene objects as arrays (P primitives).

    Attributes:
        kind: (P,) BOX / CYLINDER / ELLIPSOID.
        center: (P, 3) world centre.
        yaw: (P,) rotation about z (boxes and ellipsoids).
        half: (P, 3) half extents (cylinders: radius, radius, half height; ellipsoids: radii).
        raw: (P,) raw SemanticKITTI class.
        instance: (P,) instance id of things (0 for stuff).
        obj: (P,) object id (several primitives form one object).
        color: (P, 3) float32 RGB in [0, 1].
        tex: (P,) texture kind.
    """

    kind: np.ndarray
    center: np.ndarray
    yaw: np.ndarray
    half: np.ndarray
    raw: np.ndarray
    instance: np.ndarray
    obj: np.ndarray
    color: np.ndarray
    tex: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        """(P, 3) min and max corners of the world axis-aligned bounding boxes."""
        c, s = np.abs(np.cos(self.yaw)), np.abs(np.sin(self.yaw))
        hx, hy, hz = self.half.T
        rot = self.kind != CYLINDER
        ex = np.where(rot, c * hx + s * hy, hx)
        ey = np.where(rot, s * hx + c * hy, hy)
        ext = np.stack([ex, ey, hz], axis=1)
        return self.center - ext, self.center + ext


class PrimBuilder:
    """Collects primitives row by row and numbers objects and thing instances."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.next_obj = 1
        self.next_instance = 1

    def new_object(self, thing: bool) -> tuple[int, int]:
        """A new (object id, instance id); the instance id is 0 unless ``thing``."""
        obj = self.next_obj
        self.next_obj += 1
        inst = 0
        if thing:
            inst = self.next_instance
            self.next_instance = self.next_instance % 65535 + 1
        return obj, inst

    def add(self, kind, center, yaw, half, raw, obj, inst, color, tex=TEX_PLAIN) -> None:
        """One primitive (see :class:`Primitives` for the fields)."""
        self.rows.append((kind, tuple(center), float(yaw), tuple(half), raw, inst, obj, tuple(color), tex))

    def build(self) -> Primitives:
        """The collected primitives as arrays."""
        if not self.rows:
            z3 = np.zeros((0, 3))
            e = np.zeros(0, np.int64)
            return Primitives(e, z3, np.zeros(0), z3, e, e, e, z3.astype(np.float32), e)
        k, c, y, h, r, i, o, col, t = zip(*self.rows)
        return Primitives(
            kind=np.asarray(k, np.int8),
            center=np.asarray(c, np.float64),
            yaw=np.asarray(y, np.float64),
            half=np.asarray(h, np.float64),
            raw=np.asarray(r, np.uint16),
            instance=np.asarray(i, np.uint16),
            obj=np.asarray(o, np.int32),
            color=np.asarray(col, np.float32),
            tex=np.asarray(t, np.int8),
        )
