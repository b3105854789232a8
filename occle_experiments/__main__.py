"""``python -m occle_experiments run|pilot|report|agreement|randomisation``: one row, the pilot, the markdown
report, the agreement of 2D pseudo-label sources with the true 2D labels, or the domain-randomisation ablation.

- ``run ROW --seed K [--steps N]``: train + evaluate one row and record it (``--steps`` defaults to the
  pilot's schedule S once the pilot has found it).
- ``pilot [--steps N]``: the protocol's pilot rows, evaluated on the dev split every ``eval_every`` steps;
  prints S.
- ``report``: regenerate the generated part of ``docs/results.md`` and its figures from ``docs/results.json``.
- ``agreement --data ROOT [--truth pseudo_2d_oracle] [--sequence SS ...] SOURCE...``: pixel accuracy, coverage
  and present-class mIoU of each pseudo-label folder against the truth folder (``pseudo_agreement.py``); JSON lines.
- ``randomisation [--definition config/randomisation.yaml] [--variants V ...] [--sequences N --frames F --steps S
  ...] [--eval-only]``: data, fine-tuning and evaluation of each randomisation variant (``randomisation.py``);
  writes ``OUT/randomisation.json`` / ``.md`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from occle_experiments.pseudo_agreement import agreement, label_pairs
from occle_experiments.randomisation import (
    DEFAULT_DEFINITION,
    load_definition,
    markdown_tables,
    run_ablation,
    with_options,
)
from occle_experiments.report import write_report
from occle_experiments.rows import DEFAULT_EXPERIMENTS, load_experiments
from occle_experiments.runner import load_results, pilot_schedule, run_row, supersede_runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m occle_experiments", description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default=str(DEFAULT_EXPERIMENTS), help="the experiment definition (YAML)")
    p.add_argument("--results", help="results file (default: the experiments file's `results`)")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate one row with one seed")
    run.add_argument("row")
    run.add_argument("--seed", type=int, required=True, help="training seed = label seed")
    run.add_argument("--steps", type=int, help="optimiser steps (default: the pilot's S)")
    run.add_argument("--out", help="run folder (default: RUNS_DIR/ROW/seedK)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run")
    run.add_argument("--device", default="auto")
    pilot = sub.add_parser("pilot", help="the pilot rows with periodic dev-split evaluation; prints S")
    pilot.add_argument("--steps", type=int, help="optimiser steps (default: protocol.pilot.steps)")
    pilot.add_argument("--device", default="auto")
    report = sub.add_parser("report", help="regenerate docs/results.md's generated part and figures")
    report.add_argument("--markdown", default="docs/results.md")
    report.add_argument("--figures", default="docs/figures")
    agree = sub.add_parser("agreement", help="agreement of 2D pseudo-label folders with the true 2D labels")
    agree.add_argument("sources", nargs="+", help="label folder names inside each sequence, e.g. pseudo_2d")
    agree.add_argument("--data", required=True, help="dataset root (SemanticKITTI layout)")
    agree.add_argument("--truth", default="pseudo_2d_oracle", help="folder of the true labels")
    agree.add_argument("--sequence", dest="sequences", action="append", help="a sequence id, repeatable (default: all)")
    sup = sub.add_parser("supersede", help="mark recorded runs as made with a method since changed")
    sup.add_argument("row")
    sup.add_argument("--steps", type=int, required=True)
    sup.add_argument("--seed", type=int, help="one seed (default: every seed of the row at these steps)")
    sup.add_argument("--reason", required=True, help="what changed (shown in the report)")
    add_randomisation_parser(sub)
    return p


def add_randomisation_parser(sub: argparse._SubParsersAction) -> None:
    """The ``randomisation`` subcommand: every option but the first three overrides the definition file."""
    r = sub.add_parser("randomisation", help="the domain-randomisation ablation (config/randomisation.yaml)")
    r.add_argument("--definition", default=str(DEFAULT_DEFINITION), help="the ablation's definition (YAML)")
    r.add_argument("--variants", nargs="+", help="variants to run (default: all of the definition)")
    r.add_argument("--eval-only", action="store_true", help="only evaluate the existing OUT/<variant>/model.pt")
    r.add_argument("--checkpoint", help="start checkpoint")
    r.add_argument("--data-root", help="DATA_ROOT: synthetic data per variant (reused when present)")
    r.add_argument("--out", help="OUT: models and results")
    r.add_argument("--sequences", type=int, help="training sequences per variant")
    r.add_argument("--frames", type=int, help="frames per training sequence")
    r.add_argument("--image-scale", type=float, help="occle-synth --image-scale of every sequence")
    r.add_argument("--steps", type=int, help="fine-tuning steps per variant")
    r.add_argument("--eval-frames", type=int, help="frames of each held-out synthetic rig")
    r.add_argument("--kitti", help="real KITTI object frames (folder holding velodyne/, image_2/, ...)")
    r.add_argument("--no-kitti", action="store_true", help="skip the real KITTI frames")
    r.add_argument("--device", default="auto")
    r.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


def randomisation_main(args: argparse.Namespace) -> int:
    """``randomisation``: run the ablation, print its tables."""
    defn = with_options(
        load_definition(args.definition), checkpoint=args.checkpoint, data_root=args.data_root, out=args.out,
        sequences=args.sequences, frames=args.frames, image_scale=args.image_scale, steps=args.steps,
        eval_frames=args.eval_frames, kitti=args.kitti,
    )  # fmt: skip
    doc = run_ablation(defn, args.variants, args.eval_only, not args.no_kitti, args.device, args.quiet)
    print(markdown_tables(doc["rows"], defn))
    print(f"wrote {defn.out}/randomisation.json and {defn.out}/randomisation.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success, 2 on a bad argument / definition / failed run (one error line)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "agreement":
            for source in args.sources:
                score = agreement(label_pairs(args.data, args.truth, source, args.sequences))
                print(json.dumps({"source": source, **score}))
            return 0
        if args.command == "randomisation":
            return randomisation_main(args)
        exp = load_experiments(args.experiments)
        results = args.results or exp.results
        pilot = exp.protocol["pilot"]
        window, tol = int(pilot["plateau_window"]), float(pilot["plateau_tolerance"])
        if args.command == "run":
            steps = args.steps or pilot_schedule(load_results(results), window, tol)
            if not steps:
                raise ValueError("no --steps and the pilot has not found S yet (python -m occle_experiments pilot)")
            out = args.out or Path(exp.runs_dir) / args.row / f"seed{args.seed}"
            entry = run_row(args.row, args.seed, steps, out, exp, results, resume=args.resume, device=args.device)
            print(json.dumps({k: v for k, v in entry.items() if k not in ("per_class", "curve")}))
        elif args.command == "supersede":
            n = supersede_runs(results, args.row, args.steps, args.reason, args.seed)
            print(f"marked {n} run(s) of {args.row} at {args.steps} steps as superseded")
        elif args.command == "pilot":
            steps = args.steps or int(pilot["steps"])
            for row in pilot["rows"]:
                out = Path(exp.runs_dir) / "pilot" / row / f"seed{pilot['seed']}"
                run_row(row, int(pilot["seed"]), steps, out, exp, results, int(pilot["eval_every"]), device=args.device)
            schedule = pilot_schedule(load_results(results), window, tol)
            print(f"schedule S = {schedule}" if schedule else "S not reached: no plateau yet, run the pilot longer")
        else:
            write_report(results, args.markdown, exp.row_order(), args.figures)
            print(f"wrote {args.markdown} and {args.figures}/")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"occle_experiments: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
