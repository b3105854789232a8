"""The node's path per frame, stage by stage, and the node's end-to-end latency over real DDS.

Stage table (:func:`run`): one synthetic frame at SemanticKITTI size (a 64-beam scan resampled to 120k points,
a 376 x 1241 image, the 256 x 256 x 32 grid; ``occle_core.synth``) goes through exactly what
``occle_ros.node.OccleNode.process`` does, each stage timed on its own, for >= 50 frames:

    reading the incoming Image / PointCloud2 bytes (``occle_ros.cdr``, the node's raw subscriptions) and
    rclpy deserialisation of the CameraInfo (the executor's work)
    -> message -> numpy (image, cloud, camera_info)
    -> preprocessing (points inside the grid, image resize + normalisation, calibration of the resized image)
    -> model: encoders, branches and fusion (its voxelisation step also timed on its own)
    -> logits head fused with the class decision -> (X, Y, Z) uint8 labels (``OccLE.classify``: the head's GEMM
       runs block by block and each block is decided while in cache; the head's GEMM alone, over the same
       blocks, is timed too, so model time = trunk - voxelisation + GEMM and the decision = fused - GEMM)
    -> occupied voxels grouped by class -> serialized MarkerArray -> publish
    -> voxel PointCloud2 -> serialize_message -> publish

Publishing goes to a matched subscriber in a second DDS participant. The staged labels are checked to equal
``Predictor.predict`` on the same input. The model is the shipped ``models/occle_tiny_synthetic.pt`` when it
exists, else a random-initialised ``tiny`` model whose empty-class bias is shifted so that a realistic share
of voxels (2.5 %) comes out occupied (the message stages scale with that count; timing does not otherwise
depend on the weights). On CUDA a second table runs the model under AMP, plus the ``paper`` config forward.

End-to-end (:func:`run_node`): ``occle_node`` runs in its own process; this process publishes frames at a steady
rate slower than the model and subscribes (raw, no deserialisation) to ``occupancy/markers``: latency = receive
time - the cloud's header stamp, compared with the model time the node reports in ``/diagnostics``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from occle_bench.common import (
    Check,
    RssSampler,
    Section,
    Table,
    cuda_peak_mb,
    peak_rss_mb,
    summarize,
    sync_cuda,
    time_fn,
)
from occle_core.config import OccleConfig, load_config
from occle_core.geometry import Calib, VoxelGrid
from occle_ros.dds import apply_large_data_profile

__all__ = [
    "FULL_POINTS",
    "Frame",
    "ModelSource",
    "StagedPipeline",
    "head_gemm_only",
    "large_data_profile",
    "load_model",
    "resample_points",
    "run",
    "run_node",
    "synthetic_frame",
]

FULL_POINTS = 120_000
SHIPPED = "models/occle_tiny_synthetic.pt"
OCCUPIED_FRACTION = 0.025  # share of voxels a random-initialised model is calibrated to predict occupied
#: grid / image / points of quick mode (CI smoke): small enough for a few seconds on 2 cores
QUICK_GRID = {"origin": [0.0, -25.6, -2.0], "voxel_size": 0.8, "shape": [64, 64, 8]}
QUICK_POINTS = 30_000

#: non-model stages: everything but the network (the voxelisation inside the forward is counted here too)
MODEL_STAGE = "model forward (excl. voxelisation)"
VOXELISE_STAGE = "voxelisation (inside the forward)"
TRUNK_STAGE = "model: encoders, branches, fusion (incl. voxelisation)"
FUSED_HEAD_STAGE = "logits head fused with the class decision"
HEAD_GEMM_STAGE = "logits head GEMM alone (same blocks, no decision)"
DECISION_STAGE = "class decision (fused head - its GEMM)"
#: rows shown for reference whose parts make up the totals: model = trunk - voxelisation + head GEMM
PART_STAGES = {TRUNK_STAGE: "(model incl. vox.)", FUSED_HEAD_STAGE: "(model + decision)", HEAD_GEMM_STAGE: "(model)"}


# ------------------------------------------------------------------------------------------------ inputs


@dataclass
class Frame:
    """One camera + LiDAR frame as numpy arrays and as serialized ROS messages."""

    rgb: np.ndarray  # (H, W, 3) uint8
    points: np.ndarray  # (N, 4) float32
    calib: Calib
    messages: dict[str, Any] = field(default_factory=dict)  # image / camera_info / points message objects
    serialized: dict[str, bytes] = field(default_factory=dict)


def resample_points(points: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(M, 4) scan -> (n, 4): a random subset when n <= M, else the scan repeated with 1 cm jitter (a denser
    sensor of the same scene)."""
    rng = np.random.default_rng(seed)
    m = points.shape[0]
    if n <= m:
        return points[np.sort(rng.choice(m, n, replace=False))]
    reps = -(-n // m)
    tiled = np.concatenate([points] * reps, axis=0)[:n].copy()
    tiled[m:, :3] += rng.normal(0.0, 0.01, (n - m, 3)).astype(np.float32)
    return tiled


_SCENE_CACHE: dict[str, Any] = {}


def _synthetic_scene() -> tuple[np.ndarray, np.ndarray, Calib]:
    """Scan points, image and calibration of frame 0 of synthetic sequence seed 0 (cached)."""
    if "scene" not in _SCENE_CACHE:
        from occle_core.synth.sequence import SyntheticSequence

        seq = SyntheticSequence(0, 1, window=1)
        _SCENE_CACHE["scene"] = (seq.scan(0).points, seq.render(0).image, seq.calib)
    return _SCENE_CACHE["scene"]


def synthetic_frame(num_points: int = FULL_POINTS, seed: int = 0, with_messages: bool = True) -> Frame:
    """A SemanticKITTI-sized synthetic frame (376 x 1241 image) with ``num_points`` points, and its messages
    (rgb8 Image, CameraInfo with P, PointCloud2 x y z intensity) stamped 0."""
    scan, image, calib = _synthetic_scene()
    frame = Frame(image, resample_points(scan, num_points, seed), calib)
    if with_messages:
        from rclpy.serialization import serialize_message

        from occle_ros import conversions as cv

        frame.messages = {
            "image": cv.rgb_to_image(frame.rgb, "camera", 0),
            "camera_info": cv.projection_to_camera_info(calib.P, calib.image_size, "camera", 0),
            "points": cv.xyzi_to_pointcloud2(frame.points, "velodyne", 0),
        }
        frame.serialized = {k: serialize_message(m) for k, m in frame.messages.items()}
    return frame


# ------------------------------------------------------------------------------------------------ model


@dataclass
class ModelSource:
    """The model a benchmark runs and where it comes from (``predictor`` loaded from ``checkpoint``)."""

    cfg: OccleConfig
    model: torch.nn.Module
    checkpoint: Path
    description: str
    device: torch.device
    predictor: Any = None


def _shipped_checkpoint() -> Path | None:
    from occle_core.resources import resource_path

    try:
        return resource_path(*SHIPPED.split("/"))
    except FileNotFoundError:
        return None


def calibrate_empty_bias(model: torch.nn.Module, batch: Any, fraction: float) -> float | None:
    """Shift the empty-class bias of ``model``'s final head so that ``fraction`` of the voxels of ``batch``
    come out non-empty; returns the shift (None when the head has no bias of K * s^3 channels). Makes a
    random-initialised model publish a realistic voxel count.

    The logits head maps to ``K * s^3`` channels, channel ``c * s^3 + offset`` being class ``c`` at one of the
    ``s^3`` children of a feature voxel (``occle_core.model`` depth-to-space order).
    """
    empty, s, K = model.empty_index, model.feature_stride, model.num_classes
    bias = next(
        (p for n, p in model.heads["logits"].named_parameters() if n.endswith("bias") and p.numel() == K * s**3),
        None,
    )
    if bias is None:
        return None
    with torch.inference_mode():
        logits = model(batch, inference=True).logits[0].float()  # (K, X, Y, Z)
        others = torch.cat([logits[:empty], logits[empty + 1 :]]).amax(0)  # (X, Y, Z)
        margin = (others - logits[empty]).flatten().cpu().numpy()  # > 0: non-empty
    shift = float(np.quantile(margin, 1.0 - fraction))
    with torch.no_grad():
        bias[empty * s**3 : (empty + 1) * s**3] += shift
    return shift


def load_model(
    cfg_overrides: dict | None = None,
    device: str = "cpu",
    calibration_batch: Any = None,
    workdir: str | Path | None = None,
    prefer_shipped: bool = True,
    with_predictor: bool = False,
) -> ModelSource:
    """The shipped tiny checkpoint when it exists and ``cfg_overrides`` is None, else a random-initialised tiny
    model (seed 0) written to ``workdir`` as a checkpoint (the node and the Predictor load it from there).

    Args:
        calibration_batch: a batch to calibrate a random model's empty-class bias on (None: no calibration).
        with_predictor: also load ``occle_core.predictor.Predictor`` from the checkpoint; ``model`` is then the
            predictor's network.
    """
    from occle_core.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from occle_core.model.occle import OccLE

    dev = torch.device(device)
    shipped = _shipped_checkpoint() if prefer_shipped and not cfg_overrides else None
    if shipped is not None:
        ckpt = load_checkpoint(shipped)
        cfg = OccleConfig.from_dict(ckpt["config"])
        model = OccLE(cfg)
        model.load_state_dict(ckpt["model"])
        source = ModelSource(cfg, model.eval(), shipped, f"shipped {SHIPPED}", dev)
    else:
        cfg = load_config(None, cfg_overrides)
        torch.manual_seed(0)
        model = OccLE(cfg).eval()
        note = "random-init tiny (seed 0)"
        if calibration_batch is not None and calibrate_empty_bias(model, calibration_batch, OCCUPIED_FRACTION):
            note += f", empty-class bias set for {OCCUPIED_FRACTION:.1%} occupied voxels"
        workdir = Path(workdir or tempfile.mkdtemp(prefix="occle-bench-"))
        path = workdir / "occle_tiny_random.pt"
        state = model.state_dict()
        save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), state))
        source = ModelSource(cfg, model, path, note, dev)
    if with_predictor:
        from occle_core.predictor import Predictor

        source.predictor = Predictor(source.checkpoint, device=device)
        source.model, source.cfg = source.predictor.model, source.predictor.config
    else:
        source.model.to(dev)
    return source


