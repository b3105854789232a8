"""LiDAR encoder: voxelisation known answers, spconv / dense backend agreement, empty scans."""

from __future__ import annotations

import warnings

import pytest
import torch

from occle_core.geometry import VoxelGrid
from occle_core.model.lidar_encoder import (
    LidarEncoder,
    SparseConv3d,
    hit_bits,
    in_channels_for,
    spconv_available,
    voxelize_points,
)

GRID = VoxelGrid((0.0, -3.2, -1.6), 0.2, (32, 32, 16))
needs_spconv = pytest.mark.skipif(not spconv_available(), reason="spconv.pytorch not installed")


def _points(n: int = 600, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor(GRID.origin)
    ext = torch.tensor(GRID.shape, dtype=torch.float32) * GRID.voxel_size
    b = torch.randint(0, batch, (n, 1), generator=g).float()
    # clustered points (a few surfaces) so that voxels hold several points and the levels stay sparse
    centres = lo + torch.rand(8, 3, generator=g) * ext
    xyz = centres[torch.randint(0, 8, (n,), generator=g)] + torch.randn(n, 3, generator=g) * 0.3
    return torch.cat([b, xyz, torch.rand(n, 1, generator=g)], 1)


def test_voxelize_known_answer():
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (4, 4, 4))
    # two points in output voxel (0, 0, 0) and one in (1, 1, 1): all in feature voxel (0, 0, 0) at stride 2
    pts = torch.tensor(
        [
            [0, 0.25, 0.25, 0.25, 0.2],
            [0, 0.75, 0.75, 0.75, 0.4],
            [0, 1.5, 1.5, 1.5, 0.9],
            [1, 3.5, 0.5, 2.5, 1.0],  # frame 1, output voxel (3, 0, 2): feature voxel (1, 0, 1), child (1, 0, 0)
            [0, 9.0, 0.5, 0.5, 1.0],  # outside the grid: dropped
        ]
    )
    vox = voxelize_points(pts, grid, 2, batch_size=2)
    assert vox.spatial_shape == (2, 2, 2)
    assert vox.coords.tolist() == [[0, 0, 0, 0], [1, 1, 0, 1]]
    assert vox.feats.shape == (2, in_channels_for(2)) == (2, 14)
    f0 = vox.feats[0]
    # mean offset from the centre (1, 1, 1) of the 2 m voxel, in voxel units: mean(0.25, 0.75, 1.5) - 1 = -0.1667
    torch.testing.assert_close(f0[:3], torch.full((3,), (2.5 / 3 - 1.0) / 2.0))
    torch.testing.assert_close(f0[3], torch.tensor(0.5))  # mean intensity
    torch.testing.assert_close(f0[4], torch.log1p(torch.tensor(3.0)))  # log1p(count)
    torch.testing.assert_close(f0[5], torch.tensor(-0.5))  # height of feature z index 0 of 2: (0.5/2)*2-1
    assert f0[6:].tolist() == [1, 0, 0, 0, 0, 0, 0, 1]  # children (0,0,0) and (1,1,1)
    f1 = vox.feats[1]
    assert f1[6:].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]  # child (1, 0, 0) -> 1*4 + 0*2 + 0 = 4
    dense, mask = vox.dense()
    assert dense.shape == (2, 14, 2, 2, 2) and mask.sum() == 2
    torch.testing.assert_close(dense[1, :, 1, 0, 1], f1)


