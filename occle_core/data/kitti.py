"""Readers of KITTI raw (synced + rectified drives) and KITTI object (3D detection), as released.

KITTI raw, ``<root>`` holds the date folders::

    <date>/calib_cam_to_cam.txt     S_rect_0c (W H), R_rect_00 (3x3), P_rect_0c (3x4) per camera, calib_time
    <date>/calib_velo_to_cam.txt    R (3x3), T (3): velodyne -> unrectified cam0
    <date>/calib_imu_to_velo.txt    R (3x3), T (3): IMU/GPS -> velodyne (needed for poses only)
    <date>/<drive>_sync/velodyne_points/data/NNNNNNNNNN.bin   float32 (N, 4) x y z reflectance
    <date>/<drive>_sync/image_02/data/NNNNNNNNNN.png          rectified left colour image
    <date>/<drive>_sync/oxts/data/NNNNNNNNNN.txt              one line of 30 OXTS values (dataformat.txt)

``<drive>`` is ``<date>_drive_DDDD``, so the date is the drive name's first 10 characters.

KITTI object, ``<root>/training`` or ``<root>/testing``::

    velodyne/NNNNNN.bin   image_2/NNNNNN.png   calib/NNNNNN.txt (P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo)
    label_2/NNNNNN.txt    one object per line: type truncated occluded alpha left top right bottom h w l x y z ry

Both map LiDAR points to image_2 pixels by ``P2 @ R0_rect @ Tr_velo_to_cam`` (R0_rect expanded to 4x4): the
returned :class:`Calib` holds ``P = P2`` and ``T_cam_lidar = R0_rect @ Tr_velo_to_cam``, i.e. the LiDAR frame
to the rectified cam0 frame, which is also the frame of the object labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from occle_core.data.kitti_calib import read_imu_to_velo, read_object_calib, read_raw_calib
from occle_core.data.sample import Sample
from occle_core.data.semantic_kitti import read_image, read_points

EARTH_RADIUS_M = 6378137.0  # the KITTI devkit's Mercator earth radius
OXTS_VALUES = 30  # lat lon alt roll pitch yaw vn ve vf vl vu ax ay az af al au wx wy wz wf wl wu pos_acc vel_acc
# navstat numsats posmode velmode orimode (the last five are integers)
LABEL_VALUES = 15  # a label_2 line; 16 with a detection score
RAW_INDEX_DIGITS = 10
OBJECT_INDEX_DIGITS = 6


# ------------------------------------------------------------------------------------------------------- OXTS


def read_oxts(path: str | Path) -> np.ndarray:
    """Read one ``oxts/data/NNNNNNNNNN.txt`` -> (30,) float64 (the last five values are integer flags)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OXTS file not found: {path}")
    fields = path.read_text().split()
    if len(fields) != OXTS_VALUES:
        raise ValueError(f"{path}: {len(fields)} values, expected {OXTS_VALUES} (see the devkit's dataformat.txt)")
    try:
        return np.array([float(v) for v in fields], np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric OXTS value") from exc


def _rotations(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(N, 3, 3) ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` of (N,) angles in radians."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    return np.stack(
        [
            np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
            np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
            np.stack([-sp, cp * sr, cp * cr], -1),
        ],
        axis=-2,
    )


def oxts_poses(packets: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """IMU poses ``T_world_imu`` of OXTS packets, as in the KITTI devkit / pykitti.

    The translation is a Mercator projection with the scale ``cos(lat0)`` of the drive's first frame,
    relative to that first frame's position (so the first pose has zero translation); the rotation is
    ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` in the East-North-Up frame.

    Args:
        packets: (N, 30) OXTS values.
        first: (30,) the drive's first packet (scale and origin); default ``packets[0]``.

    Returns:
        (N, 4, 4) float64 poses.
    """
    packets = np.atleast_2d(np.asarray(packets, np.float64))
    first = packets[0] if first is None else np.asarray(first, np.float64)

    def mercator(p: np.ndarray) -> np.ndarray:  # (N, 30) -> (N, 3)
        scale = np.cos(np.deg2rad(first[0]))
        tx = scale * p[:, 1] * np.pi * EARTH_RADIUS_M / 180.0
        ty = scale * EARTH_RADIUS_M * np.log(np.tan((90.0 + p[:, 0]) * np.pi / 360.0))
        return np.stack([tx, ty, p[:, 2]], axis=-1)

    T = np.tile(np.eye(4), (len(packets), 1, 1))
    T[:, :3, :3] = _rotations(packets[:, 3], packets[:, 4], packets[:, 5])
    T[:, :3, 3] = mercator(packets) - mercator(first[None])
    return T


# ------------------------------------------------------------------------------------------------------ labels


@dataclass(frozen=True)
class KittiObjects:
    """The objects of one ``label_2`` file, one row per object.

    Attributes:
        type: (N,) class names (``Car``, ``Pedestrian``, ..., ``DontCare``).
        truncated: (N,) float in [0, 1] (-1 for DontCare).
        occluded: (N,) int 0 visible, 1 partly, 2 largely occluded, 3 unknown (-1 for DontCare).
        alpha: (N,) observation angle in radians.
        bbox: (N, 4) 2D box in image_2 pixels: left, top, right, bottom.
        dimensions: (N, 3) height, width, length in metres.
        location: (N, 3) bottom centre x, y, z in the rectified camera frame (metres).
        rotation_y: (N,) yaw around the camera's y axis in radians.
        score: (N,) detection confidence (result files only), else None.
    """

    type: tuple[str, ...]
    truncated: np.ndarray
    occluded: np.ndarray
    alpha: np.ndarray
    bbox: np.ndarray
    dimensions: np.ndarray
    location: np.ndarray
    rotation_y: np.ndarray
    score: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.type)

    def concat(self, other: KittiObjects) -> KittiObjects:
        """These objects followed by ``other``'s (scores kept only when both have them)."""
        score = None
        if self.score is not None and other.score is not None:
            score = np.concatenate([self.score, other.score])
        arrays = ("truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y")
        joined = {k: np.concatenate([getattr(self, k), getattr(other, k)]) for k in arrays}
        return KittiObjects(type=self.type + other.type, score=score, **joined)

    def corners_camera(self) -> np.ndarray:
        """(N, 8, 3) box corners in the rectified camera frame: the bottom face first, then the top face."""
        h, w, l = (self.dimensions[:, i, None] for i in range(3))  # (N, 1) each
        x = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2  # (N, 8)
        y = np.array([0, 0, 0, 0, -1, -1, -1, -1]) * h  # camera y points down: the top is at -h
        z = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
        c, s = np.cos(self.rotation_y)[:, None], np.sin(self.rotation_y)[:, None]
        # rotation about y: x' = c x + s z, z' = -s x + c z
        corners = np.stack([c * x + s * z, y, -s * x + c * z], axis=-1)
        return corners + self.location[:, None, :]

    def corners_lidar(self, T_cam_lidar: np.ndarray) -> np.ndarray:
        """(N, 8, 3) box corners in the LiDAR frame, ``T_cam_lidar`` = ``R0_rect @ Tr_velo_to_cam`` (4, 4)."""
        T = np.linalg.inv(np.asarray(T_cam_lidar, np.float64))
        return self.corners_camera() @ T[:3, :3].T + T[:3, 3]

    def points_in_boxes(self, points: np.ndarray, T_cam_lidar: np.ndarray) -> np.ndarray:
        """(P, N) bool: which LiDAR points (P, >=3) lie inside which box (faces included)."""
        T = np.asarray(T_cam_lidar, np.float64)
        cam = np.asarray(points, np.float64)[:, :3] @ T[:3, :3].T + T[:3, 3]  # (P, 3) rectified camera frame
        d = cam[:, None, :] - self.location[None]  # (P, N, 3)
        c, s = np.cos(self.rotation_y), np.sin(self.rotation_y)  # (N,)
        # into each box's frame: the inverse of the corners' rotation about y
        lx = c * d[..., 0] - s * d[..., 2]
        lz = s * d[..., 0] + c * d[..., 2]
        h, w, l = self.dimensions.T
        return (np.abs(lx) <= l / 2) & (np.abs(lz) <= w / 2) & (d[..., 1] <= 0) & (d[..., 1] >= -h)


def read_object_labels(path: str | Path) -> KittiObjects:
    """Read a KITTI object ``label_2/NNNNNN.txt`` (15 values a line, 16 with a score).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file, line and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    types: list[str] = []
    rows: list[list[float]] = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (LABEL_VALUES, LABEL_VALUES + 1):
            raise ValueError(f"{path}:{line_no}: {len(fields)} values, expected {LABEL_VALUES} (or 16 with a score)")
        if rows and len(fields) != len(rows[0]) + 1:
            raise ValueError(f"{path}:{line_no}: {len(fields)} values, earlier lines have {len(rows[0]) + 1}")
        try:
            rows.append([float(v) for v in fields[1:]])
        except ValueError as exc:
            raise ValueError(f"{path}:{line_no}: non-numeric value after the type {fields[0]!r}") from exc
        types.append(fields[0])
    a = np.asarray(rows, np.float64).reshape(len(rows), -1) if rows else np.zeros((0, LABEL_VALUES - 1))
    return KittiObjects(
        type=tuple(types),
        truncated=a[:, 0],
        occluded=a[:, 1].astype(np.int64),
        alpha=a[:, 2],
        bbox=a[:, 3:7],
        dimensions=a[:, 7:10],
        location=a[:, 10:13],
        rotation_y=a[:, 13],
        score=a[:, 14] if a.shape[1] == LABEL_VALUES else None,
    )


# ---------------------------------------------------------------------------------------------------- datasets


def _stems(folder: Path, suffix: str) -> list[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    return sorted(p.stem for p in folder.glob(f"*{suffix}"))


def _index(index: int | str, digits: int) -> str:
    try:
        return f"{int(index):0{digits}d}"
    except ValueError as exc:
        raise ValueError(f"frame index must be an integer, got {index!r}") from exc


class KittiRawDataset(Dataset):
    """Frames of KITTI raw ``*_sync`` drives as :class:`Sample` (image_02, LiDAR frame grid, pose from OXTS).

    ``Sample.pose`` is the LiDAR pose ``T_world_imu @ inv(T_velo_imu)`` in the drive's first-frame ENU frame when
    the drive has ``oxts/data``; None otherwise. ``frame_id`` is ``<drive>_sync/NNNNNNNNNN``.
    """

    def __init__(self, root: str | Path, drives: Sequence[str] | None = None) -> None:
        """Args: root: the folder holding the date folders; drives: ``<date>_drive_DDDD_sync`` names (all if None)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"KITTI raw root not found: {self.root}")
        if drives is None:
            drives = sorted(p.name for p in self.root.glob("*/*_sync") if p.is_dir())
        self.drives = list(drives)
        self.frames = [
            (d, stem) for d in self.drives for stem in _stems(self.drive_dir(d) / "velodyne_points" / "data", ".bin")
        ]

    def drive_dir(self, drive: str) -> Path:
        """``<root>/<date>/<drive>``; the date is the drive name's first 10 characters."""
        if not drive.endswith("_sync"):
            raise ValueError(f"KITTI raw drive must be named <date>_drive_DDDD_sync, got {drive!r}")
        path = self.root / drive[:10] / drive
        if not path.is_dir():
            raise FileNotFoundError(f"KITTI raw drive folder not found: {path}")
        return path

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Sample:
        return self.sample(*self.frames[i])

    def sample(self, drive: str, index: int | str) -> Sample:
        """The frame ``index`` of ``drive``."""
        d = self.drive_dir(drive)
        name = _index(index, RAW_INDEX_DIGITS)
        points = read_points(d / "velodyne_points" / "data" / f"{name}.bin")
        image = read_image(d / "image_02" / "data" / f"{name}.png")
        calib = read_raw_calib(d.parent, image.shape[:2])
        return Sample.single(
            f"{drive}/{name}", image, points, calib, name="image_02", grid_frame="lidar", pose=self.pose(drive, name)
        )

    def pose(self, drive: str, index: int | str) -> np.ndarray | None:
        """(4, 4) LiDAR-to-world pose of a frame (Mercator scale and origin of the drive's first OXTS frame)."""
        oxts = self.drive_dir(drive) / "oxts" / "data"
        if not oxts.is_dir():
            return None
        first = _stems(oxts, ".txt")
        if not first:
            raise FileNotFoundError(f"{oxts}: no OXTS .txt file")
        packet = read_oxts(oxts / f"{_index(index, RAW_INDEX_DIGITS)}.txt")
        T_world_imu = oxts_poses(packet[None], read_oxts(oxts / f"{first[0]}.txt"))[0]
        return T_world_imu @ np.linalg.inv(read_imu_to_velo(self.root / drive[:10]))


class KittiObjectDataset(Dataset):
    """Frames of the KITTI object benchmark as :class:`Sample`; labelled frames carry ``extras["objects"]``.

    ``extras["objects"]`` is the frame's :class:`KittiObjects` when ``label_2/NNNNNN.txt`` exists.
    ``frame_id`` is ``NNNNNN``.
    """

    def __init__(self, root: str | Path, split: str = "training") -> None:
        """Args: root: the folder holding ``training`` / ``testing``; split: one of the two."""
        if split not in ("training", "testing"):
            raise ValueError(f"KITTI object split must be 'training' or 'testing', got {split!r}")
        self.dir = Path(root) / split
        self.frames = _stems(self.dir / "velodyne", ".bin")

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Sample:
        return self.sample(self.frames[i])

    def sample(self, frame: int | str) -> Sample:
        """The frame ``NNNNNN``."""
        name = _index(frame, OBJECT_INDEX_DIGITS)
        points = read_points(self.dir / "velodyne" / f"{name}.bin")
        image = read_image(self.dir / "image_2" / f"{name}.png")
        calib = read_object_calib(self.dir / "calib" / f"{name}.txt", image.shape[:2])
        label = self.dir / "label_2" / f"{name}.txt"
        extras = {"objects": read_object_labels(label)} if label.is_file() else {}
        return Sample.single(name, image, points, calib, name="image_2", grid_frame="lidar", extras=extras)
