"""Evaluation of an OccLE checkpoint over a split: IoU, mIoU, per-class table, JSON and PNGs.

Rules (SemanticKITTI SSC / Occ3D): voxels whose label is 255 (invalid: never observed) are not counted;
for Occ3D the camera mask restricts the counted voxels as well. Scores come from one confusion matrix over
the whole split (:class:`occle_core.metrics.SSCMetrics`), summed over ranks when distributed.

``occle-eval --checkpoint C --data D --split val [--out DIR] [--frames N]`` prints the table and writes
``DIR/metrics.json`` and ``DIR/frames/<frame>.png`` (prediction vs truth) for the first few frames.

Frames without voxel truth (real KITTI object frames, KITTI raw drives, nuScenes, a robot's logs) are held to their
own LiDAR scan (and boxes, where released) instead: ``occle-eval --consistency --dataset kitti_object
--checkpoint C --data ROOT [--sequences ...] [--out DIR]`` prints the per-frame and pooled table of
:mod:`occle_core.consistency` and writes ``DIR/consistency.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from occle_core.checkpoint import CheckpointError, load_model
from occle_core.config import OccleConfig, load_config
from occle_core.data.batch import Batch, collate_inputs, voxel_truth
from occle_core.data.factory import LABEL_FREE_DATASETS, build_dataset, build_label_free
from occle_core.data.sample import Sample
from occle_core.device import resolve_device
from occle_core.metrics import SSCMetrics


class _EvalCollate:
    """Picklable collate: network inputs (no training target), the voxel truth and each frame's camera mask."""

    def __init__(self, cfg: OccleConfig) -> None:
        self.cfg = cfg
        self.grid = cfg.data.voxel_grid()

    def __call__(self, samples: list[Sample]) -> tuple[Batch, np.ndarray | None, list[np.ndarray | None]]:
        inputs = collate_inputs(samples, self.cfg)  # validates every sample (label shapes included)
        truth = voxel_truth(samples, self.grid)  # (B, X, Y, Z) uint8, invalid = 255; None when unlabelled
        return inputs, truth, [s.camera_mask for s in samples]


def frame_indices(n: int, frames: int = 0) -> list[int]:
    """``frames`` evenly spaced indices of ``n`` (all when ``frames`` is 0 or >= n)."""
    if frames <= 0 or frames >= n:
        return list(range(n))
    return np.unique(np.linspace(0, n - 1, frames).round().astype(np.int64)).tolist()


def _safe_name(frame_id: str) -> str:
    return frame_id.replace("/", "_").replace("\\", "_")


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    cfg: OccleConfig,
    device: torch.device | str = "cpu",
    frames: int = 0,
    batch_size: int = 1,
    amp_dtype: torch.dtype | None = None,
    render_dir: str | Path | None = None,
    render_count: int = 3,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[dict, list[np.ndarray]]:
    """Run ``model`` over ``dataset`` and score it.

    Args:
        model: an OccLE (not DDP-wrapped); put in eval mode here and back in its previous mode afterwards.
        dataset: labelled frames (a reader of the split).
        cfg: the model's config (grid, classes, image size).
        frames: evaluate this many evenly spaced frames (0 = all).
        amp_dtype: autocast dtype on CUDA (None = float32).
        render_dir: where to write prediction-vs-truth PNGs of the first ``render_count`` frames (rank 0).
        rank / world: shard of the frames this process evaluates; the confusion matrices are all-reduced.

    Returns:
        scores: :meth:`SSCMetrics.compute` output plus ``table`` (printable), ``frames`` and ``s_per_frame``.
        images: the rendered figures ((H, W, 3) uint8) of the first frames (rank 0).
    """
    classes = cfg.data.classes()
    grid = cfg.data.voxel_grid()
    device = torch.device(device)
    idx = frame_indices(len(dataset), frames)
    shard = idx[rank::world]
    loader = DataLoader(
        Subset(dataset, shard),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=_EvalCollate(cfg),
        num_workers=num_workers,
    )
    metrics = SSCMetrics(classes)
    images: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    autocast = (
        torch.autocast(device_type="cuda", dtype=amp_dtype)
        if amp_dtype is not None and device.type == "cuda"
        else contextlib.nullcontext()
    )
    it = loader
    if progress and rank == 0:
        from tqdm import tqdm

        it = tqdm(loader, total=len(loader), unit="batch", desc="eval")
    try:
        for batch, truth, cam_masks in it:
            if truth is None:
                raise ValueError(f"frame {batch.frame_ids[0]} has no voxel labels: cannot evaluate it")
            batch = batch.to(device)
            with autocast:
                pred = model.predict_labels(batch).long()  # (B, X, Y, Z) argmax, no float logits grid
            target = torch.from_numpy(truth).long().to(device)  # (B, X, Y, Z), invalid = 255
            mask = target != classes.ignore_index
            for b, cm in enumerate(cam_masks):
                if cm is not None:
                    mask[b] &= torch.as_tensor(np.asarray(cm, bool), device=device)
            metrics.update(pred, target, mask)
            if render_dir is not None and len(images) < render_count:
                from occle_core.render import render_comparison

                for b in range(pred.shape[0]):
                    if len(images) >= render_count:
                        break
                    frame_m = SSCMetrics(classes)
                    frame_m.update(pred[b], target[b], mask[b])
                    s = frame_m.compute()
                    fid = batch.frame_ids[b]
                    images.append(
                        render_comparison(
                            pred[b].cpu().numpy().astype(np.uint8),
                            target[b].cpu().numpy().astype(np.uint8),
                            classes,
                            path=Path(render_dir) / f"{_safe_name(fid)}.png",
                            title=f"{fid}: prediction (left) vs truth (right)",
                            lines=[f"IoU {100 * s['iou']:.1f}   mIoU {100 * s['miou']:.1f}"],
                            mask=mask[b].cpu().numpy(),
                            grid=grid,
                        )
                    )
    finally:
        model.train(was_training)
    metrics.all_reduce()
    scores = metrics.compute()
    scores["table"] = metrics.table(scores)
    scores["frames"] = len(idx)
    scores["s_per_frame"] = (time.perf_counter() - t0) / max(1, len(shard))
    return scores, images


