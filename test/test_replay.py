"""Source replay in occle-adapt: labelled synthetic frames mixed into the label-free target frames."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from helpers_adapt import tiny_checkpoint, write_object_replica, write_pseudo_cache

from occle_core.adapt import PSEUDO_DIR, main, training_frames
from occle_core.checkpoint import load_checkpoint
from occle_core.config import OccleConfig
from occle_core.data.augment import Augmentation, mirror_y
from occle_core.data.replay import MixedFrames, ReplayFrames, replay_slots
from occle_core.engine.trainer import MODEL_NAME, TRAIN_LOG
from occle_core.synth.sensors import LidarModel
from occle_core.synth.sequence import SyntheticSequence
from occle_core.synth.writer import write_sequence


class Numbered:
    """A stand-in dataset: item i is (name, i, epoch)."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n, self.epoch = name, n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.name, i, self.epoch


def test_replay_walks_the_labelled_set_across_epochs_and_mixing_keeps_order():
    replay = ReplayFrames(Numbered("syn", 5), slots=2)
    assert len(replay) == 2 and [replay[i][1] for i in range(2)] == [0, 1]
    mixed = MixedFrames(Numbered("real", 3), replay)
    mixed.epoch = 1  # the trainer sets it each epoch: every part follows
    assert [mixed[i] for i in range(len(mixed))] == [
        ("real", 0, 1), ("real", 1, 1), ("real", 2, 1), ("syn", 2, 1), ("syn", 3, 1),
    ]  # fmt: skip
    mixed.epoch = 2
    assert [mixed[i][1] for i in (3, 4)] == [4, 0]  # wraps around the labelled set
    with pytest.raises(IndexError):
        mixed[5]
    assert (replay_slots(4, 0.5), replay_slots(4, 0.2), replay_slots(1, 0.1)) == (4, 1, 1)
    with pytest.raises(ValueError, match="replay-share must be in"):
        replay_slots(4, 1.0)
    with pytest.raises(ValueError, match="no frame"):
        ReplayFrames(Numbered("syn", 0), 1)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    seq = SyntheticSequence(5, 2, image_scale=0.25, lidar=LidarModel(azimuth_steps=200), window=1)
    write_sequence(root, seq, "00", progress=False)
    return root


def test_adapt_with_replay_trains_voxel_terms_on_the_replayed_frames_only(synthetic_root, tmp_path):
    kitti = write_object_replica(tmp_path / "kitti")
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "run"
    write_pseudo_cache(out / PSEUDO_DIR)
    argv = [
        "--checkpoint", str(ckpt), "--dataset", "kitti_object", "--data", str(kitti),
        "--segmenter", "deeplab-cityscapes", "--segmenter-model", str(out / "absent.tflite"),
        "--out", str(out), "--device", "cpu", "--no-progress", "--guard-warn", "1e3", "--guard-stop", "1e3",
        "--hold-out", "000002", "--replay", str(synthetic_root), "--replay-sequences", "00",
    ]  # fmt: skip
    # two target frames and, at share 0.5, two replayed ones: one epoch is four steps
    assert main([*argv, "--steps", "4"]) == 0
    loss = load_checkpoint(out / MODEL_NAME)["config"]["loss"]
    base = load_checkpoint(ckpt)["config"]["loss"]
    assert (loss["voxel_ce"], loss["lovasz"]) == (base["voxel_ce"], base["lovasz"]) and loss["voxel_ce"] > 0
    rows = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]
    assert len(rows) == 4 and sum("voxel_ce" in r for r in rows) == 2  # the labelled terms run on replayed frames
    assert all("geometry" in r for r in rows)
    summary = json.loads((out / "adapt.json").read_text())
    assert summary["frames_adapted"] == ["000000", "000001"] and summary["frames_reported"] == ["000002"]
    bad = tmp_path / "bad"
    write_pseudo_cache(bad / PSEUDO_DIR)
    assert main([*[a if a != str(out) else str(bad) for a in argv], "--steps", "1", "--replay-share", "1.5"]) == 2


def test_replayed_frames_take_the_adaptation_augmentation(synthetic_root, tmp_path):
    base = OccleConfig.from_saved(load_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt"))["config"])
    args = argparse.Namespace(replay=str(synthetic_root), replay_sequences=["00"], replay_share=0.5)
    grid = base.data.voxel_grid()
    target = Numbered("real", 2)
    plain = training_frames(args, base, base, target, Augmentation(grid))
    mirrored = training_frames(args, base, base, target, Augmentation(grid, flip=1.0))
    a, b = plain[len(target)], mirrored[len(target)]  # the first replayed frame
    np.testing.assert_array_equal(b.points, mirror_y(a, grid).points)
    np.testing.assert_array_equal(b.voxel_labels, a.voxel_labels[:, ::-1])
    assert training_frames(argparse.Namespace(replay=None), base, base, target, Augmentation(grid)) is target
