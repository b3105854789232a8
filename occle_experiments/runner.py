"""Train and evaluate one row with one seed, and record it in the results file.

A run calls the ``occle-train`` and ``occle-eval`` entry points in this process:

- on the row's dataset root (its ``data.root`` override, else ``data_root`` of the experiments file) and 2D
  pseudo-label folder (``data.pseudo_dir``, checked to exist before training);
- training on ``protocol.train_sequences`` with the row's overrides and ``train.seed = data.label_seed = seed``;
  the validation scenes are never loaded during training (``data.val_sequences`` is the dev split for a pilot
  run, empty otherwise);
- evaluation of the final weights on ``protocol.validation_sequences`` (``occle-eval --sequences``);
- one entry in the results file (``{"protocol": ..., "runs": [...]}``), keyed by (row, seed, steps).

Scores are percentages. ``miou`` is the official mIoU: the mean over the dataset's semantic classes (19 for
SemanticKITTI) with an absent class counted as 0; ``miou_present`` is the mean over the classes present in
truth or prediction, and ``classes_present`` their number (read from ``metrics.json`` when occle-eval writes
them, else computed from its per-class IoUs by that rule).

A pilot run (``eval_every > 0``) also evaluates on the dev split every ``eval_every`` steps (the trainer's
``eval_log.jsonl``) and stores that learning curve; :func:`plateau_step` turns curves into the schedule S.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from occle_core.config import load_config
from occle_core.labels import ClassTable
from occle_experiments.rows import Experiments, load_experiments


def _pct(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(100.0 * float(v), 4)


def class_scores(per_class_iou: dict[str, float | None], classes: ClassTable) -> dict[str, Any]:
    """Official and present-class mIoU from per-class IoUs (fractions; None / NaN = undefined).

    Returns:
        ``{"miou", "miou_present", "classes_present", "per_class"}`` with percentages; ``per_class`` covers the
        semantic classes (the empty class left out), None where undefined.
    """
    names = [classes.names[c] for c in classes.semantic_classes]
    missing = [n for n in names if n not in per_class_iou]
    if missing:
        raise ValueError(f"per_class_iou lacks classes {missing} of the {len(names)}-class table")
    per = {n: _pct(per_class_iou[n]) for n in names}
    present = [v for v in per.values() if v is not None]
    return {
        "miou": round(sum(present) / len(names), 4),
        "miou_present": round(sum(present) / len(present), 4) if present else None,
        "classes_present": len(present),
        "per_class": per,
    }


def metrics_entry(metrics: dict[str, Any], classes: ClassTable) -> dict[str, Any]:
    """IoU, mIoU (official), present-class mIoU and class count of an occle-eval ``metrics.json``, and the
    completion precision / recall where it has them (they say whether a lower IoU over- or under-fills)."""
    scores = class_scores(metrics["per_class_iou"], classes)
    if metrics.get("miou_present") is not None:
        scores["miou_present"] = _pct(metrics["miou_present"])
    if metrics.get("classes_present") is not None:
        present = metrics["classes_present"]
        scores["classes_present"] = len(present) if isinstance(present, list) else int(present)
    completion = {k: _pct(metrics[k]) for k in ("precision", "recall") if metrics.get(k) is not None}
    return {"iou": _pct(metrics["iou"]), **completion, **scores}


def read_curve(run_dir: Path, classes: ClassTable) -> list[dict[str, Any]]:
    """The run's periodic evaluations (``eval_log.jsonl``): ``[{"step", "iou", "miou"}]``, official mIoU."""
    path = Path(run_dir) / "eval_log.jsonl"
    if not path.is_file():
        return []
    curve = []
    for line in path.read_text().splitlines():
        if line.strip():
            ev = json.loads(line)
            miou = class_scores(ev["per_class_iou"], classes)["miou"]
            curve.append({"step": int(ev["step"]), "iou": _pct(ev["iou"]), "miou": miou})
    return curve


def plateau_step(curve: list[dict[str, Any]], window: int, tolerance: float) -> int | None:
    """The schedule S: the first evaluated step after which mIoU moves less than ``tolerance`` over ``window``.

    Step ``s`` qualifies when the curve reaches ``s + window`` and every evaluation in ``[s, s + window]`` lies
    within ``tolerance`` (max - min, mIoU points). None when no step qualifies (train longer).
    """
    pts = sorted((int(p["step"]), float(p["miou"])) for p in curve)
    last = pts[-1][0] if pts else 0
    for s, _ in pts:
        if s + window > last:
            break
        span = [m for t, m in pts if s <= t <= s + window]
        if max(span) - min(span) < tolerance:
            return s
    return None


def load_results(path: str | Path) -> dict[str, Any]:
    """The results file, or an empty one (``{"protocol": {}, "runs": []}``) when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return {"protocol": {}, "runs": []}
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        raise ValueError(f"{path}: expected {{'protocol': {{...}}, 'runs': [...]}}")
    return doc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock on a sibling of the results file: runs of several rows finish side by side."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_results(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def record_run(path: str | Path, protocol: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Add ``entry`` to the results file, replacing one with the same (row, seed, steps); atomic write.

    Raises:
        ValueError: the file holds runs made under another protocol (move it away to start a new one).
    """
    path = Path(path)
    with _locked(path):
        doc = load_results(path)
        if doc["runs"] and doc["protocol"] != protocol:
            raise ValueError(f"{path} holds runs of another protocol; move it away or restore config/experiments.yaml")
        key = (entry["row"], entry["seed"], entry["steps"])
        runs = [r for r in doc["runs"] if (r["row"], r["seed"], r["steps"]) != key] + [entry]
        doc = {"protocol": protocol, "runs": sorted(runs, key=lambda r: (r["row"], r["steps"], r["seed"]))}
        _write_results(path, doc)
    return doc


