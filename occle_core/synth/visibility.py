"""Camera visibility of a voxel grid as Occ3D defines its ``mask_camera``: rays cast from each camera centre through
its image stop in the first occupied voxel; a voxel is visible from a camera when its centre projects into the image
no farther than where the ray through that pixel stopped (the occupied voxel that stops a ray is visible itself),
and ``mask_camera`` is the union over the cameras.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from occle_core.geometry import Calib, VoxelGrid


def camera_rays(calib: Calib, step_deg: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Rays of a camera through its image on a pixel lattice about ``step_deg`` apart.

    Args:
        calib: ``P = [K | 0]`` and ``T_cam_lidar`` = T_cam<-grid frame.
        step_deg: angular spacing of the rays at the image centre (at least one pixel).

    Returns:
        origin (3,) the camera centre and dirs (rows, cols, 3) float64 unit directions, in the grid frame; the
        lattice's spacing in pixels (ray (i, j) passes through pixel ((j + 0.5) * stride, (i + 0.5) * stride)).
    """
    K = calib.P[:, :3]
    h, w = calib.image_size
    stride = max(1.0, np.deg2rad(step_deg) * float(K[0, 0]))
    u, v = np.meshgrid(np.arange(stride / 2, w, stride), np.arange(stride / 2, h, stride))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # (rows, cols, 3)
    T_grid_cam = np.linalg.inv(calib.T_cam_lidar)
    d = pix @ np.linalg.inv(K).T @ T_grid_cam[:3, :3].T
    return T_grid_cam[:3, 3], d / np.linalg.norm(d, axis=-1, keepdims=True), stride


def ray_stops(occupied: np.ndarray, grid: VoxelGrid, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(R,) float32 distance at which each ray (``origin`` (R, 3) inside the grid, unit ``dirs`` (R, 3)) enters its
    first ``occupied`` (X, Y, Z) voxel, inf when it leaves the grid first. Rays advance half a voxel a step."""
    vs = np.float32(grid.voxel_size)
    o = [(origin[:, k] - np.float32(grid.origin[k])) / vs for k in range(3)]  # (R,) in voxel units, per axis
    d = [dirs[:, k] / vs for k in range(3)]
    occ = np.asarray(occupied, bool).reshape(-1)
    X, Y, Z = grid.shape
    stop = np.full(len(dirs), np.inf, np.float32)
    alive = np.arange(len(dirs))
    step = np.float32(0.5 * vs)
    t = 0.5 * step
    while alive.size:
        i, j, k = (np.floor(o[a][alive] + d[a][alive] * t).astype(np.int64) for a in range(3))
        inside = (i >= 0) & (i < X) & (j >= 0) & (j < Y) & (k >= 0) & (k < Z)  # a box: rays that left never return
        alive = alive[inside]
        hit = occ[(i[inside] * Y + j[inside]) * Z + k[inside]]
        stop[alive[hit]] = t
        alive = alive[~hit]
        t += step
    return stop


def camera_visibility(
    occupied: np.ndarray, grid: VoxelGrid, calibs: Sequence[Calib], step_deg: float = 0.5
) -> np.ndarray:
    """(X, Y, Z) bool: voxels visible from at least one camera of ``calibs`` (centres inside the grid) given the
    ``occupied`` (X, Y, Z) bool voxels.

    Each camera casts :func:`camera_rays` ``step_deg`` apart (0.5 deg: 0.35 m apart at 40 m, under an Occ3D voxel)
    to :func:`ray_stops`; a voxel centre projecting into the image is visible when its distance from the
    camera is at most the stop of the ray through its pixel plus half a voxel diagonal.
    """
    centers = grid.centers().reshape(-1, 3).astype(np.float64)  # (V, 3)
    margin = 0.5 * np.sqrt(3.0) * grid.voxel_size
    visible = np.zeros(len(centers), bool)
    for calib in calibs:
        origin, dirs, stride = camera_rays(calib, step_deg)
        rows, cols = dirs.shape[:2]
        flat = dirs.reshape(-1, 3).astype(np.float32)
        stop = ray_stops(occupied, grid, np.broadcast_to(origin.astype(np.float32), flat.shape), flat)
        uv, _, inside = calib.project(centers)
        i = np.minimum((uv[inside, 1] / stride).astype(np.int64), rows - 1)
        j = np.minimum((uv[inside, 0] / stride).astype(np.int64), cols - 1)
        dist = np.linalg.norm(centers[inside] - origin, axis=1)
        visible[np.flatnonzero(inside)[dist <= stop.reshape(rows, cols)[i, j] + margin]] = True
    return visible.reshape(grid.shape)
