"""Class decision, first step: which elements of a logits tensor are not the empty class, fast on a CPU.

``torch.max(dim).indices`` / ``argmax`` track an index per element and run at well under one element per
nanosecond on a CPU; ``amax`` (values only) is vectorised and about five times faster. Most voxels of a scene are
empty, so the decision first settles "empty or not" for every element with two ``amax`` reductions and a
comparison (:func:`non_empty_mask`); the exact first-maximum index is then needed only for the few elements that
are not empty (:meth:`occle_core.model.layers.UpsampleHead.labels` recomputes their logits and takes it there).
Ties resolve as ``argmax`` does: to the lowest class index.
"""

from __future__ import annotations

import torch
from torch import Tensor


def non_empty_mask(logits: Tensor, empty_index: int, out: Tensor | None = None) -> Tensor:
    """Where ``logits.argmax(0) != empty_index``, without computing the argmax.

    Args:
        logits: (K, ...) scores of K classes (any float dtype and layout).
        empty_index: the class that most elements take.
        out: optional (...) bool tensor to write into (may be a strided view).

    Returns:
        (...) bool: True where a class other than ``empty_index`` has the first maximum.
    """
    K = logits.shape[0]
    if not 0 <= empty_index < K:
        raise ValueError(f"empty_index must be in [0, {K}), got {empty_index}")
    empty = logits[empty_index]  # (...)
    if out is None:
        out = torch.empty(empty.shape, dtype=torch.bool, device=logits.device)
    if K == 1:
        return out.fill_(False)
    if empty_index < K - 1:  # a later class must exceed the empty score
        torch.lt(empty, logits[empty_index + 1 :].amax(0), out=out)
        if empty_index > 0:  # an earlier class only has to reach it
            out.logical_or_(empty <= logits[:empty_index].amax(0))
    else:
        torch.le(empty, logits[:empty_index].amax(0), out=out)
    return out