# ------------------------------------------------------------------------------------------------ stages


def head_gemm_only(model: Any, fused: torch.Tensor) -> None:
    """The logits head's GEMM over the same blocks as ``model.classify(fused)``, each block discarded: the model
    share of the fused head (the rest of ``classify`` is the class decision)."""
    for _ in model.heads["logits"].blocks(fused):
        pass


class StagedPipeline:
    """``OccleNode.process`` split into separately timed stages (see the module docstring)."""

    def __init__(self, source: ModelSource, harness: Any = None, amp: bool = False) -> None:
        from occle_ros import conversions as cv

        if source.predictor is None:
            raise ValueError("StagedPipeline needs a ModelSource loaded with with_predictor=True")

        self.cv = cv
        self.source = source
        self.cfg = source.cfg
        self.model = source.model
        self.grid: VoxelGrid = self.cfg.data.voxel_grid()
        self.classes = self.cfg.data.classes()
        self.device = source.device
        self.amp = amp and self.device.type == "cuda"
        self.harness = harness
        self.lut = cv.publish_mask(self.classes)
        self.T_cam_lidar: np.ndarray | None = None

    def _autocast(self) -> Any:
        if not self.amp:
            return torch.autocast("cpu", enabled=False)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def run(self, frame: Frame) -> tuple[dict[str, float], np.ndarray, int]:
        """One frame through every stage; returns (stage -> ms, labels (X, Y, Z) uint8, occupied voxel count)."""
        from rclpy.serialization import deserialize_message, serialize_message
        from sensor_msgs.msg import CameraInfo

        from occle_core.data.batch import collate
        from occle_core.data.sample import Sample
        from occle_core.model.lidar_encoder import voxelize_points
        from occle_ros import cdr

        cv, cfg, grid = self.cv, self.cfg, self.grid
        times: dict[str, float] = {}
        cuda = self.device.type == "cuda"

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            if cuda:
                sync_cuda()
            t0 = time.perf_counter()
            out = fn()
            if cuda:
                sync_cuda()
            times[name] = (time.perf_counter() - t0) * 1e3
            return out

        ser = frame.serialized
        msgs = timed(  # as the node: image and cloud through its raw subscriptions, camera_info through rclpy
            "receive: deserialise image + camera_info + cloud",
            lambda: (
                cdr.deserialize_image(ser["image"]),
                deserialize_message(ser["camera_info"], CameraInfo),
                cdr.deserialize_pointcloud2(ser["points"]),
            ),
        )
        image_msg, info_msg, cloud_msg = msgs
        rgb = timed("message -> numpy: image", lambda: cv.image_to_rgb(image_msg))
        points = timed("message -> numpy: cloud", lambda: cv.pointcloud2_to_xyzi(cloud_msg))
        T = frame.calib.T_cam_lidar
        calib = timed(
            "message -> numpy: camera_info -> calib",
            lambda: Calib(cv.camera_info_projection(info_msg), T, rgb.shape[:2]),
        )
        predictor = self.source.predictor

        def preprocess() -> Any:  # what Predictor.predict_logits does before the network
            pts = predictor.validate(rgb, points, calib)  # (N, 4) finite
            batch = collate([Sample.single("predict", rgb, pts, calib)], cfg, with_targets=False)
            return batch.to(self.device)

        batch = timed("preprocess: crop points, resize image, calib", preprocess)
        stride = getattr(self.model, "feature_stride", cfg.model.feature_stride)
        timed(VOXELISE_STAGE, lambda: voxelize_points(batch.points, grid, stride, 1))
        model = self.model
        with torch.inference_mode(), self._autocast():  # Predictor.predict = model.classify(model.features(batch))
            fused = timed(TRUNK_STAGE, lambda: model.features(batch))  # (1, F, Xs, Ys, Zs)
            timed(HEAD_GEMM_STAGE, lambda: head_gemm_only(model, fused))
            labels_t = timed(FUSED_HEAD_STAGE, lambda: model.classify(fused))  # (1, X, Y, Z) uint8
        labels = timed("labels -> numpy", lambda: labels_t[0].cpu().numpy())
        voxels = timed(
            "occupied voxels by class",
            lambda: cv.occupied_voxels(labels, grid, self.lut, self.classes.empty_index),
        )
        stamp = cloud_msg.header.stamp
        markers = timed(
            "MarkerArray build (serialized)",
            lambda: cv.serialize_occupancy_markers(labels, grid, self.classes, "velodyne", stamp, 0.8, voxels=voxels),
        )
        if self.harness is not None:
            timed("MarkerArray publish", lambda: self.harness.publish_markers(markers))
        cloud = timed(
            "voxel PointCloud2 build",
            lambda: cv.occupancy_to_pointcloud2(labels, grid, self.classes, "velodyne", stamp, voxels=voxels),
        )
        data = timed("voxel PointCloud2 serialize_message", lambda: serialize_message(cloud))
        if self.harness is not None:
            timed("voxel PointCloud2 publish", lambda: self.harness.publish_voxels(data))
        times[MODEL_STAGE] = times[TRUNK_STAGE] - times[VOXELISE_STAGE] + times[HEAD_GEMM_STAGE]
        times[DECISION_STAGE] = max(times[FUSED_HEAD_STAGE] - times[HEAD_GEMM_STAGE], 0.0)
        return times, labels, int(voxels.labels.shape[0])


