"""Set-up shared by the ROS tests (node, bad input, bags, soak, launch).

A random-initialised tiny checkpoint on a 64 x 64 x 8 grid, synthetic frames and their sensor messages, node
parameters, a tiny SemanticKITTI sequence on disk, a background executor, polling, and a run of the
``occle_node`` executable. The rclpy context and checkpoint fixtures built from these live in ``conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from occle_core.checkpoint import make_checkpoint, save_checkpoint
from occle_core.config import load_config
from occle_core.data.semantic_kitti import write_image, write_points, write_poses, write_times
from occle_core.geometry import Calib, write_kitti_calib
from occle_core.model.occle import OccLE
from occle_ros import msgs as ros_msgs

GRID = {"origin": [0.0, -12.8, -2.0], "voxel_size": 0.4, "shape": [64, 64, 8]}
T_AXES = np.array([[0, -1, 0, 0.0], [0, 0, -1, -0.1], [1, 0, 0, -0.3], [0, 0, 0, 1]], np.float64)  # lidar -> camera
HW = (48, 160)  # image (H, W) of the test model and of make_frame
P = np.array([[80.0, 0, 80, 0], [0, 80.0, 24, 0], [0, 0, 1, 0]])  # 3x4 projection for HW
STAMP = 1_700_000_000_000_000_000  # ns, a 2023 wall-clock stamp for test messages
# lidar -> camera of the write_sequence calib
SEQ_T_AXES = np.array([[0, -1, 0, 0.1], [0, 0, -1, -0.05], [1, 0, 0, -0.2], [0, 0, 0, 1]], np.float64)


def build_checkpoint(path: Path) -> Path:
    """Write a random-initialised tiny OccLE on a 64 x 64 x 8 grid (fast on CPU) to ``path``."""
    cfg = load_config(None, {"data": {"grid": GRID, "image_size": list(HW)}})
    torch.manual_seed(0)
    model = OccLE(cfg)
    with torch.no_grad():  # spread the logits so the argmax is not one class everywhere
        for p in model.heads["logits"].parameters():
            p.mul_(8.0)
    save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), model.state_dict()))
    return path


def make_frame(seed: int = 0, n: int = 3000) -> tuple[np.ndarray, np.ndarray, Calib]:
    """A random (HW, 3) uint8 RGB image, (n, 4) float32 points inside GRID and the matching Calib."""
    rng = np.random.default_rng(seed)
    pts = np.c_[rng.uniform([0.5, -12, -1.8], [25, 12, 1.0], (n, 3)), rng.uniform(0, 1, n)].astype(np.float32)
    rgb = rng.integers(0, 256, (*HW, 3), dtype=np.uint8)
    return rgb, pts, Calib(P, T_AXES, HW)


def frame_messages(
    rgb: np.ndarray, pts: np.ndarray, stamp_ns: int, encoding: str = "rgb8"
) -> tuple[Image, CameraInfo, PointCloud2]:
    """(image, camera_info, cloud) messages of one frame, all stamped ``stamp_ns``; ``encoding`` rgb8 or bgr8."""
    arr = rgb[:, :, ::-1].copy() if encoding == "bgr8" else rgb
    image = ros_msgs.array_to_image(arr, encoding, "camera", stamp_ns)
    info = ros_msgs.projection_to_camera_info(P, HW, "camera", stamp_ns)
    cloud = ros_msgs.xyzi_to_pointcloud2(pts, "velo", stamp_ns)
    return image, info, cloud


def node_params(checkpoint: str | Path, **extra: object) -> list[Parameter]:
    """OccleNode parameter overrides: ``checkpoint`` on the CPU, extrinsics T_AXES, fast diagnostics, every voxel
    published as cloud and markers (no rate limit), + ``extra``."""
    values = {
        "checkpoint": str(checkpoint),
        "publish_region": "all",
        "publish_markers": True,
        "markers.period": 0.0,
        "device": "cpu",
        "extrinsics.source": "matrix",
        "extrinsics.matrix": T_AXES.reshape(-1).tolist(),
        "diagnostics_period": 0.2,
        "log_throttle": 0.0,
        **extra,
    }
    return [Parameter(k, value=v) for k, v in values.items()]


def write_sequence(root: Path, frames: int = 3, seed: int = 0, hw: tuple[int, int] = (24, 80)) -> Path:
    """A tiny SemanticKITTI-layout sequence 00 (images, scans, calib with SEQ_T_AXES, poses, times)."""
    rng = np.random.default_rng(seed)
    seq = root / "sequences" / "00"
    (seq / "velodyne").mkdir(parents=True)
    (seq / "image_2").mkdir()
    P_seq = np.array([[50.0, 0, hw[1] / 2, 0], [0, 50.0, hw[0] / 2, 0], [0, 0, 1, 0]])
    write_kitti_calib(seq / "calib.txt", Calib(P_seq, SEQ_T_AXES, hw))
    poses = np.tile(np.eye(4), (frames, 1, 1))
    poses[:, 2, 3] = np.arange(frames) * 0.7  # cam0 drives along its z axis
    write_poses(seq / "poses.txt", poses)
    write_times(seq / "times.txt", np.arange(frames) * 0.1)
    for i in range(frames):
        pts = np.c_[rng.uniform([1, -10, -1.5], [40, 10, 2], (300 + 10 * i, 3)), rng.uniform(0, 1, 300 + 10 * i)]
        write_points(seq / "velodyne" / f"{i:06d}.bin", pts.astype(np.float32))
        write_image(seq / "image_2" / f"{i:06d}.png", rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    return seq


def wait_until(cond: Callable[[], object], timeout: float = 60.0) -> bool:
    """Poll ``cond`` every 20 ms until it is truthy (True) or ``timeout`` seconds have passed (False). The default
    is generous on purpose: it only runs out when a test fails, and DDS discovery on a loaded machine is slow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


class Spinner:
    """Spins ``nodes`` with one SingleThreadedExecutor in a daemon thread; ``close`` stops it, destroys them."""

    def __init__(self, ctx, *nodes: Node) -> None:
        self.nodes = nodes
        self.executor = SingleThreadedExecutor(context=ctx)
        for node in nodes:
            self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        for node in self.nodes:
            node.destroy_node()


def nonblank_lines(text: str) -> list[str]:
    """The lines of ``text`` that are not blank."""
    return [line for line in text.splitlines() if line.strip()]


def run_node_process(*ros_args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``python -m occle_ros.node --ros-args *ros_args`` (120 s at most, warnings off).

    Returns the finished process and the non-blank lines of its stderr.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "occle_ros.node", "--ros-args", *ros_args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return proc, nonblank_lines(proc.stderr)
