"""Decoupled encoders (``model.shared_encoders: false``) and the full-resolution ``sem3d`` head.

The semantic branch's own 2D UNet and sparse 3D UNet (both backends), a training step of the decoupled network
reaching all four encoders, ``sem3d_head`` shapes, presets and saved configs, the shipped checkpoint unchanged.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers_numeric import assert_labels_are_argmax, head_rounding_bound
from test_model_lidar import GRID, _points

from occle_core.checkpoint import load_model
from occle_core.config import LossConfig, OccleConfig
from occle_core.losses import compute_losses
from occle_core.model.image_encoder import ImageEncoder
from occle_core.model.lidar_encoder import LidarEncoder, spconv_available, voxelize_points
from occle_core.model.occle import OccLE, synthetic_batch, synthetic_targets
from occle_core.model.sparse_unet3d import SparseInverseConv3d, SparseUNet3D
from occle_core.model.unet2d import UNet2D

SMALL_GRID = {"origin": [0.0, -6.4, -2.0], "voxel_size": 0.2, "shape": [32, 32, 8]}
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "occle_tiny_synthetic.pt"
needs_spconv = pytest.mark.skipif(not spconv_available(), reason="spconv.pytorch not installed")


def _cfg(size: str = "tiny_decoupled", **model) -> OccleConfig:
    return OccleConfig.from_dict(
        {
            "data": {"grid": SMALL_GRID, "image_size": [48, 96]},
            "model": {"size": size, "lidar_backend": "dense", **model},
        }
    )


def _with_targets(batch, K: int, seed: int = 0):
    """The batch with random labels, pseudo labels and LiDAR free / occupied masks (every loss term active)."""
    return synthetic_targets(batch, K, tuple(SMALL_GRID["shape"]), seed)


def test_presets_and_saved_configs():
    tiny, paper, dec = OccleConfig().model, OccleConfig.from_dict({"model": {"size": "paper"}}).model, _cfg().model
    assert (tiny.shared_encoders, tiny.sem3d_head) == (True, "coarse")
    assert (paper.shared_encoders, paper.sem3d_head) == (False, "full")
    assert (dec.shared_encoders, dec.sem3d_head) == (False, "full") and dec.feat_dim == tiny.feat_dim
    # a config saved before the switches existed is the network it was trained as: shared, coarse
    saved = OccleConfig.from_dict({"model": {"size": "paper"}}).to_dict()
    for key in ("shared_encoders", "sem3d_head"):
        del saved["model"][key]
    old = OccleConfig.from_saved(saved).model
    assert (old.shared_encoders, old.sem3d_head, old.feat_dim) == (True, "coarse", paper.feat_dim)
    with pytest.raises(ValueError, match="model.sem3d_head"):
        OccLE(_cfg(sem3d_head="fine"))
    with pytest.raises(ValueError, match="model.shared_encoders"):
        OccLE(_cfg(shared_encoders="no"))


def test_decoupled_model_trains_one_step_and_gradients_reach_all_four_encoders():
    torch.manual_seed(0)
    cfg = _cfg()
    model = OccLE(cfg).train()
    assert isinstance(model.semantic_image_unet, UNet2D) and isinstance(model.semantic_lidar_unet, SparseUNet3D)
    assert isinstance(model.image_encoder, ImageEncoder) and model.image_encoder.head is None  # sem2d: the UNet's
    assert isinstance(model.lidar_encoder, LidarEncoder)
    batch = _with_targets(synthetic_batch(cfg, 3000, batch_size=2), model.num_classes)
    out = model(batch)
    total, terms = compute_losses(out, batch, LossConfig(teacher_threshold=0.0), empty_index=model.empty_index)
    assert torch.isfinite(total) and {"pseudo_2d", "pseudo_3d", "projection"} <= set(terms)
    total.backward()
    encoders = {"image": model.image_encoder, "lidar": model.lidar_encoder, "unet2d": model.semantic_image_unet}
    encoders["unet3d"] = model.semantic_lidar_unet
    for name, enc in encoders.items():
        grads = [p.grad for p in enc.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.SGD(model.parameters(), lr=1e-2).step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    groups = model.parameter_groups()
    own = [*model.semantic_image_unet.parameters(), *model.semantic_lidar_unet.parameters()]
    assert {id(p) for p in own} < {id(p) for p in groups["semantic_branch"]}  # the branch's encoders count in it
    assert sum(p.numel() for g in groups.values() for p in g) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("head", ["coarse", "full"])
def test_sem3d_head_resolution(head):
    cfg = _cfg(sem3d_head=head)
    model = OccLE(cfg).eval()
    with torch.no_grad():
        out = model(synthetic_batch(cfg, 3000))
    X, Y, Z = SMALL_GRID["shape"]
    assert out.sem3d.shape == (1, model.num_classes, X, Y, Z)
    blocks = out.sem3d.reshape(1, -1, X // 2, 2, Y // 2, 2, Z // 2, 2)  # the 2x2x2 children of each feature voxel
    spread = float((blocks - blocks[:, :, :, :1, :, :1, :, :1]).abs().max())
    if head == "coarse":
        assert spread == 0.0  # nearest upsampling: the children share one prediction
    else:
        assert spread > 0.0  # one prediction per output voxel


def test_unet2d_shapes_and_gradients():
    net = UNet2D([8, 16, 32], 12, 5)
    x = torch.randn(2, 3, 94, 310)  # sizes not divisible by the strides
    feat, logits = net(x)
    assert feat.shape == (2, 12, 24, 78) and logits.shape == (2, 5, 94, 310)  # stride 4 (ceil), as ImageEncoder
    logits.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_inverse_conv_lands_on_the_fine_sites_only():
    fine = torch.zeros(1, 1, 7, 6, 5)  # odd and even sizes: the transposed conv's output size is picked
    fine[0, 0, 2, 3, 4] = fine[0, 0, 6, 0, 0] = 1.0
    coarse_mask = torch.ones(1, 1, 4, 3, 3)
    inv = SparseInverseConv3d(3, 2, "down1")
    with torch.no_grad():
        y, m = inv.forward_dense(torch.randn(1, 3, 4, 3, 3) * coarse_mask, fine)
    assert y.shape == (1, 2, 7, 6, 5) and torch.equal(m, fine)
    assert float(y[:, :, fine[0, 0] == 0].abs().max()) == 0.0 and float(y[:, :, fine[0, 0] > 0].abs().max()) > 0


def test_unet3d_dense_trains_and_keeps_the_level0_sites():
    net = SparseUNet3D(GRID, [8, 16, 32], 16, 2, "dense").train()
    pts = _points()
    x, mask = net.decode(pts, 2, "dense")
    _, level0 = voxelize_points(pts, GRID, 2, 2).dense()
    assert torch.equal(mask, level0)  # the decoder ends on the scan's own voxels
    assert float(x.detach()[~mask.expand_as(x).bool()].abs().max()) == 0.0
    out, _ = net(pts, 2)
    out.square().mean().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.parameters())


@needs_spconv
@pytest.mark.parametrize("train_mode", [False, True])
def test_unet3d_spconv_and_dense_backends_agree_with_one_state_dict(train_mode):
    torch.manual_seed(0)
    dense = SparseUNet3D(GRID, [8, 16, 32], 16, 2, "dense").train()
    with torch.no_grad():  # non-trivial batch-norm running statistics, then one shared state dict
        for seed in range(3):
            dense(_points(seed=seed), 2)
    sparse = SparseUNet3D(GRID, [8, 16, 32], 16, 2, "spconv")
    sparse.load_state_dict(dense.state_dict())
    dense.train(train_mode)
    sparse.train(train_mode)
    pts = _points(seed=7)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # spconv's CPU kernels race with more than one thread: the net must guard
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spconv's own deprecation warnings
            xd, md = dense.decode(pts, 2, "dense")
            xs, ms = sparse.decode(pts, 2, "spconv")
            out_dense, _ = dense(pts, 2)
            out_sparse, _ = sparse(pts, 2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(md, ms) and 0 < md.sum() < md.numel()
    active = md.expand_as(xd).bool()
    assert float(xd[active].abs().max()) > 0
    assert float((xd[active] - xs[active]).abs().max()) < 1e-4
    assert float(xs[~active].abs().max()) == 0.0
    assert float((out_dense - out_sparse).abs().max()) < 1e-4


def test_shipped_checkpoint_loads_strictly_as_the_shared_network(tmp_path):
    if not SHIPPED.is_file():
        pytest.skip("models/occle_tiny_synthetic.pt is not shipped in this checkout")
    # a checkpoint written before the switch existed: its model config has neither key
    old = torch.load(SHIPPED, weights_only=True)
    for key in ("shared_encoders", "sem3d_head"):
        old["config"]["model"].pop(key, None)
    torch.save(old, tmp_path / "old.pt")
    model, cfg, ckpt = load_model(tmp_path / "old.pt")  # load_state_dict is strict: any missing / extra key raises
    assert (cfg.model.shared_encoders, cfg.model.sem3d_head) == (True, "coarse")
    assert model.semantic_image_unet is None and model.semantic_lidar_unet is None
    assert set(model.state_dict()) == set(ckpt["model"])
    batch = synthetic_batch(cfg, 20_000, seed=3)
    with torch.no_grad():
        labels = model.predict_labels(batch)
        out = model(batch, inference=True)
    tol = head_rounding_bound(model.heads["logits"], model.features(batch))
    assert_labels_are_argmax(labels, out.logits, tol)


def test_saved_for_backward_counts_distinct_storages():
    from occle_bench.bench_variants import saved_for_backward_mb

    x = torch.randn(1000, requires_grad=True)
    y = torch.randn(1000, requires_grad=True)
    # x * y saves both factors; x * x saves x twice (one storage); the sum saves nothing
    assert saved_for_backward_mb(lambda: (x * y).sum()) == pytest.approx(8000 / 2**20)
    assert saved_for_backward_mb(lambda: (x * x).sum()) == pytest.approx(4000 / 2**20)
