"""Camera visibility of a voxel grid as Occ3D defines its ``mask_camera``: rays cast from each camera centre through
its image march through the grid; every voxel a ray passes before (and including) the first occupied voxel is
visible from that camera, and ``mask_camera`` is the union over the cameras.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from occle_core.geometry import Calib, VoxelGrid


def camera_rays(calib: Calib, step_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rays of a camera through its image, about ``step_deg`` apart.

    Args:
        calib: ``P = [K | 0]`` and ``T_cam_lidar`` = T_cam<-grid frame.
        step_deg: angular spacing of the rays at the image centre (at least one pixel).

    Returns:
        origin (3,) the camera centre and dirs (R, 3) float64 unit directions, in the grid frame.
    """
    K = calib.P[:, :3]
    h, w = calib.image_size
    stride = max(1.0, np.deg2rad(step_deg) * float(K[0, 0]))  # pixels between two rays
    u, v = np.meshgrid(np.arange(stride / 2, w, stride), np.arange(stride / 2, h, stride))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)  # (R, 3)
    T_grid_cam = np.linalg.inv(calib.T_cam_lidar)
    d = pix @ np.linalg.inv(K).T @ T_grid_cam[:3, :3].T
    return T_grid_cam[:3, 3], d / np.linalg.norm(d, axis=1, keepdims=True)


def camera_visibility(
    occupied: np.ndarray, grid: VoxelGrid, calibs: Sequence[Calib], step_deg: float = 0.25
) -> np.ndarray:
    """(X, Y, Z) bool: voxels visible from at least one camera of ``calibs`` given the ``occupied`` (X, Y, Z)
    bool voxels.

    Every camera casts :func:`camera_rays` ``step_deg`` apart (0.25 deg: 0.17 m apart at 40 m, under half the
    Occ3D voxel); the rays advance half a voxel a step, mark the voxel they are in, stop in the first occupied
    voxel (marked) and when they leave the grid (a box: they never come back).
    """
    rays = [camera_rays(c, step_deg) for c in calibs]
    origin = np.concatenate([np.broadcast_to(o, d.shape) for o, d in rays]).astype(np.float32)  # (R, 3)
    dirs = np.concatenate([d for _, d in rays]).astype(np.float32)  # (R, 3)
    lo = np.asarray(grid.origin, np.float32)
    shape = np.asarray(grid.shape)
    vs = np.float32(grid.voxel_size)
    occ = np.asarray(occupied, bool).reshape(-1)
    visible = np.zeros(grid.num_voxels, bool)
    alive = np.arange(len(dirs))
    step = 0.5 * vs
    t = 0.5 * step
    while alive.size:
        ijk = np.floor((origin[alive] + dirs[alive] * t - lo) / vs).astype(np.int64)  # (A, 3)
        inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
        alive, ijk = alive[inside], ijk[inside]
        flat = (ijk[:, 0] * shape[1] + ijk[:, 1]) * shape[2] + ijk[:, 2]
        visible[flat] = True
        alive = alive[~occ[flat]]
        t += step
    return visible.reshape(grid.shape)
