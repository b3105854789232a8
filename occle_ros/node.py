"""OccleNode: camera + LiDAR in, semantic occupancy out (executable ``occle_node``).

Data flow: the ``image``, ``camera_info`` and ``points`` subscriptions (sensor-data QoS) only hand their
messages to :class:`occle_ros.sync.ApproximateTimeSync`; a matched set goes into a one-slot mailbox that a
worker thread drains. The worker always takes the newest set (an unprocessed older set is replaced and counted
as dropped), so latency stays bounded when the model is slower than the sensors and the executor never waits
for the model. The image and cloud subscriptions are raw: their serialized bytes are read by
:mod:`occle_ros.cdr` without copying pixels or points, and the decoded (N, 4) points are a read-only view of
those bytes when the layout allows (:func:`occle_ros.conversions.pointcloud2_to_xyzi`). Per frame the worker
decodes the messages, runs :class:`occle_core.predictor.Predictor`, and publishes ``occupancy/markers``
(MarkerArray, serialized directly, see :mod:`occle_ros.conversions`) and ``occupancy/voxels`` (PointCloud2) with
the stamp of the input cloud.

Bad input (a broken cloud or image, an invalid camera_info, missing TF, ...) is logged at most once per
``log_throttle`` seconds per reason, counted in ``/diagnostics`` and skipped; the node keeps running.
Start-up problems (checkpoint missing or foreign, bad parameter values, CUDA requested on a CPU host) end the
process with one ``occle_node: error: ...`` line and exit status 1.

Parameters: see ``config/occle.yaml`` (the node's defaults are read from that file).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from occle_core.geometry import Calib, read_kitti_calib
from occle_ros import cdr
from occle_ros import conversions as cv
from occle_ros.sync import ApproximateTimeSync

NODE_NAME = "occle_node"
STREAMS = ("image", "camera_info", "points")
#: raw subscriptions: stream -> (zero-copy reader, message type for rclpy's fallback, rejection reason)
_RAW_STREAMS = {
    0: (cdr.deserialize_image, Image, "image_invalid"),
    2: (cdr.deserialize_pointcloud2, PointCloud2, "cloud_invalid"),
}


class StartupError(RuntimeError):
    """A problem that prevents the node from starting (bad parameter, missing checkpoint...)."""


class FrameRejectedError(Exception):
    """A frame skipped because of bad input; ``reason`` is the diagnostics counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def default_parameters() -> dict[str, Any]:
    """Flat ``{"sync.slop": 0.05, ...}`` defaults from the shipped ``config/occle.yaml``."""
    from occle_core.resources import config_path

    path = config_path("occle.yaml")
    doc = yaml.safe_load(path.read_text()) or {}
    section = doc.get("/**", doc.get(NODE_NAME, {}))
    params = section.get("ros__parameters")
    if not isinstance(params, dict):
        raise StartupError(f"{path} has no '/**: ros__parameters:' mapping")
    return _flatten(params)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> int nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def extrinsics_from_xyz_quaternion(xyz: Sequence[float], quaternion: Sequence[float]) -> np.ndarray:
    """(4, 4) T from a translation and a (w, x, y, z) quaternion (normalised here)."""
    from transforms3d.quaternions import quat2mat

    q = np.asarray(quaternion, np.float64)
    if q.shape != (4,) or not np.isfinite(q).all() or np.linalg.norm(q) < 1e-9:
        raise ValueError(f"extrinsics.quaternion must be 4 finite values (w, x, y, z), not all 0, got {list(q)}")
    t = np.asarray(xyz, np.float64)
    if t.shape != (3,) or not np.isfinite(t).all():
        raise ValueError(f"extrinsics.xyz must be 3 finite values, got {list(t)}")
    T = np.eye(4)
    T[:3, :3] = quat2mat(q / np.linalg.norm(q))
    T[:3, 3] = t
    return T


def extrinsics_from_matrix(values: Sequence[float]) -> np.ndarray:
    """(4, 4) T from 16 row-major values; the rotation must be orthonormal and the last row 0 0 0 1."""
    m = np.asarray(values, np.float64)
    if m.size != 16 or not np.isfinite(m).all():
        raise ValueError(f"extrinsics.matrix must be 16 finite row-major values, got {m.size}")
    T = m.reshape(4, 4)
    R = T[:3, :3]
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(R @ R.T, np.eye(3), atol=1e-3):
        raise ValueError("extrinsics.matrix is not a rigid transform (orthonormal rotation, last row 0 0 0 1)")
    return T


