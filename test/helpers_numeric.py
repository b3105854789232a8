"""Float comparisons across kernels, shared by the tests of the class decision, the network and the predictor.

Two GEMMs of different shapes (the logits head over the whole grid, and its block / row-subset forms in the class
decision) may sum the same products in another order and round differently, on another CPU or thread count even
when they agree here. Labels taken from such logits can only differ where two classes tie within that rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from occle_core.model.layers import UpsampleHead


def head_rounding_bound(head: UpsampleHead, x: Tensor) -> float:
    """Bound on the difference of one logit of ``head`` on features ``x`` (B, C, ...) between two GEMM orders.

    A float dot product of length ``C`` plus the bias is within ``(C + 1) eps sum |w_k x_k| + |b|`` of the exact
    value whatever the summation order (Higham, Accuracy and Stability, 3.1); two such results are within twice
    that of each other. ``sum |w_k x_k| <= max_row ||w||_1 max |x|`` gives one bound for every logit.
    """
    w, b = head.weight.detach(), head.proj.bias.detach()  # (out * s^3, C), (out * s^3,)
    eps = torch.finfo(x.dtype).eps
    scale = float(w.abs().sum(1).max()) * float(x.detach().abs().max()) + float(b.abs().max())
    return 2.0 * (x.shape[1] + 1) * eps * scale


def assert_labels_are_argmax(labels: Tensor, logits: Tensor, tol: float, dim: int = 1) -> None:
    """``labels`` equal ``logits.argmax(dim)`` up to ties within ``tol``: the chosen class's logit is within
    ``tol`` of the maximum everywhere (0 where they agree), and most labels agree exactly."""
    chosen = logits.gather(dim, labels.long().unsqueeze(dim)).squeeze(dim)
    gap = logits.amax(dim) - chosen  # >= 0; > 0 only where labels is not a first maximum
    worst = float(gap.max())
    assert worst <= tol, f"a label's logit is {worst:.3g} below the maximum (tolerance {tol:.3g})"
    assert float((labels.long() == logits.argmax(dim)).float().mean()) > 0.99
