"""``occle-train``: the command line of label-efficient OccLE training (the trainer is :mod:`occle_core.engine`).

One process: ``occle-train --config config/train_synthetic_tiny.yaml --out runs/x [--resume] [--set k=v]``.
Any number of processes: ``torchrun --nproc-per-node 8 -m occle_core.train ...`` (or ``torchrun ...
$(which occle-train) ...``); every rank runs the same :class:`~occle_core.engine.trainer.Trainer`, which joins the
``env://`` process group. ``--resume`` continues ``OUT/checkpoint.pt`` exactly; without ``--config`` it continues
under the checkpoint's own config (plus the command-line overrides). SIGTERM / SIGINT checkpoint and exit 143.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
import yaml

from occle_core.checkpoint import CheckpointError, load_checkpoint
from occle_core.config import OccleConfig, load_config
from occle_core.engine.distributed import dist_on
from occle_core.engine.trainer import CHECKPOINT_NAME, Trainer


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["train.lr=1e-3", "data.image_size=[94, 310]"]`` -> ``{"train": {"lr": 0.001}, "data": {...}}``.

    Values are parsed as YAML (numbers, booleans, lists); a malformed item raises ``ValueError`` naming it.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 (no dot) as text
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        out.setdefault(section, {})[name] = parsed
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``occle-train`` argument parser."""
    p = argparse.ArgumentParser(
        prog="occle-train",
        description="Train OccLE (label-efficient 3D semantic occupancy). Runs as one process or under torchrun.",
    )
    p.add_argument("--config", help="YAML config (e.g. config/train_synthetic_tiny.yaml); defaults when omitted")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--out", help="run folder (sets train.out_dir)")
    p.add_argument("--steps", type=int, help="optimiser steps (sets train.steps)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: one GPU per rank)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``occle-train``: returns 0 on success, 2 on bad arguments / config / data / checkpoint, 143 when stopped."""
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        if args.data:
            overrides.setdefault("data", {})["root"] = args.data
        if args.out:
            overrides.setdefault("train", {})["out_dir"] = args.out
        if args.steps is not None:
            overrides.setdefault("train", {})["steps"] = args.steps
        cfg = load_config(args.config, overrides)
        ckpt_path = Path(cfg.train.out_dir) / CHECKPOINT_NAME
        if args.resume and args.config is None and ckpt_path.is_file():
            # no --config: continue under the checkpoint's own config (plus the command-line overrides)
            saved = load_checkpoint(ckpt_path)["config"]
            for section, values in overrides.items():
                saved.setdefault(section, {}).update(values)
            cfg = OccleConfig.from_saved(saved)
        trainer = Trainer(cfg, resume=args.resume, device=args.device, progress=not args.no_progress)
        summary = trainer.fit()
    except (ValueError, FileNotFoundError, CheckpointError, FloatingPointError) as exc:
        print(f"occle-train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist_on():
            dist.destroy_process_group()
    if trainer.rank == 0:
        print(json.dumps(summary), flush=True)
    return 143 if summary["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
