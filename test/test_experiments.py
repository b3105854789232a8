"""The experiment machinery: rows as configs, run_row -> results.json, S from curves, the markdown report.

Smoke runs of 2 steps on the tiny SemanticKITTI-layout data of test_train; their scores mean nothing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_train import tiny_data, tiny_overrides  # noqa: F401  (session fixture)

from occle_core.config import load_config
from occle_core.labels import class_table
from occle_core.train import parse_overrides
from occle_experiments.__main__ import main
from occle_experiments.plot import MARGIN, PALETTE, Series, scatter_chart
from occle_experiments.report import BEGIN, END, LABEL_CURVE_IOU_PNG, LABEL_CURVE_PNG, LEARNING_CURVES_PNG
from occle_experiments.rows import load_experiments
from occle_experiments.runner import class_scores, plateau_step, record_run

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "config" / "experiments.yaml"


def _config_of(exp, row: str, seed: int):
    overrides = parse_overrides(exp.overrides(row, seed))
    doc = yaml.safe_load((REPO / exp.base_config).read_text())
    for section, values in overrides.items():
        doc.setdefault(section, {}).update(values)
    return load_config(None, doc)


def test_every_row_is_a_valid_config_and_the_baseline_is_plain_supervision():
    exp = load_experiments(REAL)
    for row in exp.rows:
        cfg = _config_of(exp, row, 3)
        assert cfg.train.seed == cfg.data.label_seed == 3
    for row in ("sup_10", "sup_100"):
        loss = _config_of(exp, row, 1).loss
        assert loss.pseudo_2d == loss.pseudo_3d == loss.teacher == loss.projection == 0
        assert loss.voxel_ce > 0 and loss.lovasz > 0 and loss.geometry > 0
    ratios = {r: _config_of(exp, r, 1).data.label_ratio for r in exp.protocol["curve"]["rows"]}
    assert ratios == {
        "occle_1": 0.01,
        "occle_5": 0.05,
        "occle_10": 0.1,
        "occle_20": 0.2,
        "occle_50": 0.5,
        "occle_100": 1.0,
    }
    p = exp.protocol
    assert not set(p["train_sequences"]) & (set(p["dev_sequences"]) | set(p["validation_sequences"]))
    assert not set(p["dev_sequences"]) & set(p["validation_sequences"]) and len(p["validation_sequences"]) >= 4
    with pytest.raises(ValueError, match="unknown row"):
        exp.overrides("occle_99", 1)


def test_official_and_present_class_miou():
    classes = class_table("semantic_kitti")
    per = {n: None for n in classes.names}
    per["car"], per["road"], per["person"] = 0.5, 0.9, 0.0
    s = class_scores(per, classes)
    assert s["classes_present"] == 3
    assert s["miou"] == pytest.approx(100 * 1.4 / 19, abs=1e-3)
    assert s["miou_present"] == pytest.approx(100 * 1.4 / 3, abs=1e-3)
    assert classes.names[classes.empty_index] not in s["per_class"]


def test_plateau_step():
    curve = [{"step": s, "miou": m} for s, m in [(250, 2.0), (500, 5.0), (750, 6.0), (1000, 6.3), (1250, 6.4)]]
    assert plateau_step(curve, window=500, tolerance=0.5) == 750
    assert plateau_step(curve, window=500, tolerance=0.1) is None  # never flat enough
    assert plateau_step(curve[:3], window=500, tolerance=5.0) == 250
    assert plateau_step(curve[:2], window=500, tolerance=5.0) is None  # the curve does not reach 250 + 500


def test_record_run_replaces_same_key_and_guards_the_protocol(tmp_path):
    path = tmp_path / "results.json"
    entry = {"row": "sup_10", "seed": 1, "steps": 2, "miou": 1.0}
    record_run(path, {"v": 1}, entry)
    record_run(path, {"v": 1}, {**entry, "miou": 2.0})
    doc = record_run(path, {"v": 1}, {**entry, "seed": 2})
    assert [(r["seed"], r["miou"]) for r in doc["runs"]] == [(1, 2.0), (2, 1.0)]
    with pytest.raises(ValueError, match="another protocol"):
        record_run(path, {"v": 2}, entry)


def test_run_row_smoke_and_report(tiny_data, tmp_path):  # noqa: F811
    base = tiny_overrides(tiny_data, tmp_path / "unused", steps=2)
    base["train"].update(ckpt_every=0, log_every=1)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    doc = yaml.safe_load(REAL.read_text())
    doc.update(base_config=str(tmp_path / "base.yaml"), data_root=str(tiny_data), results=str(tmp_path / "r.json"))
    doc["runs_dir"] = str(tmp_path / "runs")
    doc["protocol"].update(train_sequences=["00"], dev_sequences=["01"], validation_sequences=["01"])
    doc["protocol"]["pilot"].update(rows=["sup_10"], steps=2, eval_every=1, plateau_window=1, plateau_tolerance=100)
    exp_path = tmp_path / "experiments.yaml"
    exp_path.write_text(yaml.safe_dump(doc))
    md = tmp_path / "results.md"
    md.write_text(f"# Results\n\nprotocol text\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    common = ["--experiments", str(exp_path)]

    assert main([*common, "run", "occle_10", "--seed", "1", "--steps", "2", "--device", "cpu"]) == 0
    assert main([*common, "pilot", "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["protocol"] == doc["protocol"]
    runs = {r["row"]: r for r in results["runs"]}
    assert set(runs) == {"occle_10", "sup_10"}
    occ = runs["occle_10"]
    assert (occ["seed"], occ["steps"], occ["labels"], occ["budget"], occ["frames"]) == (1, 2, 0.1, "voxel", 2)
    assert 0 <= occ["iou"] <= 100 and 0 <= occ["miou"] <= occ["miou_present"] <= 100
    assert 0 <= occ["precision"] <= 100 and occ["iou"] <= occ["recall"] <= 100  # IoU <= min(precision, recall)
    if (REPO / ".git").exists():  # the commit that made the run
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=7", "HEAD"], capture_output=True)
        assert occ["code"].split("+")[0] == head.stdout.decode().strip()
    assert (
        occ["classes_present"] == sum(v is not None for v in occ["per_class"].values()) and len(occ["per_class"]) == 19
    )
    assert [p["step"] for p in runs["sup_10"]["curve"]] == [1, 2] and "curve" not in occ
    # without --steps, `run` takes the pilot's S (here 1: the loose plateau rule is met at once); frame budget
    assert main([*common, "run", "occle_10_frame", "--seed", "2", "--device", "cpu"]) == 0
    runs = {r["row"]: r for r in json.loads((tmp_path / "r.json").read_text())["runs"]}
    assert (runs["occle_10_frame"]["steps"], runs["occle_10_frame"]["budget"]) == (1, "frame")

    assert main([*common, "report", "--markdown", str(md), "--figures", str(tmp_path / "fig")]) == 0
    text = md.read_text()
    assert text.startswith("# Results\n\nprotocol text\n") and text.rstrip().endswith("after") and "old" not in text
    assert "| occle_10 | 10% | voxel | 2 | 1 |" in text and "Schedule from the pilot: S = 1 steps" in text
    assert f"| {occ['precision']:.1f} / {occ['recall']:.1f} |" in text
    assert "- 2 steps (not the schedule S: does not count): only 1 paired seed(s)" in text
    for png in (LABEL_CURVE_PNG, LABEL_CURVE_IOU_PNG, LEARNING_CURVES_PNG):
        assert (tmp_path / "fig" / png).stat().st_size > 1000 and f"fig/{png}" in text


def test_superseded_runs_leave_the_tables_but_not_the_schedule(tmp_path):
    from occle_experiments.report import build_report
    from occle_experiments.runner import supersede_runs

    path = tmp_path / "results.json"
    protocol = {"pilot": {"plateau_window": 1, "plateau_tolerance": 100}}
    per_class = {"car": 10.0}
    run = {"labels": 0.1, "iou": 40.0, "miou": 10.0, "miou_present": 12.0, "classes_present": 1, "per_class": per_class}
    curve = [{"step": 1, "miou": 1.0}, {"step": 2, "miou": 1.0}]
    record_run(path, protocol, {**run, "row": "occle_10", "seed": 1, "steps": 2, "curve": curve})
    record_run(path, protocol, {**run, "row": "occle_10", "seed": 1, "steps": 3, "miou": 20.0})
    with pytest.raises(ValueError, match="no run of row occle_10 at 5 steps"):
        supersede_runs(path, "occle_10", 5, "projection changed")
    with pytest.raises(ValueError, match="reason"):
        supersede_runs(path, "occle_10", 2, " ")
    assert supersede_runs(path, "occle_10", 2, "projection changed") == 1
    doc = json.loads(path.read_text())
    assert [r.get("superseded") for r in doc["runs"]] == ["projection changed", None]
    text = build_report(doc, ["occle_10"], tmp_path / "fig", "fig")
    assert "| occle_10 | 10% | voxel | 3 | 1 |" in text and "| occle_10 | 10% | voxel | 2 |" not in text
    assert "| occle_10 | 1 | 2 | 40.00 | 10.00 | projection changed |" in text
    assert "S = 1 steps" in text  # the superseded pilot curve still fixed the schedule


def test_scatter_chart_draws_each_group_in_its_colour_with_the_target_lines(tmp_path):
    groups = [Series("a", [(84.3, 65.1, 0.0), (85.4, 70.8, 0.0)]), Series("b", [(87.1, 69.6, 0.0)])]
    path = scatter_chart(groups, tmp_path / "sub" / "s.png", "t", "x", "y", x_target=85.0, y_target=70.0)
    img = np.asarray(Image.open(path).convert("RGB"))
    for i, n_points in enumerate((2, 1)):
        mask = (img == PALETTE[i]).all(axis=-1)
        assert mask.sum() > 60 * n_points  # the dots (and the legend swatch)
    assert (img == (120, 120, 120)).all(axis=-1).sum() > 100  # the dashed targets
    assert not (img == PALETTE[2]).all(axis=-1).any()  # two groups, two colours
    with pytest.raises(ValueError, match="no points"):
        scatter_chart([Series("empty")], tmp_path / "e.png", "t", "x", "y")


def test_the_scatter_legend_takes_the_corner_that_hides_no_point(tmp_path):
    # a row of points along the top and a column down the left: only the bottom right corner is free for a
    # legend of ten entries (the default, top right, would write over the row)
    top = [(x / 2, 100.0, 0.0) for x in range(21)]
    left_column = [(0.0, y * 10.0, 0.0) for y in range(10)]
    groups = [Series("series 0 with a fairly long name", top + left_column)]
    groups += [Series(f"series {k} with a fairly long name", [(0.0, 0.0, 0.0)]) for k in range(1, 10)]
    img = np.asarray(Image.open(scatter_chart(groups, tmp_path / "s.png", "t", "x", "y")).convert("RGB"))
    left, top_margin, right, bottom = MARGIN
    plot = img[top_margin + 2 : img.shape[0] - bottom - 2, left + 2 : img.shape[1] - right - 2]
    rows, cols = np.nonzero((plot == 0).all(axis=-1))  # black inside the plot area: the legend's names
    assert len(rows) > 500
    assert cols.min() > plot.shape[1] / 2 and rows.max() > 0.9 * plot.shape[0]  # the bottom right corner


def test_the_palette_gives_the_groups_of_the_trade_off_chart_colours_of_their_own():
    assert len(set(PALETTE)) == len(PALETTE) >= 7  # docs/img/real_frames_tradeoff.png has seven groups
    assert (120, 120, 120) not in PALETTE  # the target lines' grey
