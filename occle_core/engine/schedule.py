"""Learning-rate schedule: one-cycle or warm-up + cosine, as a ``LambdaLR`` whose state is the step count."""

from __future__ import annotations

import functools
import math

import torch

from occle_core.config import TrainConfig


def lr_factor(step: int, steps: int, warmup: float, schedule: str) -> float:
    """Learning-rate multiplier of ``step`` (0-based) out of ``steps``.

    ``onecycle``: cosine rise from 1/25 to 1 over the warm-up, then cosine decay to 1/25e4 (the one-cycle
    policy with torch's default factors). ``cosine``: linear warm-up from 1/n_warm to 1, cosine decay to 0.
    The warm-up lasts ``round(warmup * steps)`` steps, at least 1 and at most ``steps - 1``.
    """
    n_warm = min(max(1, int(round(warmup * steps))), max(1, steps - 1))
    if schedule == "onecycle":
        lo, end = 1.0 / 25.0, 1.0 / 25.0e4
        if step < n_warm:
            return lo + (1.0 - lo) * 0.5 * (1.0 - math.cos(math.pi * step / n_warm))
        t = min(1.0, (step - n_warm) / max(1, steps - 1 - n_warm))
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "cosine":
        if step < n_warm:
            return (step + 1) / n_warm
        t = min(1.0, (step - n_warm) / max(1, steps - n_warm))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"train.schedule must be 'onecycle' or 'cosine', got {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over :func:`lr_factor` for ``train.steps`` / ``warmup`` / ``schedule`` (checkpoint friendly)."""
    lr_factor(0, int(train.steps), float(train.warmup), train.schedule)  # validates the schedule name
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(lr_factor, steps=int(train.steps), warmup=float(train.warmup), schedule=train.schedule),
    )
