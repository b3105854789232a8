"""The part of ``occle-demo`` that runs a bag through ``occle_node`` over real DDS and summarises what came back.

:func:`play_through_node` starts the node and the player as processes (the ones ``occle-launch`` starts), in an
order that loses no frame to discovery: the node first; the player once this process's receiver is matched with the
node's outputs (the node creates them after its model is loaded); the player itself waits until the node's inputs
are matched (``occle-play --wait-topics``). :func:`summary_line` is the demo's one-line result.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from occle_core.geometry import Calib, VoxelGrid


def fail(msg: str) -> int:
    """Print ``occle-demo: error: msg`` to stderr; returns the exit status 1."""
    print(f"occle-demo: error: {msg}", file=sys.stderr)
    return 1


def playback_rate(predictor: Any, views: list[tuple[np.ndarray, Calib]], points: np.ndarray,
                  stamps: dict[int, str]) -> float:  # fmt: skip
    """Bag playback factor (<= 1) at which the model finishes a frame before the next one arrives, with margin:
    one frame period >= 1.5 model times + 0.3 s (decode, publish, a busy machine). Times one frame after a warm-up.

    Args:
        views: one (image, Calib) per camera of the checkpoint; points: (N, 4) in its grid frame.
    """
    predictor.predict(views, points)  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    predictor.predict(views, points)
    per_frame = time.perf_counter() - t0
    period = float(np.median(np.diff(sorted(stamps)))) / 1e9 if len(stamps) > 1 else 0.1
    return min(1.0, period / (1.5 * per_frame + 0.3))


@dataclass
class NodeRun:
    """What the receiver heard while a bag played through ``occle_node``.

    Attributes:
        received: input frame -> (X, Y, Z) uint8 occupancy read back from ``occupancy/voxels``.
        marker_frames: input frames that came back on ``occupancy/markers``.
        diag: the node's last ``<name>: occupancy`` diagnostics values.
        bev: input frame -> (X, Y) int8 ``occupancy/bev`` (100 occupied, 0 free, -1 unknown).
    """

    received: dict[str, np.ndarray]
    marker_frames: set[str]
    diag: dict[str, str]
    bev: dict[str, np.ndarray]


def play_through_node(
    launch_args: dict[str, str],
    stamps: dict[int, str],
    grid: VoxelGrid,
    empty_index: int,
    n_frames: int,
    timeout: float,
) -> NodeRun:
    """Start ``occle_node`` (the launch arguments' process), wait until this process's receiver is matched with its
    outputs, start ``occle-play`` (which waits for the node's input subscriptions), and collect the outputs.

    Args:
        stamps: input cloud stamp (ns) -> frame name; outputs carry the stamp of their input cloud.
        grid: the model's voxel grid (for reading the voxel clouds back); empty_index: its empty class.
        n_frames: frames in the bag; timeout: seconds to wait for the node and the player.

    Raises:
        RuntimeError: a process failed or the node never came up (the message says which).
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import OccupancyGrid
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    from occle_ros import readback
    from occle_ros.launcher import ProcessGroup, plan

    run = NodeRun({}, set(), {}, {})
    rclpy.init(args=["occle-demo"])
    node = Node("occle_demo_receiver")
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)

    def frame_of(stamp) -> str | None:
        return stamps.get(stamp.sec * 1_000_000_000 + stamp.nanosec)

    def on_voxels(msg: PointCloud2) -> None:
        f = frame_of(msg.header.stamp)
        if f is not None:
            run.received[f] = readback.pointcloud2_to_occupancy(msg, grid, empty_index)

    def on_bev(msg: OccupancyGrid) -> None:
        f = frame_of(msg.header.stamp)
        if f is not None:  # row-major (Y rows of X cells) -> (X, Y)
            run.bev[f] = np.asarray(msg.data, np.int8).reshape(msg.info.height, msg.info.width).T

    def on_markers(msg: MarkerArray) -> None:
        f = frame_of(msg.markers[0].header.stamp) if msg.markers else None
        if f is not None:
            run.marker_frames.add(f)

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(": occupancy"):
                run.diag.clear()
                run.diag.update({kv.key: kv.value for kv in status.values})

    voxels = node.create_subscription(PointCloud2, "/occupancy/voxels", on_voxels, qos)
    node.create_subscription(MarkerArray, "/occupancy/markers", on_markers, qos)
    node.create_subscription(OccupancyGrid, "/occupancy/bev", on_bev, qos)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    group = ProcessGroup()
    try:
        specs = {s.name: s for s in plan(launch_args)}
        print(f"occle-demo: starting occle_node and occle-play (rate {float(launch_args['rate']):.3f}) over DDS",
              flush=True)  # fmt: skip
        node_proc = group.start(specs["occle_node"])
        deadline = time.monotonic() + timeout
        while voxels.get_publisher_count() == 0:  # the node is up (model loaded) and this receiver matched
            if node_proc.poll() is not None:
                raise RuntimeError(f"occle_node exited with status {node_proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"occle_node published no occupancy/voxels within {timeout} s")
            time.sleep(0.05)
        player = group.start(specs["occle-play"])
        while time.monotonic() < deadline:
            if node_proc.poll() is not None:
                raise RuntimeError(f"occle_node exited with status {node_proc.returncode}")
            if player.poll() is not None:
                if player.returncode != 0:
                    raise RuntimeError(f"occle-play exited with status {player.returncode}")
                break
            time.sleep(0.1)
        # let the last frame finish and one more diagnostics message arrive
        settle = time.monotonic() + 30.0
        while time.monotonic() < settle:
            diag = run.diag
            done = int(float(diag.get("processed", 0))) + int(float(diag.get("rejected", 0)))
            dropped = int(float(diag.get("dropped_superseded", 0)))
            received = len(run.received)
            all_in = received >= n_frames or (diag and done + dropped >= n_frames and received >= done)
            if all_in and set(run.received) <= set(run.bev):  # each frame's BEV was sent before its voxels
                break
            time.sleep(0.2)
        time.sleep(1.2)
    finally:
        group.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    if not run.received:
        raise RuntimeError("no occupancy received from occle_node")
    return run


def summary_line(n_received: int, n_frames: int, diag: dict[str, str]) -> str:
    """``frames R/N received (D dropped, J rejected), mean latency L ms (model M ms)`` from the node's diagnostics."""
    return (
        f"frames {n_received}/{n_frames} received ({int(float(diag.get('dropped_superseded', 0)))} dropped, "
        f"{int(float(diag.get('rejected', 0)))} rejected), mean latency {float(diag.get('latency_mean_ms', 'nan')):.0f}"
        f" ms (model {float(diag.get('model_p50_ms', 'nan')):.0f} ms)"
    )