def supersede_runs(path: str | Path, row: str, steps: int, reason: str, seed: int | None = None) -> int:
    """Mark the recorded runs of ``row`` at ``steps`` (one ``seed`` or all) as made with a method since changed.

    They stay in the file with ``"superseded": reason``: the report lists them apart and leaves them out of the
    tables and the pre-registered test; a pilot curve among them still counts for the schedule S it fixed.

    Returns:
        the number of runs marked.

    Raises:
        ValueError: no such run is recorded, or ``reason`` is empty.
    """
    if not reason.strip():
        raise ValueError("a superseded run needs a reason")
    path = Path(path)
    with _locked(path):
        doc = load_results(path)
        hits = [r for r in doc["runs"] if r["row"] == row and r["steps"] == steps and seed in (None, r["seed"])]
        if not hits:
            raise ValueError(f"{path} records no run of row {row} at {steps} steps" + (f" seed {seed}" if seed else ""))
        for r in hits:
            r["superseded"] = reason.strip()
        _write_results(path, doc)
    return len(hits)


def check_pseudo_folder(exp: Experiments, row: str, root: str, sequences: list[str]) -> None:
    """Raise ``FileNotFoundError`` when ``row`` reads 2D pseudo labels (``data.pseudo_dir``) from a folder that
    a training sequence under ``root`` lacks, naming the folder and the make target that writes it."""
    folder = exp.row_setting(row, "data.pseudo_dir", "pseudo_2d")
    for seq in sequences:
        path = Path(root) / "sequences" / f"{int(seq):02d}" / folder
        if folder and not path.is_dir():
            target = "make pseudo-deeplab" if folder == "pseudo_2d_deeplab" else "make pseudo-noise"
            raise FileNotFoundError(f"row {row} reads 2D pseudo labels from {path}: not found (write it: {target})")


def run_row(
    row: str,
    seed: int,
    steps: int,
    out: str | Path,
    exp: Experiments | None = None,
    results: str | Path | None = None,
    eval_every: int = 0,
    resume: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Train ``row`` with ``seed`` for ``steps`` steps into ``out``, evaluate it, record it.

    Args:
        row / seed: the row of ``exp`` and the paired seed (training seed = label seed).
        steps: optimiser steps.
        out: the run folder (replaced unless ``resume``).
        exp: the experiment definition (default: ``config/experiments.yaml``).
        results: results file (default ``exp.results``).
        eval_every: > 0 for a pilot run: dev-split evaluation every that many steps, kept as ``curve``.
        resume: continue an interrupted run in ``out`` (``occle-train --resume``).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.

    Returns:
        The recorded entry.

    Raises:
        RuntimeError: training or evaluation failed (their error line is printed above).
    """
    from occle_core.engine.trainer import MODEL_NAME
    from occle_core.evaluate import main as eval_main
    from occle_core.train import main as train_main

    if steps < 1 or eval_every < 0:
        raise ValueError(f"steps must be >= 1 and eval_every >= 0, got {steps} and {eval_every}")
    exp = exp if exp is not None else load_experiments()
    p = exp.protocol
    out = Path(out)
    if out.exists() and not resume:
        shutil.rmtree(out)
    root = exp.row_data_root(row)
    check_pseudo_folder(exp, row, root, p["train_sequences"])
    overrides = exp.overrides(row, seed) + [
        f"data.train_sequences={json.dumps(list(p['train_sequences']))}",
        f"data.val_sequences={json.dumps(list(p['dev_sequences']) if eval_every else [])}",
        f"train.eval_every={int(eval_every)}",
        "train.eval_frames=0",
    ]
    argv = ["--config", exp.base_config, "--data", root, "--out", str(out), "--steps", str(steps)]
    argv += ["--no-progress", "--device", device] + [a for o in overrides for a in ("--set", o)]
    argv += ["--resume"] if resume else []
    if train_main(argv) != 0:
        raise RuntimeError(f"training of row {row} seed {seed} failed (occle-train {' '.join(argv)})")
    eval_dir = out / "eval"
    eval_argv = ["--checkpoint", str(out / MODEL_NAME), "--data", root, "--split", "val", "--sequences"]
    eval_argv += [*map(str, p["validation_sequences"]), "--out", str(eval_dir), "--render", "0", "--device", device]
    if eval_main(eval_argv) != 0:
        raise RuntimeError(f"evaluation of row {row} seed {seed} failed (occle-eval {' '.join(eval_argv)})")
    cfg = load_config(out / "config.yaml")
    classes = cfg.data.classes()
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    entry = {
        "row": row,
        "seed": int(seed),
        "labels": float(cfg.data.label_ratio),
        "budget": cfg.data.label_budget,
        "data_root": root,
        "pseudo_dir": cfg.data.pseudo_dir,
        "steps": int(steps),
        **metrics_entry(metrics, classes),
        "frames": int(metrics["frames"]),
        "run_dir": str(out),
        "code": code_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
    }
    if eval_every:
        entry["curve"] = read_curve(out, classes)
    record_run(results or exp.results, exp.protocol, entry)
    return entry


def code_revision() -> str | None:
    """The git commit of the code that made a run (``+dirty`` with uncommitted changes); None outside a checkout."""
    git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def pilot_schedule(doc: dict[str, Any], window: int, tolerance: float) -> int | None:
    """S from the recorded pilot curves: the latest plateau step over them (None while any has none)."""
    curves = [r["curve"] for r in doc["runs"] if r.get("curve")]
    steps = [plateau_step(c, window, tolerance) for c in curves]
    return None if not steps or None in steps else max(s for s in steps if s is not None)
