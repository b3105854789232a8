"""Trainer tests: a run end to end, exact resume after SIGKILL, atomic checkpoints, weights_only, 2-process DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from occle_core.checkpoint import FORMAT, CheckpointError, load_checkpoint
from occle_core.config import OccleConfig, load_config
from occle_core.data.factory import grid_scale
from occle_core.data.kitti_calib import write_kitti_calib
from occle_core.data.label_png import write_label_png
from occle_core.data.semantic_kitti import (
    VOXEL_SHAPE,
    write_image,
    write_points,
    write_voxel_bits,
    write_voxel_labels,
)
from occle_core.engine.trainer import CHECKPOINT_NAME, MODEL_NAME, TRAIN_LOG, Trainer
from occle_core.geometry import SEMANTIC_KITTI_GRID, Calib
from occle_core.train import main, parse_overrides

REPO = Path(__file__).resolve().parent.parent
IMAGE_HW = (64, 200)
# raw SemanticKITTI ids: road, sidewalk, building, car, vegetation, pole
RAW_CLASSES = (40, 48, 50, 10, 70, 80)


def _tiny_frame(seq_dir: Path, frame: int, rng: np.random.Generator, calib: Calib) -> None:
    """One random-but-structured frame: ground classes, a few boxes, points on their surfaces."""
    X, Y, Z = VOXEL_SHAPE
    raw = np.zeros(VOXEL_SHAPE, np.uint16)
    ground = rng.choice(RAW_CLASSES[:2], size=(X // 32, Y // 32)).repeat(32, 0).repeat(32, 1)  # (X, Y)
    raw[:, :, 8] = ground
    for _ in range(6):
        x0, y0 = rng.integers(0, X - 40), rng.integers(0, Y - 40)
        dx, dy, dz = rng.integers(8, 40), rng.integers(8, 40), rng.integers(4, 20)
        raw[x0 : x0 + dx, y0 : y0 + dy, 9 : 9 + dz] = rng.choice(RAW_CLASSES[2:])
    invalid = np.zeros(VOXEL_SHAPE, bool)
    invalid[:, :, 9:][rng.random((X, Y, Z - 9)) < 0.02] = True
    invalid[X - 64 :, :, Z // 2 :] = True  # a never-observed block: whole coarse voxels are invalid too
    invalid[raw > 0] = False
    occ = np.argwhere(raw > 0)
    pick = occ[rng.choice(len(occ), 4000, replace=False)]
    xyz = SEMANTIC_KITTI_GRID.centers_of(pick) + rng.uniform(-0.09, 0.09, (len(pick), 3))
    points = np.concatenate([xyz, rng.random((len(pick), 1))], 1).astype(np.float32)
    name = f"{frame:06d}"
    write_points(seq_dir / "velodyne" / f"{name}.bin", points)
    write_voxel_labels(seq_dir / "voxels" / f"{name}.label", raw)
    write_voxel_bits(seq_dir / "voxels" / f"{name}.invalid", invalid)
    write_voxel_bits(seq_dir / "voxels" / f"{name}.bin", raw > 0)
    write_image(seq_dir / "image_2" / f"{name}.png", rng.integers(0, 255, (*IMAGE_HW, 3), dtype=np.uint8))
    pseudo = np.full(IMAGE_HW, 255, np.uint8)
    uv, _, vis = calib.project(points)
    px = uv[vis].astype(np.int64)
    learn = np.array([9, 11, 13, 1, 15, 18])[rng.integers(0, 6, int(vis.sum()))]
    pseudo[px[:, 1], px[:, 0]] = learn
    write_label_png(seq_dir / "pseudo_2d" / f"{name}.png", pseudo)


def write_tiny_dataset(root: Path, frames: dict[str, int], seed: int = 0) -> Path:
    """SemanticKITTI-layout sequences of random box scenes (fast; for trainer and evaluator tests)."""
    H, W = IMAGE_HW
    P = np.array([[W / 2, 0, W / 2, 0], [0, W / 2, H / 2, 0], [0, 0, 1, 0]], np.float64)
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # LiDAR (x fwd, y left, z up) -> camera
    calib = Calib(P, T, IMAGE_HW)
    for s, (seq, n) in enumerate(frames.items()):
        d = root / "sequences" / seq
        for sub in ("velodyne", "voxels", "image_2", "pseudo_2d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        write_kitti_calib(d / "calib.txt", calib)
        rng = np.random.default_rng([seed, s])
        for f in range(n):
            _tiny_frame(d, f, rng, calib)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "occle_tiny_kitti"
    if not (root / "sequences" / "01").is_dir():
        write_tiny_dataset(root, {"00": 4, "01": 2})
    return root


def tiny_overrides(data: Path, out: Path, steps: int = 4, **train) -> dict:
    """A 32 x 32 x 4 grid (the SemanticKITTI extent pooled by 8), 48 x 160 images, a few steps."""
    return {
        "data": {
            "root": str(data),
            "grid": {"origin": [0.0, -25.6, -2.0], "voxel_size": 1.6, "shape": [32, 32, 4]},
            "image_size": [48, 160],
            "train_sequences": ["00"],
            "val_sequences": ["01"],
            "max_points": 3000,
            "label_ratio": 0.1,
        },
        "model": {"token_stride": 4},
        "loss": {"teacher_threshold": 0.2},  # the teacher term is active from the first steps
        "train": {
            "steps": steps,
            "lr": 2e-3,
            "out_dir": str(out),
            "ckpt_every": 2,
            "eval_every": 0,
            "log_every": 1,
            "class_weight_frames": 2,
            **train,
        },
    }


def tiny_config(data: Path, out: Path, steps: int = 4, **train) -> OccleConfig:
    return load_config(None, tiny_overrides(data, out, steps, **train))


def _losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (out / TRAIN_LOG).read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


# ------------------------------------------------------------------------------------------ unit


def test_parse_overrides_and_grid_scale(tiny_data, tmp_path):
    assert parse_overrides(["train.lr=1e-3", "data.image_size=[94, 310]", "loss.lovasz=0"]) == {
        "train": {"lr": 1e-3},
        "data": {"image_size": [94, 310]},
        "loss": {"lovasz": 0},
    }
    with pytest.raises(ValueError, match="section.key=value"):
        parse_overrides(["lr=1"])
    cfg = tiny_config(tiny_data, tmp_path)
    assert grid_scale(cfg) == 8
    cfg.data.grid = {"origin": [0.0, -25.6, -2.0], "voxel_size": 0.3, "shape": [170, 170, 21]}
    with pytest.raises(ValueError, match="integer factor"):
        grid_scale(cfg)


def test_resume_changes_lists_what_may_not_change(tiny_data, tmp_path):
    a = tiny_config(tiny_data, tmp_path)
    b = tiny_config(tiny_data, tmp_path / "elsewhere", num_workers=2)
    assert a.resume_changes(b) == []  # out_dir and num_workers may change on resume
    b.train.lr = 1.0
    b.loss.lovasz = 0.0
    assert a.resume_changes(b) == ["loss.lovasz=1.0->0.0", "train.lr=0.002->1.0"]


# ------------------------------------------------------------------------------------ end to end


def test_training_run_writes_checkpoints_logs_and_eval(tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_data, out, steps=3, eval_every=3)
    trainer = Trainer(cfg, progress=False)
    w0 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.fit()
    assert summary["step"] == 3 and not summary["stopped"] and np.isfinite(summary["loss"])
    assert 0.0 <= summary["eval"]["iou"] <= 1.0
    for name in (CHECKPOINT_NAME, MODEL_NAME, TRAIN_LOG, "eval_log.jsonl", "config.yaml"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert list((out / "eval" / "step_0000003").glob("*.png"))
    rows = [json.loads(ln) for ln in (out / TRAIN_LOG).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"voxel_ce", "lovasz", "pseudo_2d", "pseudo_3d", "geometry", "teacher", "projection"} <= set(rows[0])
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 1 and ckpt["class_weights"].shape == (20,)
    assert {"optimizer", "scheduler", "epoch", "batch_in_epoch"} <= set(ckpt)
    lean = load_checkpoint(out / MODEL_NAME)
    assert "optimizer" not in lean and lean["grid"]["shape"] == [32, 32, 4]
    changed = [k for k, v in trainer.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, w0[k])]
    assert changed, "training did not change any weight"
    # a second run into the same folder must not overwrite it silently
    with pytest.raises(ValueError, match="--resume"):
        Trainer(cfg, progress=False)


# -------------------------------------------------------------------------- kill / resume / atomic

_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {test_dir!r})
    import torch
    from occle_core.engine import trainer as train
    from test_train import tiny_config

    data, out, mode, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    marker = os.path.join(out, "HANG")
    if mode == "step":  # hang inside optimiser step `at` (after the checkpoints before it)
        real_step = train.Trainer.train_step
        def train_step(self, batch):
            if self.step + 1 == at:
                open(marker, "w").close()
                time.sleep(600)
            return real_step(self, batch)
        train.Trainer.train_step = train_step
    else:  # hang half-way through writing the checkpoint of step `at`
        real_save = torch.save
        def save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == at and hasattr(f, "write"):
                import io
                buf = io.BytesIO()
                real_save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                open(marker, "w").close()
                time.sleep(600)
            return real_save(obj, f, *a, **k)
        torch.save = save
    cfg = tiny_config(__import__("pathlib").Path(data), __import__("pathlib").Path(out), steps=6)
    train.Trainer(cfg, progress=False).fit()
    """
)