def scores_to_json(scores: dict, **extra: Any) -> dict:
    """JSON-friendly summary: IoU, mIoU, precision, recall, per-class IoU by name, confusion as lists."""

    def num(v: float) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v)

    return {
        **extra,
        "iou": num(scores["iou"]),
        "miou": num(scores["miou"]),
        "miou_present": num(scores["miou_present"]),
        "classes_present": int(scores["classes_present"]),
        "precision": num(scores["precision"]),
        "recall": num(scores["recall"]),
        "per_class_iou": {n: num(v) for n, v in zip(scores["names"], scores["per_class_iou"])},
        "num_voxels": int(scores["num_voxels"]),
        "frames": int(scores["frames"]),
        "s_per_frame": float(scores["s_per_frame"]),
        "confusion": np.asarray(scores["confusion"]).tolist(),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="occle-eval", description="Evaluate an OccLE checkpoint: IoU, mIoU, per class.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (model.pt or checkpoint.pt of a run)")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--split", default="val", choices=["train", "val"], help="which split of the config to score")
    p.add_argument(
        "--sequences",
        nargs="+",
        help="override the split's sequences (SemanticKITTI ids); with --consistency: sequences, drives, split, scenes",
    )
    p.add_argument("--config", help="expected config (its classes and grid must match the checkpoint's)")
    p.add_argument("--out", help="folder for metrics.json and frames/*.png")
    p.add_argument("--frames", type=int, default=0, help="evaluate N evenly spaced frames (0 = all)")
    p.add_argument("--render", type=int, default=3, help="PNGs of prediction vs truth for the first N frames")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--ground-gate",
        type=float,
        help="metres above the scan's fitted ground plane beyond which no voxel takes a ground class, nor the lower "
        "flank of an object (model.ground_gate; 0 = off); default: the checkpoint's",
    )
    p.add_argument(
        "--consistency", action="store_true", help="label-free checks against each frame's LiDAR scan (no voxel truth)"
    )
    p.add_argument(
        "--dataset",
        choices=LABEL_FREE_DATASETS,
        help="reader for --consistency (sequences / drives / split / scenes from --sequences)",
    )
    p.add_argument(
        "--extra-labels",
        help="with --consistency: a folder of KITTI label_2 files (NNNNNN.txt) whose objects are added to the "
        "released boxes of the same frames (annotation gaps; state them with the result)",
    )
    return p


def consistency_main(args: argparse.Namespace) -> int:
    """``occle-eval --consistency``: the label-free table of ``args.frames`` frames of ``args.dataset``."""
    from occle_core.consistency import consistency_report, supplemented_frame
    from occle_core.predictor import Predictor

    if not args.dataset:
        raise ValueError("--consistency needs --dataset (one of " + ", ".join(LABEL_FREE_DATASETS) + ")")
    extra = Path(args.extra_labels) if args.extra_labels else None
    if extra is not None and not extra.is_dir():
        raise FileNotFoundError(f"--extra-labels: no folder {extra}")
    reader = build_label_free(args.dataset, args.data, args.sequences)
    predictor = Predictor(args.checkpoint, device=args.device, ground_gate=args.ground_gate)

    frames = (supplemented_frame(reader[i], extra) for i in frame_indices(len(reader), args.frames))
    report = consistency_report(predictor, frames)
    gate = predictor.model.ground_gate
    print(
        f"{args.checkpoint} on {args.data} ({args.dataset}, {len(report.frames)} frames): label-free consistency"
        + (f" (ground gate {gate:g} m)" if gate > 0 else "")
    )
    print(report.table())
    if args.out:
        path = report.write_json(Path(args.out) / "consistency.json")
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``occle-eval``: 0 on success, 2 on a bad checkpoint / data / argument (one error line)."""
    args = build_parser().parse_args(argv)
    try:
        if args.frames < 0 or args.render < 0 or args.batch_size < 1:
            raise ValueError("--frames and --render must be >= 0 and --batch-size >= 1")
        if args.consistency:
            return consistency_main(args)
        device = resolve_device(args.device)
        expect = None
        if args.config:
            expect = load_config(args.config)
        model, cfg, ckpt = load_model(args.checkpoint, device, expect)
        if args.ground_gate is not None:
            model.set_ground_gate(args.ground_gate)
        cfg.data.root = args.data
        if args.sequences:
            if args.split == "val":
                cfg.data.val_sequences = list(args.sequences)
            else:
                cfg.data.train_sequences = list(args.sequences)
        dataset = build_dataset(cfg, args.split)
        out = Path(args.out) if args.out else None
        scores, _ = evaluate_model(
            model,
            dataset,
            cfg,
            device,
            frames=args.frames,
            batch_size=args.batch_size,
            render_dir=out / "frames" if out is not None and args.render else None,
            render_count=args.render,
            progress=sys.stderr.isatty(),
        )
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"occle-eval: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint} on {args.data} ({args.split}, {scores['frames']} frames, step {ckpt.get('step')})")
    print(scores["table"])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        doc = scores_to_json(
            scores,
            checkpoint=str(args.checkpoint),
            data=str(args.data),
            split=args.split,
            step=ckpt.get("step"),
            ground_gate=model.ground_gate,
        )
        (out / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
