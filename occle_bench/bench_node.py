"""The node's end-to-end latency over real DDS (:func:`run_node`).

``occle_node`` runs in its own process; this process publishes frames at a steady rate slower than the model and
subscribes (raw, no deserialisation) to ``occupancy/markers``: latency = receive time - the cloud's header stamp,
compared with the model time the node reports in ``/diagnostics``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from occle_bench.bench_pipeline import FULL_POINTS, QUICK_GRID, QUICK_POINTS, load_model, synthetic_frame
from occle_bench.common import Check, Section, Table, summarize
from occle_core.config import load_config
from occle_ros.dds import apply_large_data_profile

__all__ = ["large_data_profile", "run_node"]


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
        # the latency is measured on the markers (off by default): every frame's, no rate limit
        "publish_markers": True,
        "markers": {"period": 0.0, "max_voxels": 10_000_000},
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
