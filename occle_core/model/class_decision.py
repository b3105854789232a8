"""Class decision: logits -> uint8 class ids, exactly ``logits.argmax(0)``, fast on a CPU.

``torch.max(dim).indices`` / ``argmax`` track an index per element and run at well under one element per
nanosecond on a CPU; ``amax`` (values only) is vectorised and about five times faster. Most voxels of a scene are
empty, so the decision first settles "empty or not" with two ``amax`` reductions and a comparison, then takes
the exact first-maximum index only over the voxels that are not empty (a few percent). Ties resolve to the
lowest class index, as ``argmax`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor


def class_decision(logits: Tensor, empty_index: int) -> Tensor:
    """Index of the first maximum along dim 0, as uint8.

    Args:
        logits: (K, ...) scores of K <= 256 classes (any float dtype, any layout of the trailing dims).
        empty_index: the class that most elements take (the decision is exact for any value; it is fast when
            that class is the common one).

    Returns:
        (...) uint8 class ids, equal to ``logits.argmax(0)``.
    """
    K = logits.shape[0]
    if not 0 < K <= 256:
        raise ValueError(f"logits must have 1..256 classes along dim 0, got shape {tuple(logits.shape)}")
    if not 0 <= empty_index < K:
        raise ValueError(f"empty_index must be in [0, {K}), got {empty_index}")
    flat = logits.reshape(K, -1)  # (K, V); a view for the layouts the head produces
    empty = flat[empty_index]  # (V,)
    out = torch.full(empty.shape, empty_index, dtype=torch.uint8, device=logits.device)
    occupied = None  # (V,) bool: another class reaches the maximum first
    if empty_index < K - 1:
        occupied = empty < flat[empty_index + 1 :].amax(0)
    if empty_index > 0:  # an earlier class that ties the empty score wins
        before = empty <= flat[:empty_index].amax(0)
        occupied = before if occupied is None else occupied.logical_or_(before)
    if occupied is not None:
        rest = occupied.nonzero().squeeze(1)  # (M,) the elements that are not empty
        if rest.numel():
            out[rest] = flat.index_select(1, rest).max(0).indices.to(torch.uint8)  # (K, M) -> (M,)
    return out.view(logits.shape[1:])
