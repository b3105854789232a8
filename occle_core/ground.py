"""The ground of a LiDAR scan: a fitted plane, the ground classes of each class table, the voxels that hold
ground returns, and each voxel's height above the plane.

The label-free checks (:mod:`occle_core.consistency`, ground consistency) and the label-free ground term of
adaptation (``loss.ground``, :func:`occle_core.losses.ground_loss`) share one definition: a return is a ground
return when it lies within ``tol`` of the plane :func:`fit_ground_plane` fits to its scan (RANSAC over
near-vertical normals, then least squares on the inliers, so a tilted or offset road is handled). The ground
gate of the class decision (``model.ground_gate``, :func:`plane_heights`) uses the same plane.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from occle_core.geometry import VoxelGrid
from occle_core.labels import ClassTable

GROUND_CLASSES = {
    "semantic_kitti": ("road", "parking", "sidewalk", "other-ground", "terrain"),
    "occ3d_nuscenes": ("driveable_surface", "other_flat", "sidewalk", "terrain"),
}


def class_ids(classes: ClassTable, names: Sequence[str]) -> np.ndarray:
    """(C,) int64 ids of ``names`` in ``classes``."""
    missing = [n for n in names if n not in classes.names]
    if missing:
        raise ValueError(f"classes {missing} are not in the {classes.name} class table")
    return np.asarray([classes.names.index(n) for n in names], np.int64)


def fit_ground_plane(
    points: np.ndarray,
    inlier_tol: float = 0.15,
    max_tilt_deg: float = 15.0,
    hypotheses: int = 256,
    seed: int = 0,
    samples: int = 20000,
) -> np.ndarray:
    """Ground plane of a scan: ``n . x + d = 0`` with a unit normal pointing up (n_z > 0).

    RANSAC: ``hypotheses`` random point triples (all scored at once) whose normal is within ``max_tilt_deg`` of
    vertical; the one with the most points within ``inlier_tol`` wins (ties: the lower plane), and is refined by
    least squares (the smallest singular vector of its centred inliers).

    Args:
        points: (N, >=3) returns, z up.
        samples: hypotheses are scored on at most this many of the points (a random subset; the refit uses all).

    Returns:
        (4,) float64 ``(n_x, n_y, n_z, d)``.

    Raises:
        ValueError: fewer than 3 points, or no hypothesis was near-horizontal.
    """
    xyz = np.asarray(points, np.float64)[:, :3]
    xyz = xyz[np.all(np.isfinite(xyz), axis=1)]
    if len(xyz) < 3:
        raise ValueError(f"a ground plane needs at least 3 points, got {len(xyz)}")
    rng = np.random.default_rng(seed)
    tri = xyz[rng.integers(0, len(xyz), (hypotheses, 3))]  # (K, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (K, 3)
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-9
    n = n[ok] / norm[ok, None]
    n *= np.sign(n[:, 2:3]) + (n[:, 2:3] == 0)  # normals up
    d = -np.einsum("kj,kj->k", n, tri[ok, 0])  # (K,)
    level = n[:, 2] >= np.cos(np.deg2rad(max_tilt_deg))
    if not level.any():
        raise ValueError(f"no near-horizontal plane (within {max_tilt_deg} deg) among the point triples")
    n, d = n[level], d[level]
    sample = xyz[rng.permutation(len(xyz))[:samples]]  # scoring subset bounds the (K, S) distance matrix
    inliers = (np.abs(sample @ n.T + d) < inlier_tol).sum(axis=0)  # (K,)
    height = -d / n[:, 2]  # plane height at x = y = 0
    best = np.lexsort((height, -inliers))[0]
    close = np.abs(xyz @ n[best] + d[best]) < inlier_tol
    centre = xyz[close].mean(axis=0)
    normal = np.linalg.svd(xyz[close] - centre, full_matrices=False)[2][-1]
    normal = normal if normal[2] > 0 else -normal
    return np.append(normal, -normal @ centre)


GROUND, RAISED, NEITHER = 1, 0, 255  # values of :func:`ground_target`


def ground_target(
    points: np.ndarray,
    grid: VoxelGrid,
    tol: float = 0.2,
    raised: float = 0.5,
    plane: np.ndarray | None = None,
    block: int = 1,
) -> np.ndarray:
    """(X, Y, Z) uint8 ground / not-ground target of a scan's voxels.

    ``GROUND`` (1): the voxel holds ground returns (within ``tol`` of the scan's ground plane), at least as many as
    returns above it (an object standing on the road shares its lowest voxel with the road; where its returns
    outnumber the road's, the voxel is not ground), and with ``block`` > 1 no return above ``tol`` lies anywhere in
    its block. ``RAISED`` (0): the voxel's returns are mostly more than ``raised`` metres above the plane (walls,
    vehicles, trunks). ``NEITHER`` (255): everything else (no return, or returns between ``tol`` and ``raised``:
    curbs, low vegetation, a slope the plane does not follow).

    Args:
        points: (N, >=3) returns in the grid frame (rows with NaN / Inf are dropped).
        plane: (4,) ground plane ``n . x + d = 0`` (n up); None fits one with :func:`fit_ground_plane`.
        block: edge of the voxel blocks (``block`` must divide the grid shape); pass the model's feature stride.
            The network decides the ``s^3`` output voxels of a feature voxel from one feature vector, so a road
            voxel pulled toward ground pulls the car body above or beside it in the same block too: on the real
            KITTI frames the ground term then called parked cars road (``docs/real_frames.md``, "The hit skip").
    """
    xyz = np.asarray(points, np.float64)[:, :3]
    xyz = xyz[np.all(np.isfinite(xyz), axis=1)]
    out = np.full(grid.shape, NEITHER, np.uint8)
    if len(xyz) < 3:
        return out
    plane = fit_ground_plane(xyz) if plane is None else np.asarray(plane, np.float64)
    height = xyz @ plane[:3] + plane[3]  # (N,) signed distance above the plane
    ijk, inside = grid.point_indices(xyz)
    flat = np.ravel_multi_index(ijk.T, grid.shape)  # (M,) voxel of each point inside the grid
    h = height[inside]
    n = grid.num_voxels
    ground = np.bincount(flat, np.abs(h) <= tol, n)
    above = np.bincount(flat, h > tol, n)
    high = np.bincount(flat, h > raised, n)
    total = np.bincount(flat, minlength=n)
    view = out.reshape(-1)
    view[2 * high > total] = RAISED
    is_ground = (ground > 0) & (ground >= above)
    if block > 1:
        if any(size % block for size in grid.shape):
            raise ValueError(f"block {block} must divide the grid shape {grid.shape}")
        X, Y, Z = grid.shape
        b = block
        occupied_above = (above > 0).reshape(X // b, b, Y // b, b, Z // b, b).any(axis=(1, 3, 5))  # per block
        is_ground &= ~np.broadcast_to(
            occupied_above[:, None, :, None, :, None], (X // b, b, Y // b, b, Z // b, b)
        ).reshape(-1)
    view[is_ground] = GROUND
    return out


def axis_centres(grid: VoxelGrid, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """The voxel centres of ``grid`` along x, y and z: float32 (X,), (Y,), (Z,) metres on ``device``."""
    return tuple(
        (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * grid.voxel_size + o
        for size, o in zip(grid.shape, grid.origin)
    )


def plane_heights(grid: VoxelGrid, planes: torch.Tensor) -> torch.Tensor:
    """(B, X, Y, Z) float32 signed distance of each voxel centre above each frame's plane, on ``planes``' device.

    The ground gate of the class decision reads it (``model.ground_gate``: no ground class above it,
    :func:`occle_core.model.ground_gate.gate_mask`).

    Args:
        planes: (B, 4) ``n . x + d = 0`` with the normal up (:func:`fit_ground_plane`), in the grid frame.
    """
    n = planes.float()
    axes = axis_centres(grid, n.device)
    # n . c + d summed over the three axes by broadcasting: (B, X, 1, 1) + (B, 1, Y, 1) + (B, 1, 1, Z) + (B, 1, 1, 1)
    return (
        (n[:, 0, None] * axes[0])[:, :, None, None]
        + (n[:, 1, None] * axes[1])[:, None, :, None]
        + (n[:, 2, None] * axes[2])[:, None, None, :]
        + n[:, 3, None, None, None]
    )
