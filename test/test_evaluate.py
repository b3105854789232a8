"""Evaluator tests: SemanticKITTI rules (invalid voxels excluded), the CLI outputs, clear checkpoint errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_config, tiny_data  # noqa: F401  (session fixture)
from torch import nn

from occle_core.checkpoint import make_checkpoint, save_checkpoint
from occle_core.config import load_config
from occle_core.data.factory import build_dataset
from occle_core.evaluate import evaluate_model, frame_indices, main, scores_to_json


def _truth(dataset) -> dict[str, np.ndarray]:
    """Frame id -> (X, Y, Z) uint8 labels with invalid voxels set to 255."""
    out = {}
    for i in range(len(dataset)):
        s = dataset[i]
        lab = s.voxel_labels.copy()
        if s.invalid is not None:
            lab[s.invalid] = 255
        out[s.frame_id] = lab
    return out


class _Oracle(nn.Module):
    """Predicts the truth on valid voxels and ``wrong_class`` on invalid (label 255) voxels.

    The evaluator hands the network inputs only (no labels in the batch): the oracle knows the truth by frame id.
    """

    def __init__(self, truth: dict[str, np.ndarray], wrong_class: int | None = 1) -> None:
        super().__init__()
        self.truth = truth
        self.wrong_class = wrong_class
        self.anchor = nn.Parameter(torch.zeros(()))

    def predict_labels(self, batch):  # what evaluate_model calls: (B, X, Y, Z) uint8 class ids
        assert batch.voxel_labels is None and batch.pseudo3d is None and batch.free is None, "targets were built"
        lab = torch.from_numpy(np.stack([self.truth[f] for f in batch.frame_ids]))  # (B, X, Y, Z)
        if self.wrong_class is None:  # predict everything empty
            lab[:] = 0
        else:
            lab[lab == 255] = self.wrong_class
        return lab.to(torch.uint8)


def test_frame_indices():
    assert frame_indices(5) == [0, 1, 2, 3, 4]
    assert frame_indices(5, 9) == [0, 1, 2, 3, 4]
    assert frame_indices(9, 3) == [0, 4, 8]


def test_invalid_voxels_are_not_counted(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path)
    ds = build_dataset(cfg, "val")
    invalid = sum(int((ds[i].voxel_labels == 255).sum()) for i in range(len(ds)))
    assert invalid > 0, "the test data should hold invalid voxels"
    truth = _truth(ds)
    scores, images = evaluate_model(_Oracle(truth), ds, cfg, render_dir=tmp_path / "png", render_count=1)
    assert scores["iou"] == pytest.approx(1.0) and scores["miou_present"] == pytest.approx(1.0)
    assert scores["miou"] == pytest.approx(scores["classes_present"] / 19)  # absent classes count 0
    assert scores["num_voxels"] == len(ds) * 32 * 32 * 4 - invalid
    assert scores["frames"] == len(ds)
    assert len(images) == 1 and images[0].dtype == np.uint8 and len(list((tmp_path / "png").glob("*.png"))) == 1
    empty, _ = evaluate_model(_Oracle(truth, wrong_class=None), ds, cfg)
    assert empty["iou"] == 0.0 and empty["recall"] == 0.0
    doc = scores_to_json(empty, split="val")
    json.dumps(doc)  # plain JSON (NaN mapped to None)
    assert doc["split"] == "val" and len(doc["confusion"]) == 20


def _save_untrained(cfg, path: Path) -> Path:
    from occle_core.model.occle import OccLE

    torch.manual_seed(0)
    model = OccLE(cfg)
    save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), model.state_dict()))
    return path


def test_cli_prints_table_and_writes_json_and_pngs(tiny_data, tmp_path, capsys):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path / "run")
    ckpt = _save_untrained(cfg, tmp_path / "model.pt")
    out = tmp_path / "eval"
    rc = main(
        ["--checkpoint", str(ckpt), "--data", str(tiny_data), "--split", "val", "--out", str(out), "--render", "2"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "IoU (completion)" in text and "car" in text
    doc = json.loads((out / "metrics.json").read_text())
    assert {"iou", "miou", "miou_present", "classes_present", "per_class_iou", "confusion", "frames"} <= set(doc)
    assert doc["frames"] == 2 and set(doc["per_class_iou"]) == set(cfg.data.classes().names)
    assert len(list((out / "frames").glob("*.png"))) == 2
    assert doc["ground_gate"] == 0.0  # the checkpoint's; --ground-gate overrides it and is recorded
    gated = ["--checkpoint", str(ckpt), "--data", str(tiny_data), "--render", "0", "--out", str(tmp_path / "gated")]
    assert main([*gated, "--ground-gate", "0.5"]) == 0
    assert json.loads((tmp_path / "gated" / "metrics.json").read_text())["ground_gate"] == 0.5
    # --frames takes an evenly spaced subset
    assert main(["--checkpoint", str(ckpt), "--data", str(tiny_data), "--frames", "1", "--render", "0"]) == 0


def test_cli_clear_errors_for_foreign_or_broken_checkpoints(tiny_data, tmp_path, capsys):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path / "run")
    ckpt = _save_untrained(cfg, tmp_path / "model.pt")
    base = ["--checkpoint", str(ckpt), "--data", str(tiny_data)]
    # a config for the full-resolution grid: the 32 x 32 x 4 checkpoint does not fit it
    full = tmp_path / "full.yaml"
    full.write_text("data:\n  dataset: semantic_kitti\n")
    assert main([*base, "--config", str(full)]) == 2
    assert "grid" in capsys.readouterr().err
    occ3d = tmp_path / "occ3d.yaml"
    occ3d.write_text("data:\n  dataset: occ3d_nuscenes\n")
    assert main([*base, "--config", str(occ3d)]) == 2
    err = capsys.readouterr().err
    assert "20 classes" in err and "18 classes" in err
    # weights that do not fit the model of the checkpoint's own config
    bad = torch.load(ckpt, weights_only=True)
    bad["config"]["model"]["feat_dim"] = 8
    torch.save(bad, tmp_path / "bad.pt")
    assert main(["--checkpoint", str(tmp_path / "bad.pt"), "--data", str(tiny_data)]) == 2
    assert "do not fit" in capsys.readouterr().err
    # truncated file, missing file
    (tmp_path / "cut.pt").write_bytes(ckpt.read_bytes()[:1000])
    assert main(["--checkpoint", str(tmp_path / "cut.pt"), "--data", str(tiny_data)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--data", str(tiny_data)]) == 2
    assert "not found" in capsys.readouterr().err


def test_config_files_load():
    repo = Path(__file__).resolve().parent.parent
    for name in ("train_synthetic_tiny", "train_semantic_kitti", "train_occ3d"):
        cfg = load_config(repo / "config" / f"{name}.yaml")
        assert cfg.data.label_ratio == pytest.approx(0.1), name
        cfg.data.voxel_grid()


class _CameraOracle(nn.Module):
    """Predicts the truth inside each frame's camera mask and a wrong class outside it."""

    def __init__(self, num_classes: int, camera: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.k = num_classes
        self.camera = camera
        self.truth = truth
        self.anchor = nn.Parameter(torch.zeros(()))

    def predict_labels(self, batch):  # (B, X, Y, Z) uint8 class ids
        lab = torch.from_numpy(np.stack([self.truth[f] for f in batch.frame_ids])).long()
        lab[lab == 255] = 0
        for b, fid in enumerate(batch.frame_ids):
            outside = ~torch.from_numpy(self.camera[fid])
            lab[b][outside] = (lab[b][outside] + 1) % self.k
        return lab.to(torch.uint8)


def test_occ3d_splits_and_camera_mask(tmp_path):
    from occle_core.synth.released import write_nuscenes_replica

    rng = np.random.default_rng(0)
    occupancy = []
    for _ in range(3):
        sem = np.where(rng.random((200, 200, 16)) < 0.9, 17, rng.integers(0, 17, (200, 200, 16))).astype(np.uint8)
        cam = rng.random((200, 200, 16)) < 0.5
        occupancy.append((sem, np.ones_like(sem), cam))
    occupancy.append(occupancy[0])
    rep = write_nuscenes_replica(tmp_path, "v1.0-mini", ("scene-0061", "scene-0103"), 2, 0, occupancy=occupancy)
    frames = [f"{rep.scene_of[t]}/{t}" for t in rep.samples]
    camera = {f: occ[2] for f, occ in zip(frames, occupancy, strict=True)}
    (tmp_path / "train.txt").write_text("\n".join(frames[:2]) + "\n")
    cfg = load_config(
        None,
        {"data": {"dataset": "occ3d_nuscenes", "root": str(tmp_path), "image_size": [32, 64],
                  "train_sequences": ["train.txt"], "val_sequences": [f"scene-0103/{rep.samples[2]}"]}},
    )  # fmt: skip
    assert len(build_dataset(cfg, "train")) == 2
    val = build_dataset(cfg, "val")
    assert len(val) == 1
    scores, _ = evaluate_model(_CameraOracle(18, camera, _truth(val)), val, cfg)
    assert scores["iou"] == pytest.approx(1.0) and scores["miou"] == pytest.approx(1.0)
    assert scores["num_voxels"] == int(camera[frames[2]].sum())
    cfg.data.val_sequences = ["scene-0553"]
    with pytest.raises(ValueError, match="select no Occ3D frame"):
        build_dataset(cfg, "val")
