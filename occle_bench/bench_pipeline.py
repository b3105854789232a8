"""The node's path per frame, stage by stage, and the node's end-to-end latency over real DDS.

Stage table (:func:`run`): one synthetic frame at SemanticKITTI size (a 64-beam scan resampled to 120k points,
a 376 x 1241 image, the 256 x 256 x 32 grid; ``occle_core.synth``) goes through the node's own steps
(:mod:`occle_ros.pipeline`, the encoders of :mod:`occle_ros.msgs`), called one by one in the order
``occle_ros.node.OccleNode.process`` calls them and each timed, for >= 50 frames:

    read_raw (the Image / PointCloud2 bytes of the node's raw subscriptions) + rclpy deserialisation of the
    CameraInfo -> cloud_points -> limit_points (the node's default max_range / max_points) -> image_rgb
    -> frame_calib -> predict (Predictor.predict) -> outputs at the shipped defaults (FrameOutputs.build:
    publish_region observed, voxel PointCloud2, BEV OccupancyGrid + semantic Image; markers only when
    publish_markers is on, off by default) -> serialize_message -> publish

A last row times the outputs once more at the previous defaults (publish_region all, markers on), on the same
labels and not part of the frame's sum, to show what the new defaults save.

The whole frame is the sum of these. The parts of ``Predictor.predict`` are then timed on the same inputs in a
second pass, each measured (none derived by subtraction): preprocessing (``Predictor.batch``: points inside the
grid, image resize + normalisation, calibration of the resized image), the model (``model.predict_labels``:
network and class decision) and labels -> numpy; the model row is the reference of ``pct_of_model`` and the
"non-model" total is every other node stage plus preprocessing and labels -> numpy. The labels of the second
pass are checked to equal the node's. Publishing goes to a matched subscriber in a second DDS participant. The
model is the shipped ``models/occle_tiny_synthetic.pt`` when it exists, else a random-initialised ``tiny`` model
whose empty-class bias is shifted so that a realistic share of voxels (2.5 %) comes out occupied (the message
stages scale with that count; timing does not otherwise depend on the weights). On CUDA a second table runs the
node's path there, plus the ``paper`` config forward in fp32 and AMP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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

__all__ = [
    "FULL_POINTS",
    "Frame",
    "ModelSource",
    "StagedPipeline",
    "head_gemm_only",
    "load_model",
    "resample_points",
    "run",
    "synthetic_frame",
]

FULL_POINTS = 120_000
SHIPPED = "models/occle_tiny_synthetic.pt"
OCCUPIED_FRACTION = 0.025  # share of voxels a random-initialised model is calibrated to predict occupied
#: grid / image / points of quick mode (CI smoke): small enough for a few seconds on 2 cores
QUICK_GRID = {"origin": [0.0, -25.6, -2.0], "voxel_size": 0.8, "shape": [64, 64, 8]}
QUICK_POINTS = 30_000

#: stages of the node's path (``occle_ros.pipeline`` and ``occle_ros.msgs``, in the node's order); the whole
#: frame is their sum
RECEIVE_STAGE = "receive: deserialise image + camera_info + cloud (pipeline.read_raw)"
CLOUD_STAGE = "message -> numpy: cloud (pipeline.cloud_points)"
LIMIT_STAGE = "max_range / max_points (pipeline.limit_points)"
IMAGE_STAGE = "message -> numpy: image (pipeline.image_rgb)"
CALIB_STAGE = "message -> numpy: camera_info -> calib (pipeline.frame_calib)"
PREDICT_STAGE = "predict (pipeline.predict: Predictor.predict)"
OUTPUTS_STAGE = "outputs: region, voxel PointCloud2, BEV (outputs.FrameOutputs.build, shipped defaults)"
MARKERS_PUBLISH_STAGE = "MarkerArray publish"
CLOUD_SERIALIZE_STAGE = "voxel PointCloud2 + BEV serialize_message"
CLOUD_PUBLISH_STAGE = "voxel PointCloud2 publish"
#: the outputs at the previous defaults (every voxel, markers on), timed apart: not part of the frame's sum
OLD_OUTPUTS_STAGE = "for comparison: outputs with publish_region all + markers (the previous defaults)"
#: what Predictor.predict does, each part timed on its own in a second pass over the same inputs (not part of the
#: whole-frame sum): preprocessing and labels -> numpy count as non-model, the network as the model
PREPROCESS_STAGE = "of predict: preprocess: crop points, resize image, calib (Predictor.batch)"
MODEL_STAGE = "of predict: model forward + class decision (model.predict_labels)"
TO_NUMPY_STAGE = "of predict: labels -> numpy"
PREDICT_PARTS = (PREPROCESS_STAGE, MODEL_STAGE, TO_NUMPY_STAGE)
#: rows timed in a second pass (not part of the whole-frame sum)
SECOND_PASS = (*PREDICT_PARTS, OLD_OUTPUTS_STAGE)


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

        from occle_ros import msgs as ros_msgs

        frame.messages = {
            "image": ros_msgs.rgb_to_image(frame.rgb, "camera", 0),
            "camera_info": ros_msgs.projection_to_camera_info(calib.P, calib.image_size, "camera", 0),
            "points": ros_msgs.xyzi_to_pointcloud2(frame.points, "velodyne", 0),
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
    from occle_core.checkpoint import load_model, make_checkpoint, save_checkpoint
    from occle_core.device import resolve_device
    from occle_core.model.occle import OccLE

    dev = resolve_device(device)
    shipped = _shipped_checkpoint() if prefer_shipped and not cfg_overrides else None
    if shipped is not None:
        model, cfg, _ = load_model(shipped)
        source = ModelSource(cfg, model, shipped, f"shipped {SHIPPED}", dev)
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
    """The node's path per frame, each step of ``occle_ros.pipeline`` (and the output encoders of
    ``occle_ros.msgs``) called and timed on its own, with the node's default ``max_range`` / ``max_points`` /
    ``intensity_scale`` / ``marker_alpha`` (``config/occle.yaml``)."""

    def __init__(self, source: ModelSource, harness: Any = None) -> None:
        from dataclasses import replace

        from occle_ros import msgs
        from occle_ros.outputs import FrameOutputs
        from occle_ros.params import RegionParams, _runtime, default_values

        if source.predictor is None:
            raise ValueError("StagedPipeline needs a ModelSource loaded with with_predictor=True")
        self.source = source
        self.predictor = source.predictor
        self.grid: VoxelGrid = self.predictor.grid
        self.classes = self.predictor.classes
        self.device = source.device
        self.harness = harness
        self.params = default_values()
        self.runtime = _runtime(self.params)  # the node's runtime snapshot of the shipped defaults
        self.old_runtime = replace(self.runtime, publish_region="all", marker_period=0.0)
        self.lut = msgs.publish_mask(self.classes)  # publish_classes ["all"]
        p = self.params
        region = RegionParams(p["region.margin"], p["region.azimuth_resolution"], p["region.elevation_resolution"])
        self.outputs = FrameOutputs(self.grid, self.classes, region)
        self.old_outputs = FrameOutputs(self.grid, self.classes, region)

    def run(self, frame: Frame) -> tuple[dict[str, float], np.ndarray, np.ndarray, int]:
        """One frame through every stage; returns (stage -> ms, labels (X, Y, Z) uint8 of the node's path, labels
        of the timed parts of predict, published voxel count)."""
        from rclpy.serialization import deserialize_message, serialize_message
        from sensor_msgs.msg import CameraInfo

        from occle_ros import msgs, pipeline
        from occle_ros.pipeline import Stream

        predictor, p = self.predictor, self.params
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
        image_msg, info_msg, cloud_msg = timed(  # as the node: image and cloud raw, camera_info through rclpy
            RECEIVE_STAGE,
            lambda: (
                pipeline.read_raw(Stream.IMAGE, ser["image"]),
                deserialize_message(ser["camera_info"], CameraInfo),
                pipeline.read_raw(Stream.POINTS, ser["points"]),
            ),
        )
        points = timed(CLOUD_STAGE, lambda: pipeline.cloud_points(cloud_msg, p["intensity_scale"]))
        seed = msgs.stamp_ns(cloud_msg.header.stamp) & 0xFFFFFFFF
        points, _ = timed(LIMIT_STAGE, lambda: pipeline.limit_points(points, p["max_range"], p["max_points"], seed))
        rgb = timed(IMAGE_STAGE, lambda: pipeline.image_rgb(image_msg))
        T = frame.calib.T_cam_lidar  # a LiDAR-frame grid: T_grid<-lidar is the identity, pipeline.to_grid a no-op
        calib = timed(CALIB_STAGE, lambda: pipeline.frame_calib(info_msg, rgb.shape[:2], T))
        views = [(rgb, calib)]
        labels = timed(PREDICT_STAGE, lambda: pipeline.predict(predictor, views, points))  # (X, Y, Z) uint8
        stamp, eye = cloud_msg.header.stamp, np.eye(4)
        want = (p["publish_voxels"], p["publish_markers"], p["publish_bev"])
        out = timed(OUTPUTS_STAGE, lambda: self.outputs.build(labels, self.lut, self.runtime, [calib], points, eye,
                                                               "velodyne", stamp, time.monotonic(), want))  # fmt: skip
        encoded = (out.voxels, out.bev, out.bev_semantic)
        data = timed(CLOUD_SERIALIZE_STAGE, lambda: [serialize_message(m) for m in encoded if m is not None])
        if self.harness is not None:
            if out.markers is not None:
                timed(MARKERS_PUBLISH_STAGE, lambda: self.harness.publish_markers(out.markers))
            timed(CLOUD_PUBLISH_STAGE, lambda: self.harness.publish_voxels(data[0]))
        # second pass: the previous defaults' outputs, and the parts of Predictor.predict, each measured
        timed(OLD_OUTPUTS_STAGE, lambda: self.old_outputs.build(labels, self.lut, self.old_runtime, [calib], points,
                                                                eye, "velodyne", stamp, time.monotonic(),
                                                                (True, True, False)))  # fmt: skip
        batch = timed(PREPROCESS_STAGE, lambda: predictor.batch(rgb, points, calib))
        with torch.inference_mode():
            labels_t = timed(MODEL_STAGE, lambda: predictor.model.predict_labels(batch))  # (1, X, Y, Z)
        parts = timed(TO_NUMPY_STAGE, lambda: labels_t[0].cpu().numpy())
        return times, labels, parts, out.num_voxels


def _stage_table(
    title: str, samples: dict[str, list[float]], notes: list[str]
) -> tuple[Table, dict[str, float], dict[str, float]]:
    """Rows per stage (median, p95, share of the model forward) and the non-model / model totals.

    Per frame: model = the measured forward (MODEL_STAGE); non-model = every node stage but predict, plus the
    measured preprocessing and labels -> numpy parts of predict; whole frame = the sum of the node's stages."""
    n = len(samples[MODEL_STAGE])
    node_stages = [k for k in samples if k not in SECOND_PASS]
    non_model_stages = [k for k in node_stages if k != PREDICT_STAGE] + [PREPROCESS_STAGE, TO_NUMPY_STAGE]
    model = summarize(samples[MODEL_STAGE])
    kinds = {MODEL_STAGE: "model", PREDICT_STAGE: "model + preprocessing", PREPROCESS_STAGE: "non-model (of predict)",
             TO_NUMPY_STAGE: "non-model (of predict)", OLD_OUTPUTS_STAGE: "comparison (not summed)"}  # fmt: skip

    def row(name: str, kind: str, vals: list[float]) -> dict[str, Any]:
        t = summarize(vals)
        return {"stage": name, "kind": kind, "median_ms": round(t.median, 3), "p95_ms": round(t.p95, 3),
                "pct_of_model": round(100.0 * t.median / model.median, 2)}  # fmt: skip

    rows = [row(name, kinds.get(name, "non-model"), vals) for name, vals in samples.items()]
    non_model = [sum(samples[k][i] for k in non_model_stages) for i in range(n)]
    whole = [sum(samples[k][i] for k in node_stages) for i in range(n)]
    rows.append(row("non-model stages together", "non-model", non_model))
    rows.append(row("whole frame (sum of the node's stages)", "total", whole))
    table = Table(title, ["stage", "kind", "median_ms", "p95_ms", "pct_of_model"], rows, notes)
    nm = summarize(non_model)
    return table, {"median": nm.median, "p95": nm.p95}, {"median": model.median, "p95": model.p95}