def test_hit_bits_known_answer_match_the_encoder_input_and_past_scans_are_left_out_on_request():
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (4, 4, 4))
    pts = torch.tensor(
        [
            [0, 0.25, 0.25, 0.25, 0.2, 0.0],  # output voxel (0, 0, 0): feature voxel (0, 0, 0), child 0
            [0, 1.5, 1.5, 1.5, 0.9, 0.0],  # (1, 1, 1): child 7
            [1, 3.5, 0.5, 2.5, 1.0, 0.0],  # frame 1, (3, 0, 2): feature voxel (1, 0, 1), child (1, 0, 0) = 4
            [1, 0.5, 0.5, 0.5, 1.0, -0.1],  # a past scan: not a hit of this one
            [0, 9.0, 0.5, 0.5, 1.0, 0.0],  # outside the grid: dropped
        ]
    )
    assert hit_bits(pts, grid, 2, batch_size=2).sum() == 4  # a single-frame model ignores dt
    bits = hit_bits(pts, grid, 2, batch_size=2, current_only=True)  # (B, 8, 2, 2, 2)
    assert bits.shape == (2, 8, 2, 2, 2) and bits.is_contiguous(memory_format=torch.channels_last_3d)
    assert bits.sum() == 3
    assert bits[0, :, 0, 0, 0].tolist() == [1, 0, 0, 0, 0, 0, 0, 1]
    assert bits[1, :, 1, 0, 1].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    current = pts[pts[:, 5] == 0, :5]
    dense, _ = voxelize_points(current, grid, 2, batch_size=2).dense()
    assert torch.equal(bits, dense[:, 6:])  # the encoder's space-to-depth occupancy input, same child order
    assert hit_bits(torch.zeros(0, 5), grid, 2, batch_size=1).sum() == 0


def test_time_features_per_voxel_and_ignored_without_them():
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (4, 4, 2))
    # [batch, x, y, z, intensity, dt]; feature voxels at stride 2: (0, 0, 0), (1, 0, 0), (0, 1, 0)
    pts = torch.tensor(
        [
            [0, 0.5, 0.5, 0.5, 0.1, 0.0],  # current-only voxel (0, 0, 0): two current points
            [0, 1.5, 0.5, 0.5, 0.2, 0.0],
            [0, 2.5, 0.5, 0.5, 0.3, -0.1],  # past-only voxel (1, 0, 0): ages 0.1 s and 0.3 s
            [0, 3.5, 1.5, 0.5, 0.4, -0.3],
            [0, 0.5, 2.5, 0.5, 0.5, 0.0],  # mixed voxel (0, 1, 0): one current point, two of 0.2 s
            [0, 1.5, 2.5, 0.5, 0.6, -0.2],
            [0, 0.5, 3.5, 1.5, 0.7, -0.2],
        ]
    )
    vox = voxelize_points(pts, grid, 2, batch_size=1, time_features=True)
    assert vox.feats.shape == (3, in_channels_for(2, time_features=True)) == (3, 16)
    assert vox.coords.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]]  # sorted: mixed (0, 1, 0), past (1, 0, 0)
    current, age = vox.feats[:, -2], vox.feats[:, -1]
    torch.testing.assert_close(current, torch.tensor([1.0, 1.0 / 3.0, 0.0]))
    torch.testing.assert_close(age, torch.tensor([0.0, 0.4 / 3.0, 0.2]))
    # the single-frame features are the first 14 channels, whatever the dt column holds
    plain = voxelize_points(pts, grid, 2, batch_size=1)
    assert plain.feats.shape == (3, in_channels_for(2)) == (3, 14)
    assert torch.equal(plain.feats, vox.feats[:, :14])
    assert torch.equal(plain.feats, voxelize_points(pts[:, :5], grid, 2, batch_size=1).feats)
    # a scan without the dt column is all current: share 1, age 0
    one = voxelize_points(pts[:, :5], grid, 2, batch_size=1, time_features=True).feats
    assert one[:, -2].tolist() == [1.0, 1.0, 1.0] and one[:, -1].tolist() == [0.0, 0.0, 0.0]
    enc = LidarEncoder(grid, [4, 8], 6, stride=2, backend="dense", time_features=True)
    assert enc.levels[0][0].conv.weight.shape[-1] == 16  # the first convolution reads the two extra channels
    assert LidarEncoder(grid, [4, 8], 6, stride=2, backend="dense").levels[0][0].conv.weight.shape[-1] == 14


def test_submanifold_dense_conv_keeps_the_active_set_and_strided_dilates_it():
    conv = SparseConv3d(3, 4, 3, 1, True)
    x = torch.zeros(1, 3, 6, 6, 6)
    mask = torch.zeros(1, 1, 6, 6, 6)
    x[0, :, 2, 2, 2] = 1.0
    mask[0, 0, 2, 2, 2] = 1.0
    with torch.no_grad():
        y, m = conv.forward_dense(x, mask)
    assert torch.equal(m, mask) and (y[0, :, 2, 2, 2] != 0).any()
    assert float(y.abs().sum()) == pytest.approx(float(y[0, :, 2, 2, 2].abs().sum()))
    strided = SparseConv3d(3, 4, 3, 2, False)
    _, m2 = strided.forward_dense(x, mask)
    # output sites o with 2o - 1 <= 2 <= 2o + 1 on every axis: o in {1} (and o = 1.5 is not an index)
    assert m2.shape == (1, 1, 3, 3, 3) and m2.sum() == 1 and m2[0, 0, 1, 1, 1] == 1


