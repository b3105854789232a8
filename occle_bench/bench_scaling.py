"""How every stage grows: with the point count, the grid size and the number of occupied voxels.

- Points (30k, 60k, 120k, 240k; the synthetic 64-beam scan resampled) at 256 x 256 x 32: the non-model stages
  that touch points (reading the serialized cloud as the node's raw subscription does, PointCloud2 -> numpy,
  cropping to the grid, voxelisation) and the tiny model's inference (``OccLE.predict_labels``).
- Grid (128 x 128 x 16, Occ3D 200 x 200 x 16, 256 x 256 x 32) at 120k points: the tiny model forward,
  voxelisation, the class decision and the occupied-voxel scan, against the voxel count.
- Occupied voxels (1.6k .. 200k, doubling) on the 256 x 256 x 32 grid: the publishers (occupied voxels by
  class, serialized MarkerArray, publish; voxel PointCloud2 build, serialize, publish).

Each table prints the growth factor per doubling of its x axis, ``(t1 / t0) ** (1 / log2(x1 / x0))``
(linear = 2.0). Targets: every non-model stage <= 2.2 per doubling of points and of occupied voxels;
MarkerArray of 100k occupied voxels built and published in < 20 ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from occle_bench.common import Check, RssSampler, Section, Table, growth_fit, growth_per_doubling, time_fn

__all__ = ["LINEAR_LIMIT", "MARKER_TARGET_MS", "run"]

LINEAR_LIMIT = 2.2  # largest growth factor per doubling accepted as linear
MARKER_TARGET_MS = 20.0
MARKER_TARGET_VOXELS = 100_000

GRIDS = {
    "128x128x16": ("semantic_kitti", {"origin": [0.0, -25.6, -2.0], "voxel_size": 0.4, "shape": [128, 128, 16]}),
    "Occ3D 200x200x16": ("occ3d_nuscenes", None),
    "256x256x32": ("semantic_kitti", None),
}


def _growth_rows(
    rows: list[dict], x_key: str, stages: list[str]
) -> tuple[list[dict], dict[str, tuple[float | None, float | None]]]:
    """Add ``<stage> x2`` growth columns (local factor per doubling) to ``rows`` (ordered by ``x_key``) and a
    last row ``fit x2`` with the factor fitted over the whole range; returns (fit, worst local) per stage."""
    xs = [float(r[x_key]) for r in rows]
    factors = {}
    fit_row: dict[str, Any] = {x_key: "fit x2"}
    for s in stages:
        ys = [float(r[s]) for r in rows]
        local = growth_per_doubling(xs, ys)
        for r, v in zip(rows, local):
            r[f"{s} x2"] = v
        fit = growth_fit(xs, ys)
        fit_row[f"{s} x2"] = fit
        factors[s] = (fit, max((v for v in local if v is not None), default=None))
    return [*rows, fit_row], factors


def _linear_check(name: str, factors: dict[str, tuple[float | None, float | None]], quick: bool) -> Check:
    """PASS when every stage's fitted growth per doubling is <= LINEAR_LIMIT (worst local factor shown too)."""
    fits = [(f, s) for s, (f, _) in factors.items() if f is not None]
    if not fits:
        return Check(name, f"<= {LINEAR_LIMIT} per doubling", "no doubling measured", None)
    worst_fit, stage = max(fits)
    local, local_stage = max(((v, s) for s, (_, v) in factors.items() if v is not None), default=(None, ""))
    return Check(
        name + (" (quick)" if quick else ""),
        f"<= {LINEAR_LIMIT} per doubling (least-squares fit over the range)",
        f"worst fit {worst_fit:.2f} ({stage}); worst single doubling {local:.2f} ({local_stage})",
        worst_fit <= LINEAR_LIMIT,
    )


