"""A KITTI raw replica drive with the per-sensor ``timestamps.txt`` files of the released layout (for bag tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from occle_core.data import kitti
from occle_core.synth import kitti_layouts as kl

DRIVE = "2011_09_26_drive_0005_sync"
START = "2011-09-26 13:02:25"  # + the fractions below; 1317042145 s UTC


def raw_drive(root: Path, frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A KITTI raw replica drive with ``timestamps.txt`` per sensor (10 Hz; the scans 2.5 ms after the images)."""
    rng = np.random.default_rng(3)
    P2 = np.array([[70.0, 0.0, 40.0, 4.5], [0.0, 70.0, 12.0, 0.2], [0.0, 0.0, 1.0, 0.003]])
    Tr = np.array([[0.0, -1.0, 0.0, 0.01], [0.0, 0.0, -1.0, -0.07], [1.0, 0.0, 0.0, -0.27], [0, 0, 0, 1]])
    T_velo_imu = np.eye(4)
    T_velo_imu[:3, 3] = [-0.81, 0.32, -0.80]
    kl.write_raw_calib(root / DRIVE[:10], P2, np.eye(3), Tr, (24, 80), T_velo_imu)
    drive = root / DRIVE[:10] / DRIVE
    scans, images = [], []
    for i in range(frames):
        packet = np.zeros(kitti.OXTS_VALUES)
        packet[:6] = 49.0 + 1e-5 * i, 8.4, 110.0, 0.01, -0.02, 0.3 + 0.1 * i
        packet[8], packet[22] = 5.0, 0.1  # vf, wu
        scans.append(rng.normal(0, 5, (40 + i, 4)).astype(np.float32))
        images.append(rng.integers(0, 255, (24, 80, 3), dtype=np.uint8))
        kl.write_raw_frame(drive, i, scans[i], images[i], packet)
    for sub, offset_ns in (("oxts", 0), ("image_02", 1_000_000), ("velodyne_points", 3_500_000)):
        lines = [f"{START}.{i * 100_000_000 + offset_ns + 123:09d}" for i in range(frames)]
        (drive / sub / "timestamps.txt").write_text("\n".join(lines) + "\n")
    return scans, images