def _run_and_kill(data: Path, out: Path, mode: str, at: int) -> None:
    script = out.parent / f"child_{mode}.py"
    script.write_text(_CHILD.format(test_dir=str(Path(__file__).parent)))
    out.mkdir(parents=True, exist_ok=True)
    # the child computes the steps before the kill with this process's thread count: the resumed curve is compared
    # with the reference run here, and float reductions round differently with another number of threads
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(out), mode, str(at)], cwd=REPO, env=env)
    try:
        deadline = time.time() + 240
        while not (out / "HANG").exists():
            assert proc.poll() is None, f"child exited with {proc.returncode} before reaching the kill point"
            assert time.time() < deadline, "child did not reach the kill point"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    (out / "HANG").unlink()


@pytest.fixture(scope="module")
def reference_curve(tiny_data, tmp_path_factory) -> list[tuple[int, float]]:
    out = tmp_path_factory.mktemp("reference") / "run"
    Trainer(tiny_config(tiny_data, out, steps=6), progress=False).fit()
    return _losses(out)


def test_sigkill_mid_run_then_resume_gives_the_same_loss_curve(tiny_data, tmp_path, reference_curve):
    out = tmp_path / "run"
    _run_and_kill(tiny_data, out, "step", at=6)  # killed in step 6: checkpoint of step 4, log up to step 5
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 4
    assert [s for s, _ in _losses(out)] == [1, 2, 3, 4, 5]
    cfg = tiny_config(tiny_data, out, steps=6)
    resumed = Trainer(cfg, resume=True, progress=False)
    assert resumed.step == 4
    resumed.fit()
    got = _losses(out)
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in reference_curve], rtol=0, atol=1e-6)


