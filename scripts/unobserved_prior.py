"""Measure ``loss.unobserved_prior``: fine-tune a checkpoint with its labelled training (10 % of the voxel labels)
for a few steps per prior weight and compare the predicted occupied share of held-out frames with the truth's.

    python scripts/unobserved_prior.py --checkpoint models/occle_tiny_synthetic.pt --data data/synthetic
        --train 00 --val 08 --steps 150 --weights 0 0.5 1 2 --out runs/unobserved_prior

Prints one row per weight (and the checkpoint as it is): predicted / true occupied share of the whole grid (the
truth counts its valid non-empty voxels), their ratio, and the masked IoU / mIoU of ``occle-eval``; writes
``OUT/unobserved_prior.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from occle_core.checkpoint import load_checkpoint
from occle_core.config import OccleConfig
from occle_core.data.factory import build_dataset
from occle_core.engine.trainer import Trainer
from occle_core.evaluate import evaluate_model
from occle_core.labels import IGNORE_INDEX
from occle_core.predictor import Predictor


def occupied_shares(predictor: Predictor, cfg: OccleConfig) -> tuple[float, float]:
    """(predicted, true) occupied share of the whole grid, pooled over the val frames."""
    empty = predictor.classes.empty_index
    pred = true = total = 0
    for s in build_dataset(cfg, "val"):
        labels = predictor.predict(s.image, s.points, s.calib)
        pred += int((labels != empty).sum())
        true += int(((s.voxel_labels != empty) & (s.voxel_labels != IGNORE_INDEX)).sum())
        total += labels.size
    return pred / total, true / total


def run(args: argparse.Namespace) -> list[dict]:
    ckpt = load_checkpoint(args.checkpoint)
    base = OccleConfig.from_dict(ckpt["config"])
    data = replace(base.data, root=args.data, train_sequences=[args.train], val_sequences=[args.val])
    rows = []
    for weight in [None, *args.weights]:
        loss = replace(base.loss, unobserved_prior=weight or 0.0)
        out = Path(args.out) / ("as_shipped" if weight is None else f"prior_{weight:g}")
        train = replace(
            base.train, steps=args.steps, lr=args.lr, schedule="cosine", warmup=0.0, eval_every=0, ckpt_every=0,
            out_dir=str(out), eval_frames=0,
        )  # fmt: skip
        cfg = replace(base, data=data, loss=loss, train=train)
        trainer = Trainer(cfg, out, device="cpu", progress=False, tensorboard=False)
        trainer.model.load_state_dict(ckpt["model"])
        if weight is not None:
            trainer.fit()
        scores, _ = evaluate_model(trainer.model, build_dataset(cfg, "val"), cfg)
        pred, true = occupied_shares(Predictor.from_model(trainer.model, cfg, "cpu"), cfg)
        row = {"weight": weight, "steps": 0 if weight is None else args.steps, "predicted_share": pred}
        row.update(true_share=true, ratio=pred / true, iou=float(scores["iou"]), miou=float(scores["miou"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out, "unobserved_prior.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="SemanticKITTI-layout root with voxel labels (occle-synth)")
    p.add_argument("--train", default="00", help="training sequence")
    p.add_argument("--val", default="08", help="held-out sequence")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--out", required=True)
    rows = run(p.parse_args(argv))
    print("| prior weight | steps | predicted share | true share | ratio | IoU | mIoU |\n|---|---|---|---|---|---|---|")
    for r in rows:
        w = "as shipped" if r["weight"] is None else f"{r['weight']:g}"
        print(
            f"| {w} | {r['steps']} | {100 * r['predicted_share']:.2f} % | {100 * r['true_share']:.2f} % | "
            f"{r['ratio']:.1f}x | {100 * r['iou']:.1f} | {100 * r['miou']:.1f} |"
        )
    return 0 if np.isfinite([r["ratio"] for r in rows]).all() else 1


if __name__ == "__main__":
    sys.exit(main())
