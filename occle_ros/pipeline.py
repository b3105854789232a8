"""The node's work on one synchronised frame, as separate steps.

:class:`occle_ros.node.OccleNode` runs them in order (:meth:`~occle_ros.node.OccleNode.process`) and
``occle_bench.bench_pipeline`` times each of them, so the benchmark measures the node's own code:

    read_raw (serialized Image / PointCloud2 -> messages, pixels and points not copied)
    -> cloud_points -> limit_points (max_range, max_points) -> to_grid (T_grid<-lidar)
    -> image_rgb (per camera: raw or JPEG / PNG) -> frame_calib (per camera)
    -> predict (the predictor: preprocessing + network + class decision)
    -> occle_ros.outputs (publish region, voxel cloud, markers, bird's-eye views) -> publish

Every step raises :class:`FrameRejectedError` for bad input, with the diagnostics counter key as its reason.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from occle_core.geometry import Calib, VoxelGrid
from occle_core.labels import ClassTable
from occle_ros.msgs import cdr
from occle_ros.msgs.base import ConversionError
from occle_ros.msgs.camera_info import camera_info_projection
from occle_ros.msgs.compressed import compressed_to_rgb
from occle_ros.msgs.image import image_to_rgb
from occle_ros.msgs.pointcloud import pointcloud2_to_xyzi


class Stream(enum.Enum):
    """The kinds of the node's inputs (the value orders one camera's messages: image, camera_info, then the
    cloud; the node's synchroniser index of camera i's image / camera_info is 2i / 2i + 1, of the cloud 2N)."""

    IMAGE = 0
    CAMERA_INFO = 1
    POINTS = 2

    @property
    def topic(self) -> str:
        return self.name.lower()


class FrameRejectedError(Exception):
    """A message or frame skipped because of bad input; ``reason`` is the diagnostics counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class OccupancyPredictor(Protocol):
    """What the node needs of a predictor (:class:`occle_core.predictor.Predictor` is one).

    ``grid_frame`` ("lidar" | "ego") and ``camera_names`` (the checkpoint's camera set, front first) are read with
    defaults "lidar" and None (any single camera) for predictors that predate the multi-camera API;
    ``time_features`` (a multi-frame checkpoint, refused by :func:`require_single_frame`) with default False, and
    ``config.data.past_images`` (past camera views, refused too) with default 0.
    """

    grid: VoxelGrid
    classes: ClassTable
    grid_frame: str
    camera_names: Sequence[str]

    def predict(self, image: Any, points: np.ndarray, calib: Calib | None = None) -> np.ndarray:
        """``predict(image (H, W, 3) uint8, points, calib)`` for one camera, ``predict(views, points)`` with
        ``views`` a list of ``(image, Calib)`` for several; points (N, 4) float32 x y z intensity in the grid frame
        -> (X, Y, Z) uint8 labels of ``grid``. Raises ValueError for input it refuses."""
        ...


#: raw subscriptions: stream -> (zero-copy reader, message type for rclpy's fallback, rejection reason)
_RAW_READERS = {
    Stream.IMAGE: (cdr.deserialize_image, Image, "image_invalid"),
    Stream.POINTS: (cdr.deserialize_pointcloud2, PointCloud2, "cloud_invalid"),
}


def read_raw(stream: Stream, data: bytes) -> Any:
    """Serialized ``image`` / ``points`` bytes -> :class:`~occle_ros.msgs.cdr.RawImage` /
    :class:`~occle_ros.msgs.cdr.RawPointCloud2` (pixels / points not copied); an encapsulation other than plain
    CDR goes through rclpy's deserialiser instead."""
    read, msg_type, reason = _RAW_READERS[stream]
    try:
        try:
            return read(data)
        except cdr.UnsupportedEncapsulationError as exc:  # not plain CDR: let rclpy read it (with copies)
            try:
                return deserialize_message(data, msg_type)
            except Exception as inner:  # rclpy raises several types for bytes it cannot read
                raise ConversionError(f"{exc}; rclpy could not read it either: {inner}") from inner
    except ConversionError as exc:
        raise FrameRejectedError(reason, f"{stream.topic} message skipped ({reason}): {exc}") from exc


