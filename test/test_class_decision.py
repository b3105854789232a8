"""Class decision: the empty / not-empty mask and the fused label head equal argmax (any empty class, ties,
blocks, batches, classes forbidden where a mask says)."""

from __future__ import annotations

import pytest
import torch
from helpers_numeric import assert_labels_are_argmax, head_rounding_bound

from occle_core.model.class_decision import non_empty_mask
from occle_core.model.layers import UpsampleHead, depth_to_space3d, space_to_depth3d, to_cl


def _logits(K: int, shape: tuple[int, ...], empty: int, occupied: float, seed: int = 0) -> torch.Tensor:
    """(K, *shape) random logits where about ``occupied`` of the elements are not ``empty``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(K, *shape, generator=g)
    others = torch.cat([x[:empty], x[empty + 1 :]]).amax(0)
    x[empty] = others + torch.where(torch.rand(shape, generator=g) < occupied, -0.5, 0.5)
    return x


@pytest.mark.parametrize("empty", [0, 7, 19])
@pytest.mark.parametrize("occupied", [0.0, 0.05, 1.0])
def test_mask_equals_argmax_not_empty(empty: int, occupied: float) -> None:
    x = _logits(20, (16, 8, 4), empty, occupied)
    got = non_empty_mask(x, empty)
    assert got.dtype == torch.bool and got.shape == (16, 8, 4)
    assert torch.equal(got, x.argmax(0) != empty)
    assert abs(got.float().mean().item() - occupied) < 0.1


@pytest.mark.parametrize("empty", [0, 3, 5])
def test_ties_go_to_the_lowest_class(empty: int) -> None:
    x = torch.zeros(6, 100)  # every class ties everywhere: argmax is 0
    x[:, 50:] = torch.randn(6, 50)
    x[2, 60:70] = x[:, 60:70].amax(0)  # class 2 ties the maximum
    x[4, 60:65] = x[:, 60:65].amax(0)
    x[empty, 80:90] = x[:, 80:90].amax(0)  # the empty class ties
    assert torch.equal(non_empty_mask(x, empty), x.argmax(0) != empty)


def test_strided_layouts_out_and_half_precision() -> None:
    x = _logits(5, (6, 7), 0, 0.3).permute(0, 2, 1)  # non-contiguous (K, 7, 6)
    assert torch.equal(non_empty_mask(x, 0), x.argmax(0) != 0)
    h = x.to(torch.bfloat16)
    assert torch.equal(non_empty_mask(h, 2), h.argmax(0) != 2)
    buf = torch.ones(7, 12, dtype=torch.bool)
    non_empty_mask(x, 4, out=buf[:, ::2])  # a strided view is written in place
    assert torch.equal(buf[:, ::2], x.argmax(0) != 4) and buf[:, 1::2].all()
    assert not non_empty_mask(torch.zeros(1, 3), 0).any()  # one class: everything is that class


def test_bad_empty_index_names_the_problem() -> None:
    with pytest.raises(ValueError, match="empty_index"):
        non_empty_mask(torch.zeros(4, 3), 4)


@pytest.mark.parametrize(("batch", "empty"), [(1, 0), (2, 0), (2, 7), (1, 19)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_label_head_equals_argmax_of_forward(batch: int, empty: int, channels_last: bool, monkeypatch) -> None:
    torch.manual_seed(0)
    head = UpsampleHead(8, 20, 2).eval()
    with torch.no_grad():
        head.proj.bias.view(20, 8)[empty] += 2.0  # mostly empty, like a scene
    x = torch.randn(batch, 8, 10, 6, 4)
    if channels_last:
        x = to_cl(x)
    monkeypatch.setattr(UpsampleHead, "LABEL_BLOCK", 64)  # 240 voxels: several blocks and a partial one
    with torch.inference_mode():
        logits = head(x)  # (B, 20, 12, 8, 4)
        got = head.labels(x, empty)
    assert got.shape == (batch, 20, 12, 8) and got.dtype == torch.uint8
    assert_labels_are_argmax(got, logits, head_rounding_bound(head, x))  # another GEMM shape: ties may differ
    assert 0 < (got != empty).float().mean() < 0.5


@pytest.mark.parametrize("batch", [1, 2])
def test_label_head_forbids_classes_where_the_mask_says(batch: int, monkeypatch) -> None:
    torch.manual_seed(1)
    head = UpsampleHead(8, 20, 2).eval()
    banned = torch.tensor([3, 5, 9])
    with torch.no_grad():
        head.proj.bias.view(20, 8)[0] += 1.0  # empty: about half of the voxels
        head.proj.bias.view(20, 8)[banned] += 1.5  # the banned classes win often where they are allowed
    x = torch.randn(batch, 8, 10, 6, 4)
    where = torch.rand(batch, 20, 12, 8, generator=torch.Generator().manual_seed(2)) < 0.5
    monkeypatch.setattr(UpsampleHead, "LABEL_BLOCK", 64)
    with torch.inference_mode():
        logits = head(x)  # (B, 20, 20, 12, 8)
        free = head.labels(x, 0)
        got = head.labels(x, 0, (where, banned))
    allowed = logits.clone()
    allowed[:, banned] = allowed[:, banned].masked_fill(where[:, None], float("-inf"))
    assert_labels_are_argmax(got, allowed, head_rounding_bound(head, x))
    assert not torch.isin(got[where], banned).any()
    assert torch.isin(free[where], banned).float().mean() > 0.1  # the mask changed something
    assert torch.equal(got[~where], free[~where])  # and nothing where it is False
    assert ((got == 0) & (free != 0) & where).any()  # where a banned class lost, the next may be the empty one
    with torch.inference_mode(), pytest.raises(ValueError, match="forbid mask must be"):
        head.labels(x, 0, (where[..., :4], banned))
    with torch.inference_mode(), pytest.raises(ValueError, match="empty class 3"):
        head.labels(x, 3, (where, banned))


def test_space_to_depth_inverts_depth_to_space() -> None:
    x = torch.randn(2, 3, 8, 6, 4)
    for s in (1, 2):
        y = space_to_depth3d(x, s)
        assert y.shape == (2, 3 * s**3, 8 // s, 6 // s, 4 // s)
        assert torch.equal(depth_to_space3d(y, s), x)
