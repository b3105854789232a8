"""OccleNode: camera + LiDAR in, semantic occupancy out (executable ``occle_node``).

Data flow: the subscriptions (per camera an image, raw or JPEG / PNG compressed, and its camera_info; the LiDAR
cloud) only hand their messages to :class:`occle_ros.sync.ApproximateTimeSync`; a matched set (every camera's
image and camera_info and the cloud within ``sync.slop``) goes into a one-slot :class:`~occle_ros.sync.Mailbox`
that a worker thread drains. The worker always takes the newest set (an unprocessed older set is replaced and
counted as dropped), so latency stays bounded when the model is slower than the sensors and the executor never
waits for the model. Raw image and cloud subscriptions get serialized bytes, read by :mod:`occle_ros.msgs.cdr`
without copying pixels or points. Per frame the worker runs the steps of :mod:`occle_ros.pipeline` (points
moved into the checkpoint's grid frame, each camera's pose from :mod:`occle_ros.extrinsics`) and publishes, in
the grid frame with the cloud's stamp, what :mod:`occle_ros.outputs` builds: ``occupancy/voxels``
(PointCloud2), ``occupancy/markers`` (MarkerArray, optional), ``occupancy/bev`` (OccupancyGrid) and
``occupancy/bev_semantic`` (Image).

Bad input (a broken cloud or image, an invalid camera_info, missing TF, ...) is logged at most once per
``log_throttle`` seconds per reason, counted in ``/diagnostics`` and skipped; the node keeps running.
Start-up problems (checkpoint missing or foreign, bad parameter values, CUDA requested on a CPU host) end the
process with one ``occle_node: error: ...`` line and exit status 1.

Parameters: :mod:`occle_ros.params` (defaults and documentation in ``config/occle.yaml``); the runtime ones
(``publish_region``, ``publish_classes``, ``markers.max_voxels``, ...) may be changed while it runs (next frame).
Diagnostics: :mod:`occle_ros.diagnostics`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from occle_core.geometry import Calib
from occle_ros import extrinsics, pipeline
from occle_ros.diagnostics import FrameStats, make_updater, occupancy_status
from occle_ros.msgs.base import stamp_ns
from occle_ros.msgs.voxels import publish_mask
from occle_ros.outputs import FrameOutputs
from occle_ros.params import NODE_NAME, RuntimeParams, StartupError, declare, match_cameras, runtime_update
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
    messages: tuple[Any, ...]  # image_0, info_0, ..., image_{N-1}, info_{N-1}, cloud
    complete: float  # monotonic time the set was complete


@dataclass
class Decoded:
    """One frame ready for the model: views (image, Calib) per camera, points in the LiDAR and grid frames."""

    views: list[tuple[np.ndarray, Calib]]
    points_lidar: np.ndarray  # (N, 4) float32
    points: np.ndarray  # (N, 4) float32, grid frame
    T_grid_lidar: np.ndarray  # (4, 4)
    lidar_frame: str
    grid_frame: str


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
        self._warned: set[str] = set()
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
        s = self.settings
        if s.torch_threads:  # process-wide; 0 keeps torch's default (one thread per core)
            import torch

            torch.set_num_threads(s.torch_threads)
        self.predictor = predictor if predictor is not None else self._load_predictor()
        try:
            pipeline.require_single_frame(self.predictor)
        except ValueError as exc:
            raise StartupError(f"checkpoint: {exc}") from exc
        self.grid, self.classes = self.predictor.grid, self.predictor.classes
        self.cameras = self._match_cameras()
        self.grid_kind = getattr(self.predictor, "grid_frame", "lidar")  # predictors before the multi-camera API
        try:
            self._outputs = self._make_outputs(runtime)
        except ValueError as exc:
            raise StartupError(f"parameter publish_classes: {exc}") from exc
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.poses = extrinsics.resolve(s.extrinsics, len(self.cameras), self.grid_kind, self,
                                        lambda text: self._log_throttled("tf_fallback", text))  # fmt: skip
        if isinstance(self.poses, extrinsics.TfPoses):
            self._subscribe_tf_static()
        self.builder = FrameOutputs(self.grid, self.classes, s.region, self._warn_once)
        n = len(self.cameras)
        self._sync = ApproximateTimeSync(2 * n + 1, s.slop_ns, s.queue_size, s.reset_threshold_ns)
        self._topics = [t for c in self.cameras for t in (c.image_topic, c.info_topic)] + [s.lidar_topic]
        self.pub_voxels = self.create_publisher(PointCloud2, "occupancy/voxels", QoSProfile(depth=2))
        self.pub_markers = self.create_publisher(MarkerArray, "occupancy/markers", QoSProfile(depth=2))
        self.pub_bev = self.create_publisher(OccupancyGrid, "occupancy/bev", QoSProfile(depth=2))
        self.pub_bev_semantic = self.create_publisher(Image, "occupancy/bev_semantic", QoSProfile(depth=2))
        self._subscribe_inputs()
        self._setup_diagnostics()
        self._worker = threading.Thread(target=self._work, name="occle-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: checkpoint {getattr(self.predictor, 'checkpoint_path', s.checkpoint or 'shipped default')}, "
            f"device {getattr(self.predictor, 'device', '?')} ({_torch_threads()} torch threads), "
            f"grid {self.grid.shape} in the {self.grid_kind} frame, cameras {[c.name for c in self.cameras]}, "
            f"poses from {self.poses.description}"
        )

    def _load_predictor(self) -> OccupancyPredictor:
        from occle_core.checkpoint import CheckpointError
        from occle_core.predictor import Predictor

        checkpoint, device = self.settings.checkpoint, self.settings.device
        gate = self.settings.ground_gate
        try:
            return Predictor(checkpoint or None, device=device, ground_gate=None if gate < 0 else gate)
        except FileNotFoundError as exc:
            hint = "" if checkpoint else " (the shipped checkpoint; set the checkpoint parameter)"
            raise StartupError(f"checkpoint: {exc}{hint}") from exc
        except CheckpointError as exc:
            raise StartupError(f"checkpoint: {exc}") from exc
        except (ValueError, RuntimeError, OSError) as exc:
            raise StartupError(f"predictor (checkpoint {checkpoint or 'default'}, device {device}): {exc}") from exc

    def _match_cameras(self) -> tuple:
        """The cameras in the checkpoint's order (:func:`occle_ros.params.match_cameras`)."""
        return match_cameras(self.settings.cameras, list(getattr(self.predictor, "camera_names", None) or []))

    # -- subscriptions ----------------------------------------------------------------------------------------

    def _subscribe_inputs(self) -> None:
        s = self.settings
        # sensor_data: best effort, keep last 5, matches any publisher; reliable (bag playback): lossless, but only
        # reliable publishers connect
        sensor = qos_profile_sensor_data
        reliability = ReliabilityPolicy.RELIABLE if s.input_qos == "reliable" else sensor.reliability
        overridable = QoSOverridingOptions.with_default_policies()  # qos_overrides.<topic>.subscription.*

        def qos() -> QoSProfile:  # a new profile each: rclpy writes a topic's QoS overrides into the one it gets
            return QoSProfile(history=sensor.history, depth=sensor.depth, reliability=reliability,
                              durability=sensor.durability)  # fmt: skip

        for i, cam in enumerate(self.cameras):
            if cam.transport == "compressed":  # JPEG / PNG bytes are small: rclpy's message is fine
                self.create_subscription(CompressedImage, cam.image_topic,
                                         lambda m, c=i: self._on_msg(Stream.IMAGE, m, c), qos(),
                                         qos_overriding_options=overridable)  # fmt: skip
            else:  # pixels read without copying
                self.create_subscription(Image, cam.image_topic, lambda b, c=i: self._on_raw(Stream.IMAGE, b, c),
                                         qos(), raw=True, qos_overriding_options=overridable)  # fmt: skip
            self.create_subscription(CameraInfo, cam.info_topic,
                                     lambda m, c=i: self._on_msg(Stream.CAMERA_INFO, m, c), qos(),
                                     qos_overriding_options=overridable)  # fmt: skip
        self.create_subscription(PointCloud2, s.lidar_topic, lambda b: self._on_raw(Stream.POINTS, b), qos(),
                                 raw=True, qos_overriding_options=overridable)  # fmt: skip

    def _subscribe_tf_static(self) -> None:
        """/tf_static (latched, as tf2_ros's static broadcaster publishes it): a change clears the pose cache."""
        from tf2_msgs.msg import TFMessage

        latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)  # fmt: skip
        self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, latched)

    def _on_tf_static(self, _msg: Any) -> None:
        self.poses.invalidate()

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

    def _index(self, stream: Stream, camera: int) -> int:
        """The synchroniser stream of an input: image / camera_info of camera i at 2i / 2i + 1, the cloud last."""
        return 2 * len(self.cameras) if stream is Stream.POINTS else 2 * camera + (stream is Stream.CAMERA_INFO)

    def _on_msg(self, stream: Stream, msg: Any, camera: int = 0) -> None:
        now = time.monotonic()
        index = self._index(stream, camera)
        self.stats.received[self._topics[index]] += 1
        self._ticks[index].tick()
        missing = [self._topics[2 * i + 1] for i in range(len(self.cameras))
                   if self.stats.received[self._topics[2 * i + 1]] == 0]  # fmt: skip
        again = self.stats.received[self._topics[index]] > 1  # a bag's first image may come just before its info
        if stream is not Stream.CAMERA_INFO and missing and again and now - self.stats.started > 2.0:
            self._log_throttled("camera_info_missing", f"no camera_info received yet on {missing}; waiting (frames "
                                                       "need P)")  # fmt: skip
        for messages in self._sync.add(index, stamp_ns(msg.header.stamp), msg):
            self.stats.arrival(now)
            if self._mailbox.put(_Frame(messages, now)):
                self.stats.count("dropped_superseded")

    def _on_raw(self, stream: Stream, data: bytes, camera: int = 0) -> None:
        """Callback of the raw image / cloud subscriptions (:func:`occle_ros.pipeline.read_raw`); undecodable
        bytes are counted (``rejected.image_invalid`` / ``rejected.cloud_invalid``), logged (throttled), dropped."""
        try:
            msg = pipeline.read_raw(stream, data)
        except FrameRejectedError as exc:
            self.stats.received[self._topics[self._index(stream, camera)]] += 1
            self._reject(exc.reason, str(exc))
            return
        self._on_msg(stream, msg, camera)

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

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.get_logger().warning(text)

    # -- worker -----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._mailbox.closed:
            frame = self._mailbox.take(timeout=0.5)
            if frame is not None:
                self.handle_frame(*frame.messages, complete=frame.complete)

    def handle_frame(self, *messages: Any, complete: float | None = None) -> np.ndarray | None:
        """What the worker does with one synchronised set (image_0, info_0, ..., cloud): :meth:`process` it, or
        count and log (throttled) why it was skipped. Never raises for bad input or a failing model; returns the
        labels, or None when skipped."""
        try:
            return self.process(*messages, complete=complete)
        except FrameRejectedError as exc:
            self._reject(exc.reason, f"frame skipped ({exc.reason}): {exc}")
        except Exception as exc:  # keep the node alive whatever the model does
            self._reject("inference_error", f"frame skipped (inference_error): {type(exc).__name__}: {exc}")
        return None

    def decode(self, *messages: Any, params: RuntimeParams | None = None) -> Decoded:
        """Messages (image_0, info_0, ..., cloud) -> the frame's views and points under ``params`` (default: the
        current runtime parameters); raises :class:`~occle_ros.pipeline.FrameRejectedError`."""
        params = params or self._outputs.params
        cloud = messages[-1]
        points = pipeline.cloud_points(cloud, self.settings.intensity_scale)
        seed = stamp_ns(cloud.header.stamp) & 0xFFFFFFFF
        points, subsampled = pipeline.limit_points(points, params.max_range, params.max_points, seed)
        if subsampled:
            self.stats.count("clouds_subsampled")
        ext = self.settings.extrinsics
        lidar_frame = ext.lidar_frame or cloud.header.frame_id
        grid_frame = ext.grid_frame or (lidar_frame if self.grid_kind == "lidar" else extrinsics.EGO_FRAME)
        images = [pipeline.image_rgb(m) for m in messages[0:-1:2]]
        frames = [c.frame or m.header.frame_id for c, m in zip(self.cameras, messages[0:-1:2])]
        try:
            poses = self.poses.poses(frames, lidar_frame, grid_frame)
        except LookupError as exc:
            raise FrameRejectedError("tf_unavailable", str(exc)) from exc
        views = []
        for i, (rgb, info) in enumerate(zip(images, messages[1:-1:2])):
            warning = pipeline.distortion_warning(info, self.cameras[i].image_topic)
            if warning and self.settings.warn_distortion:
                self._warn_once(f"distortion.{i}", warning)
            views.append((rgb, pipeline.frame_calib(info, rgb.shape[:2], poses.T_cam_grid[i], poses.optical_frames)))
        points_grid = pipeline.to_grid(points, poses.T_grid_lidar)
        return Decoded(views, points, points_grid, poses.T_grid_lidar, lidar_frame, grid_frame)

    def process(self, *messages: Any, complete: float | None = None) -> np.ndarray:
        """Run one synchronised frame and publish its results; returns the (X, Y, Z) uint8 labels."""
        complete = time.monotonic() if complete is None else complete
        outputs = self._outputs  # one snapshot for the whole frame
        frame = self.decode(*messages, params=outputs.params)
        t0 = time.perf_counter()
        labels = pipeline.predict(self.predictor, frame.views, frame.points)
        model_ms = (time.perf_counter() - t0) * 1e3
        s = self.settings
        out = self.builder.build(labels, outputs.lut, outputs.params, [c for _, c in frame.views], frame.points_lidar,
                                 frame.T_grid_lidar, frame.grid_frame, messages[-1].header.stamp, time.monotonic(),
                                 (s.publish_voxels, s.publish_markers, s.publish_bev))  # fmt: skip
        # the voxel cloud last: a reader waiting for it finds the frame's other messages sent (topics are not ordered)
        for pub, msg in ((self.pub_markers, out.markers), (self.pub_bev, out.bev),
                         (self.pub_bev_semantic, out.bev_semantic), (self.pub_voxels, out.voxels)):  # fmt: skip
            if msg is not None:
                pub.publish(msg)
        self.stats.frame_done(time.monotonic() - complete, model_ms)
        return labels

    # -- diagnostics ------------------------------------------------------------------------------------------

    def _setup_diagnostics(self) -> None:
        s = self.settings
        self.updater, frequency = make_updater(self, s.diagnostics_period)
        self.updater.setHardwareID("occle")
        self.updater.add("occupancy", self._occupancy_status)
        self._ticks = [frequency(s.min_rate) for _ in self._topics]
        for i, topic in enumerate(self._topics):
            self.updater.add(f"{topic} topic status", lambda stat, i=i: self._topic_status(stat, i))

    def _occupancy_status(self, stat: Any) -> Any:
        missing = ", ".join(t for t in self._topics if self.stats.received[t] == 0)
        return occupancy_status(stat, self.statistics(), self.stats, self.settings.stale_after, missing)

    def _topic_status(self, stat: Any, index: int) -> Any:
        stat = self._ticks[index].run(stat)
        stat.add("Dropped by the synchroniser", str(self._sync.dropped_per_stream()[index]))
        return stat

    def statistics(self) -> dict[str, float]:
        """Counters and timing summary (what /diagnostics reports)."""
        return self.stats.summary(self._sync.counters, self._sync.dropped)

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
