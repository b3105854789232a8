"""Writers of KITTI raw and KITTI object replicas, in the released file formats that
:mod:`occle_core.data.kitti` reads (calibration ``key: values`` files with ``%.12e`` numbers as KITTI ships
them, OXTS lines, ``label_2`` lines with two decimals, float32 scans, PNG images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occle_core.data.kitti import OXTS_VALUES, KittiObjects
from occle_core.data.semantic_kitti import write_image, write_points

CALIB_TIME = "09-Jan-2012 13:57:47"
STEREO_BASELINE_M = 0.54  # cam0 -> cam1 / cam2 -> cam3 in the rectified frame


def write_calib_file(path: str | Path, rows: dict[str, np.ndarray | str]) -> Path:
    """Write ``key: v v v`` lines (numbers as ``%.12e``, strings as they are) and create the parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{k}: {v}" if isinstance(v, str) else f"{k}: " + " ".join(f"{x:.12e}" for x in np.asarray(v).reshape(-1))
        for k, v in rows.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _stereo(P2: np.ndarray) -> dict[str, np.ndarray]:
    """P0..P3 of a rectified rig whose P2 is given: cam0 without offset, cam1 / cam3 a baseline to the right."""
    P0 = P2.copy()
    P0[:, 3] = 0.0
    P1, P3 = P0.copy(), P2.copy()
    P1[0, 3] = -STEREO_BASELINE_M * P0[0, 0]
    P3[0, 3] = P2[0, 3] - STEREO_BASELINE_M * P2[0, 0]
    return {"0": P0, "1": P1, "2": P2, "3": P3}


# -------------------------------------------------------------------------------------------------- KITTI raw


def write_raw_calib(
    date_dir: str | Path,
    P_rect_02: np.ndarray,
    R_rect_00: np.ndarray,
    Tr_velo_to_cam: np.ndarray,
    image_size: tuple[int, int],
    T_velo_imu: np.ndarray | None = None,
) -> None:
    """Write ``calib_cam_to_cam.txt``, ``calib_velo_to_cam.txt`` and ``calib_imu_to_velo.txt`` of a date folder.

    Args:
        P_rect_02: (3, 4) image_02's rectified projection (P_rect_00/01/03 derived as a stereo rig).
        R_rect_00: (3, 3) rectifying rotation of cam0 (the other cameras' R_rect are written as the identity).
        Tr_velo_to_cam: (3, 4) or (4, 4) velodyne -> unrectified cam0, written as ``R`` and ``T``.
        image_size: (H, W) of the rectified images (``S_rect_0c`` holds W H).
        T_velo_imu: (4, 4) IMU -> velodyne (identity if None).
    """
    date_dir = Path(date_dir)
    h, w = image_size
    cam: dict[str, np.ndarray | str] = {"calib_time": CALIB_TIME, "corner_dist": np.array([9.95e-02])}
    for c, P in _stereo(np.asarray(P_rect_02, np.float64)).items():
        cam[f"S_rect_0{c}"] = np.array([w, h], np.float64)
        cam[f"R_rect_0{c}"] = R_rect_00 if c == "0" else np.eye(3)
        cam[f"P_rect_0{c}"] = P
    write_calib_file(date_dir / "calib_cam_to_cam.txt", cam)
    Tr = np.asarray(Tr_velo_to_cam, np.float64)
    zero2 = np.zeros(2)
    velo = {"calib_time": CALIB_TIME, "R": Tr[:3, :3], "T": Tr[:3, 3], "delta_f": zero2, "delta_c": zero2}
    write_calib_file(date_dir / "calib_velo_to_cam.txt", velo)
    T = np.eye(4) if T_velo_imu is None else np.asarray(T_velo_imu, np.float64)
    write_calib_file(date_dir / "calib_imu_to_velo.txt", {"calib_time": CALIB_TIME, "R": T[:3, :3], "T": T[:3, 3]})


def write_oxts(path: str | Path, packet: np.ndarray) -> None:
    """Write one OXTS line: 25 floats (``%.14g``) then the 5 integer flags, space separated."""
    p = np.asarray(packet, np.float64).reshape(-1)
    if p.size != OXTS_VALUES:
        raise ValueError(f"an OXTS packet has {OXTS_VALUES} values, got {p.size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join([f"{v:.14g}" for v in p[:25]] + [str(int(v)) for v in p[25:]]) + "\n")


def write_raw_frame(
    drive_dir: str | Path, index: int, points: np.ndarray, image: np.ndarray, packet: np.ndarray | None = None
) -> None:
    """Write one frame of a ``<date>/<drive>_sync`` folder: velodyne scan, image_02 PNG and (optionally) OXTS."""
    d = Path(drive_dir)
    name = f"{int(index):010d}"
    for sub in ("velodyne_points", "image_02"):
        (d / sub / "data").mkdir(parents=True, exist_ok=True)
    write_points(d / "velodyne_points" / "data" / f"{name}.bin", points)
    write_image(d / "image_02" / "data" / f"{name}.png", image)
    if packet is not None:
        write_oxts(d / "oxts" / "data" / f"{name}.txt", packet)


# ----------------------------------------------------------------------------------------------- KITTI object


def write_object_calib(path: str | Path, P2: np.ndarray, R0_rect: np.ndarray, Tr_velo_to_cam: np.ndarray) -> None:
    """Write a KITTI object ``calib/NNNNNN.txt``: P0..P3 (a stereo rig around P2), R0_rect, Tr_velo_to_cam and
    Tr_imu_to_velo (identity), 12 / 9 / 12 / 12 values a line."""
    rows: dict[str, np.ndarray | str] = {f"P{c}": P for c, P in _stereo(np.asarray(P2, np.float64)).items()}
    rows.update({"R0_rect": R0_rect, "Tr_velo_to_cam": np.asarray(Tr_velo_to_cam)[:3], "Tr_imu_to_velo": np.eye(4)[:3]})
    write_calib_file(path, rows)


def write_object_labels(path: str | Path, objects: KittiObjects) -> None:
    """Write a ``label_2/NNNNNN.txt``: type, then the 14 numbers with two decimals (occluded as an integer)."""
    lines = []
    for i, name in enumerate(objects.type):
        nums = [
            objects.truncated[i],
            objects.occluded[i],
            objects.alpha[i],
            *objects.bbox[i],
            *objects.dimensions[i],
            *objects.location[i],
            objects.rotation_y[i],
        ]
        text = [f"{v:.2f}" for v in nums]
        text[1] = str(int(objects.occluded[i]))
        if objects.score is not None:
            text.append(f"{objects.score[i]:.2f}")
        lines.append(" ".join([name, *text]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def write_object_frame(
    root: str | Path,
    frame: int,
    points: np.ndarray,
    image: np.ndarray,
    calib: tuple[np.ndarray, np.ndarray, np.ndarray],
    objects: KittiObjects | None = None,
    split: str = "training",
) -> None:
    """Write frame ``NNNNNN`` of ``<root>/<split>``: velodyne, image_2, calib and (if given) label_2.

    Args:
        calib: (P2, R0_rect, Tr_velo_to_cam) as :func:`write_object_calib` takes them.
    """
    d = Path(root) / split
    name = f"{int(frame):06d}"
    for sub in ("velodyne", "image_2", "calib"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    write_points(d / "velodyne" / f"{name}.bin", points)
    write_image(d / "image_2" / f"{name}.png", image)
    write_object_calib(d / "calib" / f"{name}.txt", *calib)
    if objects is not None:
        write_object_labels(d / "label_2" / f"{name}.txt", objects)
