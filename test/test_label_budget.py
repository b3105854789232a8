"""Label budget: exact counts, reproducibility, per-frame keys, invalid voxels, per-class statistics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from occle_core.config import load_config
from occle_core.data.label_budget import (
    BLOCK_SHAPE,
    budget_count,
    budget_stats,
    format_budget_stats,
    select_budget,
    select_labelled,
    select_labelled_blocks,
    select_labelled_frames,
    stable_key_hash,
)
from occle_core.labels import class_table

REPO = Path(__file__).resolve().parent.parent


def _labels(seed: int = 0, shape=(64, 64, 8)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 20, shape).astype(np.uint8)
    labels[rng.random(shape) < 0.2] = 255
    invalid = rng.random(shape) < 0.1
    return labels, invalid


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_exact_count_and_only_valid_voxels(ratio):
    labels, invalid = _labels()
    mask = select_labelled(labels, ratio, seed=3, key="08/000001", invalid=invalid)
    n_valid = int(((labels != 255) & ~invalid).sum())
    assert mask.shape == labels.shape and mask.dtype == bool
    assert int(mask.sum()) == budget_count(n_valid, ratio) == int(np.floor(ratio * n_valid + 0.5))
    assert not mask[labels == 255].any()
    assert not mask[invalid].any()


def test_budget_count_rounds_half_up():
    assert budget_count(10, 0.25) == 3  # 2.5 -> 3 (not banker's 2)
    assert budget_count(10, 0.24) == 2
    assert budget_count(0, 0.1) == 0


def test_deterministic_and_key_dependent():
    labels, invalid = _labels()
    a = select_labelled(labels, 0.1, seed=1, key="00/000010", invalid=invalid)
    b = select_labelled(labels.copy(), 0.1, seed=1, key="00/000010", invalid=invalid.copy())
    np.testing.assert_array_equal(a, b)
    other_key = select_labelled(labels, 0.1, seed=1, key="00/000011", invalid=invalid)
    other_seed = select_labelled(labels, 0.1, seed=2, key="00/000010", invalid=invalid)
    assert a.sum() == other_key.sum() == other_seed.sum()
    # two independent 10% draws overlap on ~1% of the voxels, not on all of them
    assert (a & other_key).sum() < 0.3 * a.sum()
    assert (a & other_seed).sum() < 0.3 * a.sum()


def test_budgets_are_nested():
    labels, invalid = _labels(1)
    small = select_labelled(labels, 0.01, seed=5, key="k", invalid=invalid)
    large = select_labelled(labels, 0.1, seed=5, key="k", invalid=invalid)
    assert small.sum() > 0 and not (small & ~large).any()


def test_empty_class_is_labelled_and_sampling_is_uniform():
    labels = np.zeros((100, 100, 10), np.uint8)  # all empty (class 0) -> all valid
    labels[:50] = 13
    mask = select_labelled(labels, 0.1, seed=0, key="x")
    assert mask.sum() == 10000
    assert abs(int(mask[:50].sum()) - 5000) < 300  # uniform: half of the picks in each half


def test_same_selection_in_another_process_with_another_hash_seed():
    labels, invalid = _labels()
    here = select_labelled(labels, 0.1, seed=7, key="04/000123", invalid=invalid)
    code = (
        "import numpy as np, sys\n"
        "from occle_core.data.label_budget import select_labelled\n"
        "rng = np.random.default_rng(0)\n"
        "shape = (64, 64, 8)\n"
        "labels = rng.integers(0, 20, shape).astype(np.uint8)\n"
        "labels[rng.random(shape) < 0.2] = 255\n"
        "invalid = rng.random(shape) < 0.1\n"
        "m = select_labelled(labels, 0.1, seed=7, key='04/000123', invalid=invalid)\n"
        "sys.stdout.write(''.join(map(str, np.flatnonzero(m)[:50])) + ' ' + str(int(m.sum())))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out == "".join(map(str, np.flatnonzero(here)[:50])) + " " + str(int(here.sum()))


def test_stable_key_hash_is_fixed():
    # BLAKE2b-64 of the UTF-8 key, little endian: pinned, so label budgets stay the same across releases
    assert stable_key_hash("08/000000") == 12950683729737985288
    assert stable_key_hash("a") != stable_key_hash("b")


def test_bad_arguments():
    labels, invalid = _labels()
    with pytest.raises(ValueError, match="ratio"):
        select_labelled(labels, 1.5, 0, "k")
    with pytest.raises(ValueError, match="seed"):
        select_labelled(labels, 0.1, -1, "k")
    with pytest.raises(ValueError, match="invalid mask has shape"):
        select_labelled(labels, 0.1, 0, "k", invalid=invalid[:, :, :4])


def test_budget_stats_by_hand():
    sk = class_table("semantic_kitti")
    labels = np.full((4, 5, 1), 255, np.uint8)
    labels[0, :, 0] = 0  # 5 empty
    labels[1, :4, 0] = 1  # 4 car
    labels[2, :2, 0] = 9  # 2 road
    invalid = np.zeros_like(labels, bool)
    invalid[2, 1, 0] = True  # one road voxel invalid -> 1 valid road
    mask = np.zeros_like(labels, bool)
    mask[0, :2, 0] = True  # 2 of 5 empty
    mask[1, 0, 0] = True  # 1 of 4 car
    mask[2, 1, 0] = True  # the invalid road voxel: not counted
    mask[3, 0, 0] = True  # an unlabelled voxel: not counted
    s = budget_stats(labels, mask, sk, invalid=invalid)
    assert s["total"] == 10 and s["kept"] == 3 and s["share"] == pytest.approx(0.3)
    assert s["per_class"]["empty"] == {"total": 5, "kept": 2, "share": pytest.approx(0.4)}
    assert s["per_class"]["car"] == {"total": 4, "kept": 1, "share": pytest.approx(0.25)}
    assert s["per_class"]["road"] == {"total": 1, "kept": 0, "share": 0.0}
    assert np.isnan(s["per_class"]["pole"]["share"])
    text = format_budget_stats(s)
    assert "car" in text and "pole" not in text and "30.00" in text


# ------------------------------------------------------------------------------------- frame and block budgets


@pytest.mark.parametrize("n", [0, 1, 7, 40, 160])
def test_frame_budget_exact_share_nested_and_deterministic(n):
    shares = {r: select_labelled_frames(n, r, seed=5) for r in (0.0, 0.01, 0.1, 0.5, 1.0)}
    for r, sel in shares.items():
        assert sel.shape == (n,) and sel.dtype == bool and int(sel.sum()) == budget_count(n, r)
    assert np.array_equal(select_labelled_frames(n, 0.1, seed=5), shares[0.1])
    for small, big in ((0.01, 0.1), (0.1, 0.5), (0.5, 1.0)):
        assert not (shares[small] & ~shares[big]).any()


def test_frame_budget_depends_on_the_seed():
    picks = {tuple(np.flatnonzero(select_labelled_frames(160, 0.1, seed=s))) for s in range(5)}
    assert len(picks) == 5


def test_frame_budget_labels_whole_frames_or_nothing():
    labels, invalid = _labels()
    n_valid = int(((labels != 255) & ~invalid).sum())
    chosen = select_labelled_frames(20, 0.1, seed=2)
    for index in range(20):
        mask = select_budget("frame", labels, 0.1, 2, f"00/{index:06d}", invalid, frame=(index, 20))
        assert int(mask.sum()) == (n_valid if chosen[index] else 0)
    with pytest.raises(ValueError, match="index, n_frames"):
        select_budget("frame", labels, 0.1, 2, "00/000000", invalid)
    with pytest.raises(ValueError, match="data.label_budget"):
        select_budget("pixels", labels, 0.1, 2, "00/000000", invalid)


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_block_budget_exact_share_and_only_valid(ratio):
    labels, invalid = _labels()
    mask = select_labelled_blocks(labels, ratio, seed=3, key="08/000001", invalid=invalid)
    n_valid = int(((labels != 255) & ~invalid).sum())
    assert mask.shape == labels.shape and int(mask.sum()) == budget_count(n_valid, ratio)
    assert not mask[labels == 255].any() and not mask[invalid].any()


def test_block_budget_is_blocky_nested_deterministic_and_frame_dependent():
    labels = np.zeros((64, 64, 16), np.uint8)  # everything labelled: blocks are whole cells
    a = select_labelled_blocks(labels, 0.1, seed=1, key="00/000001")
    assert np.array_equal(a, select_labelled_blocks(labels, 0.1, seed=1, key="00/000001"))
    assert not np.array_equal(a, select_labelled_blocks(labels, 0.1, seed=1, key="00/000002"))
    assert not np.array_equal(a, select_labelled_blocks(labels, 0.1, seed=2, key="00/000001"))
    small = select_labelled_blocks(labels, 0.01, seed=1, key="00/000001")
    assert not (small & ~a).any()
    # compact: nearly every kept voxel's +x neighbour is kept too (7 of 8 inside a block), unlike random voxels

    def neighbour_share(mask):
        return float((mask[:-1] & mask[1:]).sum() / mask[:-1].sum())

    assert BLOCK_SHAPE[0] == 8 and neighbour_share(a) > 0.8
    assert neighbour_share(select_labelled(labels, 0.1, seed=1, key="00/000001")) < 0.2


def test_label_budget_config_key():
    assert load_config(None).data.label_budget == "voxel"
    assert load_config(None, {"data": {"label_budget": "block"}}).data.label_budget == "block"
    with pytest.raises(ValueError, match="data.label_budget must be one of"):
        load_config(None, {"data": {"label_budget": "scribble"}})