def _stage_table(
    title: str, samples: dict[str, list[float]], notes: list[str]
) -> tuple[Table, dict[str, float], dict[str, float]]:
    """Rows per stage (median, p95, share of the model forward) and the non-model / model totals."""
    model_stages = {MODEL_STAGE}
    skip = set(PART_STAGES)  # shown, but their parts are what the totals add up
    n = len(next(iter(samples.values())))
    per_frame_non_model = [
        sum(v[i] for k, v in samples.items() if k not in model_stages | skip) for i in range(n)
    ]  # fmt: skip
    model = summarize(samples[MODEL_STAGE])
    rows = []
    for name, vals in samples.items():
        t = summarize(vals)
        kind = "model" if name in model_stages else PART_STAGES.get(name, "non-model")
        rows.append(
            {
                "stage": name,
                "kind": kind,
                "median_ms": round(t.median, 3),
                "p95_ms": round(t.p95, 3),
                "pct_of_model": round(100.0 * t.median / model.median, 2),
            }
        )
    nm = summarize(per_frame_non_model)
    totals = [sum(v[i] for k, v in samples.items() if k not in skip) for i in range(n)]
    tt = summarize(totals)
    rows.append({"stage": "non-model stages together", "kind": "non-model", "median_ms": round(nm.median, 3),
                 "p95_ms": round(nm.p95, 3), "pct_of_model": round(100.0 * nm.median / model.median, 2)})  # fmt: skip
    rows.append({"stage": "whole frame (sum of stages)", "kind": "total", "median_ms": round(tt.median, 3),
                 "p95_ms": round(tt.p95, 3), "pct_of_model": round(100.0 * tt.median / model.median, 2)})  # fmt: skip
    table = Table(title, ["stage", "kind", "median_ms", "p95_ms", "pct_of_model"], rows, notes)
    return table, {"median": nm.median, "p95": nm.p95}, {"median": model.median, "p95": model.p95}


