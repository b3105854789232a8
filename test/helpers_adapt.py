"""A tiny KITTI object replica (ground, one car, its label) and a tiny random checkpoint for the label-free tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from occle_core.checkpoint import make_checkpoint, save_checkpoint
from occle_core.config import load_config
from occle_core.data.kitti import KittiObjects
from occle_core.data.label_png import write_label_png
from occle_core.model.occle import OccLE
from occle_core.synth import kitti_layouts as kl

GRID = {"origin": [0.0, -25.6, -2.0], "voxel_size": 1.6, "shape": [32, 32, 4]}
IMAGE_HW = (64, 200)
P2 = np.array([[100.0, 0.0, 100.0, 0.0], [0.0, 100.0, 32.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
TR = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # LiDAR -> camera axes
CAR = KittiObjects(
    type=("Car", "DontCare"),
    truncated=np.array([0.0, -1.0]),
    occluded=np.array([0, -1]),
    alpha=np.array([0.0, -10.0]),
    bbox=np.array([[80.0, 30.0, 120.0, 50.0], [0.0, 0.0, 5.0, 5.0]]),
    dimensions=np.array([[1.5, 1.6, 4.0], [-1.0, -1.0, -1.0]]),  # h, w, l
    location=np.array([[0.0, 1.7, 10.0], [-1000.0, -1000.0, -1000.0]]),  # the car's bottom centre at LiDAR z -1.7
    rotation_y=np.array([-np.pi / 2, -10.0]),  # heading along the LiDAR x axis
)


def replica_points(seed: int) -> np.ndarray:
    """(N, 4) float32: a ground plane at z = -1.7 and the sides of a car at x 8..12, y -0.8..0.8."""
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform([3, -15], [40, 15], (1500, 2)), np.full(1500, -1.7)]
    car = rng.uniform([8.2, -0.7, -1.3], [11.8, 0.7, -0.3], (300, 3))
    xyz = np.r_[ground, car]
    return np.c_[xyz, rng.uniform(0, 1, len(xyz))].astype(np.float32)


def write_object_replica(root: Path, frames: int = 3) -> Path:
    """``root/training`` with ``frames`` frames (000000 ...), the first one labelled; returns ``root/training``."""
    rng = np.random.default_rng(0)
    for f in range(frames):
        image = rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)
        kl.write_object_frame(root, f, replica_points(f), image, (P2, np.eye(3), TR), CAR if f == 0 else None)
    return root / "training"


def write_pseudo_cache(folder: Path, frames: int = 3) -> None:
    """Cached 2D pseudo labels (the top half building, the bottom half road) as ``occle-adapt`` stores them."""
    labels = np.full(IMAGE_HW, 9, np.uint8)  # road
    labels[: IMAGE_HW[0] // 2] = 13  # building
    for f in range(frames):
        write_label_png(folder / f"{f:06d}.png", labels)


def tiny_checkpoint(path: Path) -> Path:
    """A random-initialised OccLE on the 32 x 32 x 4 replica grid (48 x 160 images), written to ``path``."""
    cfg = load_config(
        None,
        {
            "data": {"grid": GRID, "image_size": [48, 160], "max_points": 3000},
            "model": {"token_stride": 4},
            "loss": {"teacher_threshold": 0.2},
        },
    )
    torch.manual_seed(0)
    model = OccLE(cfg)
    save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), model.state_dict()))
    return path
