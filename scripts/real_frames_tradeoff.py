"""The ground / vehicle trade-off of ``docs/real_frames.md``: held-out ground consistency against vehicle recall of
every adaptation chain and seed, one point per run, with the issue's targets as dashed lines.

    python scripts/real_frames_tradeoff.py --data ../shared/real/kitti/training \
        --extra-labels config/kitti_label_supplement --ground-gate 0.6 \
        --chain "shipped chain" runs/hs_gate runs/hs_gate_s1 --chain "with data.flip" runs/flip_s0 runs/flip_s1 \
        --out docs/img/real_frames_tradeoff.png

Each run folder holds the ``occle-adapt`` folds (``fold*/adapt.json``, ``fold*/model.pt``); every fold's model
predicts the frames it held out (``frames_reported``), and the run's point pools them (the consistency check's
counts summed over the held-out frames; vehicles over the frames with boxes). Prints one markdown row per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from occle_core.consistency import FrameConsistency, consistency_report, pool, supplemented_frame
from occle_core.data.factory import build_label_free
from occle_core.predictor import Predictor
from occle_experiments.plot import Series, scatter_chart

COLUMNS = ("hit_recall", "free_false_occupancy", "ground_consistency", "vehicle_recall", "false_vehicle_rate")


def held_out(run: Path, samples: dict, extra: Path | None, gate: float | None) -> FrameConsistency:
    """The pooled consistency of the frames each fold of ``run`` held out, by that fold's model."""
    frames = []
    folds = sorted(p for p in run.glob("fold*") if (p / "adapt.json").is_file())
    if not folds:
        raise FileNotFoundError(f"{run}: no fold*/adapt.json (an occle-adapt run per fold)")
    for fold in folds:
        ids = json.loads((fold / "adapt.json").read_text())["frames_reported"]
        predictor = Predictor(fold / "model.pt", device="cpu", ground_gate=gate)
        frames += consistency_report(predictor, [supplemented_frame(samples[i], extra) for i in ids]).frames
    return pool(frames, run.name)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="KITTI object root (training/)")
    p.add_argument("--extra-labels", help="folder of label_2 files added to the released ones")
    p.add_argument("--ground-gate", type=float, help="the ground gate for every model (default: each one's own)")
    p.add_argument("--chain", nargs="+", action="append", required=True, metavar=("LABEL", "RUN"))
    p.add_argument("--out", required=True, help="PNG")
    args = p.parse_args(argv)
    reader = build_label_free("kitti_object", args.data)
    samples = {reader[i].frame_id: reader[i] for i in range(len(reader))}
    extra = Path(args.extra_labels) if args.extra_labels else None
    groups = []
    print("| chain | run | " + " | ".join(COLUMNS) + " |\n" + "|---" * (len(COLUMNS) + 2) + "|")
    for label, *runs in args.chain:
        if not runs:
            raise SystemExit(f"--chain {label}: no run folders")
        group = Series(label)
        for run in map(Path, runs):
            m = held_out(run, samples, extra, args.ground_gate).metrics()
            cells = ["-" if m[c] is None else f"{100 * m[c]:.1f}" for c in COLUMNS]
            print(f"| {label} | {run.name} | " + " | ".join(cells) + " |", flush=True)
            if m["vehicle_recall"] is not None:
                group.points.append((100 * m["ground_consistency"], 100 * m["vehicle_recall"], 0.0))
        groups.append(group)
    title = "held-out KITTI frames: one point per adaptation run (targets dashed)"
    scatter_chart(groups, args.out, title, "ground consistency (%)", "vehicle recall, 002155 (%)", 85.0, 70.0)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
