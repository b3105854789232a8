"""Engine pieces on their own: learning-rate schedule, RNG capture / restore / isolation, device set-up."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from occle_core.config import TrainConfig
from occle_core.engine.distributed import dist_on, setup_distributed
from occle_core.engine.reproducibility import isolated_rng, rng_state, seed_everything, seed_of, set_rng_state
from occle_core.engine.schedule import build_scheduler, lr_factor


def _draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_onecycle_and_cosine_factors():
    steps, warmup = 100, 0.1  # 10 warm-up steps
    assert lr_factor(0, steps, warmup, "onecycle") == pytest.approx(1 / 25)
    assert lr_factor(10, steps, warmup, "onecycle") == pytest.approx(1.0)
    assert lr_factor(99, steps, warmup, "onecycle") == pytest.approx(1 / 25e4)
    assert lr_factor(0, steps, warmup, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, steps, warmup, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, steps, warmup, "cosine") == pytest.approx(0.0, abs=1e-12)
    rising = [lr_factor(s, steps, warmup, "onecycle") for s in range(11)]
    falling = [lr_factor(s, steps, warmup, "onecycle") for s in range(10, 100)]
    assert rising == sorted(rising) and falling == sorted(falling, reverse=True)
    with pytest.raises(ValueError, match="train.schedule must be 'onecycle' or 'cosine'"):
        lr_factor(0, steps, warmup, "step")


def test_scheduler_follows_the_factor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = build_scheduler(opt, TrainConfig(steps=20, warmup=0.25, schedule="cosine"))
    for step in range(20):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * lr_factor(step, 20, 0.25, "cosine"))
        opt.step()
        sched.step()


def test_rng_state_round_trip_and_isolation():
    seed_everything(3)
    state = rng_state()
    first = _draw()
    set_rng_state(state)
    assert _draw() == first  # python, numpy and torch restored
    set_rng_state(state)
    with isolated_rng(seed_of(0, 1, 2)):
        inside = _draw()
    assert _draw() == first  # the block left no trace on the caller's streams
    with isolated_rng(seed_of(0, 1, 2)):
        assert _draw() == inside  # and its own draws are a pure function of the seed
    assert seed_of(0, 1, 2) == seed_of(0, 1, 2) != seed_of(0, 2, 1)


def test_single_process_device_setup():
    assert setup_distributed("cpu") == (0, 1, torch.device("cpu"))
    assert not dist_on()
    with pytest.raises(ValueError, match="device must be"):
        setup_distributed("tpu")