def _run_stages(
    pipe: StagedPipeline, frame: Frame, frames: int, warmup: int
) -> tuple[dict[str, list[float]], np.ndarray, int, RssSampler]:
    for _ in range(warmup):
        pipe.run(frame)
    samples: dict[str, list[float]] = {}
    with RssSampler() as rss:
        for _ in range(frames):
            times, labels, occupied = pipe.run(frame)
            for k, v in times.items():
                samples.setdefault(k, []).append(v)
    return samples, labels, occupied, rss


def _predictor_agrees(source: ModelSource, frame: Frame, labels: np.ndarray) -> bool:
    """True when ``Predictor.predict`` on the frame's arrays gives the staged labels."""
    return bool(np.array_equal(source.predictor.predict(frame.rgb, frame.points, frame.calib), labels))


def _measure_table(
    title: str, source: ModelSource, frame: Frame, frames: int, warmup: int, harness: Any
) -> tuple[Table, dict[str, Any]]:
    """One stage table of ``source`` on ``frame``; returns it and its summary (medians, memory, agreement)."""
    grid = source.cfg.data.voxel_grid()
    pipe = StagedPipeline(source, harness)
    samples, labels, occupied, rss = _run_stages(pipe, frame, frames, warmup)
    agree = _predictor_agrees(source, frame, labels)
    h, w = source.cfg.data.image_size
    notes = [
        f"model: {source.description}; grid {'x'.join(map(str, grid.shape))}; {frame.points.shape[0]} points "
        f"(at most {source.cfg.data.max_points} inside the grid are kept), image {frame.rgb.shape[1]}x"
        f"{frame.rgb.shape[0]} (network input {w}x{h}); {occupied} occupied voxels published",
        f"{frames} frames after {warmup} warm-up, torch threads {torch.get_num_threads()}; pct_of_model = stage "
        f"median / '{MODEL_STAGE}' median",
        f"peak RSS during the frames {rss.peak_mb:.0f} MiB (+{rss.delta_mb:.0f} MiB over the start); "
        f"process peak so far {peak_rss_mb():.0f} MiB",
        f"staged labels == Predictor.predict: {'yes' if agree else 'NO'}",
    ]
    table, non_model, model = _stage_table(title, samples, notes)
    info = {
        "model": source.description,
        "grid": list(grid.shape),
        "points": int(frame.points.shape[0]),
        "max_points": int(source.cfg.data.max_points),
        "occupied_voxels": occupied,
        "peak_rss_mb": round(rss.peak_mb, 1),
        "forward_median_ms": round(
            summarize(samples[TRUNK_STAGE]).median + summarize(samples[HEAD_GEMM_STAGE]).median, 2
        ),
        "model_median_ms": round(model["median"], 2),
        "non_model_median_ms": round(non_model["median"], 2),
        "non_model_pct": round(100.0 * non_model["median"] / model["median"], 2),
        "predictor_agrees": agree,
    }
    return table, info


