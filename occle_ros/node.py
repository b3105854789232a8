"""OccleNode: camera + LiDAR in, semantic occupancy out (executable ``occle_node``).

Data flow: the ``image``, ``camera_info`` and ``points`` subscriptions only hand their messages to
:class:`occle_ros.sync.ApproximateTimeSync`; a matched set goes into a one-slot :class:`~occle_ros.sync.Mailbox`
that a worker thread drains. The worker always takes the newest set (an unprocessed older set is replaced and
counted as dropped), so latency stays bounded when the model is slower than the sensors and the executor never
waits for the model. The image and cloud subscriptions are raw: their serialized bytes are read by
:mod:`occle_ros.msgs.cdr` without copying pixels or points. Per frame the worker runs the steps of
:mod:`occle_ros.pipeline` and publishes ``occupancy/markers`` (MarkerArray, serialized directly) and
``occupancy/voxels`` (PointCloud2) with the stamp of the input cloud.

Bad input (a broken cloud or image, an invalid camera_info, missing TF, ...) is logged at most once per
``log_throttle`` seconds per reason, counted in ``/diagnostics`` and skipped; the node keeps running.
Start-up problems (checkpoint missing or foreign, bad parameter values, CUDA requested on a CPU host) end the
process with one ``occle_node: error: ...`` line and exit status 1.

Parameters: :mod:`occle_ros.params` (defaults and documentation in ``config/occle.yaml``); ``marker_alpha``,
``publish_classes``, ``max_range`` and ``max_points`` may be changed while the node runs (next frame).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from occle_core.geometry import Calib
from occle_ros import extrinsics, pipeline
from occle_ros.diagnostics import FrameStats, diagnostic_array
from occle_ros.msgs.base import stamp_ns
from occle_ros.msgs.markers import serialize_occupancy_markers
from occle_ros.msgs.voxels import occupancy_to_pointcloud2, occupied_voxels, publish_mask
from occle_ros.params import NODE_NAME, RuntimeParams, StartupError, declare, runtime_update
from occle_ros.pipeline import FrameRejectedError, OccupancyPredictor, Stream
from occle_ros.sync import ApproximateTimeSync, Mailbox

__all__ = ["NODE_NAME", "OccleNode", "StartupError", "Stream", "main"]


@dataclass(frozen=True)
class _Outputs:
    """What the worker publishes, from the runtime parameters (one immutable snapshot, swapped whole)."""

    params: RuntimeParams
    lut: np.ndarray  # (256,) bool: labels to publish


@dataclass
class _Frame:
    image: Image
    info: CameraInfo
    cloud: PointCloud2
    complete: float  # monotonic time the set was complete


class OccleNode(Node):
    """ROS 2 node wrapping an :class:`~occle_ros.pipeline.OccupancyPredictor`.

    Args:
        predictor: an already loaded predictor (tests, benchmarks); default: built from the parameters.
        node_name / kwargs: passed to :class:`rclpy.node.Node` (e.g. ``context``, ``parameter_overrides``).

    Raises:
        StartupError: bad parameters, checkpoint problems or an unavailable device (one-line message).
    """

    def __init__(self, predictor: OccupancyPredictor | None = None, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.stats = FrameStats()
        self._last_log: dict[str, float] = {}
        self._rejected_reported = 0
        self._worker: threading.Thread | None = None
        self._mailbox: Mailbox[_Frame] = Mailbox()
        try:
            self._setup(predictor)
        except BaseException:
            Node.destroy_node(self)
            raise

    def _setup(self, predictor: OccupancyPredictor | None) -> None:
        self.settings, runtime = declare(self)
        if self.settings.torch_threads:  # process-wide; 0 keeps torch's default (one thread per core)
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        self.predictor = predictor if predictor is not None else self._load_predictor()
        self.grid, self.classes = self.predictor.grid, self.predictor.classes
        try:
            self._outputs = self._make_outputs(runtime)
        except ValueError as exc:
            raise StartupError(f"parameter publish_classes: {exc}") from exc
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.extrinsics = extrinsics.resolve(
            self.settings.extrinsics, self, lambda text: self._log_throttled("tf_fallback", text)
        )
        s = self.settings
        self._sync = ApproximateTimeSync(len(Stream), s.slop_ns, s.queue_size, s.reset_threshold_ns)
        self.pub_markers = self.create_publisher(MarkerArray, "occupancy/markers", QoSProfile(depth=2))
        self.pub_voxels = self.create_publisher(PointCloud2, "occupancy/voxels", QoSProfile(depth=2))
        from diagnostic_msgs.msg import DiagnosticArray

        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # sensor_data: best effort, keep last 5, matches any publisher; reliable (bag playback): lossless, but only
        # reliable publishers connect
        sensor = qos_profile_sensor_data
        reliability = ReliabilityPolicy.RELIABLE if s.input_qos == "reliable" else sensor.reliability
        overridable = QoSOverridingOptions.with_default_policies()  # qos_overrides.<topic>.subscription.*
        # image and cloud arrive serialized and are read without copying their pixels / points
        for stream, msg_type, raw in ((Stream.IMAGE, Image, True), (Stream.CAMERA_INFO, CameraInfo, False),
                                      (Stream.POINTS, PointCloud2, True)):  # fmt: skip
            callback = (lambda b, st=stream: self._on_raw(st, b)) if raw else (lambda m, st=stream: self._on_msg(st, m))
            # a new profile per subscription: rclpy writes the topic's QoS overrides into the profile it is given
            qos = QoSProfile(history=sensor.history, depth=sensor.depth, reliability=reliability,
                             durability=sensor.durability)  # fmt: skip
            self.create_subscription(msg_type, stream.topic, callback, qos, raw=raw, qos_overriding_options=overridable)
        self.create_timer(s.diagnostics_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="occle-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: checkpoint {getattr(self.predictor, 'checkpoint_path', s.checkpoint or 'shipped default')}, "
            f"device {getattr(self.predictor, 'device', '?')} ({_torch_threads()} torch threads), "
            f"grid {self.grid.shape}, extrinsics from {self.extrinsics.description}"
        )

    def _load_predictor(self) -> OccupancyPredictor:
        from occle_core.checkpoint import CheckpointError
        from occle_core.predictor import Predictor

        checkpoint, device = self.settings.checkpoint, self.settings.device
        try:
            return Predictor(checkpoint or None, device=device)
        except FileNotFoundError as exc:
            hint = "" if checkpoint else " (the shipped checkpoint; set the checkpoint parameter)"
            raise StartupError(f"checkpoint: {exc}{hint}") from exc
        except CheckpointError as exc:
            raise StartupError(f"checkpoint: {exc}") from exc
        except (ValueError, RuntimeError, OSError) as exc:
            raise StartupError(f"predictor (checkpoint {checkpoint or 'default'}, device {device}): {exc}") from exc

    # -- parameters changed while running --------------------------------------------------------------------

    def _make_outputs(self, params: RuntimeParams) -> _Outputs:
        """Raises ValueError for an unknown class name."""
        classes = None if params.publish_classes == ("all",) else params.publish_classes
        return _Outputs(params, publish_mask(self.classes, classes))

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Validate a ``ros2 param set`` of the runtime parameters (types, ranges and read-only were checked by
        rclpy from the descriptors); a valid change is used from the next frame on."""
        try:
            outputs = self._make_outputs(runtime_update(self._outputs.params, changes))
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._outputs = outputs
        return SetParametersResult(successful=True)

    # -- callbacks --------------------------------------------------------------------------------------------

    def _on_msg(self, stream: Stream, msg: Any) -> None:
        now = time.monotonic()
        self.stats.received[stream.topic] += 1
        received = self.stats.received
        if stream is not Stream.CAMERA_INFO and received["camera_info"] == 0 and now - self.stats.started > 2.0:
            self._log_throttled("camera_info_missing", "no camera_info received yet; waiting (frames need P)")
        for image, info, cloud in self._sync.add(stream.value, stamp_ns(msg.header.stamp), msg):
            self.stats.arrival(now)
            if self._mailbox.put(_Frame(image, info, cloud, now)):
                self.stats.count("dropped_superseded")

    def _on_raw(self, stream: Stream, data: bytes) -> None:
        """Callback of the raw ``image`` / ``points`` subscriptions (:func:`occle_ros.pipeline.read_raw`);
        undecodable bytes are counted (``rejected.image_invalid`` / ``rejected.cloud_invalid``), logged
        (throttled) and dropped."""
        try:
            msg = pipeline.read_raw(stream, data)
        except FrameRejectedError as exc:
            self.stats.received[stream.topic] += 1
            self._reject(exc.reason, str(exc))
            return
        self._on_msg(stream, msg)

    def _reject(self, reason: str, text: str) -> None:
        """Count a skipped message or frame (``rejected`` and ``rejected.<reason>``) and log ``text`` (throttled)."""
        self.stats.count("rejected")
        self.stats.count(f"rejected.{reason}")
        self._log_throttled(reason, text)

    def _log_throttled(self, reason: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e18) >= self.settings.log_throttle:
            self._last_log[reason] = now
            self.get_logger().warning(text)

    # -- worker -----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._mailbox.closed:
            frame = self._mailbox.take(timeout=0.5)
            if frame is not None:
                self.handle_frame(frame.image, frame.info, frame.cloud, frame.complete)

    def handle_frame(
        self, image: Image, info: CameraInfo, cloud: PointCloud2, complete: float | None = None
    ) -> np.ndarray | None:
        """What the worker does with one synchronised set: :meth:`process` it, or count and log (throttled) why it
        was skipped. Never raises for bad input or a failing model; returns the labels, or None when skipped."""
        try:
            return self.process(image, info, cloud, complete)
        except FrameRejectedError as exc:
            self._reject(exc.reason, f"frame skipped ({exc.reason}): {exc}")
        except Exception as exc:  # keep the node alive whatever the model does
            self._reject("inference_error", f"frame skipped (inference_error): {type(exc).__name__}: {exc}")
        return None

    def decode(
        self, image: Image, info: CameraInfo, cloud: PointCloud2, params: RuntimeParams | None = None
    ) -> tuple[np.ndarray, np.ndarray, Calib]:
        """Messages -> (rgb (H, W, 3) uint8, points (N, 4) float32, calib) under ``params`` (default: the current
        runtime parameters); raises :class:`~occle_ros.pipeline.FrameRejectedError`."""
        params = params or self._outputs.params
        points = pipeline.cloud_points(cloud, self.settings.intensity_scale)
        seed = stamp_ns(cloud.header.stamp) & 0xFFFFFFFF
        points, subsampled = pipeline.limit_points(points, params.max_range, params.max_points, seed)
        if subsampled:
            self.stats.count("clouds_subsampled")
        rgb = pipeline.image_rgb(image)
        try:
            T = self.extrinsics.transform(image.header.frame_id, cloud.header.frame_id)
        except LookupError as exc:
            raise FrameRejectedError("tf_unavailable", str(exc)) from exc
        return rgb, points, pipeline.frame_calib(info, rgb.shape[:2], T)

    def process(self, image: Image, info: CameraInfo, cloud: PointCloud2, complete: float | None = None) -> np.ndarray:
        """Run one synchronised frame and publish its results; returns the (X, Y, Z) uint8 labels."""
        complete = time.monotonic() if complete is None else complete
        outputs = self._outputs  # one snapshot for the whole frame
        rgb, points, calib = self.decode(image, info, cloud, outputs.params)
        t0 = time.perf_counter()
        labels = pipeline.predict(self.predictor, rgb, points, calib)
        model_ms = (time.perf_counter() - t0) * 1e3
        frame = self.settings.output_frame or cloud.header.frame_id
        stamp = cloud.header.stamp
        voxels = occupied_voxels(labels, self.grid, outputs.lut, self.classes.empty_index)
        if self.settings.publish_markers:
            alpha = outputs.params.marker_alpha
            data = serialize_occupancy_markers(labels, self.grid, self.classes, frame, stamp, alpha, voxels=voxels)
            self.pub_markers.publish(data)
        if self.settings.publish_voxels:
            self.pub_voxels.publish(
                occupancy_to_pointcloud2(labels, self.grid, self.classes, frame, stamp, voxels=voxels)
            )
        self.stats.frame_done(time.monotonic() - complete, model_ms)
        return labels

    # -- diagnostics ------------------------------------------------------------------------------------------

    def statistics(self) -> dict[str, float]:
        """Counters and timing summary (what /diagnostics reports)."""
        return self.stats.summary(self._sync.counters, self._sync.dropped)

    def _publish_diagnostics(self) -> None:
        s = self.statistics()
        seen = self.stats.received
        waiting = seen["camera_info"] == 0 and bool(seen["image"] or seen["points"])
        new_rejects = s["rejected"] != self._rejected_reported
        self._rejected_reported = s["rejected"]
        stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(diagnostic_array(f"{self.get_name()}: occupancy", s, waiting, new_rejects, stamp))

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        self._mailbox.close()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=10.0)
        super().destroy_node()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``occle_node``: ``occle_node [--ros-args ...]``; returns the exit status."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from occle_ros.dds import apply_large_data_profile

    args = list(sys.argv[1:] if argv is None else argv)
    apply_large_data_profile()  # before the DDS participant exists; a user's own profile is kept
    rclpy.init(args=[NODE_NAME, *args])
    try:
        node = OccleNode()
    except StartupError as exc:
        one_line = " ".join(str(exc).split())  # multi-line causes (e.g. torch's state_dict report) on one line
        print(f"{NODE_NAME}: error: {one_line}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