def test_sigkill_during_checkpoint_write_keeps_the_previous_one(tiny_data, tmp_path, reference_curve):
    out = tmp_path / "run"
    _run_and_kill(tiny_data, out, "ckpt", at=4)  # killed half-way through writing the step-4 checkpoint
    assert list(out.glob(f"{CHECKPOINT_NAME}.*.tmp")), "the interrupted write should have left its temp file"
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["step"] == 2
    # resume through the command line: stale temp files are cleared, the run ends on the reference curve
    argv = ["--resume", "--out", str(out), "--data", str(tiny_data), "--no-progress"]
    assert main(argv) == 0
    assert not list(out.glob(f"{CHECKPOINT_NAME}.*.tmp"))
    got = _losses(out)
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in reference_curve], rtol=0, atol=1e-6)


def test_sigterm_checkpoints_and_stops_then_resume_continues(tiny_data, tmp_path, reference_curve):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(tiny_data, out, steps=6, ckpt_every=0), progress=False)
    real = trainer.train_step

    def step(batch):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread: the trainer's handler
        return real(batch)

    trainer.train_step = step
    summary = trainer.fit()
    assert summary["stopped"] and summary["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 3
    assert not (out / MODEL_NAME).exists()
    Trainer(tiny_config(tiny_data, out, steps=6, ckpt_every=0), resume=True, progress=False).fit()
    np.testing.assert_allclose([v for _, v in _losses(out)], [v for _, v in reference_curve], rtol=0, atol=1e-6)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running_code(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save(
        {"format": FORMAT, "config": {}, "classes": {}, "grid": {}, "model": {}, "x": _Evil(marker)},
        out / CHECKPOINT_NAME,
    )
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(out / CHECKPOINT_NAME)
    cfg_args = ["--resume", "--out", str(out), "--data", str(tiny_data), "--no-progress"]
    assert main(cfg_args) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists(), "unpickling ran code"
    # and the pickle really would run code without weights_only
    torch.load(out / CHECKPOINT_NAME, weights_only=False)
    assert marker.exists()


def test_resume_refuses_a_changed_config(tiny_data, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_data, out, steps=2), progress=False).fit()
    cfg = tiny_config(tiny_data, out, steps=2)
    cfg.loss.projection = 0.0
    with pytest.raises(ValueError, match="loss.projection"):
        Trainer(cfg, resume=True, progress=False)


# -------------------------------------------------------------------------------------------- DDP

_DDP_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {test_dir!r})
    import torch
    from pathlib import Path
    from occle_core.engine.trainer import Trainer
    from test_train import tiny_config

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = tiny_config(data, out, steps=3, ckpt_every=0)
    t = Trainer(cfg, device="cpu", progress=False)
    assert t.world == 2 and torch.distributed.get_backend() == "gloo"
    seen = []
    real = t.train_step
    def step(batch):
        seen.extend(batch.frame_ids)
        return real(batch)
    t.train_step = step
    t.fit()
    rank = int(os.environ["RANK"])
    torch.save({{"state": t.model.state_dict(), "frames": seen}}, out / f"rank{{rank}}.pt")
    """
)


def test_ddp_two_processes_gloo_hold_identical_weights(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "ddp_child.py"
    script.write_text(_DDP_CHILD.format(test_dir=str(Path(__file__).parent)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [*cmd, str(tiny_data), str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"ranks differ in {k}"
    assert len(r0["frames"]) == len(r1["frames"]) == 3
    # each epoch of 4 frames is split into two disjoint shards
    assert not set(r0["frames"][:2]) & set(r1["frames"][:2])
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert all(torch.equal(ckpt["model"][k], v) for k, v in r0["state"].items())
