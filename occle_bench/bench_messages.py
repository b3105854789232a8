"""Message conversion benchmarks: occle's vectorised converters against straightforward per-element code.

- PointCloud2 -> (N, 4) x, y, z, intensity: :func:`occle_ros.conversions.pointcloud2_to_xyzi` against a decoder
  that calls ``struct.unpack_from`` once per point (what a first implementation usually does).
- Occupancy -> serialized MarkerArray: :func:`occle_ros.conversions.serialize_occupancy_markers` (CDR bytes
  spliced from numpy blocks, one CUBE_LIST per class) against (a) one CUBE ``Marker`` per voxel and (b) one
  CUBE_LIST per class filled with ``geometry_msgs/Point`` objects, both serialized with
  ``rclpy.serialization.serialize_message``.

- sensor_msgs/CompressedImage JPEG -> RGB, six 1600 x 900 nuScenes-size frames (one 6-camera set):
  :func:`occle_ros.msgs.compressed.decode_jpeg` with libjpeg-turbo's SIMD decoder (simplejpeg, the node's
  choice) against Pillow (its fallback).

Both sides run on the same input in the same process and the outputs are checked to agree (same points,
same voxel count), so a broken fast path cannot report a speed-up.

This module also holds :class:`PublishHarness` (a publisher node with a matched subscriber in a second DDS
participant) used by the pipeline and scaling benchmarks to time ``publish``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import isfinite
from typing import Any

import numpy as np

from occle_bench.common import Check, Section, Table, time_fn
from occle_core.geometry import SEMANTIC_KITTI_GRID, VoxelGrid
from occle_core.labels import ClassTable, class_table

__all__ = [
    "PublishHarness",
    "camera_jpeg",
    "make_cloud_points",
    "make_occupancy",
    "marker_per_voxel",
    "points_cube_list",
    "publish_harness",
    "run",
    "struct_unpack_xyzi",
]

BENCH_NAMESPACE = "/occle_bench"


def make_cloud_points(n: int, seed: int = 0) -> np.ndarray:
    """(n, 4) float32 x, y, z, intensity of a KITTI-like scan shape (rings around the sensor, 2.5..80 m)."""
    rng = np.random.default_rng(seed)
    az = rng.uniform(-np.pi, np.pi, n)
    el = np.deg2rad(rng.uniform(-24.9, 2.0, n))
    r = np.minimum(1.73 / np.maximum(np.sin(-el), 0.02), rng.uniform(2.5, 80.0, n))
    pts = np.empty((n, 4), np.float32)
    pts[:, 0] = r * np.cos(el) * np.cos(az)
    pts[:, 1] = r * np.cos(el) * np.sin(az)
    pts[:, 2] = r * np.sin(el)
    pts[:, 3] = rng.uniform(0.0, 1.0, n)
    return pts


def make_occupancy(
    occupied: int, grid: VoxelGrid = SEMANTIC_KITTI_GRID, classes: ClassTable | None = None, seed: int = 0
) -> np.ndarray:
    """(X, Y, Z) uint8 labels with exactly ``occupied`` non-empty voxels (random places, random classes).

    Raises:
        ValueError: more occupied voxels than the grid holds.
    """
    classes = classes or class_table("semantic_kitti")
    total = int(np.prod(grid.shape))
    if not 0 <= occupied <= total:
        raise ValueError(f"occupied must be in [0, {total}] for grid {grid.shape}, got {occupied}")
    rng = np.random.default_rng(seed)
    labels = np.full(total, classes.empty_index, np.uint8)
    idx = rng.choice(total, occupied, replace=False)
    non_empty = np.array([k for k in range(classes.num_classes) if k != classes.empty_index], np.uint8)
    labels[idx] = rng.choice(non_empty, occupied)
    return labels.reshape(grid.shape)


# ------------------------------------------------------------------------------------------ baselines


def struct_unpack_xyzi(msg: Any) -> np.ndarray:
    """Per-point ``struct.unpack_from`` decoder of x, y, z, intensity (float32 fields, no row padding).

    The straightforward baseline: one Python call and one tuple per point. Non-finite points are removed like
    :func:`occle_ros.conversions.pointcloud2_to_xyzi` does, so the two outputs can be compared.
    """
    offsets = {f.name: int(f.offset) for f in msg.fields}
    order = ">" if msg.is_bigendian else "<"
    names = ("x", "y", "z", "intensity")
    # one format reading the four floats at their offsets (pad bytes between them)
    fmt, pos = order, 0
    for off, _ in sorted((offsets[n], n) for n in names):
        fmt += "x" * (off - pos) + "f"
        pos = off + 4
    perm = [sorted(names, key=lambda n: offsets[n]).index(n) for n in names]
    data = bytes(msg.data)
    step = int(msg.point_step)
    out = []
    for i in range(int(msg.width) * int(msg.height)):
        v = struct.unpack_from(fmt, data, i * step)
        x, y, z, inten = v[perm[0]], v[perm[1]], v[perm[2]], v[perm[3]]
        if isfinite(x) and isfinite(y) and isfinite(z):
            out.append((x, y, z, inten if isfinite(inten) else 0.0))
    return np.asarray(out, np.float32).reshape(-1, 4)


def marker_per_voxel(labels: np.ndarray, grid: VoxelGrid, classes: ClassTable, frame_id: str) -> bytes:
    """Baseline: a DELETEALL then one CUBE ``Marker`` per occupied voxel, serialized by rclpy."""
    from rclpy.serialization import serialize_message
    from visualization_msgs.msg import Marker, MarkerArray

    markers = [Marker(action=Marker.DELETEALL)]
    markers[0].header.frame_id = frame_id
    occ = np.argwhere(labels != classes.empty_index)
    centers = (occ + 0.5) * grid.voxel_size + np.asarray(grid.origin)
    for n, ((i, j, k), c) in enumerate(zip(occ.tolist(), centers.tolist())):
        lab = int(labels[i, j, k])
        rgb = classes.colors[lab] / 255.0
        m = Marker(type=Marker.CUBE, action=Marker.ADD, ns=classes.names[lab], id=n)
        m.header.frame_id = frame_id
        m.pose.position.x, m.pose.position.y, m.pose.position.z = c
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = float(grid.voxel_size)
        m.color.r, m.color.g, m.color.b, m.color.a = float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0
        markers.append(m)
    return serialize_message(MarkerArray(markers=markers))


def points_cube_list(labels: np.ndarray, grid: VoxelGrid, classes: ClassTable, frame_id: str) -> bytes:
    """Baseline: one CUBE_LIST per class filled with ``geometry_msgs/Point`` objects, serialized by rclpy."""
    from geometry_msgs.msg import Point
    from rclpy.serialization import serialize_message
    from visualization_msgs.msg import Marker, MarkerArray

    markers = [Marker(action=Marker.DELETEALL)]
    markers[0].header.frame_id = frame_id
    occ = np.argwhere(labels != classes.empty_index)  # (M, 3)
    occ_labels = labels[occ[:, 0], occ[:, 1], occ[:, 2]]
    for k in np.unique(occ_labels).tolist():
        centers = (occ[occ_labels == k] + 0.5) * grid.voxel_size + np.asarray(grid.origin)
        m = Marker(type=Marker.CUBE_LIST, action=Marker.ADD, ns=classes.names[k], id=int(k))
        m.header.frame_id = frame_id
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = float(grid.voxel_size)
        rgb = classes.colors[k] / 255.0
        m.color.r, m.color.g, m.color.b, m.color.a = float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0
        m.points = [Point(x=x, y=y, z=z) for x, y, z in centers.tolist()]
        markers.append(m)
    return serialize_message(MarkerArray(markers=markers))


# ------------------------------------------------------------------------------------------ publishing


@dataclass
class PublishHarness:
    """A publisher node (``markers``: MarkerArray, ``voxels``: PointCloud2, with the node's QoS) whose topics
    each have one matched subscriber in a second DDS participant (not spun: DDS still delivers the data,
    the benchmark's Python thread does not deserialize it)."""

    node: Any
    markers: Any
    voxels: Any
    _contexts: list[Any]

    def publish_markers(self, data: bytes) -> None:
        """Publish serialized MarkerArray bytes."""
        self.markers.publish(data)

    def publish_voxels(self, msg: Any) -> None:
        """Publish a PointCloud2 (rclpy serializes it)."""
        self.voxels.publish(msg)


@contextmanager
def publish_harness(timeout: float = 10.0) -> Iterator[PublishHarness]:
    """Context manager yielding a :class:`PublishHarness` with its subscribers matched.

    Raises:
        RuntimeError: when the subscribers are not matched within ``timeout`` seconds.
    """
    import rclpy
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    pub_ctx, sub_ctx = rclpy.Context(), rclpy.Context()
    rclpy.init(context=pub_ctx)
    rclpy.init(context=sub_ctx)
    try:
        node = rclpy.create_node("occle_bench_publisher", namespace=BENCH_NAMESPACE, context=pub_ctx)
        listener = rclpy.create_node("occle_bench_listener", namespace=BENCH_NAMESPACE, context=sub_ctx)
        qos = QoSProfile(depth=2)  # as occle_node's publishers
        pm = node.create_publisher(MarkerArray, "occupancy/markers", qos)
        pv = node.create_publisher(PointCloud2, "occupancy/voxels", qos)
        listener.create_subscription(MarkerArray, "occupancy/markers", lambda _m: None, qos)
        listener.create_subscription(PointCloud2, "occupancy/voxels", lambda _m: None, qos)
        deadline = time.monotonic() + timeout
        while pm.get_subscription_count() < 1 or pv.get_subscription_count() < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark subscribers not matched within {timeout} s (DDS discovery)")
            time.sleep(0.02)
        yield PublishHarness(node, pm, pv, [pub_ctx, sub_ctx])
    finally:
        for ctx in (pub_ctx, sub_ctx):
            rclpy.try_shutdown(context=ctx)


# ------------------------------------------------------------------------------------------ benchmark


def _decode_rows(n_points: int, repeats: int, baseline_repeats: int) -> tuple[list[dict], bool]:
    from occle_ros import msgs as ros_msgs

    pts = make_cloud_points(n_points)
    msg = ros_msgs.xyzi_to_pointcloud2(pts, "velodyne", 0)
    ours = time_fn(lambda: ros_msgs.pointcloud2_to_xyzi(msg), repeats)
    base = time_fn(lambda: struct_unpack_xyzi(msg), baseline_repeats, warmup=0)
    agree = bool(np.array_equal(ros_msgs.pointcloud2_to_xyzi(msg), struct_unpack_xyzi(msg)))
    row = {
        "bench": "PointCloud2 -> (N,4) xyzi",
        "size": f"{n_points} points",
        "occle_ms": round(ours.median, 3),
        "baseline": "struct.unpack per point",
        "baseline_ms": round(base.median, 1),
        "speedup": round(base.median / ours.median, 1),
        "outputs_equal": agree,
    }
    return [row], agree


def _marker_rows(occupied: int, repeats: int, baseline_repeats: int) -> tuple[list[dict], bool]:
    from rclpy.serialization import deserialize_message
    from visualization_msgs.msg import MarkerArray

    from occle_ros import msgs as ros_msgs

    grid, classes = SEMANTIC_KITTI_GRID, class_table("semantic_kitti")
    labels = make_occupancy(occupied, grid, classes)
    ours = time_fn(lambda: ros_msgs.serialize_occupancy_markers(labels, grid, classes, "velodyne"), repeats)
    per_voxel = time_fn(lambda: marker_per_voxel(labels, grid, classes, "velodyne"), baseline_repeats, warmup=0)
    cube_list = time_fn(lambda: points_cube_list(labels, grid, classes, "velodyne"), baseline_repeats, warmup=0)
    fast = deserialize_message(ros_msgs.serialize_occupancy_markers(labels, grid, classes, "velodyne"), MarkerArray)
    slow = deserialize_message(points_cube_list(labels, grid, classes, "velodyne"), MarkerArray)
    agree = sum(len(m.points) for m in fast.markers) == occupied and all(
        (a.id, len(a.points)) == (b.id, len(b.points)) for a, b in zip(fast.markers, slow.markers)
    )
    rows = []
    for name, base in (("one CUBE Marker per voxel", per_voxel), ("CUBE_LIST of Point objects", cube_list)):
        rows.append(
            {
                "bench": "occupancy -> serialized MarkerArray",
                "size": f"{occupied} voxels",
                "occle_ms": round(ours.median, 3),
                "baseline": name,
                "baseline_ms": round(base.median, 1),
                "speedup": round(base.median / ours.median, 1),
                "outputs_equal": agree,
            }
        )
    return rows, agree


def camera_jpeg(height: int = 900, width: int = 1600, seed: int = 0, quality: int = 90) -> bytes:
    """A JPEG of a street-like test image (smooth gradients + texture noise) at ``quality`` (nuScenes: ~90)."""
    import io

    from PIL import Image as PilImage

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x / 7) % 256, (y / 3) % 256, ((x + y) / 5) % 256], axis=-1)
    img = np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    PilImage.fromarray(img).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _jpeg_rows(cameras: int, repeats: int) -> tuple[list[dict], bool]:
    from occle_ros.msgs.compressed import decode_jpeg

    jpegs = [camera_jpeg(seed=i) for i in range(cameras)]
    fast = time_fn(lambda: [decode_jpeg(j, "simplejpeg") for j in jpegs], repeats)
    pillow = time_fn(lambda: [decode_jpeg(j, "pillow") for j in jpegs], repeats)
    a, b = decode_jpeg(jpegs[0], "simplejpeg"), decode_jpeg(jpegs[0], "pillow")
    agree = a.shape == b.shape and int(np.abs(a.astype(np.int16) - b).max()) <= 2  # IDCT rounding
    row = {
        "bench": "CompressedImage JPEG -> RGB (simplejpeg, libjpeg-turbo SIMD)",
        "size": f"{cameras} x 1600x900, {sum(map(len, jpegs)) // cameras // 1024} KiB each",
        "occle_ms": round(fast.median, 3),
        "baseline": "Pillow",
        "baseline_ms": round(pillow.median, 1),
        "speedup": round(pillow.median / fast.median, 1),
        "outputs_equal": agree,
    }
    return [row], agree


