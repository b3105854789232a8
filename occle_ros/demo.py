"""``occle-demo --out out/demo``: the end-to-end demo (``make demo``); ``--bag BAG`` plays a recorded drive instead
(:mod:`occle_ros.demo_bag`).

1. ``occle-synth``: a short synthetic sequence (a seed the shipped model was not trained on);
2. ``occle-kitti2bag``: converted to a ROS 2 mcap bag;
3. ``occle_node`` with the shipped checkpoint and ``occle-play`` with the bag, started as separate processes
   (the same processes ``occle-launch`` starts), talking over real DDS on this host;
4. this process subscribes to ``occupancy/voxels``, ``occupancy/markers`` and ``/diagnostics``, turns every
   received voxel cloud back into a grid, scores it against the sequence's ground truth
   (:class:`occle_core.metrics.SSCMetrics`, invalid voxels excluded) and writes PNG renders of a few received
   frames next to the truth (:func:`occle_core.render.render_comparison`);
5. prints one summary line: frames received / played, mean node latency, IoU and mIoU of the received grids.

The bag is played slower than real time (``--rate``) so that the CPU model keeps up; frames the node skips
(it always takes the newest frame) are reported as dropped, not hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from occle_ros.demo_run import fail, play_through_node, playback_rate, summary_line

SYNTH_SEED = 9001  # not a training seed
DEFAULT_CHECKPOINT = ("models", "occle_tiny_synthetic.pt")


def shipped_checkpoint() -> Path:
    """Path of the shipped checkpoint; FileNotFoundError (naming the places searched) when it is missing."""
    from occle_core.resources import resource_path

    return resource_path(*DEFAULT_CHECKPOINT)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``occle-demo``."""
    p = argparse.ArgumentParser(prog="occle-demo", description="occle end to end: synth -> bag -> node -> PNGs")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--frames", type=int, default=8, help="frames of the synthetic sequence (default 8)")
    p.add_argument("--seed", type=int, default=SYNTH_SEED, help=f"synthetic scene seed (default {SYNTH_SEED})")
    p.add_argument("--checkpoint", default="", help="checkpoint (default: the shipped one)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--rate", type=float, default=0.0, help="bag playback factor (default: from the model speed)")
    p.add_argument("--renders", type=int, default=3, help="frames rendered as PNG (default 3)")
    p.add_argument(
        "--image-scale",
        type=float,
        default=0.5,
        help="synthetic image scale (default 0.5 = 188x620, the tiny model's input size)",
    )
    p.add_argument("--azimuth-steps", type=int, default=2000, help="synthetic LiDAR columns (default 2000)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for the node's output")
    p.add_argument("--bag", default="", help="play this recorded bag instead of a synthetic sequence (no truth)")
    p.add_argument("--preset", choices=["kitti", "nuscenes"], default=None, help="bag layout (default: from topics)")
    return p


