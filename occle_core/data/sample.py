"""The typed sample every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from occle_core.geometry import Calib

GRID_FRAMES = ("lidar", "ego")
DT_COLUMN = 4  # multi-frame points: the column of each point's time offset (x, y, z, intensity, dt)
PAST_VIEW_MARK = "@-"  # camera name of a past frame's view: "<camera>@-<frames back>" (data/multiframe.py)


def past_view_names(camera: str, count: int) -> list[str]:
    """Names of the views of ``camera`` 1..``count`` frames back: ``["image_2@-1", "image_2@-2", ...]``."""
    return [f"{camera}{PAST_VIEW_MARK}{m}" for m in range(1, int(count) + 1)]


def is_past_view(name: str) -> bool:
    """Whether a camera name is a past frame's view (:func:`past_view_names`)."""
    return PAST_VIEW_MARK in name


@dataclass
class CameraView:
    """One camera of a frame.

    Attributes:
        name: the camera's channel name (``"CAM_FRONT"``, ``"image_2"``).
        image: (H, W, 3) uint8 RGB.
        calib: camera model; ``calib.T_cam_lidar`` maps the sample's *grid frame* (see ``Sample.grid_frame``)
            to this camera, so pixels = ``P @ T_cam_lidar @ X_grid``.
        pseudo2d: (H, W) uint8 2D pseudo labels (learning classes, 255 = none); None when absent.
    """

    name: str
    image: np.ndarray
    calib: Calib
    pseudo2d: np.ndarray | None = None


@dataclass
class Sample:
    """One frame: cameras, LiDAR scan in the grid frame, and (optional) labels.

    Attributes:
        frame_id: ``"<sequence>/<frame>"`` or a dataset token.
        points: (N, >=4) float32 x, y, z, intensity[, ...] in the grid frame.
        cameras: every camera of the frame, the front camera first (the single-camera network takes it); samples
            with past images end with the views of past frames, ``<front>@-1`` ... (:func:`past_view_names`, their
            calibration maps this frame's grid to the past image: ``data/multiframe.py``).
        grid_frame: ``"lidar"`` (SemanticKITTI / KITTI: the grid is fixed to the LiDAR) or ``"ego"``
            (nuScenes / Occ3D: the grid is fixed to the vehicle, x forward, y left, z up).
        voxel_labels: (X, Y, Z) uint8 learning classes, 255 = ignored; None when unlabelled.
        invalid: (X, Y, Z) bool voxels never observed (excluded from losses/metrics); None if unknown.
        camera_mask: (X, Y, Z) bool voxels seen by the camera (Occ3D); None when absent.
        pose: (4, 4) grid-frame-to-world pose; None when absent.
        label_mask: (X, Y, Z) bool voxels whose label may supervise training (the label budget);
            None means every valid labelled voxel.
        timestamp_us: the frame's time in microseconds; None when unknown.
        extras: reader-specific values; ``"lidar_origin"``: the LiDAR's position (x, y, z) in the grid frame, where
            its rays start (set by the ego-frame readers, absent = the grid origin; read it through
            :func:`lidar_origin`); ``"dt_column"``: the points column holding each point's time offset in seconds
            (0 for the frame's own scan, < 0 for past scans merged in; multi-frame samples, ``data/multiframe.py``).
    """

    frame_id: str
    points: np.ndarray
    cameras: list[CameraView]
    grid_frame: str = "lidar"
    voxel_labels: np.ndarray | None = None
    invalid: np.ndarray | None = None
    camera_mask: np.ndarray | None = None
    pose: np.ndarray | None = None
    label_mask: np.ndarray | None = None
    timestamp_us: int | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError(f"sample {self.frame_id}: cameras must hold at least one camera")
        if self.grid_frame not in GRID_FRAMES:
            raise ValueError(
                f"sample {self.frame_id}: grid_frame must be one of {GRID_FRAMES}, got {self.grid_frame!r}"
            )

    @classmethod
    def single(
        cls,
        frame_id: str,
        image: np.ndarray,
        points: np.ndarray,
        calib: Calib,
        pseudo2d: np.ndarray | None = None,
        name: str = "image_2",
        **kwargs,
    ) -> Sample:
        """A one-camera sample (the KITTI case)."""
        return cls(frame_id, points, [CameraView(name, image, calib, pseudo2d)], **kwargs)

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 image of the front camera."""
        return self.cameras[0].image

    @property
    def calib(self) -> Calib:
        """Calibration of the front camera."""
        return self.cameras[0].calib

    @property
    def pseudo2d(self) -> np.ndarray | None:
        """2D pseudo labels of the front camera."""
        return self.cameras[0].pseudo2d


def lidar_origin(sample: Sample) -> tuple[float, float, float]:
    """Where the rays of ``sample``'s scan start, in its grid frame: ``extras["lidar_origin"]`` (the nuScenes /
    Occ3D readers and ego-frame bag frames set it to the LiDAR mount), else (0, 0, 0) (the grid is the LiDAR frame:
    SemanticKITTI / KITTI).

    Raises:
        ValueError: ``extras["lidar_origin"]`` is not 3 finite numbers.
    """
    origin = np.asarray(sample.extras.get("lidar_origin", (0.0, 0.0, 0.0)), np.float64).reshape(-1)  # (3,)
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise ValueError(
            f"sample {sample.frame_id}: extras['lidar_origin'] must be 3 finite numbers (x, y, z in the grid frame), "
            f"got {sample.extras['lidar_origin']!r}"
        )
    return (float(origin[0]), float(origin[1]), float(origin[2]))
