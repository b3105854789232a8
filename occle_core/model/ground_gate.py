"""The ground gate of the class decision (``model.ground_gate``): the voxels the scan says are not ground.

A label-free ground term (``occle-adapt --ground``) teaches a small network "flat pattern of hits -> road"; on frames
it never saw it then calls car roofs and the lower flanks of cars road. The scan itself says where the ground is, so
:meth:`~occle_core.model.occle.OccLE.predict_labels` bars the ground classes from two kinds of voxels of each frame
(:func:`gate_mask`), fitted per frame to its own returns:

- **above the ground**: the voxel's centre lies more than the gate (``G`` metres) above the ground plane fitted to
  the scan (:func:`frame_planes`) *and* more than ``G`` above the lowest return within :data:`FLOOR_RADIUS` of its
  column (:func:`column_floor`), so that a road rising away from the plane (a hill, a ramp) keeps its class where
  its own returns were seen. A car roof has the road's returns beside it.
- **the flank of an object** (:func:`flank_voxels`): most of the voxel's own returns lie more than
  :data:`FLANK_HEIGHT` above both the plane and that floor, and one of the :data:`FLANK_COLUMN` voxels right above
  it holds a return. A car's side 0.3-0.7 m up, below ``G``, has its body over it; the road beside it is open sky
  and its returns lie in the plane.

A barred voxel takes its best other class, empty included. It is a rule of the decision: the logits, the losses and
training do not see it. The measured effect is in ``docs/real_frames.md`` ("The ground gate"; "The flank rule and
the chain shipped now").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from occle_core.geometry import VoxelGrid
from occle_core.ground import axis_centres, fit_ground_plane, plane_heights
from occle_core.model.lidar_encoder import flat_index, in_grid

# returns scoring the ground-plane hypotheses: the fit's cost is that of scoring, and a few thousand returns pick
# the same plane (the winner is refitted on all its inliers)
PLANE_SAMPLES = 4096
# metres: a voxel is barred only if it also lies above the lowest return this close to its column, so that a road
# rising away from the scan's plane keeps its class; 2 m reaches past the middle of a car to the road beside it
FLOOR_RADIUS = 2.0
# metres above the plane and the floor: the consistency check's 0.2 m ground band plus 0.1 m of range noise and
# kerb; a voxel whose returns mostly lie higher is no road surface
FLANK_HEIGHT = 0.3
# voxels right above a flank voxel of which one must hold a return (0.8 m at 0.4 m voxels: a car's body over its
# lower side)
FLANK_COLUMN = 2


def frame_planes(points: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Each frame's ground plane, fitted to its returns (:func:`~occle_core.ground.fit_ground_plane`, hypotheses
    scored on :data:`PLANE_SAMPLES` returns).

    Args:
        points: (M, 5 or 6) ``[frame, x, y, z, intensity, (dt)]`` as :class:`~occle_core.data.batch.Batch` holds them.

    Returns:
        (B, 4) float32 ``n . x + d = 0`` and (B,) bool "fitted", on the points' device; a frame whose points give no
        plane (too few, none near-horizontal) gets zeros and False.
    """
    pts = points.detach().cpu().numpy()
    planes = np.zeros((batch_size, 4))
    fitted = np.zeros(batch_size, bool)
    for b in range(batch_size):
        try:
            planes[b] = fit_ground_plane(pts[pts[:, 0] == b, 1:4], samples=PLANE_SAMPLES)
            fitted[b] = True
        except ValueError:
            pass
    return torch.from_numpy(planes).float().to(points.device), torch.from_numpy(fitted).to(points.device)


def column_floor(points: Tensor, grid: VoxelGrid, batch_size: int, radius: float) -> Tensor:
    """(B, X, Y) float32: the lowest z of the returns within ``radius`` metres of each BEV column of ``grid`` (a
    square window of columns), +inf where there is none.

    Args:
        points: (M, 5) or (M, 6) as :func:`~occle_core.model.lidar_encoder.voxelize_points` (rows outside the grid
            or the batch are left out).
        radius: metres (rounded to whole columns).
    """
    pts, fine = in_grid(points, grid, batch_size)  # (M, 5 or 6), (M, 3)
    return _floor(pts, fine, grid, batch_size, radius)


def _floor(pts: Tensor, fine: Tensor, grid: VoxelGrid, batch_size: int, radius: float) -> Tensor:
    X, Y, _ = grid.shape
    col = (pts[:, 0].long() * X + fine[:, 0]) * Y + fine[:, 1]  # (M,) flat (b, i, j)
    low = torch.full((batch_size * X * Y,), float("inf"), device=pts.device)
    low.scatter_reduce_(0, col, pts[:, 3], reduce="amin")
    r = max(0, round(radius / grid.voxel_size))
    low = -F.max_pool2d(-low.view(batch_size, 1, X, Y), 2 * r + 1, stride=1, padding=r)  # min over the window
    return low.view(batch_size, X, Y)


def flank_voxels(pts: Tensor, fine: Tensor, grid: VoxelGrid, planes: Tensor, floor: Tensor) -> Tensor:
    """(B, X, Y, Z) bool: voxels most of whose returns lie more than :data:`FLANK_HEIGHT` above both the frame's
    plane and the column floor, with a return in one of the :data:`FLANK_COLUMN` voxels right above.

    Args:
        pts, fine: the in-grid returns and their voxel indices (:func:`~occle_core.model.lidar_encoder.in_grid`).
        planes: (B, 4) each frame's plane; floor: (B, X, Y) :func:`column_floor`.
    """
    B, (X, Y, Z) = floor.shape[0], grid.shape
    b = pts[:, 0].long()
    i, j, k = fine.unbind(1)
    plane = planes[b]  # (M, 4)
    height = (pts[:, 1:4] * plane[:, :3]).sum(1) + plane[:, 3]  # (M,) above the plane
    high = (height > FLANK_HEIGHT) & (pts[:, 3] - floor[b, i, j] > FLANK_HEIGHT)
    flat = flat_index(b, i, j, k, grid.shape)  # (M,)
    # +1 per high return, -1 per other: the voxel's returns are mostly high where the sum is positive
    vote = torch.zeros(B * X * Y * Z, dtype=torch.int32, device=pts.device)
    vote.index_add_(0, flat, high.int() * 2 - 1)
    hit = torch.zeros(B * X * Y * Z, dtype=torch.bool, device=pts.device)
    hit[flat] = True
    hit = hit.view(B, X, Y, Z)
    over = torch.zeros_like(hit)
    for up in range(1, FLANK_COLUMN + 1):
        over[..., :-up] |= hit[..., up:]
    return (vote.view(B, X, Y, Z) > 0) & over


def gate_mask(points: Tensor, grid: VoxelGrid, batch_size: int, metres: float) -> Tensor:
    """(B, X, Y, Z) bool voxels barred from the ground classes by a gate of ``metres`` (the module docstring: above
    the ground, or the flank of an object). A frame whose points give no plane is not gated.

    Args:
        points: (M, 5 or 6) a batch's points; metres: the gate ``G`` (> 0).
    """
    planes, fitted = frame_planes(points, batch_size)
    pts, fine = in_grid(points, grid, batch_size)
    floor = _floor(pts, fine, grid, batch_size, FLOOR_RADIUS)  # (B, X, Y)
    z = axis_centres(grid, floor.device)[2]  # (Z,) voxel centre heights
    where = (plane_heights(grid, planes) > metres) & (z - floor[..., None] > metres)  # (B, X, Y, Z)
    where |= flank_voxels(pts, fine, grid, planes, floor)
    return where & fitted[:, None, None, None]