def _truth(root: Path, sequence: str, frames: list[str], grid_shape: tuple[int, int, int]):
    """(labels, invalid) per frame at the model's grid (pooled when the model grid is coarser)."""
    from occle_core.data.semantic_kitti import SemanticKittiDataset

    full = 256
    scale = full // grid_shape[0]
    ds = SemanticKittiDataset(root, [sequence], grid_scale=scale, with_labels=True, pseudo_dir="")
    out = {}
    for f in frames:
        labels, invalid = ds.read_labels(ds.frames[0][0], f)
        if labels.shape != tuple(grid_shape):
            raise ValueError(f"truth grid {labels.shape} does not match the model grid {grid_shape}")
        out[f] = (labels, invalid)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``occle-demo``; returns the exit status."""
    args = build_parser().parse_args(argv)
    t_start = time.monotonic()
    out = Path(args.out)
    try:
        ckpt = Path(args.checkpoint) if args.checkpoint else shipped_checkpoint()
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    except FileNotFoundError as exc:
        return fail(f"{exc}. The demo needs the shipped checkpoint models/occle_tiny_synthetic.pt (make checkpoint)")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from occle_ros.dds import apply_large_data_profile

    apply_large_data_profile()  # before rclpy.init; the node and player inherit it (full-size images over SHM)
    out.mkdir(parents=True, exist_ok=True)

    # -- model facts (grid, speed) from the checkpoint, in this process --------------------------------------
    from occle_core.checkpoint import CheckpointError
    from occle_core.predictor import Predictor

    try:
        predictor = Predictor(ckpt, device=args.device)
    except (CheckpointError, ValueError, OSError) as exc:
        return fail(f"cannot load {ckpt}: {exc}")
    if args.bag:
        from occle_ros.demo_bag import run_bag

        return run_bag(args, predictor, ckpt, out, t_start)
    grid, classes = predictor.grid, predictor.classes

    # -- 1. synthetic sequence, 2. bag ----------------------------------------------------------------------
    from occle_core.synth.cli import main as synth_main
    from occle_ros.kitti2bag import DEFAULT_TOPICS, write_bag

    data = out / "data"
    seq_dir = data / "sequences" / "00"
    if not (seq_dir / "velodyne").is_dir() or len(list((seq_dir / "velodyne").glob("*.bin"))) < args.frames:
        print(f"occle-demo: generating {args.frames} synthetic frames (seed {args.seed}) in {data}", flush=True)
        synth_args = ["--out", str(data), "--seed", str(args.seed), "--frames", str(args.frames), "--quiet"]
        synth_args += ["--image-scale", str(args.image_scale), "--azimuth-steps", str(args.azimuth_steps)]
        if synth_main(synth_args) != 0:
            return fail("occle-synth failed")
    bag = out / "bag"
    if bag.exists():
        import shutil

        shutil.rmtree(bag)
    n_frames = write_bag(data, "00", bag, frames=args.frames)
    frames = [f"{i:06d}" for i in range(n_frames)]
    from occle_ros.kitti2bag import frame_stamps

    stamps = {int(s): f for s, f in zip(frame_stamps(seq_dir, frames, 1_700_000_000.0, None), frames)}
    truth = _truth(data, "00", frames, grid.shape)

    rate = args.rate
    if rate <= 0:
        from occle_core.data.semantic_kitti import SemanticKittiDataset

        s = SemanticKittiDataset(data, ["00"], with_labels=False, pseudo_dir="")[0]
        rate = playback_rate(predictor, [(s.image, s.calib)], s.points, stamps)
    del predictor

    # -- 3. node + player as processes, 4. receive ----------------------------------------------------------
    from occle_ros.launcher import parse_launch_args

    launch_args = parse_launch_args(
        [
            f"bag:={bag}",
            "rviz:=false",
            f"rate:={rate:.4f}",
            f"checkpoint:={ckpt}",
            f"device:={args.device}",
            f"calib_file:={seq_dir / 'calib.txt'}",
            f"image_topic:={DEFAULT_TOPICS['image']}",
            f"camera_info_topic:={DEFAULT_TOPICS['camera_info']}",
            f"points_topic:={DEFAULT_TOPICS['points']}",
            "wait_subscribers:=120",
        ]
    )
    try:
        run = play_through_node(launch_args, stamps, grid, classes.empty_index, n_frames, args.timeout)
    except RuntimeError as exc:
        return fail(str(exc))
    received, marker_frames, diag = run.received, run.marker_frames, run.diag

    # -- 5. scores, renders, summary -------------------------------------------------------------------------
    from occle_core.metrics import SSCMetrics
    from occle_core.render import render_comparison

    metrics = SSCMetrics(classes)
    per_frame = {}
    for f, pred in sorted(received.items()):
        labels, invalid = truth[f]
        m = SSCMetrics(classes)
        m.update(pred, labels, mask=~invalid)
        metrics.update(pred, labels, mask=~invalid)
        s = m.compute()
        per_frame[f] = {"iou": s["iou"], "miou": s["miou"]}
    scores = metrics.compute()
    chosen = sorted(received)
    picks = sorted({chosen[int(round(i))] for i in np.linspace(0, len(chosen) - 1, min(args.renders, len(chosen)))})
    renders = []
    for f in picks:
        labels, invalid = truth[f]
        path = out / f"frame_{f}.png"
        render_comparison(
            received[f],
            labels,
            classes,
            path,
            title=f"occle_node output (left) vs truth (right), frame {f}",
            lines=[f"IoU {100 * per_frame[f]['iou']:.1f}  mIoU {100 * per_frame[f]['miou']:.1f}"],
            mask=~invalid,
            grid=grid,
        )
        renders.append(str(path))
    lat_mean = float(diag.get("latency_mean_ms", "nan"))
    summary = {
        "frames_played": n_frames,
        "frames_received": len(received),
        "frames_with_markers": len(marker_frames),
        "frames_dropped": int(float(diag.get("dropped_superseded", 0))),
        "frames_rejected": int(float(diag.get("rejected", 0))),
        "latency_mean_ms": lat_mean,
        "latency_p95_ms": float(diag.get("latency_p95_ms", "nan")),
        "model_p50_ms": float(diag.get("model_p50_ms", "nan")),
        "playback_rate": rate,
        "iou": scores["iou"],
        "miou": scores["miou"],
        "miou_present": scores["miou_present"],
        "classes_present": scores["classes_present"],
        "per_frame": per_frame,
        "renders": renders,
        "checkpoint": str(ckpt),
        "node_diagnostics": dict(diag),
        "wall_s": time.monotonic() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"occle-demo: {summary_line(len(received), n_frames, diag)}, IoU {100 * scores['iou']:.1f}, "
        f"mIoU {100 * scores['miou']:.1f} ({100 * scores['miou_present']:.1f} over the {scores['classes_present']} "
        f"classes present) vs truth; renders: {', '.join(renders)}; {summary['wall_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