def cloud_points(cloud: PointCloud2, intensity_scale: float) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity of ``cloud`` (finite points; may be a read-only view of its bytes)."""
    try:
        return pointcloud2_to_xyzi(cloud, intensity_scale=intensity_scale)
    except ConversionError as exc:
        raise FrameRejectedError("cloud_invalid", str(exc)) from exc


def limit_points(points: np.ndarray, max_range: float, max_points: int, seed: int) -> tuple[np.ndarray, bool]:
    """(N, 4) points -> (M, 4): those within ``max_range`` m of the LiDAR (0 = no limit), then a random subset of
    ``max_points`` (seeded: the same cloud gives the same subset) when more remain. Returns (points, subsampled).
    Raises FrameRejectedError (``cloud_empty``) when no point remains."""
    if max_range > 0:
        points = points[np.einsum("ij,ij->i", points[:, :3], points[:, :3]) <= max_range**2]
    if points.shape[0] == 0:
        raise FrameRejectedError("cloud_empty", "PointCloud2 has no finite points (in range)")
    if points.shape[0] <= max_points:
        return points, False
    rng = np.random.default_rng(seed)
    return points[np.sort(rng.choice(points.shape[0], max_points, replace=False))], True


def to_grid(points: np.ndarray, T_grid_lidar: np.ndarray) -> np.ndarray:
    """(N, 4) LiDAR-frame points -> the same in the grid frame (returned as is when T is the identity)."""
    if np.array_equal(T_grid_lidar, np.eye(4)):
        return points
    out = np.empty(points.shape, np.float32)
    out[:, :3] = points[:, :3] @ T_grid_lidar[:3, :3].T.astype(np.float32) + T_grid_lidar[:3, 3].astype(np.float32)
    out[:, 3:] = points[:, 3:]
    return out


def image_rgb(image: Image | CompressedImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a raw ``Image`` or a JPEG / PNG ``CompressedImage``."""
    try:
        return compressed_to_rgb(image) if hasattr(image, "format") else image_to_rgb(image)
    except ConversionError as exc:
        raise FrameRejectedError("image_invalid", str(exc)) from exc


def frame_calib(info: CameraInfo, image_hw: tuple[int, int], T_cam_grid: np.ndarray, optical: bool = False) -> Calib:
    """The camera model of an (H, W) image: ``info``'s projection and the (4, 4) grid -> camera transform.
    ``optical``: T comes from TF (the camera's own optical frame): P's translation column is dropped, since TF
    already holds the offset it encodes (a rectified stereo baseline)."""
    try:
        P = camera_info_projection(info)
    except ConversionError as exc:
        raise FrameRejectedError("camera_info_invalid", str(exc)) from exc
    if optical:
        P = np.concatenate([P[:, :3], np.zeros((3, 1))], axis=1)
    h, w = image_hw
    if (info.height, info.width) != (0, 0) and (info.height, info.width) != (h, w):
        raise FrameRejectedError(
            "image_size_mismatch",
            f"image is {w}x{h} but camera_info is {info.width}x{info.height} (expected the same size)",
        )
    try:
        return Calib(P, T_cam_grid, (h, w))
    except ValueError as exc:
        raise FrameRejectedError("calib_invalid", str(exc)) from exc


def distortion_warning(info: CameraInfo, topic: str) -> str | None:
    """A warning when ``info`` has a non-zero D on an image ``topic`` whose name does not say it is rectified."""
    if "rect" in topic.lower() or not np.any(np.asarray(info.d, np.float64)):
        return None
    return (f"camera_info of {topic} has distortion D={list(np.round(info.d, 4))} but the topic does not look "
            f"rectified: the node assumes rectified images (set warn_distortion false if they are)")  # fmt: skip


def require_single_frame(predictor: OccupancyPredictor) -> None:
    """Raise ``ValueError`` when ``predictor`` wants multi-frame input: the node feeds each synchronised LiDAR scan
    alone (points without a time column) with the cameras' current images, and neither accumulates past scans nor
    buffers past images (a checkpoint with ``data.past_images`` > 0 takes past views, whatever its time channels)."""
    data = getattr(getattr(predictor, "config", None), "data", None)
    past_images = getattr(data, "past_images", 0)
    if past_images:
        raise ValueError(
            f"the checkpoint was trained with past camera images (data.past_images {past_images}, camera set "
            f"{list(getattr(predictor, 'camera_names', []))}), but occle_node feeds the current image of each camera "
            "and does not buffer past images: use a single-frame checkpoint (data.past_images 0, data.past_frames 0)"
        )
    if not getattr(predictor, "time_features", False):
        return
    past = getattr(data, "past_frames", "> 0")
    raise ValueError(
        f"the checkpoint was trained on multi-frame input (model.time_features true, data.past_frames {past}), but "
        "occle_node feeds one LiDAR scan per frame and does not accumulate past scans: use a single-frame "
        "checkpoint (data.past_frames 0)"
    )


def predict(predictor: OccupancyPredictor, views: list[tuple[np.ndarray, Calib]], points: np.ndarray) -> np.ndarray:
    """(X, Y, Z) uint8 labels of one frame: the single-camera call for one view, the multi-camera one otherwise."""
    try:
        if len(views) == 1:
            return predictor.predict(views[0][0], points, views[0][1])
        return predictor.predict(views, points)
    except ValueError as exc:
        raise FrameRejectedError("predictor_rejected", str(exc)) from exc
