"""Known-answer tests of the scatter-accumulated projection (occle_core.model.projection)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occle_core.geometry import Calib, VoxelGrid
from occle_core.model.occle import forward_camera
from occle_core.model.projection import LayoutCache, gather_voxels, ray_layout, scatter_project

H, W = 20, 40
# voxel (i, 2, 2) has its centre on the optical axis (y = z = 0): every such voxel projects to pixel (20, 10)
GRID = VoxelGrid((0.0, -1.25, -1.25), 0.5, (8, 5, 5))
K = 3


def _calib() -> Calib:
    P = forward_camera(H, W)
    return Calib(np.concatenate([P[:, :3] @ np.linalg.inv(_rot()), P[:, 3:]], 1), _tf(), (H, W))


def _rot() -> np.ndarray:
    return np.array([[0, -1.0, 0], [0, 0, -1.0], [1.0, 0, 0]])


def _tf() -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = _rot()
    return T


def _inputs(occ_voxels: dict[tuple[int, int, int], tuple[float, int]]):
    """probs one-hot at the given voxels (class), occupancy as given; everything else free (occ 0, class 0)."""
    probs = torch.zeros(1, K, *GRID.shape, dtype=torch.float64)
    probs[:, 0] = 1.0
    occ = torch.zeros(1, 1, *GRID.shape, dtype=torch.float64)
    for (i, j, k), (o, c) in occ_voxels.items():
        probs[0, :, i, j, k] = 0.0
        probs[0, c, i, j, k] = 1.0
        occ[0, 0, i, j, k] = o
    centers = torch.from_numpy(GRID.centers().reshape(-1, 3)).double()
    l2i = torch.from_numpy(_calib().lidar_to_image)[None]
    return probs, occ, centers, l2i


def test_calibration_round_trip():
    # the helper calibration equals the forward camera used by the model tests
    np.testing.assert_allclose(_calib().lidar_to_image, forward_camera(H, W), atol=1e-12)


@pytest.mark.parametrize("voxel", [(3, 2, 2), (6, 0, 4), (3, 4, 1), (7, 1, 0)])
def test_single_occupied_voxel_lands_on_the_calibrated_pixel(voxel):
    probs, occ, centers, l2i = _inputs({voxel: (1.0, 2)})
    maps, weight = scatter_project(probs, occ, centers, l2i, (H, W))
    uv, _, visible = _calib().project(GRID.centers_of(np.array([voxel])))
    assert visible[0]
    u, v = (int(np.floor(c)) for c in uv[0])
    expected = torch.zeros(1, 1, H, W, dtype=torch.float64)
    expected[0, 0, v, u] = 1.0
    torch.testing.assert_close(weight, expected, atol=1e-5, rtol=0)  # occupancy is clamped to 1 - 1e-6
    torch.testing.assert_close(maps[:, 2:3], expected, atol=1e-5, rtol=0)
    assert float(maps[:, :2].abs().sum()) == 0.0


def test_voxel_behind_an_occupied_one_gets_no_weight():
    probs, occ, centers, l2i = _inputs({(2, 2, 2): (0.999, 1), (5, 2, 2): (1.0, 2)})
    maps, weight = scatter_project(probs, occ, centers, l2i, (H, W))
    assert float(weight[0, 0, 10, 20]) == pytest.approx(1.0, abs=1e-5)
    assert float(maps[0, 1, 10, 20]) == pytest.approx(0.999, abs=1e-9)
    assert float(maps[0, 2, 10, 20]) == pytest.approx(0.001, abs=1e-5)  # hidden: occ * (1 - 0.999)


def test_half_transparent_voxel_shares_the_ray():
    # near occ 0.5 -> w = 0.5; far occ 1 behind it -> w = 1 * (1 - 0.5); the free voxels in between add 0
    probs, occ, centers, l2i = _inputs({(1, 2, 2): (0.5, 1), (6, 2, 2): (1.0, 2)})
    maps, weight = scatter_project(probs, occ, centers, l2i, (H, W))
    assert float(maps[0, 1, 10, 20]) == pytest.approx(0.5, abs=1e-5)
    assert float(maps[0, 2, 10, 20]) == pytest.approx(0.5, abs=1e-5)
    assert float(weight.sum()) == pytest.approx(1.0, abs=1e-5)


def test_order_along_the_ray_matters_not_the_index_order():
    # the occupied voxel nearest to the camera wins, wherever it sits in memory
    probs, occ, centers, l2i = _inputs({(6, 2, 2): (1.0, 2), (4, 2, 2): (1.0, 1)})
    maps, _ = scatter_project(probs, occ, centers, l2i, (H, W))
    assert float(maps[0, 1, 10, 20]) == pytest.approx(1.0, abs=1e-5)
    assert float(maps[0, 2, 10, 20]) == pytest.approx(0.0, abs=1e-5)


def test_without_occupancy_the_nearest_voxel_wins():
    probs, _, centers, l2i = _inputs({(1, 2, 2): (1.0, 2), (6, 2, 2): (1.0, 1)})
    maps, weight = scatter_project(probs, None, centers, l2i, (H, W))
    assert float(maps[0, 0, 10, 20]) == pytest.approx(1.0)  # voxel 0 (free, class 0) is the nearest
    assert float(weight.max()) == 1.0


def _naive(probs, occ, centers, l2i, hw):
    """Reference: loop over pixels, sort each pixel's voxels by depth, composite front to back."""
    B, Kc = probs.shape[:2]
    Hp, Wp = hw
    maps = np.zeros((B, Kc, Hp, Wp))
    weight = np.zeros((B, 1, Hp, Wp))
    P = probs.reshape(B, Kc, -1).numpy()
    O = occ.reshape(B, -1).numpy()
    for b in range(B):
        M = l2i[b].numpy()
        hom = centers.numpy() @ M[:, :3].T + M[:, 3]
        depth = hom[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.floor(hom[:, 0] / depth)
            v = np.floor(hom[:, 1] / depth)
        ok = (depth > 0.1) & (u >= 0) & (u < Wp) & (v >= 0) & (v < Hp)
        rays: dict[tuple[int, int], list[int]] = {}
        for idx in np.nonzero(ok)[0]:
            rays.setdefault((int(v[idx]), int(u[idx])), []).append(int(idx))
        for (pv, pu), members in rays.items():
            t = 1.0
            for idx in sorted(members, key=lambda i: depth[i]):
                o = min(O[b, idx], 1 - 1e-6)
                maps[b, :, pv, pu] += o * t * P[b, :, idx]
                weight[b, 0, pv, pu] += o * t
                t *= 1.0 - o
    return maps, weight


def test_matches_a_naive_per_pixel_reference_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, K, *GRID.shape, generator=g, dtype=torch.float64), 1)
    occ = torch.rand(2, 1, *GRID.shape, generator=g, dtype=torch.float64)
    centers = torch.from_numpy(GRID.centers().reshape(-1, 3)).double()
    base = torch.from_numpy(_calib().lidar_to_image)
    shifted = base.clone()
    shifted[0, 3] += 3.0  # second frame: camera shifted sideways
    l2i = torch.stack([base, shifted]) / 2.0  # pixels of a half-size image (stride 2)
    l2i[:, 2] *= 2.0
    hw = (H // 2, W // 2)
    maps, weight = scatter_project(probs, occ, centers, l2i, hw)
    ref_maps, ref_weight = _naive(probs, occ, centers, l2i, hw)
    np.testing.assert_allclose(maps.numpy(), ref_maps, atol=1e-9)
    np.testing.assert_allclose(weight.numpy(), ref_weight, atol=1e-9)
    assert float(weight.sum()) > 1.0
    assert not torch.equal(maps[0], maps[1])


def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    small = VoxelGrid((0.0, -0.75, -0.75), 0.5, (4, 3, 3))
    centers = torch.from_numpy(small.centers().reshape(-1, 3)).double()
    l2i = torch.from_numpy(_calib().lidar_to_image)[None]
    probs = torch.softmax(torch.randn(1, K, *small.shape, generator=g, dtype=torch.float64), 1).requires_grad_()
    occ = (torch.rand(1, 1, *small.shape, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p, o: scatter_project(p, o, centers, l2i, (H, W)), (probs, occ), fast_mode=True
    )


def test_voxels_behind_the_camera_or_outside_the_image_are_dropped():
    centers = torch.tensor([[-2.0, 0.0, 0.0], [2.0, 50.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    l2i = torch.from_numpy(_calib().lidar_to_image)[None]
    layout = ray_layout(centers, l2i, (H, W))
    assert layout.voxel.tolist() == [2]
    assert layout.pixel.tolist() == [10 * W + 20]


def test_layout_cache_reuses_and_separates_calibrations():
    cache = LayoutCache(size=2)
    centers = torch.from_numpy(GRID.centers().reshape(-1, 3))
    a = torch.from_numpy(_calib().lidar_to_image).float()[None]
    b = a.clone()
    b[0, 0, 3] += 5.0
    la = cache.get(centers, a, (H, W))
    assert cache.get(centers, a.clone(), (H, W)) is la
    lb = cache.get(centers, b, (H, W))
    assert lb is not la and not torch.equal(lb.pixel, la.pixel)


def test_gather_voxels_matches_indexing():
    grid = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.float32).view(2, 3, 4, 5, 6)
    layout = ray_layout(
        torch.from_numpy(VoxelGrid((0.0, -1.0, -1.0), 0.5, (4, 5, 6)).centers().reshape(-1, 3)),
        torch.from_numpy(_calib().lidar_to_image).float().expand(2, 3, 4),
        (H, W),
    )
    got = gather_voxels(grid, layout)  # (N, 3)
    flat = grid.permute(1, 0, 2, 3, 4).reshape(3, -1)
    torch.testing.assert_close(got, flat[:, layout.voxel].T)
    torch.testing.assert_close(gather_voxels(grid.contiguous(memory_format=torch.channels_last_3d), layout), got)


def test_occupancy_does_not_buy_the_label():
    # one ray, two voxels with the same class logits but different "empty" logits: the normalised map is the
    # class distribution given occupied whatever the occupancy, and the projection loss gives the occupancy no
    # gradient (composited with the raw softmax, p(label) <= occupancy and the loss fills the air in front)
    from occle_core.losses import projection_loss
    from occle_core.model.projection import composite, occupied_class_probs

    logits = torch.tensor([[3.0, 0.5, 2.0], [-2.0, 0.5, 2.0]], dtype=torch.float64, requires_grad=True)
    probs, occ = occupied_class_probs(logits, 0)
    assert torch.all(probs[:, 0] == 0) and torch.allclose(probs.sum(1), torch.ones(2, dtype=torch.float64))
    layout = ray_layout(
        torch.tensor([[2.0, 0.0, 0.0], [3.0, 0.0, 0.0]]).double(),
        torch.from_numpy(_calib().lidar_to_image)[None],
        (H, W),
    )
    assert layout.pixel.unique().numel() == 1  # both voxels on one pixel
    maps, weight = composite(probs[layout.voxel], occ[layout.voxel], layout, 1, (H, W))
    p = maps.sum((2, 3))[0] / weight.sum()
    expected = torch.softmax(torch.tensor([0.5, 2.0], dtype=torch.float64), 0)
    assert torch.allclose(p[1:], expected, atol=1e-12)
    target = torch.full((1, H, W), 255, dtype=torch.int64)
    v, u = divmod(int(layout.pixel[0]), W)
    target[0, v, u] = 2
    projection_loss(maps, weight, target, 1).backward()
    assert abs(float(logits.grad[:, 0].abs().max())) < 1e-9  # no push on "empty"
    assert float(logits.grad[:, 2].max()) < 0  # the label's logit is raised