def run(quick: bool = False, frames: int | None = None, workdir: str | Path | None = None) -> Section:
    """Stage-by-stage tables of the node path (CPU; plus CUDA + AMP when available) and the 10 % target.

    Full: (1) the model the node runs by default (the shipped checkpoint when it exists) and (2) the tiny model
    at the target size, 256 x 256 x 32 (random-initialised when the shipped one has another grid), both with a
    120k-point frame, 50 frames after 2 warm-up frames. The target is checked on (2).
    Quick: a 64 x 64 x 8 grid, 30k points, 5 frames (CI smoke; numbers not comparable to the target).
    """
    from occle_bench.bench_messages import publish_harness
    from occle_core.model.occle import synthetic_batch

    start = time.perf_counter()
    frames = frames or (5 if quick else 50)
    warmup = 1 if quick else 2
    n_points = QUICK_POINTS if quick else FULL_POINTS
    frame = synthetic_frame(n_points)
    section = Section("pipeline", info={"frames": frames, "torch_threads": torch.get_num_threads()})
    with publish_harness() as harness:
        if quick:
            overrides: dict | None = {"data": {"grid": QUICK_GRID}}
            calib_batch = synthetic_batch(load_config(None, overrides), n_points)
            target = load_model(overrides, "cpu", calib_batch, workdir, with_predictor=True)
            table, info = _measure_table("Node path per frame, CPU (tiny, quick size)", target, frame, frames,
                                         warmup, harness)  # fmt: skip
            section.tables.append(table)
            section.info["node_model"] = section.info["target"] = info
        else:
            overrides = None
            node_source = load_model(
                None, "cpu", synthetic_batch(load_config(), n_points), workdir, with_predictor=True
            )
            title = f"Node path per frame, CPU: the node's default model ({node_source.description})"
            table, info = _measure_table(title, node_source, frame, frames, warmup, harness)
            section.tables.append(table)
            section.info["node_model"] = info
            if tuple(node_source.cfg.data.voxel_grid().shape) == (256, 256, 32):
                section.info["target"] = info
            else:
                del node_source
                calib_batch = synthetic_batch(load_config(), n_points)
                target = load_model(None, "cpu", calib_batch, workdir, prefer_shipped=False, with_predictor=True)
                table, info = _measure_table("Node path per frame, CPU: tiny at the target size 256x256x32",
                                             target, frame, frames, warmup, harness)  # fmt: skip
                section.tables.append(table)
                section.info["target"] = info
        tgt = section.info["target"]
        section.checks.append(
            Check(
                "non-model stages vs tiny forward on CPU" + (" (quick: small grid, not the target)" if quick else ""),
                "< 10 % at 120k points, 256x256x32",
                f"{tgt['non_model_median_ms']:.1f} ms = {tgt['non_model_pct']:.1f} % of "
                f"{tgt['model_median_ms']:.1f} ms",
                tgt["non_model_pct"] < 10.0,
            )
        )
        agree = all(section.info[k]["predictor_agrees"] for k in ("node_model", "target"))
        section.checks.append(
            Check("staged pipeline == Predictor.predict", "identical labels", "equal" if agree else "different", agree)
        )
        if torch.cuda.is_available():
            calib_batch = synthetic_batch(load_config(None, overrides), n_points)
            _cuda_tables(section, frame, overrides, quick, frames, harness, calib_batch, workdir)
        else:
            section.checks.append(
                Check("CUDA + AMP stage table", "run when a GPU is present", "no CUDA device here", None)
            )
    section.tables.append(_threads_table(frame, overrides, workdir, 3 if quick else 10))
    section.seconds = time.perf_counter() - start
    return section


