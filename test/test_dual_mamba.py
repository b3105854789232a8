"""Dual Mamba fusion and its convolutional ablation: shapes, gradients, coupling, both scan directions."""

from __future__ import annotations

import pytest
import torch

from occle_core.model.dual_mamba import ConvFusion, DualMamba

FUSIONS = [DualMamba, ConvFusion]


def _grids(batch=2, cs=5, cg=3, shape=(6, 5, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    sem = torch.randn(batch, cs, *shape, generator=g)  # (B, Cs, X, Y, Z)
    geo = torch.randn(batch, cg, *shape, generator=g)  # (B, Cg, X, Y, Z)
    return sem, geo


@pytest.mark.parametrize("cls", FUSIONS)
def test_shape_and_gradients_reach_both_inputs(cls):
    torch.manual_seed(0)
    model = cls(5, 3, 7, d_model=16, n_layers=2, d_state=4)
    sem, geo = _grids()
    sem.requires_grad_(True)
    geo.requires_grad_(True)
    out = model(sem, geo)
    assert out.shape == (2, 7, 6, 5, 4)
    out.square().mean().backward()
    assert sem.grad.abs().sum() > 0 and geo.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", FUSIONS)
def test_swapping_the_streams_changes_the_output(cls):
    torch.manual_seed(1)
    model = cls(4, 4, 3, d_model=16, n_layers=1, d_state=4)
    sem, geo = _grids(cs=4, cg=4)
    assert not torch.allclose(model(sem, geo), model(geo, sem), atol=1e-4)


def test_streams_are_coupled_both_ways():
    """Each stream's tokens depend on the other stream's input (not only the final fusion mixes them)."""
    torch.manual_seed(2)
    model = DualMamba(5, 3, 4, d_model=16, n_layers=1, d_state=4).eval()
    sem, geo = _grids()
    s, g = model.streams(sem, geo)
    s_geo_changed, _ = model.streams(sem, geo + torch.randn_like(geo))
    _, g_sem_changed = model.streams(sem + torch.randn_like(sem), geo)
    assert (s_geo_changed - s).abs().max() > 1e-3
    assert (g_sem_changed - g).abs().max() > 1e-3


def test_both_scan_directions_reach_every_token():
    """A bidirectional scan: the first token sees the last voxel and the last token sees the first."""
    torch.manual_seed(3)
    model = DualMamba(5, 3, 4, d_model=16, n_layers=1, d_state=4)
    sem, geo = _grids(batch=1)
    sem.requires_grad_(True)
    out = model(sem, geo)  # (1, 4, X, Y, Z)
    (g_first,) = torch.autograd.grad(out[0, :, 0, 0, 0].sum(), sem, retain_graph=True)
    (g_last,) = torch.autograd.grad(out[0, :, -1, -1, -1].sum(), sem)
    assert g_first[0, :, -1, -1, -1].abs().sum() > 0
    assert g_last[0, :, 0, 0, 0].abs().sum() > 0


def test_token_count_of_the_tiny_network():
    """32 x 32 x 4 = 4096 tokens at the tiny width run forward and backward."""
    torch.manual_seed(4)
    model = DualMamba(8, 8, 20, d_model=32, n_layers=1, d_state=8)
    sem, geo = _grids(batch=1, cs=8, cg=8, shape=(32, 32, 4))
    out = model(sem, geo)
    assert out.shape == (1, 20, 32, 32, 4) and torch.isfinite(out).all()
    out.mean().backward()


@pytest.mark.parametrize("cls", FUSIONS)
def test_bad_inputs_are_named(cls):
    model = cls(5, 3, 4, d_model=8, n_layers=1, d_state=4)
    sem, geo = _grids()
    with pytest.raises(ValueError, match="sem must be"):
        model(sem[:, :4], geo)
    with pytest.raises(ValueError, match="geo must be"):
        model(sem, geo[:, :, 0])
    with pytest.raises(ValueError, match="share batch and grid"):
        model(sem, geo[:, :, :3])
    with pytest.raises(ValueError, match="d_model"):
        cls(5, 3, 4, d_model=0)