@needs_spconv
@pytest.mark.parametrize("train_mode", [False, True])
def test_spconv_and_dense_backends_agree_with_one_state_dict(train_mode):
    torch.manual_seed(0)
    dense = LidarEncoder(GRID, [8, 16, 32], 16, 2, "dense")
    # give the batch norms non-trivial running statistics, then share one state dict
    dense.train()
    with torch.no_grad():
        for seed in range(3):
            dense(_points(seed=seed), 2)
    sparse = LidarEncoder(GRID, [8, 16, 32], 16, 2, "spconv")
    sparse.load_state_dict(dense.state_dict())
    dense.train(train_mode)
    sparse.train(train_mode)
    pts = _points(seed=7)
    vox = voxelize_points(pts, GRID, 2, 2)
    threads = torch.get_num_threads()
    # two threads: spconv's CPU kernels race with more than one, the encoder must guard against it
    torch.set_num_threads(2)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spconv's own deprecation warnings
            lv_dense = dense.encode_levels(vox, "dense")
            lv_sparse = sparse.encode_levels(vox, "spconv")
            out_dense, _ = dense(pts, 2)
            out_sparse, _ = sparse(pts, 2)
    finally:
        torch.set_num_threads(threads)
    for (fd, md), (fs, ms) in zip(lv_dense, lv_sparse):
        assert torch.equal(md, ms)  # same active sites on every level
        assert 0 < md.sum() < md.numel()
        active = md.expand_as(fd).bool()
        assert float((fd[active] - fs[active]).abs().max()) < 1e-4
        assert float(fs[~active].abs().max()) == 0.0
    assert float((out_dense - out_sparse).abs().max()) < 1e-4


@needs_spconv
def test_spconv_weight_layout_is_out_k_k_k_in():
    conv = SparseConv3d(3, 5, 3, 1, True, "k")
    assert tuple(conv.weight.shape) == (5, 3, 3, 3, 3)
    mod = conv.spconv_module()
    assert mod.weight is conv.weight and mod.bias is conv.bias
    assert "_spconv" not in dict(conv.named_children())  # not part of the state dict
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_auto_backend_is_dense_on_cpu_and_unknown_backend_is_refused():
    enc = LidarEncoder(GRID, [4, 8], 8, 2, "auto")
    assert enc.resolve_backend(torch.device("cpu")) == "dense"
    with pytest.raises(ValueError, match="lidar_backend"):
        LidarEncoder(GRID, [4], 8, 2, "cuda-magic")


def test_empty_scan_gives_zero_sparse_features_and_runs_backward():
    enc = LidarEncoder(GRID, [8, 16, 32], 16, 2, "dense").train()
    empty = torch.zeros(0, 5)
    vox = voxelize_points(empty, GRID, 2, 1)
    assert vox.coords.shape == (0, 4)
    for feat, mask in enc.encode_levels(vox, "dense"):
        assert float(feat.abs().sum()) == 0.0 and float(mask.sum()) == 0.0
    out, mask = enc(empty, 1)
    assert out.shape == (1, 16, 16, 16, 8) and torch.isfinite(out).all()
    # no information: the grid is the same everywhere
    assert float((out - out[:, :, :1, :1, :1]).abs().max()) == 0.0
    out.sum().backward()


def test_dense_backend_trains():
    enc = LidarEncoder(GRID, [8, 16], 16, 2, "dense").train()
    out, _ = enc(_points(), 2)
    out.square().mean().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None for g in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads)


def test_points_must_be_m_by_5_or_6():
    with pytest.raises(ValueError, match=r"\(M, 5\)"):
        voxelize_points(torch.zeros(3, 4), GRID, 2, 1)
    with pytest.raises(ValueError, match=r"\(M, 6\) with dt"):
        voxelize_points(torch.zeros(3, 7), GRID, 2, 1)
