"""The domain-randomisation ablation (occle_experiments/randomisation.py): the definition, the variant data, and a
tiny end-to-end smoke (2 variants, 1 sequence x 2 frames, 2 fine-tuning steps of a random tiny checkpoint,
consistency on the synthetic rigs only); its scores mean nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_overrides

from occle_core.checkpoint import make_checkpoint, save_checkpoint
from occle_core.config import load_config
from occle_core.model.occle import OccLE
from occle_experiments.__main__ import main
from occle_experiments.randomisation import REAL_KITTI, START, load_definition, synth_argv, with_options

REPO = Path(__file__).resolve().parent.parent
DEFINITION = REPO / "config" / "randomisation.yaml"


def _tiny_checkpoint(path: Path) -> Path:
    """A random-initialised OccLE on the 32 x 32 x 4 grid of test_train's tiny config, 48 x 160 images."""
    cfg = load_config(None, tiny_overrides(path.parent, path.parent))
    torch.manual_seed(0)
    model = OccLE(cfg)
    save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), model.state_dict()))
    return path


def _elevations(velodyne: Path) -> int:
    """Distinct beam elevations (0.1 deg bins holding >= 20 returns) of a scan."""
    pts = np.fromfile(velodyne, np.float32).reshape(-1, 4).astype(np.float64)
    elev = np.round(np.degrees(np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1]))), 1)
    _, counts = np.unique(elev, return_counts=True)
    return int((counts >= 20).sum())


def test_definition_variants_differ_only_in_their_families():
    defn = load_definition(DEFINITION)
    assert set(defn.variants) == {
        "base", "rig", "appearance", "sensor", "accumulate", "all", "rig_accumulate", "all_shift", "all_hits",
        "all_hits_shift",
    }  # fmt: skip
    assert all(defn.knobs("base", i) == defn.base for i in range(defn.sequences))
    rig = [defn.knobs("rig", i) for i in range(defn.sequences)]
    assert [k["beams"] for k in rig[:3]] == [32, 64, 128]
    assert all(1.5 <= k["lidar_height"] <= 2.0 and abs(k["lidar_pitch"]) <= 2.0 for k in rig)
    assert len({k["lidar_height"] for k in rig}) == defn.sequences  # one draw per sequence
    for i in range(defn.sequences):  # `all` draws the same rig as `rig`, and adds the other families
        every = defn.knobs("all", i)
        assert {k: every[k] for k in ("beams", "lidar_height", "lidar_pitch")} == {
            k: rig[i][k] for k in ("beams", "lidar_height", "lidar_pitch")
        }
        assert (every["appearance"], every["intensity"], every["fov_only"], every["accumulate"]) == (
            "realistic", "kitti", True, 15,
        )  # fmt: skip
        both = defn.knobs("rig_accumulate", i)  # rig and accumulate, the base's images and sensor
        assert both == {
            **defn.base,
            **{k: rig[i][k] for k in ("beams", "lidar_height", "lidar_pitch")},
            "accumulate": 15,
        }
        assert defn.knobs("all_shift", i) == defn.knobs("all_hits", i) == every  # training families, not world
    assert defn.data_variant("all_shift") == "all" and defn.data_variant("rig") == "rig"
    assert defn.train_overrides("all") == defn.overrides
    assert defn.train_overrides("all_shift") == [*defn.overrides, "data.height_shift=1"]
    assert defn.data_variant("all_hits") == "all"
    assert defn.train_overrides("all_hits") == [*defn.overrides, "model.hit_skip=true"]
    assert defn.train_overrides("all_hits_shift") == [*defn.overrides, "data.height_shift=1", "model.hit_skip=true"]
    argv = synth_argv(defn.knobs("sensor", 0), 40, 20, "00", 0.5)
    assert "--fov-only" in argv and argv[argv.index("--intensity") + 1] == "kitti"
    assert "--fov-only" not in synth_argv(defn.base, 40, 20, "00", 0.5)
    with pytest.raises(ValueError, match="unknown occle-synth knob"):
        with_options(defn, base={**defn.base, "beam": 32})
    with pytest.raises(ValueError, match="uniform"):
        with_options(defn, families={**defn.families, "rig": {"lidar_height": {"uniform": [1.5]}}})
    with pytest.raises(ValueError, match="unknown occle-synth knob"):  # `train` is a family's key only
        with_options(defn, base={**defn.base, "train": ["data.height_shift=1"]})
    with pytest.raises(ValueError, match="override"):
        with_options(defn, families={**defn.families, "shift": {"train": ["height_shift"]}})
    with pytest.raises(ValueError, match="training seeds"):
        with_options(defn, seed=defn.eval_seed)


