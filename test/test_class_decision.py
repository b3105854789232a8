"""Class decision and the fused label head: exactly argmax, for any empty class, ties, blocks and batches."""

from __future__ import annotations

import pytest
import torch

from occle_core.model.class_decision import class_decision
from occle_core.model.layers import UpsampleHead, to_cl


def _logits(K: int, shape: tuple[int, ...], empty: int, occupied: float, seed: int = 0) -> torch.Tensor:
    """(K, *shape) random logits where about ``occupied`` of the elements are not ``empty``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(K, *shape, generator=g)
    others = torch.cat([x[:empty], x[empty + 1 :]]).amax(0)
    x[empty] = others + torch.where(torch.rand(shape, generator=g) < occupied, -0.5, 0.5)
    return x


@pytest.mark.parametrize("empty", [0, 7, 19])
@pytest.mark.parametrize("occupied", [0.0, 0.05, 1.0])
def test_equals_argmax(empty: int, occupied: float) -> None:
    x = _logits(20, (16, 8, 4), empty, occupied)
    got = class_decision(x, empty)
    assert got.dtype == torch.uint8 and got.shape == (16, 8, 4)
    assert torch.equal(got.long(), x.argmax(0))
    frac = (got != empty).float().mean().item()
    assert abs(frac - occupied) < 0.1


@pytest.mark.parametrize("empty", [0, 3, 5])
def test_ties_go_to_the_lowest_class(empty: int) -> None:
    x = torch.zeros(6, 100)  # every class ties everywhere: argmax is 0
    x[:, 50:] = torch.randn(6, 50)
    x[2, 60:70] = x[:, 60:70].amax(0)  # class 2 ties the maximum
    x[4, 60:65] = x[:, 60:65].amax(0)
    x[empty, 80:90] = x[:, 80:90].amax(0)  # the empty class ties
    assert torch.equal(class_decision(x, empty).long(), x.argmax(0))


def test_strided_layouts_and_half_precision() -> None:
    x = _logits(5, (6, 7), 0, 0.3).permute(0, 2, 1)  # non-contiguous (K, 7, 6)
    assert torch.equal(class_decision(x, 0).long(), x.argmax(0))
    h = x.to(torch.bfloat16)
    assert torch.equal(class_decision(h, 2).long(), h.argmax(0))


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match="empty_index"):
        class_decision(torch.zeros(4, 3), 4)
    with pytest.raises(ValueError, match="1..256 classes"):
        class_decision(torch.zeros(300, 3), 0)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("channels_last", [True, False])
def test_label_head_equals_argmax_of_forward(batch: int, channels_last: bool, monkeypatch) -> None:
    torch.manual_seed(0)
    head = UpsampleHead(8, 20, 2).eval()
    with torch.no_grad():
        head.proj.bias.view(20, 8)[0] += 2.0  # mostly empty, like a scene
    x = torch.randn(batch, 8, 10, 6, 4)
    if channels_last:
        x = to_cl(x)
    monkeypatch.setattr(UpsampleHead, "LABEL_BLOCK", 64)  # 240 voxels: several blocks and a partial one
    with torch.inference_mode():
        want = head(x).argmax(1)  # (B, 20, 12, 8)
        got = head.labels(x, 0)
    assert got.shape == (batch, 20, 12, 8) and got.dtype == torch.uint8
    assert torch.equal(got.long(), want)
    assert 0 < (got != 0).float().mean() < 0.5