def _threads_table(frame: Frame, overrides: dict | None, workdir: str | Path | None, repeats: int) -> Table:
    """``Predictor.predict`` with torch's default thread count and with one thread, on an idle CPU and with every
    core but one kept busy by other processes (what a robot computer running other nodes looks like)."""
    source = load_model(overrides, "cpu", None, workdir, with_predictor=True)
    predictor = source.predictor
    default = torch.get_num_threads()
    cores = os.cpu_count() or 1
    rows = []
    for busy in (0, cores - 1):
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            for threads in sorted({default, 1}, reverse=True):
                torch.set_num_threads(threads)
                t = time_fn(lambda: predictor.predict(frame.rgb, frame.points, frame.calib), repeats)
                rows.append({"busy_cores": f"{busy} of {cores}", "torch_threads": threads,
                             "predict_median_ms": round(t.median, 2), "predict_p95_ms": round(t.p95, 2)})  # fmt: skip
        finally:
            torch.set_num_threads(default)
            for proc in spinners:
                proc.kill()
                proc.wait()
    return Table(
        "Predictor.predict and the CPU threads, idle and with other processes busy",
        ["busy_cores", "torch_threads", "predict_median_ms", "predict_p95_ms"],
        rows,
        [
            f"model: {source.description}; {frame.points.shape[0]} points; {repeats} frames per row after 1 warm-up",
            "busy cores: processes spinning in a Python loop; the node's torch_threads parameter sets the threads",
        ],
    )


def _cuda_tables(
    section: Section,
    frame: Frame,
    overrides: dict | None,
    quick: bool,
    frames: int,
    harness: Any,
    calib_batch: Any,
    workdir: str | Path | None,
) -> None:
    """CUDA + AMP stage table, and the ``paper`` config forward at 256x256x32 (ms, CUDA peak memory)."""
    from occle_core.model.occle import OccLE, synthetic_batch

    source = load_model(overrides, "cuda", calibration_batch=calib_batch, workdir=workdir, with_predictor=True)
    pipe = StagedPipeline(source, harness, amp=True)
    cuda_peak_mb(reset=True)
    samples, _, occupied, _ = _run_stages(pipe, frame, frames, warmup=3)
    peak = cuda_peak_mb()
    table, non_model, model = _stage_table(
        "Node path per frame, CUDA + AMP (tiny)",
        samples,
        [f"{torch.cuda.get_device_name(0)}; CUDA peak {peak:.0f} MiB; {occupied} occupied voxels"],
    )
    section.tables.append(table)
    if quick:
        return
    cfg = load_config(None, {"model": {"size": "paper"}})
    model_p = OccLE(cfg).eval().cuda()
    batch = synthetic_batch(cfg, FULL_POINTS).to("cuda")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    rows = []
    for name, fmt in (("paper fp32", None), ("paper AMP", dtype)):
        cuda_peak_mb(reset=True)
        times = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=fmt is not None):
            for i in range(13):
                sync_cuda()
                t0 = time.perf_counter()
                model_p(batch, inference=True)
                sync_cuda()
                if i >= 3:
                    times.append((time.perf_counter() - t0) * 1e3)
        t = summarize(times)
        rows.append({"model": name, "median_ms": round(t.median, 2), "p95_ms": round(t.p95, 2),
                     "cuda_peak_mb": round(cuda_peak_mb() or 0.0, 1)})  # fmt: skip
    section.tables.append(
        Table(
            "paper config forward at 256x256x32, 120k points (CUDA)",
            ["model", "median_ms", "p95_ms", "cuda_peak_mb"],
            rows,
        )  # fmt: skip
    )


# ------------------------------------------------------------------------------------------------ node e2e