def run(quick: bool = False) -> Section:
    """PointCloud2 decoding and MarkerArray building against per-element baselines (speed-up = baseline / occle).

    Full: 120k points and 20k voxels (the per-voxel baselines cost ~0.1 ms per voxel); quick: 20k and 1k.
    """
    start = time.perf_counter()
    n_points, occupied = (20_000, 1_000) if quick else (120_000, 20_000)
    rows, decode_ok = _decode_rows(n_points, repeats=5 if quick else 20, baseline_repeats=1 if quick else 3)
    marker_rows, marker_ok = _marker_rows(occupied, repeats=5 if quick else 20, baseline_repeats=1 if quick else 2)
    rows += marker_rows
    jpeg_rows, jpeg_ok = _jpeg_rows(2 if quick else 6, repeats=3 if quick else 15)
    rows += jpeg_rows
    table = Table(
        "Message conversion: occle vs per-element baselines (same input, same run)",
        ["bench", "size", "occle_ms", "baseline", "baseline_ms", "speedup", "outputs_equal"],
        rows,
        [
            "speedup = baseline_ms / occle_ms (medians); MarkerArray times include building and serialization; "
            "JPEG outputs_equal: the two decoders agree within 2 levels (IDCT rounding)"
        ],
    )
    checks = [
        Check(
            "PointCloud2 decode agrees with the struct.unpack decoder",
            "identical (N,4) arrays",
            "equal" if decode_ok else "different",
            decode_ok,
        ),  # fmt: skip
        Check(
            "MarkerArray builder agrees with the Point-object CUBE_LIST",
            "same markers and point counts",
            "equal" if marker_ok else "different",
            marker_ok,
        ),  # fmt: skip
    ]
    checks.append(Check("simplejpeg and Pillow decode the same JPEG", "within 2 levels per channel",
                        "agree" if jpeg_ok else "differ", jpeg_ok))  # fmt: skip
    return Section("messages", [table], checks, seconds=time.perf_counter() - start)
