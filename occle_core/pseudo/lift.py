"""Carry 2D pseudo labels to LiDAR points and voxels (the aligned 3D pseudo labels of OccLE)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from occle_core.geometry import Calib, VoxelGrid, voxelize_labels
from occle_core.labels import IGNORE_INDEX


def point_pseudo_labels(points: np.ndarray, pseudo2d: np.ndarray, calib: Calib) -> np.ndarray:
    """Pseudo label of each point: the 2D label at the pixel it projects to.

    Args:
        points: (N, >=3) LiDAR-frame points.
        pseudo2d: (H, W) uint8 2D pseudo labels for the image ``calib`` describes.

    Returns:
        (N,) uint8, 255 for points outside the image or behind the camera.
    """
    if pseudo2d.shape != calib.image_size:
        raise ValueError(f"pseudo2d has shape {pseudo2d.shape}, expected the calib image size {calib.image_size}")
    uv, _, visible = calib.project(points)
    out = np.full(len(points), IGNORE_INDEX, np.uint8)
    px = uv[visible].astype(np.int64)
    out[visible] = pseudo2d[px[:, 1], px[:, 0]]
    return out


def lift_to_voxels(
    points: np.ndarray, pseudo2d: np.ndarray, calib: Calib, grid: VoxelGrid, num_classes: int
) -> np.ndarray:
    """(X, Y, Z) uint8 3D pseudo labels: majority of the point pseudo labels per voxel, 255 elsewhere."""
    return lift_views_to_voxels(points, [(pseudo2d, calib)], grid, num_classes)


def lift_views_to_voxels(
    points: np.ndarray,
    views: Sequence[tuple[np.ndarray | None, Calib]],
    grid: VoxelGrid,
    num_classes: int,
) -> np.ndarray:
    """(X, Y, Z) uint8 3D pseudo labels from several cameras: each point takes the 2D label of the first camera
    (in the order of ``views``, front camera first) that sees it and has a label there; then the majority of the
    point labels per voxel, 255 elsewhere.

    Args:
        points: (N, >=3) grid-frame points.
        views: ``(pseudo2d (H, W) uint8 or None, calib)`` per camera; cameras without labels are skipped.
    """
    labels = np.full(len(points), IGNORE_INDEX, np.uint8)  # (N,)
    for pseudo2d, calib in views:
        if pseudo2d is None:
            continue
        unset = labels == IGNORE_INDEX
        labels[unset] = point_pseudo_labels(points, pseudo2d, calib)[unset]
    return voxelize_labels(grid, points, labels, num_classes)