def large_data_profile() -> str | None:
    """Apply occle's shipped Fast DDS profile (``config/fastdds_large_data.xml``: 32 MiB shared-memory segment +
    UDP, :mod:`occle_ros.dds`) to this process unless the user configured Fast DDS (e.g. set
    FASTDDS_DEFAULT_PROFILES_FILE); returns the profiles file in use (None: not Fast DDS).

    With Fast DDS's default transports a 376 x 1241 rgb8 Image (1.4 MB) published best-effort from this process
    is mostly lost on the way to occle_node. Must run before the first DDS participant of the process is created
    (Fast DDS reads it once); the node started by :func:`run_node` inherits it."""
    return apply_large_data_profile()


def _cdr_header_stamp_ns(data: bytes) -> int:
    """Header stamp of a serialized MarkerArray: the first marker's header follows the 4-byte encapsulation and
    the uint32 marker count (sec int32, nanosec uint32)."""
    order = "<" if data[1] == 1 else ">"
    sec = np.frombuffer(data, np.dtype(order + "i4"), 1, 8)[0]
    nsec = np.frombuffer(data, np.dtype(order + "u4"), 1, 12)[0]
    return int(sec) * 1_000_000_000 + int(nsec)


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the benchmark process dies (no orphaned node)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def _node_params(path: Path, checkpoint: Path, T: np.ndarray) -> None:
    import yaml

    params = {
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "extrinsics": {"source": "matrix", "matrix": [float(v) for v in T.reshape(-1)]},
        "diagnostics_period": 0.5,
    }
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))


