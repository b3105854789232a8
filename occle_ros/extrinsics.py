"""Where the node's ``T_cam_lidar`` (LiDAR points -> camera frame, (4, 4)) comes from.

``extrinsics.source`` picks one of:

- ``xyz_quaternion`` / ``matrix``: the parameters (:func:`from_xyz_quaternion`, :func:`from_matrix`);
- ``calib_file``: the ``Tr`` of a KITTI ``calib.txt``;
- ``tf``: a TF lookup camera frame <- cloud frame through ``tf2_ros`` (when importable). The transform of a frame
  pair is looked up once and cached (a sensor mount is rigid): only the first lookup may wait, up to
  ``extrinsics.tf_timeout``; later frames never wait for TF. When ``extrinsics.calib_file`` is also set, it is the
  fallback: used (with a warning) while TF has no transform, or from the start when tf2_ros is not importable.

A missing extrinsic is a start-up error (``calib_file`` without a file, ``tf`` without tf2_ros nor a fallback) or,
for TF at run time, a rejected frame (``tf_unavailable``): never a silent identity. :func:`resolve` returns the
source with a description that the node logs at start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from occle_core.geometry import read_kitti_calib
from occle_ros.params import ExtrinsicsParams, StartupError


def from_xyz_quaternion(xyz: Sequence[float], quaternion: Sequence[float]) -> np.ndarray:
    """(4, 4) T from a translation and a (w, x, y, z) quaternion (normalised here)."""
    from transforms3d.quaternions import quat2mat

    q = np.asarray(quaternion, np.float64)
    if q.shape != (4,) or not np.isfinite(q).all() or np.linalg.norm(q) < 1e-9:
        raise ValueError(f"extrinsics.quaternion must be 4 finite values (w, x, y, z), not all 0, got {list(q)}")
    t = np.asarray(xyz, np.float64)
    if t.shape != (3,) or not np.isfinite(t).all():
        raise ValueError(f"extrinsics.xyz must be 3 finite values, got {list(t)}")
    T = np.eye(4)
    T[:3, :3] = quat2mat(q / np.linalg.norm(q))
    T[:3, 3] = t
    return T


def from_matrix(values: Sequence[float]) -> np.ndarray:
    """(4, 4) T from 16 row-major values; the rotation must be orthonormal and the last row 0 0 0 1."""
    m = np.asarray(values, np.float64)
    if m.size != 16 or not np.isfinite(m).all():
        raise ValueError(f"extrinsics.matrix must be 16 finite row-major values, got {m.size}")
    T = m.reshape(4, 4)
    R = T[:3, :3]
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(R @ R.T, np.eye(3), atol=1e-3):
        raise ValueError("extrinsics.matrix is not a rigid transform (orthonormal rotation, last row 0 0 0 1)")
    return T


def from_transform(transform: Any) -> np.ndarray:
    """(4, 4) T of a ``geometry_msgs/Transform`` (translation, rotation quaternion x, y, z, w)."""
    r, t = transform.rotation, transform.translation
    return from_xyz_quaternion([t.x, t.y, t.z], [r.w, r.x, r.y, r.z])


class ExtrinsicsSource(Protocol):
    """What the node asks: the (4, 4) T_cam_lidar of a camera frame and a cloud frame."""

    description: str

    def transform(self, camera_frame: str, lidar_frame: str) -> np.ndarray:
        """Raises LookupError when the transform is not available (the frame is rejected)."""
        ...


class FixedExtrinsics:
    """One T_cam_lidar whatever the frame names (parameters or a calibration file)."""

    def __init__(self, T: np.ndarray, description: str) -> None:
        self.T = T
        self.description = description

    def transform(self, camera_frame: str, lidar_frame: str) -> np.ndarray:
        return self.T


class TransformBuffer(Protocol):
    """The part of ``tf2_ros.Buffer`` used here."""

    def lookup_transform(self, target_frame: str, source_frame: str, time: Any, timeout: Any = ...) -> Any: ...


class TfExtrinsics:
    """T_cam_lidar from TF, cached per (camera frame, cloud frame) pair.

    Args:
        buffer: a ``tf2_ros.Buffer`` filled by a ``TransformListener``.
        timeout: seconds the first lookup of a pair may wait; later lookups of a pair not yet available do not wait.
        fallback: used while TF has no transform (the caller warns), else LookupError.
        warn: called with a message when the fallback is used.
    """

    def __init__(
        self,
        buffer: TransformBuffer,
        timeout: float,
        fallback: FixedExtrinsics | None = None,
        warn: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.buffer, self.timeout, self.fallback, self.warn = buffer, timeout, fallback, warn
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._waited: set[tuple[str, str]] = set()
        self.lookups = 0  # TF lookups made (a cached pair makes none)
        self.description = f"tf (looked up once per frame pair, first wait <= {timeout} s)" + (
            f", fallback {fallback.description}" if fallback else ""
        )

    def transform(self, camera_frame: str, lidar_frame: str) -> np.ndarray:
        from rclpy.duration import Duration
        from rclpy.time import Time

        pair = (camera_frame, lidar_frame)
        T = self._cache.get(pair)
        if T is not None:
            return T
        wait = 0.0 if pair in self._waited else self.timeout
        self._waited.add(pair)
        self.lookups += 1
        try:  # Time() = the latest transform: a rigid mount's static TF
            tf = self.buffer.lookup_transform(camera_frame, lidar_frame, Time(), timeout=Duration(seconds=wait))
        except Exception as exc:  # tf2 raises several types (LookupException, ConnectivityException, ...)
            if self.fallback is not None:
                self.warn(f"no TF {camera_frame} <- {lidar_frame} yet ({exc}); using {self.fallback.description}")
                return self.fallback.T
            raise LookupError(f"no transform {camera_frame} <- {lidar_frame}: {exc}") from exc
        T = self._cache[pair] = from_transform(tf.transform)
        return T


def resolve(params: ExtrinsicsParams, node: Any, warn: Callable[[str], None]) -> ExtrinsicsSource:
    """The source ``params`` ask for (``node``: the rclpy node a TF listener subscribes with; ``warn``: how a TF
    fallback is reported, e.g. a throttled log).

    Raises:
        StartupError: a bad value, an unreadable calibration file, or ``tf`` with neither tf2_ros nor a fallback.
    """
    try:
        if params.source == "xyz_quaternion":
            T = from_xyz_quaternion(params.xyz, params.quaternion)
            return FixedExtrinsics(T, "parameters extrinsics.xyz + extrinsics.quaternion")
        if params.source == "matrix":
            return FixedExtrinsics(from_matrix(params.matrix), "parameter extrinsics.matrix")
    except ValueError as exc:
        raise StartupError(f"parameter extrinsics: {exc}") from exc
    fallback = _calib_file(params.calib_file) if params.calib_file else None
    if params.source == "calib_file":
        if fallback is None:
            raise StartupError("parameter extrinsics.calib_file is empty but extrinsics.source is calib_file")
        return fallback
    try:
        from tf2_ros import Buffer, TransformListener
    except ImportError as exc:
        if fallback is None:
            raise StartupError(
                "parameter extrinsics.source is 'tf' but tf2_ros is not importable here; set extrinsics.calib_file "
                "as the fallback, or use xyz_quaternion, matrix or calib_file"
            ) from exc
        warn(f"extrinsics.source is 'tf' but tf2_ros is not importable: using {fallback.description}")
        return FixedExtrinsics(fallback.T, f"{fallback.description} (tf2_ros not importable)")
    buffer = Buffer(node=node)
    node.tf_listener = TransformListener(buffer, node)  # kept alive with the node
    return TfExtrinsics(buffer, params.tf_timeout, fallback, warn)


def _calib_file(path: str) -> FixedExtrinsics:
    try:
        return FixedExtrinsics(read_kitti_calib(path).T_cam_lidar, f"calib_file {path}")
    except (ValueError, OSError) as exc:
        raise StartupError(f"parameter extrinsics.calib_file: {exc}") from exc