@dataclass
class _Frame:
    image: Image
    info: CameraInfo
    cloud: PointCloud2
    complete: float  # monotonic time the set was complete


class _Mailbox:
    """A one-slot queue: ``put`` replaces an unconsumed item (returns True then)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class OccleNode(Node):
    """ROS 2 node wrapping :class:`occle_core.predictor.Predictor`.

    Args:
        predictor: an already loaded predictor (tests, benchmarks); default: built from the parameters.
        node_name / kwargs: passed to :class:`rclpy.node.Node` (e.g. ``context``, ``parameter_overrides``).

    Raises:
        StartupError: bad parameters, checkpoint problems or an unavailable device (one-line message).
    """

    def __init__(self, predictor: Any = None, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.counters: Counter[str] = Counter()
        self._latency: deque[float] = deque(maxlen=500)  # seconds, set complete -> published
        self._model_ms: deque[float] = deque(maxlen=500)
        self._arrivals: deque[float] = deque(maxlen=2000)  # monotonic times of matched sets
        self._last_log: dict[str, float] = {}
        self._lock = threading.Lock()
        self._seen: Counter[str] = Counter()
        self._started = time.monotonic()
        self._rejected_reported = 0
        self._worker: threading.Thread | None = None
        self._mailbox = _Mailbox()
        try:
            self._setup(predictor)
        except BaseException:
            Node.destroy_node(self)
            raise

    def _setup(self, predictor: Any) -> None:
        try:
            self._read_parameters()
            if self.torch_threads:  # process-wide; 0 keeps torch's default (one thread per core)
                import torch

                torch.set_num_threads(self.torch_threads)
            self.predictor = predictor if predictor is not None else self._load_predictor()
        except StartupError:
            raise
        except (ValueError, OSError, TypeError) as exc:
            raise StartupError(str(exc)) from exc
        self.grid = self.predictor.grid
        self.classes = self.predictor.classes
        try:
            self._publish_lut = cv.publish_mask(
                self.classes, None if self.publish_classes == ["all"] else self.publish_classes
            )
        except ValueError as exc:
            raise StartupError(f"parameter publish_classes: {exc}") from exc
        self._tf_buffer = None
        if self.extrinsics_source == "tf":
            self._setup_tf()

        self._sync = ApproximateTimeSync(3, self.slop_ns, self.queue_size, self.reset_threshold_ns)
        self.pub_markers = self.create_publisher(MarkerArray, "occupancy/markers", QoSProfile(depth=2))
        self.pub_voxels = self.create_publisher(PointCloud2, "occupancy/voxels", QoSProfile(depth=2))
        from diagnostic_msgs.msg import DiagnosticArray

        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        qos = qos_profile_sensor_data  # best effort, keep last 5: matches any publisher
        if self.input_qos == "reliable":  # bag playback: lossless, but needs reliable publishers
            qos = QoSProfile(depth=qos.depth, reliability=ReliabilityPolicy.RELIABLE)
        # image and cloud arrive serialized and are read without copying their pixels / points (occle_ros.cdr)
        self.create_subscription(Image, "image", lambda b: self._on_raw(0, b), qos, raw=True)
        self.create_subscription(CameraInfo, "camera_info", lambda m: self._on_msg(1, m), qos)
        self.create_subscription(PointCloud2, "points", lambda b: self._on_raw(2, b), qos, raw=True)
        self.create_timer(self.diagnostics_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="occle-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: checkpoint {getattr(self.predictor, 'checkpoint_path', self.checkpoint or 'shipped default')}, "
            f"device {getattr(self.predictor, 'device', '?')} ({_torch_threads()} torch threads), "
            f"grid {self.grid.shape}, "
            f"extrinsics from {self.extrinsics_source}"
        )

    # -- parameters -------------------------------------------------------------------------------------------

    def _read_parameters(self) -> None:
        try:
            defaults = default_parameters()
        except FileNotFoundError as exc:
            raise StartupError(f"parameter defaults: {exc}") from exc
        desc = ParameterDescriptor(dynamic_typing=True)
        for name, value in defaults.items():
            self.declare_parameter(name, value, desc)
        p = {name: self.get_parameter(name).value for name in defaults}
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        unknown = sorted(
            n
            for n in overrides
            if n not in defaults and not self.has_parameter(n) and not n.startswith("qos_overrides.")
        )
        if unknown:
            raise StartupError(f"unknown parameter(s) {unknown}; known: {sorted(defaults)}")

        def num(name: str, lo: float | None = None, hi: float | None = None, integer: bool = False) -> float:
            v = p[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise StartupError(f"parameter {name} must be a number, got {v!r}")
            if integer and float(v) != int(v):
                raise StartupError(f"parameter {name} must be an integer, got {v!r}")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
                raise StartupError(f"parameter {name} must be in {rng}, got {v!r}")
            return int(v) if integer else float(v)

        def text(name: str, choices: Sequence[str] | None = None) -> str:
            v = p[name]
            if not isinstance(v, str):
                raise StartupError(f"parameter {name} must be a string, got {v!r}")
            if choices is not None and v not in choices:
                raise StartupError(f"parameter {name} must be one of {list(choices)}, got {v!r}")
            return v

        def floats(name: str) -> list[float]:
            v = p[name]
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, (int, float)) for x in v):
                raise StartupError(f"parameter {name} must be a list of numbers, got {v!r}")
            return [float(x) for x in v]

        def flag(name: str) -> bool:
            if not isinstance(p[name], bool):
                raise StartupError(f"parameter {name} must be true or false, got {p[name]!r}")
            return p[name]

        self.checkpoint = text("checkpoint")
        self.device = text("device")
        self.torch_threads = num("torch_threads", 0, integer=True)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise StartupError(f"parameter device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        classes = p["publish_classes"]
        if isinstance(classes, str):
            classes = [classes]
        if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
            raise StartupError(f"parameter publish_classes must be a list of class names or ['all'], got {classes!r}")
        self.publish_classes = list(classes)
        self.max_range = num("max_range", 0.0)
        self.max_points = num("max_points", 1, integer=True)
        self.intensity_scale = num("intensity_scale")
        self.marker_alpha = num("marker_alpha", 0.0, 1.0)
        self.output_frame = text("output_frame")
        self.input_qos = text("input_qos", ["sensor_data", "reliable"])
        self.publish_markers = flag("publish_markers")
        self.publish_voxels = flag("publish_voxels")
        self.slop_ns = int(num("sync.slop", 0.0) * 1e9)
        self.queue_size = num("sync.queue_size", 1, integer=True)
        self.reset_threshold_ns = int(num("sync.reset_threshold", 1e-3) * 1e9)
        self.extrinsics_source = text("extrinsics.source", ["xyz_quaternion", "matrix", "calib_file", "tf"])
        self.tf_timeout = num("extrinsics.tf_timeout", 0.0)
        self.diagnostics_period = num("diagnostics_period", 0.01)
        self.log_throttle = num("log_throttle", 0.0)
        self.T_cam_lidar: np.ndarray | None = None
        try:
            if self.extrinsics_source == "xyz_quaternion":
                self.T_cam_lidar = extrinsics_from_xyz_quaternion(
                    floats("extrinsics.xyz"), floats("extrinsics.quaternion")
                )
            elif self.extrinsics_source == "matrix":
                self.T_cam_lidar = extrinsics_from_matrix(floats("extrinsics.matrix"))
            elif self.extrinsics_source == "calib_file":
                path = text("extrinsics.calib_file")
                if not path:
                    raise StartupError("parameter extrinsics.calib_file is empty but extrinsics.source is calib_file")
                self.T_cam_lidar = read_kitti_calib(path).T_cam_lidar
        except (ValueError, OSError) as exc:  # OSError: calib_file missing or unreadable
            raise StartupError(f"parameter extrinsics: {exc}") from exc

    def _load_predictor(self) -> Any:
        from occle_core.checkpoint import CheckpointError
        from occle_core.predictor import Predictor

        try:
            return Predictor(self.checkpoint or None, device=self.device)
        except FileNotFoundError as exc:
            hint = "" if self.checkpoint else " (the shipped checkpoint; set the checkpoint parameter)"
            raise StartupError(f"checkpoint: {exc}{hint}") from exc
        except CheckpointError as exc:
            raise StartupError(f"checkpoint: {exc}") from exc
        except (ValueError, RuntimeError) as exc:
            raise StartupError(
                f"predictor (checkpoint {self.checkpoint or 'default'}, device {self.device}): {exc}"
            ) from exc

    def _setup_tf(self) -> None:
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError as exc:
            raise StartupError(
                "parameter extrinsics.source is 'tf' but tf2_ros is not importable here; "
                "use xyz_quaternion, matrix or calib_file"
            ) from exc
        self._tf_buffer = Buffer()
        self._tf_listener = TransformListener(self._tf_buffer, self)

    # -- callbacks --------------------------------------------------------------------------------------------

    def _on_msg(self, stream: int, msg: Any) -> None:
        now = time.monotonic()
        name = STREAMS[stream]
        self._seen[name] += 1
        if stream != 1 and self._seen["camera_info"] == 0 and now - self._started > 2.0:
            self._log_throttled("camera_info_missing", "no camera_info received yet; waiting (frames need P)")
        matched = self._sync.add(stream, stamp_ns(msg.header.stamp), msg)
        for image, info, cloud in matched:
            self._arrivals.append(now)
            if self._mailbox.put(_Frame(image, info, cloud, now)):
                with self._lock:
                    self.counters["dropped_superseded"] += 1

    def _on_raw(self, stream: int, data: bytes) -> None:
        """Callback of the raw ``image`` / ``points`` subscriptions: serialized bytes -> :class:`occle_ros.cdr.RawImage`
        / :class:`~occle_ros.cdr.RawPointCloud2` (pixels / points not copied) -> :meth:`_on_msg`. Undecodable
        bytes are counted (``rejected.image_invalid`` / ``rejected.cloud_invalid``), logged (throttled) and
        dropped."""
        read, msg_type, reason = _RAW_STREAMS[stream]
        try:
            try:
                msg: Any = read(data)
            except cdr.UnsupportedEncapsulationError as exc:  # not plain CDR: let rclpy read it (with copies)
                try:
                    msg = deserialize_message(data, msg_type)
                except Exception as inner:  # rclpy raises several types for bytes it cannot read
                    raise cv.ConversionError(f"{exc}; rclpy could not read it either: {inner}") from inner
        except cv.ConversionError as exc:
            self._seen[STREAMS[stream]] += 1
            self._reject(reason, f"{STREAMS[stream]} message skipped ({reason}): {exc}")
            return
        self._on_msg(stream, msg)

    def _reject(self, reason: str, text: str) -> None:
        """Count a skipped message or frame (``rejected`` and ``rejected.<reason>``) and log ``text`` (throttled)."""
        with self._lock:
            self.counters["rejected"] += 1
            self.counters[f"rejected.{reason}"] += 1
        self._log_throttled(reason, text)

    def _log_throttled(self, reason: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e18) >= self.log_throttle:
            self._last_log[reason] = now
            self.get_logger().warning(text)

    # -- worker -----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._mailbox.closed:
            frame = self._mailbox.take(timeout=0.5)
            if frame is None:
                continue
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

    def decode(self, image: Image, info: CameraInfo, cloud: PointCloud2) -> tuple[np.ndarray, np.ndarray, Calib]:
        """Messages -> (rgb (H, W, 3) uint8, points (N, 4) float32, calib); raises :class:`FrameRejectedError`."""
        try:
            points = cv.pointcloud2_to_xyzi(cloud, intensity_scale=self.intensity_scale)
        except cv.ConversionError as exc:
            raise FrameRejectedError("cloud_invalid", str(exc)) from exc
        if self.max_range > 0:
            points = points[np.einsum("ij,ij->i", points[:, :3], points[:, :3]) <= self.max_range**2]
        if points.shape[0] == 0:
            raise FrameRejectedError("cloud_empty", "PointCloud2 has no finite points (in range)")
        if points.shape[0] > self.max_points:
            rng = np.random.default_rng(stamp_ns(cloud.header.stamp) & 0xFFFFFFFF)
            keep = np.sort(rng.choice(points.shape[0], self.max_points, replace=False))
            points = points[keep]
            with self._lock:
                self.counters["clouds_subsampled"] += 1
        try:
            rgb = cv.image_to_rgb(image)
        except cv.ConversionError as exc:
            raise FrameRejectedError("image_invalid", str(exc)) from exc
        try:
            P = cv.camera_info_projection(info)
        except cv.ConversionError as exc:
            raise FrameRejectedError("camera_info_invalid", str(exc)) from exc
        h, w = rgb.shape[:2]
        if (info.height, info.width) != (0, 0) and (info.height, info.width) != (h, w):
            raise FrameRejectedError(
                "image_size_mismatch",
                f"image is {w}x{h} but camera_info is {info.width}x{info.height} (expected the same size)",
            )
        T = self.T_cam_lidar if self.T_cam_lidar is not None else self._lookup_tf(image, cloud)
        try:
            calib = Calib(P, T, (h, w))
        except ValueError as exc:
            raise FrameRejectedError("calib_invalid", str(exc)) from exc
        return rgb, points, calib

    def _lookup_tf(self, image: Image, cloud: PointCloud2) -> np.ndarray:
        from rclpy.duration import Duration
        from rclpy.time import Time
        from transforms3d.quaternions import quat2mat

        try:
            tf = self._tf_buffer.lookup_transform(
                image.header.frame_id,
                cloud.header.frame_id,
                Time.from_msg(cloud.header.stamp),
                timeout=Duration(seconds=self.tf_timeout),
            )
        except Exception as exc:  # tf2 raises several exception types
            raise FrameRejectedError(
                "tf_unavailable", f"no transform {image.header.frame_id} <- {cloud.header.frame_id}: {exc}"
            ) from exc
        r, t = tf.transform.rotation, tf.transform.translation
        T = np.eye(4)
        T[:3, :3] = quat2mat([r.w, r.x, r.y, r.z])
        T[:3, 3] = [t.x, t.y, t.z]
        return T

    def process(self, image: Image, info: CameraInfo, cloud: PointCloud2, complete: float | None = None) -> np.ndarray:
        """Run one synchronised frame and publish its results; returns the (X, Y, Z) uint8 labels."""
        complete = time.monotonic() if complete is None else complete
        rgb, points, calib = self.decode(image, info, cloud)
        t0 = time.perf_counter()
        try:
            labels = self.predictor.predict(rgb, points, calib)
        except ValueError as exc:
            raise FrameRejectedError("predictor_rejected", str(exc)) from exc
        model_ms = (time.perf_counter() - t0) * 1e3
        frame = self.output_frame or cloud.header.frame_id
        stamp = cloud.header.stamp
        voxels = cv.occupied_voxels(labels, self.grid, self._publish_lut, self.classes.empty_index)
        if self.publish_markers:
            self.pub_markers.publish(
                cv.serialize_occupancy_markers(
                    labels, self.grid, self.classes, frame, stamp, self.marker_alpha, voxels=voxels
                )
            )
        if self.publish_voxels:
            self.pub_voxels.publish(
                cv.occupancy_to_pointcloud2(labels, self.grid, self.classes, frame, stamp, voxels=voxels)
            )
        with self._lock:
            self.counters["processed"] += 1
            self._latency.append(time.monotonic() - complete)
            self._model_ms.append(model_ms)
        return labels

    # -- diagnostics ------------------------------------------------------------------------------------------

    def statistics(self) -> dict[str, float]:
        """Counters and timing summary (what /diagnostics reports)."""
        with self._lock:
            lat = np.asarray(self._latency, np.float64) * 1e3
            model = np.asarray(self._model_ms, np.float64)
            stats: dict[str, float] = dict(self.counters)
        now = time.monotonic()
        window = 5.0
        recent = sum(1 for t in self._arrivals if now - t <= window)
        sync = self._sync.counters
        stats.update(
            {
                "latency_mean_ms": float(lat.mean()) if lat.size else float("nan"),
                "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
                "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else float("nan"),
                "model_p50_ms": float(np.percentile(model, 50)) if model.size else float("nan"),
                "input_rate_hz": recent / min(window, max(now - self._started, 1e-3)),
                "sync_matched": sync["matched"],
                "sync_dropped": self._sync.dropped,
                **{f"sync_{k}": v for k, v in sync.items() if k not in ("matched", "received")},
                **{f"received_{k}": v for k, v in self._seen.items()},
            }
        )
        stats.setdefault("processed", 0)
        stats.setdefault("rejected", 0)
        stats.setdefault("dropped_superseded", 0)
        return stats

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        s = self.statistics()
        level, message = DiagnosticStatus.OK, "running"
        if self._seen["camera_info"] == 0 and (self._seen["image"] or self._seen["points"]):
            level, message = DiagnosticStatus.WARN, "waiting for camera_info"
        elif s["rejected"] != self._rejected_reported:
            level, message = DiagnosticStatus.WARN, f"{int(s['rejected'])} frames rejected so far"
        self._rejected_reported = s["rejected"]
        status = DiagnosticStatus(
            level=level, name=f"{self.get_name()}: occupancy", message=message, hardware_id="occle"
        )
        status.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v))
                         for k, v in sorted(s.items())]  # fmt: skip
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

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
