"""Which way one gradient step of a single loss term moves the occupancy of each kind of voxel.

For a trained checkpoint and a few frames of a labelled split: one unit-norm SGD step of one term alone (eval
mode, so no BatchNorm statistics move), then the mean change of p(occupied) over four kinds of voxel: truly
occupied and hit by the LiDAR, truly occupied but hidden (no return: what completion must fill in), truly empty
and crossed by a ray, truly empty and never crossed. A term that lowers the hidden occupied voxels' occupancy
costs completion recall. Used in docs/results.md (round 2) on the dev split:

    python scripts/loss_directions.py --checkpoint runs/experiments/no_teacher/seed1/model.pt \
        --data data/synthetic --sequences 04 05 --frames 6
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace

import numpy as np
import torch

from occle_core.checkpoint import load_model
from occle_core.config import LossConfig
from occle_core.data.batch import collate
from occle_core.data.factory import build_dataset
from occle_core.losses import compute_losses

TERMS = ("projection", "pseudo_2d", "pseudo_3d", "geometry")
OFF = {f: 0.0 for f in ("voxel_ce", "lovasz", *TERMS, "teacher", "free_space", "unobserved_prior")}


def occupancy(model: torch.nn.Module, batch, empty: int) -> torch.Tensor:
    """(X, Y, Z) p(occupied) of the first frame of ``batch``."""
    with torch.no_grad():
        return 1.0 - model(batch).logits.softmax(1)[0, empty]


def step_change(model: torch.nn.Module, batch, loss: LossConfig, empty: int, before: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) change of p(occupied) after one unit-norm SGD step of ``loss`` on a copy of ``model``."""
    m = copy.deepcopy(model).eval()
    total, _ = compute_losses(m(batch), batch, loss, None, empty)
    total.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item() + 1e-12
    with torch.no_grad():
        for p in m.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad / norm
    return occupancy(m, batch, empty) - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="a labelled dataset root of the checkpoint's kind")
    ap.add_argument("--sequences", nargs="+", required=True, help="the split's sequences (not the validation ones)")
    ap.add_argument("--frames", type=int, default=6, help="evenly spaced frames")
    args = ap.parse_args()
    model, cfg, _ = load_model(args.checkpoint, "cpu")
    cfg.data.root, cfg.data.val_sequences = args.data, list(args.sequences)
    frames = build_dataset(cfg, "val")
    empty = cfg.data.classes().empty_index
    rows = {t: replace(LossConfig(), **{**OFF, t: 1.0}) for t in TERMS}
    kinds = ("occupied, LiDAR hit", "occupied, hidden", "empty, ray-crossed", "empty, not crossed")
    sums = {r: {k: [] for k in kinds} for r in rows}
    for i in np.linspace(0, len(frames) - 1, args.frames).round().astype(int):
        batch = collate([frames[int(i)]], cfg)
        lab, hit, free = batch.voxel_labels[0], batch.occupied[0], batch.free[0]
        occ_true, empty_true = (lab != empty) & (lab != 255), lab == empty
        masks = dict(zip(kinds, (occ_true & hit, occ_true & ~hit, empty_true & free, empty_true & ~free)))
        before = occupancy(model, batch, empty)
        for r, loss in rows.items():
            change = step_change(model, batch, loss, empty, before)
            for k, mask in masks.items():
                if mask.any():
                    sums[r][k].append(float(change[mask].mean()))
    print(f"{args.checkpoint}, {args.frames} frames of {' '.join(args.sequences)}: mean change of p(occupied) "
          "after one unit-norm step of one term (x 1e-4)")  # fmt: skip
    print("| term | " + " | ".join(kinds) + " |\n|---" * 1 + "|---" * len(kinds) + "|")
    for r, by_kind in sums.items():
        print(f"| {r} | " + " | ".join(f"{1e4 * np.mean(v):+.2f}" for v in by_kind.values()) + " |")


if __name__ == "__main__":
    main()
