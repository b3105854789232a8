"""The ground gate's maps of the scan: the column floor, the flanks of objects, and the gate they make."""

from __future__ import annotations

import numpy as np
import torch

from occle_core.geometry import VoxelGrid
from occle_core.model.ground_gate import FLANK_HEIGHT, column_floor, flank_voxels, frame_planes, gate_mask
from occle_core.model.lidar_encoder import in_grid

GRID = VoxelGrid((0.0, -6.4, -2.0), 0.4, (48, 32, 12))  # z from -2.0 to 2.8 m


def test_column_floor_is_the_lowest_return_near_each_column():
    grid = VoxelGrid((0.0, 0.0, -2.0), 1.0, (6, 4, 4))
    pts = torch.tensor(
        [
            [0, 1.5, 1.5, -1.0, 0],  # column (1, 1)
            [0, 1.5, 1.2, 1.0, 0],  # same column, higher
            [0, 4.5, 2.5, -1.5, 0],  # column (4, 2)
            [1, 0.5, 0.5, 0.5, 0],  # frame 1, column (0, 0)
            [0, 9.0, 1.0, -3.0, 0],  # outside the grid: left out
            [0, float("nan"), 1.0, -3.0, 0],
        ]
    )
    low = column_floor(pts, grid, 2, radius=1.0)  # a 3 x 3 window of columns
    assert low.shape == (2, 6, 4)
    assert low[0, 1, 1] == -1.0 and low[0, 0, 0] == -1.0 and low[0, 2, 2] == -1.0  # (1, 1) is within one column
    assert low[0, 3, 1] == -1.5 and low[0, 5, 3] == -1.5  # (4, 2) reaches them; it is lower than (1, 1)
    assert torch.isinf(low[0, 5, 0]) and low[1, 1, 1] == 0.5 and torch.isinf(low[1, 3, 3])


def _uniform(g: torch.Generator, n: int, lo: tuple[float, ...], hi: tuple[float, ...]) -> torch.Tensor:
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    return torch.rand(n, len(lo), generator=g) * (hi_t - lo_t) + lo_t


def _street() -> dict[str, torch.Tensor]:
    """A flat road 1.7 m under the LiDAR, a car standing on it (side, body and roof; the road under it hidden), a
    kerb 0.15 m high under a wall, and a low concrete block 0.5 m high with open sky over it."""
    g = torch.Generator().manual_seed(0)
    road = _uniform(g, 6000, (0.0, -6.0), (19.0, 6.0))
    under_car = (road[:, 0] > 6.0) & (road[:, 0] < 10.0) & (road[:, 1] > 0.8) & (road[:, 1] < 2.8)
    road = torch.cat([road[~under_car], torch.full((int((~under_car).sum()), 1), -1.7)], 1)
    # the car's near side (y = 0.8 m), returns 0.3-1.5 m above the road, and its roof 1.5 m up
    side = torch.cat(
        [_uniform(g, 800, (6.0,), (10.0,)), torch.full((800, 1), 0.85), _uniform(g, 800, (-1.4,), (-0.2,))], 1
    )
    roof = torch.cat([_uniform(g, 400, (6.0, 0.8), (10.0, 2.8)), torch.full((400, 1), -0.2)], 1)
    kerb = torch.cat([_uniform(g, 400, (2.0, -5.6), (14.0, -5.0)), torch.full((400, 1), -1.55)], 1)
    wall = torch.cat(
        [_uniform(g, 600, (2.0,), (14.0,)), torch.full((600, 1), -5.7), _uniform(g, 600, (-1.0,), (1.5,))], 1
    )
    block = torch.cat([_uniform(g, 200, (15.0, 2.0), (16.0, 3.0)), torch.full((200, 1), -1.2)], 1)
    return {"road": road, "side": side, "roof": roof, "kerb": kerb, "wall": wall, "block": block}


def _voxels(p: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(((p - torch.tensor(GRID.origin)) / GRID.voxel_size).long().unbind(-1))


def _batch_points(*clouds: torch.Tensor) -> torch.Tensor:
    xyz = torch.cat(clouds)
    return torch.cat([torch.zeros(len(xyz), 1), xyz, torch.zeros(len(xyz), 1)], 1)  # (M, 5)


def test_the_gate_bars_a_cars_side_and_roof_and_keeps_road_kerb_and_open_objects():
    parts = _street()
    where = gate_mask(_batch_points(*parts.values()), GRID, 1, 0.6)[0]  # (X, Y, Z)
    side_low = parts["side"][parts["side"][:, 2] < -1.7 + 0.7]  # 0.3-0.7 m up: under the 0.6 m gate's reach
    low_voxels = where[_voxels(side_low)]
    assert low_voxels.float().mean() > 0.9  # the flank: its returns above the road, the car body over it
    assert where[_voxels(parts["roof"])].all()  # above the gate and above the road beside the car
    assert not where[_voxels(parts["road"])].any()  # the road next to the car too: its returns lie in the plane
    assert not where[_voxels(parts["kerb"])].any()  # 0.15 m up, a wall over it: within the ground band
    assert not where[_voxels(parts["block"])].any()  # 0.5 m up with nothing over it: not a flank, under the gate


def test_flank_vote_is_the_majority_of_each_voxels_returns():
    g = torch.Generator().manual_seed(1)
    xyz = torch.cat(
        [
            torch.cat([_uniform(g, 3000, (0.0, -6.0), (19.0, 6.0)), torch.full((3000, 1), -1.7)], 1),
            _uniform(g, 3000, (0.0, -6.0, -1.9), (19.0, 6.0, 0.5)),  # clutter at every height
        ]
    )
    points = _batch_points(xyz)
    planes, fitted = frame_planes(points, 1)
    assert bool(fitted[0]) and abs(float(planes[0, 3]) / float(planes[0, 2]) - 1.7) < 0.05
    pts, fine = in_grid(points, GRID, 1)
    floor = column_floor(points, GRID, 1, 2.0)
    flank = flank_voxels(pts, fine, GRID, planes, floor)[0].numpy()
    # brute force: each voxel's returns counted one by one
    n = planes[0].double().numpy()
    p, f = pts.double().numpy(), fine.numpy()
    high = (p[:, 1:4] @ n[:3] + n[3] > FLANK_HEIGHT) & (
        p[:, 3] - floor[0].double().numpy()[f[:, 0], f[:, 1]] > FLANK_HEIGHT
    )
    counts: dict[tuple[int, int, int], list[int]] = {}
    for key, h in zip(map(tuple, f), high):
        counts.setdefault(key, [0, 0])[int(h)] += 1
    expected = np.zeros(GRID.shape, bool)
    for (i, j, k), (low_n, high_n) in counts.items():
        over = any((i, j, k + u) in counts for u in (1, 2))
        expected[i, j, k] = high_n > low_n and over
    assert expected.sum() > 50
    np.testing.assert_array_equal(flank, expected)


def test_a_frame_without_a_plane_is_not_gated():
    road = _street()["road"]
    points = torch.cat([_batch_points(road), torch.tensor([[1.0, 1.0, 0.0, -1.0, 0.5]])])  # frame 1: one return
    where = gate_mask(points, GRID, 2, 0.6)
    assert where.shape == (2, *GRID.shape) and where[0].any() and not where[1].any()
