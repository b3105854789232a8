"""How ``Predictor.predict`` grows with the number of cameras (1, 2, 6) on the Occ3D-nuScenes grid.

The tiny network of ``config/train_occ3d_tiny.yaml`` (200 x 200 x 16, every camera resized to 112 x 200),
random-initialised (timing does not depend on the weights), on the CPU. Each camera count gets its own
:class:`~occle_core.predictor.Predictor` (the same weights, the camera set cut to the first N nuScenes channels)
and the same frame: a scan of 30k points uniform in the grid and N camera images at the nuScenes size
900 x 1600 (``--quick``: 90 x 160, 10k points) looking along a ring of yaws. Every call is the full public path:
validation, per-camera resize, the network (shared image encoder on the N-image stack, lifting, fusion) and the
class decision. Medians of repeated runs in one process, the counts taken in turn (round robin).

Target: cost at most linear in the cameras, ``t(N) <= N * t(1)`` for every N (the LiDAR and 3D work is paid
once per frame, only the image work grows with N).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from occle_bench.common import Check, Section, Table, summarize, time_fn

__all__ = ["CAMERA_COUNTS", "run"]

CAMERA_COUNTS = (1, 2, 6)


def _frame(count: int, image_hw: tuple[int, int], num_points: int, grid, seed: int = 0) -> tuple[list, np.ndarray]:
    """``count`` (image, Calib) views (the first ``count`` cameras of a 6-camera ring) and (P, 4) float32 points
    uniform in ``grid`` (a :class:`~occle_core.geometry.VoxelGrid`); the same seed gives the same frame."""
    from occle_core.model.occle import ring_calibs

    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(grid.origin), np.asarray(grid.upper)
    pts = np.c_[rng.uniform(lo, hi, (num_points, 3)), rng.uniform(0, 1, num_points)].astype(np.float32)
    calibs = ring_calibs(max(CAMERA_COUNTS), *image_hw)[:count]
    return [(rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8), c) for c in calibs], pts


def run(quick: bool = False) -> Section:
    """The camera-count table: predict median / p95 ms per camera count, per camera, growth against 1 camera."""
    import copy

    from occle_core.config import load_config
    from occle_core.model.occle import OccLE
    from occle_core.predictor import Predictor
    from occle_core.resources import config_path

    start = time.perf_counter()
    cfg = load_config(config_path("train_occ3d_tiny.yaml"))
    image_hw, num_points, repeats = ((90, 160), 10_000, 2) if quick else ((900, 1600), 30_000, 7)
    grid = cfg.data.voxel_grid()
    torch.manual_seed(0)
    model = OccLE(cfg).eval()
    names = cfg.data.camera_names()
    calls = {}
    for count in CAMERA_COUNTS:
        c = copy.deepcopy(cfg)
        c.data.cameras = names[:count]
        pred = Predictor.from_model(model, c, device="cpu")
        views, pts = _frame(count, image_hw, num_points, grid)
        args = (views, pts) if count > 1 else (views[0][0], pts, views[0][1])  # one camera: the classic call
        calls[count] = lambda a=args, p=pred: p.predict(*a)
        calls[count]()  # warm-up (oneDNN kernels of this image stack, ray layouts)
    samples: dict[int, list[float]] = {n: [] for n in CAMERA_COUNTS}
    for _ in range(repeats):  # round robin: a burst of load from other processes hits every count alike
        for count, call in calls.items():
            samples[count].append(time_fn(call, 1, warmup=0).median)
    rows = []
    for count in CAMERA_COUNTS:
        t = summarize(samples[count])
        rows.append({"cameras": count, **t.as_dict("predict_"), "per_camera_ms": round(t.median / count, 1)})
    base = rows[0]["predict_median_ms"]
    for r in rows:
        r["vs_1_camera"] = round(r["predict_median_ms"] / base, 2)
        r["threads"] = torch.get_num_threads()
    table = Table(
        f"Predictor.predict vs cameras (tiny, Occ3D 200x200x16, {cfg.data.image_size[0]}x{cfg.data.image_size[1]} "
        f"per camera from {image_hw[0]}x{image_hw[1]}, {num_points} points, CPU)",
        ["cameras", "predict_median_ms", "predict_p95_ms", "per_camera_ms", "vs_1_camera", "threads"],
        rows,
        [
            f"median of {repeats} runs per count (round robin over the counts) after one warm-up each, one process; "
            "vs_1_camera = median / median at 1 camera"
        ],
    )
    worst = max(r["vs_1_camera"] / r["cameras"] for r in rows)
    checks = [
        Check(
            "predict cost vs cameras",
            "at most linear: t(N) <= N * t(1)",
            ", ".join(f"{r['cameras']}: {r['vs_1_camera']}x" for r in rows),
            worst <= 1.0,
        )
    ]
    return Section("cameras", [table], checks, info={"rows": rows}, seconds=time.perf_counter() - start)
