"""KITTI calibration files as released: odometry / SemanticKITTI ``calib.txt``, KITTI raw ``calib_*_to_*.txt`` and
KITTI object ``calib/NNNNNN.txt``, all ``key: v v v`` text.

Every reader returns the calibration of image_2 as :class:`~occle_core.geometry.Calib` with ``P = P2`` (the
rectified camera 2) and ``T_cam_lidar`` the LiDAR frame -> rectified cam0 frame:

- odometry: ``Tr`` (already to the rectified cam0 frame);
- raw: ``R_rect_00 @ [R | T]`` of ``calib_velo_to_cam.txt``;
- object: ``R0_rect @ Tr_velo_to_cam`` (R0_rect expanded to 4x4), so pixels = ``P2 @ R0_rect @ Tr_velo_to_cam @ X``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occle_core.geometry import Calib

TEXT_KEYS = ("calib_time",)  # text-valued keys of the released calibration files


def read_calib_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a KITTI ``key: v v v`` calibration text file into float64 arrays.

    The text-valued keys of the released files (``calib_time: 09-Jan-2012 13:57:47``) are skipped, as in the
    devkit; any other non-numeric value is an error.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a non-empty line without ``key:``, or a non-numeric value, naming the file, line and key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file not found: {path}")
    values: dict[str, np.ndarray] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, colon, rest = line.partition(":")
        if not colon:
            raise ValueError(f"{path}:{line_no}: expected 'key: values', got {line[:40]!r}")
        key = key.strip()
        if key in TEXT_KEYS:
            continue
        try:
            values[key] = np.array([float(v) for v in rest.split()], np.float64)
        except ValueError as exc:
            raise ValueError(f"{path}:{line_no}: key {key!r} has a non-numeric value") from exc
    return values


def calib_matrix(values: dict[str, np.ndarray], key: str, shape: tuple[int, ...], path: str | Path) -> np.ndarray:
    """``values[key]`` reshaped to ``shape``; a ValueError naming the file and key if absent or of the wrong size."""
    if key not in values:
        raise ValueError(f"{path}: missing key {key!r} ({int(np.prod(shape))} values expected)")
    v = values[key]
    if v.size != int(np.prod(shape)):
        raise ValueError(f"{path}: key {key!r} has {v.size} values, expected {int(np.prod(shape))}")
    return v.reshape(shape)


def _rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(4, 4) transform of a (3, 3) rotation and a (3,) translation."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def _rect4(R0: np.ndarray) -> np.ndarray:
    """The (3, 3) rectifying rotation expanded to (4, 4)."""
    return _rigid(R0, np.zeros(3))


def read_raw_calib(date_dir: str | Path, image_size: tuple[int, int], camera: str = "02") -> Calib:
    """Calibration of a raw drive's camera ``camera`` from ``calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt``.

    Returns:
        ``Calib(P_rect_<camera>, R_rect_00 @ [R | T], image_size)``.
    """
    date_dir = Path(date_dir)
    cam_path, velo_path = date_dir / "calib_cam_to_cam.txt", date_dir / "calib_velo_to_cam.txt"
    cam, velo = read_calib_file(cam_path), read_calib_file(velo_path)
    P = calib_matrix(cam, f"P_rect_{camera}", (3, 4), cam_path)
    R0 = calib_matrix(cam, "R_rect_00", (3, 3), cam_path)
    Tr = _rigid(calib_matrix(velo, "R", (3, 3), velo_path), calib_matrix(velo, "T", (3,), velo_path))
    return Calib(P, _rect4(R0) @ Tr, image_size)


def read_imu_to_velo(date_dir: str | Path) -> np.ndarray:
    """(4, 4) IMU -> velodyne transform of ``calib_imu_to_velo.txt``."""
    path = Path(date_dir) / "calib_imu_to_velo.txt"
    values = read_calib_file(path)
    return _rigid(calib_matrix(values, "R", (3, 3), path), calib_matrix(values, "T", (3,), path))


def read_object_calib(path: str | Path, image_size: tuple[int, int]) -> Calib:
    """Calibration of image_2 from a KITTI object ``calib/NNNNNN.txt``: ``Calib(P2, R0_rect @ Tr_velo_to_cam)``."""
    values = read_calib_file(path)
    P2 = calib_matrix(values, "P2", (3, 4), path)
    R0 = calib_matrix(values, "R0_rect", (3, 3), path)
    Tr = np.vstack([calib_matrix(values, "Tr_velo_to_cam", (3, 4), path), [0.0, 0.0, 0.0, 1.0]])
    return Calib(P2, _rect4(R0) @ Tr, image_size)


def read_kitti_calib(path: str | Path, image_size: tuple[int, int] = (376, 1241)) -> Calib:
    """Read a KITTI odometry / SemanticKITTI ``calib.txt`` (P0..P3 and Tr) into the calibration of image_2:
    ``Calib(P2, Tr)``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file and the key that is missing or malformed.
    """
    values = read_calib_file(path)
    P2 = calib_matrix(values, "P2", (3, 4), path)
    Tr = np.vstack([calib_matrix(values, "Tr", (3, 4), path), [0.0, 0.0, 0.0, 1.0]])
    return Calib(P2, Tr, image_size)


def write_kitti_calib(path: str | Path, calib: Calib, P0: np.ndarray | None = None) -> None:
    """Write a KITTI odometry ``calib.txt`` with P0..P3 and Tr (P2 = ``calib.P``).

    P0/P1/P3 are derived from P2 by removing / shifting its baseline term, as in KITTI (cam0 has zero
    offset, cam1/cam3 a stereo baseline of 0.54 m).
    """
    P2 = calib.P
    base = P2.copy() if P0 is None else np.asarray(P0, np.float64)
    if P0 is None:
        base[:, 3] = 0.0
    P1 = base.copy()
    P1[0, 3] = -0.54 * base[0, 0]
    P3 = P2.copy()
    P3[0, 3] = P2[0, 3] - 0.54 * P2[0, 0]
    rows = {"P0": base, "P1": P1, "P2": P2, "P3": P3, "Tr": calib.T_cam_lidar[:3]}
    text = "".join(f"{k}: " + " ".join(f"{v:.12e}" for v in m.reshape(-1)) + "\n" for k, m in rows.items())
    Path(path).write_text(text)
