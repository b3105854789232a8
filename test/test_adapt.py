"""occle-adapt on a tiny KITTI object replica: checkpoints, resume, the occupancy guard; the unobserved prior."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_adapt import tiny_checkpoint, write_object_replica, write_pseudo_cache

from occle_core.adapt import GUARD_LOG, PSEUDO_DIR, AdaptFrames, build_parser, main, run_adaptation
from occle_core.checkpoint import load_checkpoint
from occle_core.data.augment import Augmentation
from occle_core.data.factory import build_label_free
from occle_core.data.sample import lidar_origin
from occle_core.engine.trainer import CHECKPOINT_NAME, MODEL_NAME, TRAIN_LOG
from occle_core.geometry import VoxelGrid
from occle_core.losses import free_space_loss, ground_loss, occupancy_logit, unobserved_prior_loss


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kitti_object")
    return write_object_replica(root), tiny_checkpoint(root / "tiny.pt")


def _args(data: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    write_pseudo_cache(out / PSEUDO_DIR)  # cached labels: the segmenter model is never loaded
    return [
        "--checkpoint", str(ckpt), "--dataset", "kitti_object", "--data", str(data),
        "--segmenter", "deeplab-cityscapes", "--segmenter-model", str(out / "absent.tflite"),
        "--out", str(out), "--device", "cpu", "--no-progress", "--guard-every", "1", *extra,
    ]  # fmt: skip


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / TRAIN_LOG).read_text().splitlines()]


def test_two_steps_write_checkpoints_logs_and_reports(replica, tmp_path, capsys):
    data, ckpt = replica
    argv = _args(data, ckpt, tmp_path, "--steps", "2", "--hold-out", "000002", "--guard-warn", "1e3")
    assert main([*argv, "--guard-stop", "1e3"]) == 0
    assert load_checkpoint(tmp_path / MODEL_NAME)["step"] == 2 and (tmp_path / CHECKPOINT_NAME).is_file()
    cfg = load_checkpoint(tmp_path / MODEL_NAME)["config"]
    assert cfg["loss"]["voxel_ce"] == 0 and cfg["loss"]["lovasz"] == 0  # no voxel labels
    row = json.loads((tmp_path / TRAIN_LOG).read_text().splitlines()[-1])
    assert {"geometry", "pseudo_2d", "pseudo_3d", "projection", "teacher", "unobserved_prior"} <= set(row)
    assert "voxel_ce" not in row
    summary = json.loads((tmp_path / "adapt.json").read_text())
    assert summary["frames_adapted"] == ["000000", "000001"] and summary["frames_reported"] == ["000002"]
    assert summary["pseudo_labels_computed"] == 0 and summary["stopped_by"] is None
    before = json.loads((tmp_path / "consistency_before.json").read_text())
    assert [f["frame_id"] for f in before["frames"]] == ["000002"] and before["total"]["hit_voxels"] > 0
    assert [json.loads(x)["step"] for x in (tmp_path / GUARD_LOG).read_text().splitlines()] == [0, 1, 2]
    assert list((tmp_path / "tb").iterdir())
    out = capsys.readouterr().out
    assert "before, held-out frames" in out and "after 2 steps" in out


def test_height_shift_moves_adaptation_frames_per_epoch(replica, tmp_path):
    data, _ = replica
    reader = build_label_free("kitti_object", data)
    write_pseudo_cache(tmp_path)
    plain = AdaptFrames(reader, [0, 1], tmp_path)
    grid = VoxelGrid((0.0, -4.0, -2.0), 0.5, (16, 16, 8))
    shifted = AdaptFrames(reader, [0, 1], tmp_path, Augmentation(grid, height_shift=1), seed=3)
    seen = set()
    for epoch in range(8):
        plain.epoch = shifted.epoch = epoch
        for i in range(2):
            a, b = plain[i], shifted[i]
            dz = float(np.median(b.points[:, 2] - a.points[:, 2]))
            assert lidar_origin(b) == pytest.approx((0.0, 0.0, dz))
            np.testing.assert_array_equal(b.points, shifted[i].points)  # seeded by (seed, epoch, frame)
            assert b.pseudo2d is not None
            seen.add(round(dz / 0.5))
    assert seen == {-1, 0, 1}
    mirrored = AdaptFrames(reader, [0, 1], tmp_path, Augmentation(grid, flip=1.0))[1]  # its pseudo labels too
    np.testing.assert_array_equal(mirrored.pseudo2d, plain[1].pseudo2d[:, ::-1])
    np.testing.assert_allclose(mirrored.points[:, 1], -plain[1].points[:, 1])


def test_interrupted_run_resumes_where_it_stopped(replica, tmp_path):
    data, ckpt = replica
    argv = _args(data, ckpt, tmp_path, "--steps", "3", "--guard-warn", "1e3", "--guard-stop", "1e3")

    def signal_at_one(trainer, values):  # as SIGTERM does: the run checkpoints after the next step and stops
        if trainer.step == 1:
            trainer.signal_received = True

    first = run_adaptation(build_parser().parse_args(argv), hooks=[signal_at_one])
    assert first["stopped_by"] == "signal" and load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 2
    stopped = load_checkpoint(tmp_path / CHECKPOINT_NAME)["model"]
    resumed = run_adaptation(build_parser().parse_args([*argv, "--resume"]))
    assert resumed["step"] == 3 and resumed["stopped_by"] is None
    assert _steps(tmp_path) == [1, 2, 3]
    # the resumed run continued from the stopped weights, not from the input checkpoint again
    final = load_checkpoint(tmp_path / MODEL_NAME)["model"]
    assert any(not torch.equal(stopped[k], final[k]) for k in final if final[k].is_floating_point())
    with pytest.raises(ValueError, match="exists; pass --resume"):
        run_adaptation(build_parser().parse_args(argv))


def test_guard_stops_on_a_forced_drift_and_keeps_the_last_good_checkpoint(replica, tmp_path, capsys):
    data, ckpt = replica
    argv = _args(data, ckpt, tmp_path, "--steps", "4", "--guard-warn", "50", "--guard-stop", "100")

    def collapse_at_one(trainer, values):  # a huge empty-class bias: everything predicted empty
        if trainer.step == 1:
            head = trainer.model.heads["logits"]
            with torch.no_grad():  # bias channel c * s^3 + offset belongs to class c (layers.depth_to_space3d)
                head.proj.bias.view(head.out_channels, -1)[trainer.classes.empty_index] += 1e4

    summary = run_adaptation(build_parser().parse_args(argv), hooks=[collapse_at_one])
    assert summary["stopped_by"] == "guard" and summary["guard_ratio"] == 0.0
    kept = load_checkpoint(tmp_path / MODEL_NAME)
    assert kept["step"] == 0  # the last state that passed the guard: the input weights, saved at step 0
    bias = kept["model"]["heads.logits.proj.bias"]
    assert torch.equal(bias, load_checkpoint(ckpt)["model"]["heads.logits.proj.bias"])
    states = [json.loads(x)["state"] for x in (tmp_path / GUARD_LOG).read_text().splitlines()]
    assert states == ["ok", "stop"] or states == ["warn", "stop"]
    assert "guard stop at step 1" in capsys.readouterr().err


def test_bad_hold_out_is_one_error_line(replica, tmp_path, capsys):
    data, ckpt = replica
    assert main(_args(data, ckpt, tmp_path, "--steps", "1", "--hold-out", "000009")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("occle-adapt: error: --hold-out ['000009'] are not frames") and "\n" not in err


def test_unobserved_prior_by_hand():
    # one frame, 4 voxels in a row: voxel 0 hit, voxel 1 crossed (free), voxels 2 and 3 never observed
    occupied = torch.tensor([True, False, False, False]).view(1, 4, 1, 1)
    free = torch.tensor([False, True, False, False]).view(1, 4, 1, 1)
    logits = torch.zeros(1, 3, 4, 1, 1)  # classes: empty, a, b
    logits[0, 0, 3] = math.log(2.0)  # voxel 3: p_empty = 2 / 4 = 1/2; voxel 2: p_empty = 1/3
    prior = 0.5  # one hit among two observed voxels
    v2 = -(prior * math.log(2 / 3) + (1 - prior) * math.log(1 / 3))
    v3 = -(prior * math.log(1 / 2) + (1 - prior) * math.log(1 / 2))
    assert unobserved_prior_loss(logits, occupied, free).item() == pytest.approx((v2 + v3) / 2, rel=1e-5)
    # a voxel with a valid label is observed: only voxel 3 is left
    labels = torch.tensor([255, 255, 0, 255]).view(1, 4, 1, 1)
    assert unobserved_prior_loss(logits, occupied, free, labels).item() == pytest.approx(v3, rel=1e-5)
    # the gradient pulls toward the prior: with every observed voxel hit (prior 1), toward occupied
    over = logits.clone().requires_grad_(True)
    unobserved_prior_loss(over, occupied, torch.zeros_like(free)).backward()
    assert over.grad[0, 0, 2:].sum() > 0 and over.grad[0, 1:, 2:].sum() < 0
    # nothing observed in the frame: the prior is undefined and the loss is 0
    nothing = torch.zeros_like(occupied)
    assert unobserved_prior_loss(logits, nothing, nothing).item() == 0.0


def test_ground_loss_by_hand_and_in_the_adaptation_losses(replica, tmp_path):
    ground = torch.tensor([1, 1, 0, 255], dtype=torch.uint8).view(1, 4, 1, 1)  # ground, ground, raised, neither
    logits = torch.zeros(1, 4, 4, 1, 1)  # classes: empty, car, road, sidewalk; ground = road + sidewalk
    logits[0, 2, 0] = math.log(2.0)  # voxel 0: p = (1, 1, 2, 1) / 5 -> ground 3/5
    logits[0, 1, 1] = math.log(6.0)  # voxel 1: p = (1, 6, 1, 1) / 9 -> ground 2/9
    logits[0, 3, 2] = math.log(8.0)  # voxel 2: p = (1, 1, 1, 8) / 11 -> ground 9/11 (raised: wrong)
    expect = ((-math.log(3 / 5) - math.log(2 / 9)) / 2 - math.log(2 / 11)) / 2  # positives, negatives apart
    ids = torch.tensor([2, 3])
    assert ground_loss(logits, ground, ids).item() == pytest.approx(expect, rel=1e-5)
    assert ground_loss(logits, torch.full_like(ground, 255), ids).item() == 0.0
    # occle-adapt --ground: the batch carries the ground voxels and the term is trained (on mirrored frames here,
    # data.flip end to end: the ground target, free space and projection of a mirrored frame)
    data, ckpt = replica
    argv = _args(data, ckpt, tmp_path, "--steps", "1", "--ground", "1", "--guard-warn", "1e3", "--guard-stop", "1e3")
    assert main([*argv, "--set", "data.flip=1.0"]) == 0
    row = json.loads((tmp_path / TRAIN_LOG).read_text().splitlines()[-1])
    cfg = load_checkpoint(tmp_path / MODEL_NAME)["config"]
    assert row["ground"] > 0 and row["projection"] > 0 and cfg["loss"]["ground"] == 1.0 and cfg["data"]["flip"] == 1.0


def test_free_space_loss_on_the_final_logits_by_hand():
    occupied = torch.tensor([True, False, False]).view(1, 3, 1, 1)
    free = torch.tensor([False, True, False]).view(1, 3, 1, 1)
    logits = torch.zeros(1, 2, 3, 1, 1)  # empty vs one class
    logits[0, 1, 0] = math.log(3.0)  # voxel 0 (hit): p_occupied = 3/4; voxel 1 (free): 1/2; voxel 2 unobserved
    expect = (-math.log(3 / 4) - math.log(1 / 2)) / 2  # hits and free voxels averaged apart, then together
    assert free_space_loss(logits, occupied, free).item() == pytest.approx(expect, rel=1e-5)
    assert occupancy_logit(logits)[0, :, 0, 0].tolist() == pytest.approx([math.log(3.0), 0.0, 0.0], abs=1e-6)