def run_node(
    quick: bool = False,
    frames: int | None = None,
    period: float | None = None,
    workdir: str | Path | None = None,
    forward_ms: float | None = None,
) -> Section:
    """End-to-end latency of ``occle_node`` (own process) over real DDS: cloud stamp -> markers received.

    Frames are published at a steady period longer than the node's per-frame work (first measured over three
    warm-up frames), so the node is never behind; the warm-up frames are not counted. The target compares the
    latency with the model time the node reports (``/diagnostics`` ``model_p50_ms``: ``Predictor.predict``);
    ``forward_ms`` (the stage table's network forward from the same run) adds a second, stricter ratio.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from visualization_msgs.msg import MarkerArray

    from occle_core.model.occle import synthetic_batch

    start = time.perf_counter()
    frames = frames or (4 if quick else 15)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="occle-bench-node-"))
    overrides = {"data": {"grid": QUICK_GRID}} if quick else None
    n_points = QUICK_POINTS if quick else FULL_POINTS
    frame = synthetic_frame(n_points)
    source = load_model(overrides, "cpu", synthetic_batch(load_config(None, overrides), n_points), workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    params = workdir / "node_params.yaml"
    _node_params(params, source.checkpoint, frame.calib.T_cam_lidar)
    ns, node_name = f"/occle_bench_e2e_{os.getpid()}", f"occle_bench_node_{os.getpid()}"
    cmd = [sys.executable, "-m", "occle_ros.node", "--ros-args", "-r", f"__ns:={ns}", "-r", f"__node:={node_name}"]
    cmd += ["--params-file", str(params)]
    log = open(workdir / "node.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    section = Section("node")
    received: list[tuple[int, int]] = []  # (stamp ns, receive ns)
    diag: dict[str, float] = {}
    lock = threading.Lock()
    executor = SingleThreadedExecutor(context=ctx)
    spin = None
    try:
        node = rclpy.create_node("occle_bench_driver", namespace=ns, context=ctx)
        pubs = {
            "image": node.create_publisher(Image, "image", qos_profile_sensor_data),
            "camera_info": node.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data),
            "points": node.create_publisher(PointCloud2, "points", qos_profile_sensor_data),
        }

        def on_markers(data: bytes) -> None:
            now = time.time_ns()
            with lock:
                received.append((_cdr_header_stamp_ns(data), now))

        def on_diag(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.name != f"{node_name}: occupancy":
                    continue
                with lock:
                    for kv in status.values:
                        with contextlib.suppress(ValueError):
                            diag[kv.key] = float(kv.value)

        sub = node.create_subscription(MarkerArray, "occupancy/markers", on_markers, QoSProfile(depth=2), raw=True)
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        deadline = time.monotonic() + 120.0
        while any(p.get_subscription_count() < 1 for p in pubs.values()) or sub.get_publisher_count() < 1:
            if proc.poll() is not None:
                raise RuntimeError(f"occle_node exited with {proc.returncode}; see {workdir / 'node.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"occle_node not matched within 120 s; see {workdir / 'node.log'}")
            time.sleep(0.05)
        msgs = frame.messages

        def publish_frame() -> int:
            stamp = time.time_ns()
            for key in ("image", "camera_info", "points"):
                m = msgs[key]
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                pubs[key].publish(m)
            return stamp

        def wait_for(count: int, timeout: float) -> None:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                with lock:
                    if len(received) >= count:
                        return
                time.sleep(0.005)

        # warm-up: one frame at a time, each waited for; gives the per-frame work of the node
        warm = []
        for i in range(3):
            t0 = time.time_ns()
            publish_frame()
            wait_for(i + 1, 60.0)
            warm.append((time.time_ns() - t0) / 1e6)
            with lock:
                if len(received) < i + 1:  # no answer within a minute: do not wait for the others
                    break
        with lock:
            if len(received) < 3:
                seen = {k: v for k, v in diag.items() if k.startswith(("received_", "sync_", "rejected"))}
                raise RuntimeError(
                    f"occle_node answered {len(received)} of 3 warm-up frames (node counters {seen}; a missing "
                    f"received_image means the 1.4 MB images were lost in DDS: see config/fastdds_large_data.xml); "
                    f"log: {workdir}/node.log"
                )
        # twice the warm-up round trip: while frames stream, the publisher competes with the node for the
        # cores, and a period shorter than the node's work would measure queueing, not latency
        period = period or max(2.0 * float(np.median(warm)) / 1e3, 0.1)
        sent: list[int] = []
        next_t = time.monotonic()
        for _ in range(frames):
            next_t += period
            sent.append(publish_frame())
            time.sleep(max(0.0, next_t - time.monotonic()))
        wait_for(3 + frames, 5 * period + 10.0)
        time.sleep(1.2)  # one more diagnostics period
        with lock:
            by_stamp = dict(received)
            stats = dict(diag)
        lat = [(by_stamp[s] - s) / 1e6 for s in sent if s in by_stamp]
        lost = len(sent) - len(lat)
    finally:
        executor.shutdown()
        if spin is not None:
            spin.join(timeout=5)
        rclpy.try_shutdown(context=ctx)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    if not lat:
        raise RuntimeError(f"no markers received for {len(sent)} frames; see {workdir / 'node.log'}")
    t = summarize(lat)
    model_ms = stats.get("model_p50_ms", float("nan"))
    nan = float("nan")
    rows = [
        {"measure": "end-to-end: cloud stamp -> markers received", "median_ms": round(t.median, 2),
         "p95_ms": round(t.p95, 2), "n": t.n},
        {"measure": "node: model time (Predictor.predict, /diagnostics model_p50_ms)", "median_ms": round(model_ms, 2),
         "p95_ms": None, "n": None},
        {"measure": "node: set complete -> published (/diagnostics latency)",
         "median_ms": round(stats.get("latency_p50_ms", nan), 2), "p95_ms": round(stats.get("latency_p95_ms", nan), 2),
         "n": None},
    ]  # fmt: skip
    if forward_ms:
        rows.append({"measure": "stage table: model forward (excl. voxelisation), same run",
                     "median_ms": round(forward_ms, 2), "p95_ms": None, "n": None})  # fmt: skip
    ratio = t.median / model_ms if model_ms == model_ms and model_ms > 0 else float("nan")
    notes = [
        f"model: {source.description}; grid {'x'.join(map(str, source.cfg.data.voxel_grid().shape))}, "
        f"{n_points} points, image {frame.rgb.shape[1]}x{frame.rgb.shape[0]}",
        f"{len(sent)} frames at a {period * 1e3:.0f} ms period after 3 warm-up frames; {lost} not received; "
        f"dropped by the node: {int(stats.get('dropped_superseded', 0))}"
        + ("" if t.p95 < period * 1e3 else "; p95 latency >= period: frames queued, the period was too short"),
        f"end-to-end / node model time = {ratio:.2f}"
        + (f"; end-to-end / network forward = {t.median / forward_ms:.2f}" if forward_ms else ""),
    ]
    section.tables.append(Table("Node end-to-end latency over DDS (occle_node in its own process)",
                                ["measure", "median_ms", "p95_ms", "n"], rows, notes))  # fmt: skip
    section.info = {"e2e_median_ms": round(t.median, 2), "e2e_p95_ms": round(t.p95, 2), "node_model_ms": model_ms,
                    "ratio": round(ratio, 3), "lost": lost, "period_ms": round(period * 1e3, 1)}  # fmt: skip
    section.checks.append(
        Check(
            "node end-to-end latency vs model time" + (" (quick: small grid)" if quick else ""),
            "<= 1.2 x model time at steady state",
            f"{t.median:.1f} ms vs {model_ms:.1f} ms = {ratio:.2f} x",
            bool(ratio <= 1.2) if ratio == ratio else None,
        )
    )
    section.seconds = time.perf_counter() - start
    return section