def _points_table(quick: bool) -> tuple[Table, Check]:
    """Point-count scaling of what the node does per cloud (serialized bytes -> message -> (N, 4) points ->
    crop -> voxelise) and of the tiny forward, with rclpy's deserialiser and a plain copy as references."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2

    from occle_bench.bench_pipeline import QUICK_GRID, _synthetic_scene, load_model, resample_points
    from occle_core.data.batch import Batch, select_points
    from occle_core.model.lidar_encoder import voxelize_points
    from occle_core.model.occle import synthetic_batch
    from occle_ros import msgs as ros_msgs
    from occle_ros.msgs import cdr

    counts = [15_000, 30_000] if quick else [30_000, 60_000, 120_000, 240_000]
    overrides = {"data": {"grid": QUICK_GRID}} if quick else None
    # the default tiny config (random weights): the shipped checkpoint keeps at most 40k points, which would hide
    # how the forward grows with the point count
    source = load_model(overrides, "cpu", prefer_shipped=False)
    cfg, model = source.cfg, source.model
    grid = cfg.data.voxel_grid()
    stride = model.feature_stride
    scan, _, _ = _synthetic_scene()
    base = synthetic_batch(cfg, 1000)  # image + camera of the network input size

    def measure(n: int) -> dict[str, Any]:
        pts = resample_points(scan, n)
        msg = ros_msgs.xyzi_to_pointcloud2(pts, "velodyne", 0)
        data = serialize_message(msg)  # what the node's raw subscription receives
        rep = 10 if quick else 20
        rng = np.random.default_rng(0)
        row: dict[str, Any] = {"points": n}
        # as the node: serialized bytes -> RawPointCloud2 (no copy of the points) -> (N, 4) (a view when dense)
        row["deserialise_ms"] = time_fn(lambda: cdr.deserialize_pointcloud2(data), rep).median
        raw_msg = cdr.deserialize_pointcloud2(data)
        row["decode_ms"] = time_fn(lambda: ros_msgs.pointcloud2_to_xyzi(raw_msg), rep).median
        sparse = pts.copy()
        sparse[::10, 0] = np.nan  # every 10th point without a return: the copying path of the decoder
        sparse_msg = cdr.deserialize_pointcloud2(serialize_message(ros_msgs.xyzi_to_pointcloud2(sparse, "velodyne", 0)))
        row["decode_nan_ms"] = time_fn(lambda: ros_msgs.pointcloud2_to_xyzi(sparse_msg), rep).median
        # references: rclpy's deserialiser (the node's receive path before), one plain copy of the payload
        row["rclpy_deserialise_ms"] = time_fn(lambda: deserialize_message(data, PointCloud2), rep).median
        row["copy_ms"] = time_fn(lambda: bytes(raw_msg.data), rep).median  # memoryview -> new bytes
        decoded = ros_msgs.pointcloud2_to_xyzi(raw_msg)  # (N, 4) read-only view, what the node hands the predictor
        row["crop_ms"] = time_fn(lambda: select_points(decoded, grid, cfg.data.max_points, rng), rep).median
        kept = select_points(decoded, grid, cfg.data.max_points, rng)  # (M, 4)
        pts5 = torch.from_numpy(np.concatenate([np.zeros((len(kept), 1), np.float32), kept], 1))  # (M, 5)
        row["in_grid"] = int(len(kept))
        row["voxelise_ms"] = time_fn(lambda: voxelize_points(pts5, grid, stride, 1), rep).median
        batch = Batch(image=base.image, points=pts5, lidar_to_image=base.lidar_to_image)
        with torch.inference_mode(), RssSampler() as rss:
            row["forward_ms"] = time_fn(lambda: model.predict_labels(batch), 1 if quick else 3).median
        row["forward_peak_rss_mb"] = round(rss.peak_mb, 0)
        for k in ("deserialise_ms", "decode_ms", "crop_ms", "voxelise_ms", "forward_ms", *references):
            row[k] = round(row[k], 3)
        return row

    references = ["decode_nan_ms", "rclpy_deserialise_ms", "copy_ms"]  # shown with growth, not in the check
    rows = [measure(n) for n in counts]
    non_model = ["deserialise_ms", "decode_ms", "crop_ms", "voxelise_ms"]
    rows, factors = _growth_rows(rows, "points", [*non_model, "forward_ms", *references])
    cols = ["points", "in_grid", *non_model, "forward_ms", "forward_peak_rss_mb", *[f"{s} x2" for s in non_model]]
    cols += ["forward_ms x2", *[c for r in references for c in (r, f"{r} x2")]]
    table = Table(
        f"Scaling with the point count (grid {'x'.join(map(str, grid.shape))}, tiny forward on CPU)",
        cols,
        rows,
        [
            "x2 columns: growth factor per doubling of the point count (linear = 2.00); last row: least-squares "
            "fit over the range",
            "in_grid: points inside the grid (what the voxelisation and the model see)",
            "deserialise: serialized CDR bytes (what the node's raw subscription gets) -> message, "
            "occle_ros.cdr, points not copied; decode: message -> (N, 4) float32, a read-only view of the bytes "
            "when every value is finite",
            "references (not in the check): decode_nan: the same cloud with every 10th x NaN (rows removed: one "
            "copy); rclpy_deserialise: rclpy's deserialize_message (copies the points twice, the node's path "
            "before); copy: bytes(payload), one plain copy, for the cache effect",
            f"model: {source.description}",
        ],
    )
    check = _linear_check("non-model stages linear in points", {s: factors[s] for s in non_model}, quick)
    return table, check


def _grid_table(quick: bool) -> Table:
    from occle_bench.bench_messages import make_occupancy
    from occle_bench.bench_pipeline import (
        FULL_POINTS,
        OCCUPIED_FRACTION,
        QUICK_POINTS,
        _synthetic_scene,
        head_gemm_only,
        load_model,
        resample_points,
    )
    from occle_core.config import load_config
    from occle_core.data.batch import Batch, select_points
    from occle_core.model.lidar_encoder import voxelize_points
    from occle_core.model.occle import synthetic_batch
    from occle_ros import msgs as ros_msgs

    names = ["64x64x8", "128x128x16"] if quick else list(GRIDS)
    grids = dict(GRIDS)
    grids["64x64x8"] = ("semantic_kitti", {"origin": [0.0, -25.6, -2.0], "voxel_size": 0.8, "shape": [64, 64, 8]})
    scan, _, _ = _synthetic_scene()
    pts = resample_points(scan, QUICK_POINTS if quick else FULL_POINTS)

    def measure(name: str) -> dict[str, Any]:
        dataset, g = grids[name]
        data: dict[str, Any] = {"dataset": dataset}
        if g is not None:
            data["grid"] = g
        calib_batch = synthetic_batch(load_config(None, {"data": data}), 20_000)
        source = load_model({"data": data}, "cpu", calib_batch)
        cfg, model = source.cfg, source.model
        grid = cfg.data.voxel_grid()
        classes = cfg.data.classes()
        base = synthetic_batch(cfg, 1000)
        kept = select_points(pts, grid, cfg.data.max_points, np.random.default_rng(0))  # (M, 4)
        pts5 = torch.from_numpy(np.concatenate([np.zeros((len(kept), 1), np.float32), kept], 1))  # (M, 5)
        batch = Batch(image=base.image, points=pts5, lidar_to_image=base.lidar_to_image)
        rep = 1 if quick else 3
        with torch.inference_mode(), RssSampler() as rss:  # as Predictor.predict: classify(features(batch))
            trunk = time_fn(lambda: model.features(batch), rep)
            fused = model.features(batch)  # (1, F, Xs, Ys, Zs)
            gemm = time_fn(lambda: head_gemm_only(model, fused), rep)
            head = time_fn(lambda: model.classify(fused), rep)
        labels = make_occupancy(int(OCCUPIED_FRACTION * grid.num_voxels), grid, classes)
        lut = ros_msgs.publish_mask(classes)
        occ = time_fn(lambda: ros_msgs.occupied_voxels(labels, grid, lut, classes.empty_index), 5)
        vox = time_fn(lambda: voxelize_points(pts5, grid, model.feature_stride, 1), 5)
        return {
            "grid": name,
            "voxels": grid.num_voxels,
            "in_grid_points": int(len(kept)),
            "forward_ms": round(trunk.median + gemm.median, 2),
            "voxelise_ms": round(vox.median, 3),
            "decision_ms": round(max(head.median - gemm.median, 0.0), 3),
            "occupied_scan_ms": round(occ.median, 3),
            "forward_peak_rss_mb": round(rss.peak_mb, 0),
        }

    rows = [measure(name) for name in names]
    rows, _ = _growth_rows(rows, "voxels", ["forward_ms", "decision_ms", "occupied_scan_ms"])
    return Table(
        "Scaling with the grid size (tiny forward on CPU, same scan)",
        ["grid", "voxels", "in_grid_points", "forward_ms", "voxelise_ms", "decision_ms", "occupied_scan_ms",
         "forward_peak_rss_mb", "forward_ms x2", "decision_ms x2", "occupied_scan_ms x2"],
        rows,
        [
            "x2 columns: growth factor per doubling of the voxel count (linear = 2.00); last row: fit",
            "forward: model.features + the logits head's GEMM; decision: model.classify - that GEMM (Predictor.predict "
            "runs classify(features)); empty-class bias set for 2.5 % occupied voxels",
            "occupied_scan: occupied voxels grouped by class on labels with 2.5 % of the voxels occupied",
            "Occ3D: 18 classes, range +-40 m, so the same scan puts more points in its grid",
        ],
    )  # fmt: skip


def _publisher_table(quick: bool) -> tuple[Table, list[Check]]:
    from rclpy.serialization import serialize_message

    from occle_bench.bench_messages import make_occupancy, publish_harness
    from occle_core.geometry import SEMANTIC_KITTI_GRID
    from occle_core.labels import class_table
    from occle_ros import msgs as ros_msgs

    grid, classes = SEMANTIC_KITTI_GRID, class_table("semantic_kitti")
    counts = [12_500, 25_000, 50_000, 100_000] if quick else [1_562, 3_125, 6_250, 12_500, 25_000, 50_000, 100_000,
                                                              200_000]  # fmt: skip
    lut = ros_msgs.publish_mask(classes)
    rows = []
    rep = 5 if quick else 20
    with publish_harness() as harness:
        for n in counts:
            labels = make_occupancy(n, grid, classes)
            voxels = ros_msgs.occupied_voxels(labels, grid, lut, classes.empty_index)
            markers = ros_msgs.serialize_occupancy_markers(labels, grid, classes, "velodyne", voxels=voxels)
            cloud = ros_msgs.occupancy_to_pointcloud2(labels, grid, classes, "velodyne", voxels=voxels)
            cloud_bytes = serialize_message(cloud)

            def t(fn: Callable[[], Any]) -> float:
                return round(time_fn(fn, rep, warmup=2).median, 3)

            def markers_total(lab: np.ndarray = labels) -> None:
                v = ros_msgs.occupied_voxels(lab, grid, lut, classes.empty_index)
                harness.publish_markers(ros_msgs.serialize_occupancy_markers(lab, grid, classes, "velodyne", voxels=v))

            rows.append(
                {
                    "occupied": n,
                    "group_ms": t(lambda lab=labels: ros_msgs.occupied_voxels(lab, grid, lut, classes.empty_index)),
                    "markers_build_ms": t(
                        lambda lab=labels, v=voxels: ros_msgs.serialize_occupancy_markers(
                            lab, grid, classes, "velodyne", voxels=v
                        )
                    ),
                    "markers_publish_ms": t(lambda m=markers: harness.publish_markers(m)),
                    "markers_total_ms": t(markers_total),
                    "cloud_build_ms": t(
                        lambda lab=labels, v=voxels: ros_msgs.occupancy_to_pointcloud2(
                            lab, grid, classes, "velodyne", voxels=v
                        )
                    ),
                    "cloud_serialize_ms": t(lambda c=cloud: serialize_message(c)),
                    "cloud_publish_ms": t(lambda c=cloud_bytes: harness.publish_voxels(c)),
                    "markers_mb": round(len(markers) / 2**20, 2),
                }
            )
    stages = ["group_ms", "markers_build_ms", "markers_publish_ms", "markers_total_ms", "cloud_build_ms",
              "cloud_serialize_ms", "cloud_publish_ms"]  # fmt: skip
    rows, factors = _growth_rows(rows, "occupied", stages)
    table = Table(
        "Scaling of the publishers with the occupied voxel count (256x256x32 grid)",
        ["occupied", *stages, "markers_mb", "group_ms x2", "markers_total_ms x2", "cloud_build_ms x2",
         "cloud_serialize_ms x2", "cloud_publish_ms x2"],
        rows,
        [
            "group: occupied voxels grouped by class (shared by both messages); markers_total: group + build "
            "+ publish of the serialized MarkerArray (what the node does per frame)",
            "publish goes to a matched subscriber in a second DDS participant of this process",
            "x2 columns: growth factor per doubling of the occupied voxel count (linear = 2.00); last row: fit",
        ],
    )  # fmt: skip
    at = next((r for r in rows if r["occupied"] == MARKER_TARGET_VOXELS), None)  # the fit row never matches
    checks = [_linear_check("publishers linear in occupied voxels", factors, quick)]
    if at is not None:
        checks.append(
            Check(
                "MarkerArray of 100k occupied voxels built + published",
                f"< {MARKER_TARGET_MS:.0f} ms",
                f"{at['markers_total_ms']:.2f} ms (median)",
                at["markers_total_ms"] < MARKER_TARGET_MS,
            )
        )
    return table, checks


DECISION_SHARES = (0.025, 0.05, 0.10, 0.20)


def _decision_table(quick: bool) -> tuple[Table, Check]:
    """The class decision against the share of occupied voxels (tiny, 256 x 256 x 32): ``OccLE.classify`` (the
    logits head fused block by block with the decision) against the full-resolution logits + ``max(0)``."""
    from occle_bench.bench_pipeline import QUICK_GRID, calibrate_empty_bias, head_gemm_only, load_model
    from occle_core.model.occle import synthetic_batch

    overrides = {"data": {"grid": QUICK_GRID}} if quick else None
    source = load_model(overrides, "cpu", prefer_shipped=False)
    model = source.model
    batch = synthetic_batch(source.cfg, 20_000)
    bias = model.heads["logits"].proj.bias
    original = bias.detach().clone()
    rep = 2 if quick else 5
    with torch.inference_mode():
        fused = model.features(batch)  # (1, F, Xs, Ys, Zs); the head's bias does not change it
    rows = []
    for share in DECISION_SHARES:
        with torch.no_grad():
            bias.copy_(original)
        calibrate_empty_bias(model, batch, share)
        with torch.inference_mode():
            gemm = time_fn(lambda: head_gemm_only(model, fused), rep)
            head = time_fn(lambda: model.classify(fused), rep)
            full = time_fn(lambda: model.heads["logits"](fused)[0].max(0).indices.to(torch.uint8), rep)
            labels = model.classify(fused)[0]
            equal = torch.equal(labels, model.heads["logits"](fused)[0].max(0).indices.to(torch.uint8))
        rows.append(
            {
                "occupied_share": f"{share:.1%}",
                "measured_share": f"{(labels != model.empty_index).float().mean().item():.1%}",
                "head_gemm_ms": round(gemm.median, 2),
                "fused_head_ms": round(head.median, 2),
                "decision_ms": round(max(head.median - gemm.median, 0.0), 2),
                "full_logits_argmax_ms": round(full.median, 2),
                "speedup": round(full.median / head.median, 2),
                "labels_equal": "yes" if equal else "NO",
            }
        )
    with torch.no_grad():
        bias.copy_(original)
    grid = "x".join(map(str, source.cfg.data.voxel_grid().shape))
    equal_all = all(r["labels_equal"] == "yes" for r in rows)
    check = Check(
        "fused class decision == max(0) of the full logits" + (" (quick)" if quick else ""),
        f"identical labels at occupied shares {', '.join(r['occupied_share'] for r in rows)}",
        "equal" if equal_all else "DIFFERENT",
        equal_all,
    )
    table = Table(
        f"Class decision against the occupied share (grid {grid}, tiny on CPU)",
        list(rows[0]),
        rows,
        [
            "fused_head: OccLE.classify (what Predictor.predict runs after the trunk); decision = fused - head GEMM",
            "full_logits_argmax: the logits head to the full (K, X, Y, Z) float grid, then max(0).indices (the node's "
            "path before); speedup = full_logits_argmax / fused_head",
            "the empty-class bias of a random-init tiny model is shifted for each share; the trunk features are fixed",
        ],
    )
    return table, check


def run(quick: bool = False) -> Section:
    """Point, grid and occupied-voxel scaling tables with growth factors per doubling and the linearity checks."""
    start = time.perf_counter()
    section = Section("scaling", info={"torch_threads": torch.get_num_threads()})
    points, points_check = _points_table(quick)
    section.tables.append(points)
    section.tables.append(_grid_table(quick))
    decision, decision_check = _decision_table(quick)
    section.tables.append(decision)
    publishers, pub_checks = _publisher_table(quick)
    section.tables.append(publishers)
    section.checks += [points_check, decision_check, *pub_checks]
    section.seconds = time.perf_counter() - start
    return section