def _run_stages(
    pipe: StagedPipeline, frame: Frame, frames: int, warmup: int
) -> tuple[dict[str, list[float]], bool, int, RssSampler]:
    """Samples per stage over ``frames`` frames after ``warmup``; whether the labels of the node's path equalled
    those of the timed parts of predict in every frame; occupied voxels; memory."""
    for _ in range(warmup):
        pipe.run(frame)
    samples: dict[str, list[float]] = {}
    agree = True
    with RssSampler() as rss:
        for _ in range(frames):
            times, labels, parts, occupied = pipe.run(frame)
            agree &= bool(np.array_equal(labels, parts))  # same process, threads and inputs
            for k, v in times.items():
                samples.setdefault(k, []).append(v)
    return samples, agree, occupied, rss


def _measure_table(
    title: str, source: ModelSource, frame: Frame, frames: int, warmup: int, harness: Any
) -> tuple[Table, dict[str, Any]]:
    """One stage table of ``source`` on ``frame``; returns it and its summary (medians, memory, agreement)."""
    grid = source.cfg.data.voxel_grid()
    pipe = StagedPipeline(source, harness)
    samples, agree, occupied, rss = _run_stages(pipe, frame, frames, warmup)
    h, w = source.cfg.data.image_size
    notes = [
        f"model: {source.description}; grid {'x'.join(map(str, grid.shape))}; {frame.points.shape[0]} points "
        f"(at most {source.cfg.data.max_points} inside the grid are kept), image {frame.rgb.shape[1]}x"
        f"{frame.rgb.shape[0]} (network input {w}x{h}); {occupied} occupied voxels published",
        f"{frames} frames after {warmup} warm-up, torch threads {torch.get_num_threads()}; pct_of_model = stage "
        f"median / '{MODEL_STAGE}' median",
        f"peak RSS during the frames {rss.peak_mb:.0f} MiB (+{rss.delta_mb:.0f} MiB over the start); "
        f"process peak so far {peak_rss_mb():.0f} MiB",
        f"labels of the timed parts of predict == the node's predict: {'yes' if agree else 'NO'}",
    ]
    table, non_model, model = _stage_table(title, samples, notes)
    info = {
        "model": source.description,
        "grid": list(grid.shape),
        "points": int(frame.points.shape[0]),
        "max_points": int(source.cfg.data.max_points),
        "occupied_voxels": occupied,
        "peak_rss_mb": round(rss.peak_mb, 1),
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
            Check(
                "timed parts of predict == the node's predict",
                "identical labels",
                "equal" if agree else "different",
                agree,
            )
        )
        if torch.cuda.is_available():
            calib_batch = synthetic_batch(load_config(None, overrides), n_points)
            _cuda_tables(section, frame, overrides, quick, frames, harness, calib_batch, workdir)
        else:
            section.checks.append(Check("CUDA stage table", "run when a GPU is present", "no CUDA device here", None))
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
    """The node's path on CUDA (as the node runs it: no AMP), and the ``paper`` config forward at 256x256x32 in
    fp32 and AMP (ms, CUDA peak memory)."""
    from occle_core.model.occle import OccLE, synthetic_batch

    source = load_model(overrides, "cuda", calibration_batch=calib_batch, workdir=workdir, with_predictor=True)
    pipe = StagedPipeline(source, harness)
    cuda_peak_mb(reset=True)
    samples, _, occupied, _ = _run_stages(pipe, frame, frames, warmup=3)
    peak = cuda_peak_mb()
    table, non_model, model = _stage_table(
        "Node path per frame, CUDA (tiny)",
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
