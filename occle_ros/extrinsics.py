"""Where the node's poses come from: each camera's ``T_cam<-grid`` and the LiDAR's ``T_grid<-lidar`` (4 x 4).

The grid frame is the checkpoint's (``Predictor.grid_frame``): ``lidar`` (the grid is the LiDAR frame, KITTI)
or ``ego`` (base_link, nuScenes / Occ3D); the ``grid_frame`` parameter names it in TF (default: the LiDAR frame,
or ``base_link``). Points are moved into the grid frame with ``T_grid<-lidar`` before inference.

``extrinsics.source`` picks one of:

- ``xyz_quaternion`` / ``matrix``: T_cam_lidar per camera from the parameters (:func:`from_xyz_quaternion`,
  :func:`from_matrix`); ``calib_file``: the ``Tr`` of a KITTI ``calib.txt`` (one camera). With an ego grid,
  ``extrinsics.grid_from_lidar`` gives T_grid<-lidar (required: never a silent identity); with a LiDAR grid it
  is the identity by definition. The projection uses camera_info's P as it is (these T_cam_lidar refer to P's
  frame: KITTI's Tr maps to the rectified cam0 frame, P2's translation column moves on to camera 2).
- ``tf``: lookups camera frame <- grid frame and grid frame <- LiDAR frame through ``tf2_ros``. Each pair is
  looked up once and cached (a mount is rigid); the node clears the cache when ``/tf_static`` changes. Only the
  first lookup of a pair may wait, up to ``extrinsics.tf_timeout``. The TF camera frame is the optical centre,
  so the projection uses the intrinsics only (P's left 3 x 3, zero translation column): P's translation is not
  counted twice. P's left 3 x 3 rather than camera_info's K: rectified images (KITTI's, nuScenes'
  image_rect) are described by P (KITTI raw: K_02 fx 959.8 is the unrectified lens, P_rect_02 fx 721.5 the
  published image); for an unrectified camera P's left 3 x 3 is K.
  With ``extrinsics.calib_file`` set (one camera) it is the fallback, used with a warning while TF lacks a
  transform or from the start when tf2_ros is not importable (plain pip environments have neither tf2_ros nor
  tf2_msgs); without it a missing tf2_ros is a start-up error and a missing transform rejects the frame
  (``tf_unavailable``).

Problems are start-up errors (:class:`~occle_ros.params.StartupError`) or, for TF at run time, LookupError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from occle_core.geometry import read_kitti_calib
from occle_ros.params import ExtrinsicsParams, StartupError

#: the TF frame of an ego-frame grid when the grid_frame parameter is empty
EGO_FRAME = "base_link"


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


def from_matrix(values: Sequence[float], name: str = "extrinsics.matrix") -> np.ndarray:
    """(4, 4) T from 16 row-major values; the rotation must be orthonormal and the last row 0 0 0 1."""
    m = np.asarray(values, np.float64)
    if m.size != 16 or not np.isfinite(m).all():
        raise ValueError(f"{name} must be 16 finite row-major values, got {m.size}")
    T = m.reshape(4, 4)
    R = T[:3, :3]
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(R @ R.T, np.eye(3), atol=1e-3):
        raise ValueError(f"{name} is not a rigid transform (orthonormal rotation, last row 0 0 0 1)")
    return T


def transform_matrix(transform: Any) -> np.ndarray:
    """(4, 4) T of a ``geometry_msgs/Transform`` (translation, rotation quaternion x, y, z, w)."""
    r, t = transform.rotation, transform.translation
    return from_xyz_quaternion([t.x, t.y, t.z], [r.w, r.x, r.y, r.z])


@dataclass(frozen=True)
class Poses:
    """The poses of one frame.

    Attributes:
        T_cam_grid: per camera, (4, 4) grid frame -> camera frame.
        T_grid_lidar: (4, 4) LiDAR frame -> grid frame.
        optical_frames: the camera frames are TF optical frames: project with P's intrinsics only.
    """

    T_cam_grid: tuple[np.ndarray, ...]
    T_grid_lidar: np.ndarray
    optical_frames: bool


class PoseSource(Protocol):
    """What the node asks for each frame."""

    description: str

    def poses(self, camera_frames: Sequence[str], lidar_frame: str, grid_frame: str) -> Poses:
        """Raises LookupError when a transform is not available (the frame is rejected)."""
        ...


class FixedPoses:
    """Poses from parameters or a calibration file, whatever the frame names."""

    def __init__(self, T_cam_lidar: Sequence[np.ndarray], T_grid_lidar: np.ndarray, description: str) -> None:
        T_lidar_grid = np.linalg.inv(T_grid_lidar)
        self.T_cam_lidar = list(T_cam_lidar)
        self.result = Poses(tuple(T @ T_lidar_grid for T in T_cam_lidar), T_grid_lidar, optical_frames=False)
        self.description = description

    def poses(self, camera_frames: Sequence[str], lidar_frame: str, grid_frame: str) -> Poses:
        if len(camera_frames) != len(self.result.T_cam_grid):
            raise LookupError(f"{len(camera_frames)} cameras but {len(self.result.T_cam_grid)} extrinsics given")
        return self.result


class TransformBuffer(Protocol):
    """The part of ``tf2_ros.Buffer`` used here."""

    def lookup_transform(self, target_frame: str, source_frame: str, time: Any, timeout: Any = ...) -> Any: ...


class TfPoses:
    """Poses from TF, cached per frame pair until :meth:`invalidate` (a ``/tf_static`` change).

    Args:
        buffer: a ``tf2_ros.Buffer`` filled by a ``TransformListener``.
        timeout: seconds the first lookup of a pair may wait; later lookups of a missing pair do not wait.
        fallback: used while TF lacks a camera transform (one camera, LiDAR grid), else LookupError.
        warn: called with a message when the fallback is used.
    """

    def __init__(self, buffer: TransformBuffer, timeout: float, description: str, fallback: FixedPoses | None = None,
                 warn: Callable[[str], None] = lambda _: None) -> None:  # fmt: skip
        self.buffer, self.timeout, self.fallback, self.warn = buffer, timeout, fallback, warn
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._waited: set[tuple[str, str]] = set()
        self.lookups = 0  # TF lookups made (a cached pair makes none)
        self.description = f"{description} (cached per frame pair until /tf_static changes)" + (
            f", fallback {fallback.description}" if fallback else ""
        )

    def invalidate(self) -> None:
        """Forget the cached transforms (called when ``/tf_static`` changes); the next frame looks them up again."""
        self._cache.clear()

    def transform(self, target: str, source: str) -> np.ndarray:
        """(4, 4) T_target<-source (identity for one frame); raises LookupError."""
        if target == source:
            return np.eye(4)
        from rclpy.duration import Duration
        from rclpy.time import Time

        pair = (target, source)
        T = self._cache.get(pair)
        if T is not None:
            return T
        wait = 0.0 if pair in self._waited else self.timeout
        self._waited.add(pair)
        self.lookups += 1
        try:  # Time() = the latest transform: a rigid mount's static TF
            tf = self.buffer.lookup_transform(target, source, Time(), timeout=Duration(seconds=wait))
        except Exception as exc:  # tf2 raises several types (LookupException, ConnectivityException, ...)
            raise LookupError(f"no transform {target} <- {source}: {exc}") from exc
        T = self._cache[pair] = transform_matrix(tf.transform)
        return T

    def poses(self, camera_frames: Sequence[str], lidar_frame: str, grid_frame: str) -> Poses:
        T_grid_lidar = self.transform(grid_frame, lidar_frame)
        try:
            cams = tuple(self.transform(frame, grid_frame) for frame in camera_frames)
        except LookupError as exc:
            if self.fallback is None:
                raise
            self.warn(f"{exc}; using {self.fallback.description}")
            return self.fallback.poses(camera_frames, lidar_frame, grid_frame)
        return Poses(cams, T_grid_lidar, optical_frames=True)


def _per_camera(values: Sequence[float], size: int, n: int, name: str) -> list[Sequence[float]]:
    if len(values) != size * n:
        raise ValueError(f"{name} must have {size} values per camera ({n} cameras: {size * n}), got {len(values)}")
    return [values[i * size : (i + 1) * size] for i in range(n)]


def grid_from_lidar(params: ExtrinsicsParams, grid_kind: str) -> np.ndarray:
    """T_grid<-lidar of the non-TF sources: identity for a LiDAR grid, ``extrinsics.grid_from_lidar`` for an ego
    grid (StartupError when it is not given)."""
    if grid_kind == "lidar":
        return np.eye(4)
    if not any(params.grid_from_lidar):
        raise StartupError(
            "the checkpoint's grid is in the ego frame: give extrinsics.grid_from_lidar (T_grid<-lidar, 16 values) "
            "or use extrinsics.source tf"
        )
    try:
        return from_matrix(params.grid_from_lidar, "extrinsics.grid_from_lidar")
    except ValueError as exc:
        raise StartupError(f"parameter {exc}") from exc


def resolve(params: ExtrinsicsParams, num_cameras: int, grid_kind: str, node: Any,
            warn: Callable[[str], None]) -> PoseSource:  # fmt: skip
    """The source ``params`` ask for.

    Args:
        num_cameras: cameras of the node (the parameter sources need one transform each).
        grid_kind: the checkpoint's grid frame, "lidar" or "ego".
        node: the rclpy node a tf2_ros listener subscribes with (source tf); it keeps the listener alive.
        warn: how fallbacks are reported (e.g. a throttled log).

    Raises:
        StartupError: a bad value, an unreadable calibration file, a missing T_grid<-lidar for an ego grid.
    """
    fallback = None
    try:
        if params.source == "xyz_quaternion":
            xyz = _per_camera(params.xyz, 3, num_cameras, "extrinsics.xyz")
            quat = _per_camera(params.quaternion, 4, num_cameras, "extrinsics.quaternion")
            Ts = [from_xyz_quaternion(t, q) for t, q in zip(xyz, quat)]
            return FixedPoses(Ts, grid_from_lidar(params, grid_kind), "parameters extrinsics.xyz + quaternion")
        if params.source == "matrix":
            Ts = [from_matrix(m) for m in _per_camera(params.matrix, 16, num_cameras, "extrinsics.matrix")]
            return FixedPoses(Ts, grid_from_lidar(params, grid_kind), "parameter extrinsics.matrix")
    except ValueError as exc:
        raise StartupError(f"parameter {exc}") from exc
    if params.calib_file:
        if num_cameras != 1:
            raise StartupError(f"extrinsics.calib_file gives one camera's Tr; {num_cameras} cameras need tf or matrix")
        fallback = FixedPoses([_calib_file(params.calib_file)], grid_from_lidar(params, grid_kind),
                              f"calib_file {params.calib_file}")  # fmt: skip
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
        return FixedPoses(fallback.T_cam_lidar, fallback.result.T_grid_lidar,
                          f"{fallback.description} (tf2_ros not importable)")  # fmt: skip
    buffer = Buffer(node=node)
    node.tf_listener = TransformListener(buffer, node)  # kept alive with the node
    return TfPoses(buffer, params.tf_timeout, "tf: tf2_ros", fallback, warn)


def _calib_file(path: str) -> np.ndarray:
    try:
        return read_kitti_calib(path).T_cam_lidar
    except (ValueError, OSError) as exc:
        raise StartupError(f"parameter extrinsics.calib_file: {exc}") from exc