def test_ablation_smoke(tmp_path, capsys):
    ckpt = _tiny_checkpoint(tmp_path / "start.pt")
    out, data = tmp_path / "out", tmp_path / "data"
    argv = ["randomisation", "--definition", str(DEFINITION), "--variants", "base", "rig", "--checkpoint", str(ckpt)]
    argv += ["--data-root", str(data), "--out", str(out), "--sequences", "1", "--frames", "2", "--image-scale", "0.13"]
    argv += ["--steps", "2", "--eval-frames", "2", "--kitti", str(tmp_path / "no_kitti"), "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    assert f"real KITTI frames not found at {tmp_path / 'no_kitti'}" in capsys.readouterr().out
    doc = json.loads((out / "randomisation.json").read_text())
    assert [r["variant"] for r in doc["rows"]] == [START, "base", "rig"]
    for row in doc["rows"]:
        assert row["eval"][REAL_KITTI] is None
        for rig in ("nuscenes_32", "kitti_64"):
            scores = row["eval"][rig]
            assert scores["frames"] == 2
            for key in ("hit_recall", "free_false_occupancy", "ground_consistency", "occupied_share"):
                assert math.isfinite(scores[key]) and 0 <= scores[key] <= 100, (row["variant"], rig, key)
        assert 0 <= row["eval"]["kitti_64"]["iou"] <= 100 and 0 <= row["eval"]["kitti_64"]["miou"] <= 100
    for variant in ("base", "rig"):
        assert (out / variant / "model.pt").is_file() and json.loads((out / variant / "finetune.json").read_text())[
            "steps"
        ] == 2
    # the variants' data differ in the knob: the rig variant's sequence 0 is the 32-beam one
    base_seq, rig_seq = data / "base" / "sequences" / "00", data / "rig" / "sequences" / "00"
    assert json.loads((rig_seq / "synthetic.json").read_text())["beams"] == 32
    scan = Path("velodyne") / "000000.bin"
    assert _elevations(rig_seq / scan) < _elevations(base_seq / scan)
    md = (out / "randomisation.md").read_text()
    assert "| rig | 2 |" in md and ("(+" in md or "(-" in md)
    # a second run reuses data and models and only evaluates
    assert main([*argv, "--eval-only"]) == 0
    again = json.loads((out / "randomisation.json").read_text())
    assert [r["timing"].get("data_s") for r in again["rows"][1:]] == [0.0, 0.0]
    first, second = doc["rows"][2]["eval"]["nuscenes_32"], again["rows"][2]["eval"]["nuscenes_32"]
    assert second["hit_recall"] == pytest.approx(first["hit_recall"], abs=0.5)
    with pytest.raises(SystemExit):
        main([*argv[:3], "--variants", "base", "--bogus"])
    assert main([*argv[:3], "--variants", "nope", "--out", str(out), "--data-root", str(data), "--no-kitti"]) == 2
    assert main([*argv, "--variants", "sensor", "--eval-only"]) == 2  # no model to evaluate
    assert f"{out / 'sensor' / 'model.pt'} not found" in capsys.readouterr().err
