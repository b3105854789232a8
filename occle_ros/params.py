"""The parameters of ``occle_node``: each declared once, typed, described, range-checked by rclpy.

Defaults come from one place, the shipped ``config/occle.yaml`` (which documents them); :data:`SPECS` adds what a
YAML file cannot say (description, range, choices, whether the value may change while the node runs). The type
of each parameter is the type of its default (rclpy's static typing: ``ros2 param set max_points 1.5`` is
refused); an integer given for a floating-point parameter in a parameters file or ``-p`` is read as a float.

Cameras are parallel string arrays (``cameras.names``, ``cameras.image_topics``, ``cameras.info_topics``,
``cameras.transports``, ``cameras.frames``): the shape ``ros2 param`` and YAML handle without per-name parameters
(which would have to be declared before their names are known).

Start-up only parameters are declared ``read_only``: ``ros2 param set`` refuses them instead of accepting a value
the node would never use. :data:`RUNTIME` parameters (``publish_classes``, ``publish_region``, ``max_range``,
``max_points``, ``marker_alpha``, ``markers.max_voxels``, ``markers.period``, ``bev.z_min``, ``bev.z_max``) are
validated by :func:`runtime_update` (called from the node's ``add_on_set_parameters_callback``; a bad value is
refused with the reason) and take effect on the next frame.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

NODE_NAME = "occle_node"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class StartupError(RuntimeError):
    """A problem that prevents the node from starting (bad parameter, missing checkpoint...)."""


@dataclass(frozen=True)
class Spec:
    """What the YAML default does not say about a parameter.

    Attributes:
        description: shown by ``ros2 param describe``.
        bounds: inclusive (low, high) of a number (an rclpy integer / floating-point range).
        choices: allowed values of a string (checked at start-up).
        runtime: may change while the node runs (else ``read_only``).
    """

    description: str
    bounds: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    runtime: bool = False


SPECS: dict[str, Spec] = {
    "checkpoint": Spec("model checkpoint; empty = the shipped models/occle_tiny_synthetic.pt"),
    "device": Spec("auto (cuda when available, else cpu) | cpu | cuda | cuda:N"),
    "torch_threads": Spec("torch intra-op threads (process-wide); 0 = torch's default", (0, 1024)),
    "ground_gate": Spec(
        "no ground class more than this many metres above the scan's fitted ground plane, nor on the lower flank "
        "of an object; 0 = off, negative (-1) = the checkpoint's model.ground_gate",
        (-1.0, 100.0),
    ),
    "cameras.names": Spec("camera names, front first (the checkpoint's camera set, e.g. CAM_FRONT ... or image_2)"),
    "cameras.image_topics": Spec("image topic of each camera (same order as cameras.names)"),
    "cameras.info_topics": Spec("camera_info topic of each camera (same order as cameras.names)"),
    "cameras.transports": Spec("raw (sensor_msgs/Image) | compressed (sensor_msgs/CompressedImage) per camera"),
    "cameras.frames": Spec("TF frame of each camera; '' = the image's header.frame_id"),
    "lidar_topic": Spec("LiDAR topic (sensor_msgs/PointCloud2)"),
    "lidar_frame": Spec("TF frame of the LiDAR; '' = the cloud's header.frame_id"),
    "grid_frame": Spec("frame of the grid and of every output; '' = the LiDAR frame (grid 'lidar') or base_link"),
    "warn_distortion": Spec("warn once per camera when camera_info D != 0 on a topic not named *rect*"),
    "publish_classes": Spec("class names to publish; ['all'] = every class but the empty one", runtime=True),
    "publish_region": Spec(
        "voxels published: all | observed (camera frustum or LiDAR rays + region.margin) | frustum",
        choices=("all", "observed", "frustum"),
        runtime=True,
    ),
    "region.margin": Spec("metres behind a LiDAR return still observed (publish_region observed)", (0.0, 100.0)),
    "region.azimuth_resolution": Spec("azimuth bin (deg) of the LiDAR range image", (0.01, 45.0)),
    "region.elevation_resolution": Spec("elevation bin (deg) of the LiDAR range image", (0.01, 45.0)),
    "max_range": Spec(
        "points farther than this from the LiDAR (m) are dropped; 0 = keep all", (0.0, 1e4), runtime=True
    ),
    "max_points": Spec("larger clouds are randomly subsampled to this many points", (1, 100_000_000), runtime=True),
    "intensity_scale": Spec("multiplier of the cloud's intensity field", (0.0, 1e6)),
    "input_qos": Spec("QoS of the inputs", choices=("sensor_data", "reliable")),
    "publish_voxels": Spec("publish occupancy/voxels (PointCloud2)"),
    "publish_markers": Spec("publish occupancy/markers (MarkerArray; costly for large grids)"),
    "marker_alpha": Spec("alpha of the CUBE_LIST markers", (0.0, 1.0), runtime=True),
    "markers.max_voxels": Spec(
        "at most this many voxels as markers (the rest dropped, logged once)", (0, 10_000_000), runtime=True
    ),
    "markers.period": Spec("markers are published at most once per this many seconds", (0.0, 3600.0), runtime=True),
    "publish_bev": Spec("publish occupancy/bev (OccupancyGrid) and occupancy/bev_semantic (Image rgb8)"),
    "bev.z_min": Spec("lower edge (m, grid frame) of the height band of the BEV", (-1e3, 1e3), runtime=True),
    "bev.z_max": Spec("upper edge (m, grid frame) of the height band of the BEV", (-1e3, 1e3), runtime=True),
    "sync.slop": Spec("largest stamp difference (s) of one set of images, camera_infos and cloud", (0.0, 10.0)),
    "sync.queue_size": Spec("messages kept per input while waiting for a match", (1, 10_000)),
    "sync.reset_threshold": Spec("a stamp this much (s) older than the newest clears the queues", (1e-3, 1e6)),
    "extrinsics.source": Spec(
        "where the camera / LiDAR poses come from", choices=("xyz_quaternion", "matrix", "calib_file", "tf")
    ),  # fmt: skip
    "extrinsics.xyz": Spec("translation (m) of T_cam_lidar, 3 per camera (source xyz_quaternion)"),
    "extrinsics.quaternion": Spec("rotation w, x, y, z of T_cam_lidar, 4 per camera (source xyz_quaternion)"),
    "extrinsics.matrix": Spec("row-major 4x4 T_cam_lidar, 16 per camera (source matrix)"),
    "extrinsics.grid_from_lidar": Spec("row-major 4x4 T_grid<-lidar (grid 'ego' without TF); all 0 = not given"),
    "extrinsics.calib_file": Spec("KITTI calib.txt whose Tr is T_cam_lidar (source calib_file; tf fallback)"),
    "extrinsics.tf_timeout": Spec("seconds to wait for the first TF lookup of a frame pair (source tf)", (0.0, 60.0)),
    "diagnostics_period": Spec("period (s) of /diagnostics", (0.01, 3600.0)),
    "diagnostics.stale_after": Spec("WARN when no complete input set arrived for this many seconds", (0.01, 3600.0)),
    "diagnostics.min_rate": Spec("per-input frequency below this (Hz) is a WARN; 0 = no lower bound", (0.0, 1e4)),
    "log_throttle": Spec("bad input is logged at most once per this many seconds per reason", (0.0, 3600.0)),
}
RUNTIME = tuple(name for name, spec in SPECS.items() if spec.runtime)


@dataclass(frozen=True)
class RuntimeParams:
    """The parameters that may change while the node runs; the worker reads one snapshot per frame."""

    marker_alpha: float
    publish_classes: tuple[str, ...]  # ("all",) or class names
    publish_region: str  # all | observed | frustum
    max_range: float  # m; 0 = no limit
    max_points: int
    marker_cap: int  # markers.max_voxels
    marker_period: float  # s
    bev_band: tuple[float, float]  # (z_min, z_max) m in the grid frame


@dataclass(frozen=True)
class CameraParams:
    """One camera input: its name, topics, transport and optional TF frame override."""

    name: str
    image_topic: str
    info_topic: str
    transport: str  # raw | compressed
    frame: str  # "" = the image's header.frame_id


@dataclass(frozen=True)
class ExtrinsicsParams:
    """The ``extrinsics.*`` parameters and frame overrides (see :mod:`occle_ros.extrinsics`)."""

    source: str
    xyz: tuple[float, ...]  # 3 per camera
    quaternion: tuple[float, ...]  # w, x, y, z; 4 per camera
    matrix: tuple[float, ...]  # 16 per camera, row-major
    grid_from_lidar: tuple[float, ...]  # 16 or empty
    calib_file: str
    tf_timeout: float
    grid_frame: str  # "" = from the checkpoint's grid frame
    lidar_frame: str  # "" = the cloud's frame_id


@dataclass(frozen=True)
class RegionParams:
    """How the observed region is computed (:mod:`occle_ros.region`)."""

    margin: float  # m behind a return
    azimuth_deg: float
    elevation_deg: float


@dataclass(frozen=True)
class StartupParams:
    """The read-only parameters, read once at start-up."""

    checkpoint: str
    device: str
    torch_threads: int
    ground_gate: float
    cameras: tuple[CameraParams, ...]
    lidar_topic: str
    warn_distortion: bool
    intensity_scale: float
    input_qos: str
    publish_markers: bool
    publish_voxels: bool
    publish_bev: bool
    slop_ns: int
    queue_size: int
    reset_threshold_ns: int
    extrinsics: ExtrinsicsParams
    region: RegionParams
    diagnostics_period: float
    stale_after: float
    min_rate: float
    log_throttle: float


def default_values() -> dict[str, Any]:
    """Flat ``{"sync.slop": 0.05, ...}`` defaults from the shipped ``config/occle.yaml``; they must name exactly
    the parameters of :data:`SPECS`."""
    from occle_core.resources import config_path

    try:
        path = config_path("occle.yaml")
    except FileNotFoundError as exc:
        raise StartupError(f"parameter defaults: {exc}") from exc
    doc = yaml.safe_load(path.read_text()) or {}
    section = doc.get("/**", doc.get(NODE_NAME, {}))
    params = section.get("ros__parameters")
    if not isinstance(params, dict):
        raise StartupError(f"{path} has no '/**: ros__parameters:' mapping")
    values = flatten(params)
    if set(values) != set(SPECS):
        raise StartupError(
            f"{path} and occle_ros/params.py disagree: only in the file {sorted(set(values) - set(SPECS))}, "
            f"only in the code {sorted(set(SPECS) - set(values))}"
        )
    return values


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested ``ros__parameters`` mappings -> dotted parameter names (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def descriptor(name: str, default: Any) -> ParameterDescriptor:
    """The descriptor of parameter ``name`` (its type is the type of ``default``)."""
    spec = SPECS[name]
    desc = ParameterDescriptor(description=spec.description, read_only=not spec.runtime)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.bounds is not None:
        lo, hi = spec.bounds
        if isinstance(default, int):
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def _as_float(default: Any, value: Any) -> Any:
    """An integer (or list of integers) given for a float (list) parameter, as float; else ``value``."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ints = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if ints and isinstance(default, list) and default and isinstance(default[0], float):
        return [float(v) for v in value]
    return value


def declare(node: Node) -> tuple[StartupParams, RuntimeParams]:
    """Declare every parameter on ``node`` (overrides from the command line / parameters file applied) and read
    them; raises :class:`StartupError` naming the parameter for a wrong type, a value out of range, an unknown
    choice, or an unknown parameter name."""
    defaults = default_values()
    overrides: dict[str, Parameter] = node._parameter_overrides  # rclpy's parsed --ros-args / parameter_overrides
    known = set(SPECS) | {n for n in overrides if node.has_parameter(n)}  # rclpy's own, e.g. use_sim_time
    unknown = sorted(n for n in overrides if n not in known and not n.startswith("qos_overrides."))
    if unknown:
        raise StartupError(f"unknown parameter(s) {unknown}; known: {sorted(SPECS)}")
    values: dict[str, Any] = {}
    for name, default in defaults.items():
        given = default
        if name in overrides:
            given = overrides[name].value
            overrides[name] = Parameter(name, value=_as_float(default, given))
        try:
            values[name] = node.declare_parameter(name, default, descriptor(name, default)).value
        except InvalidParameterTypeException as exc:
            type_name = Parameter.Type.from_parameter_value(default).name.lower().replace("_", " ")
            expected = f"of type {type_name} (e.g. {default!r})"
            raise StartupError(f"parameter {name} must be {expected}, got {given!r}") from exc
        except InvalidParameterValueException as exc:
            lo, hi = SPECS[name].bounds or (None, None)
            raise StartupError(f"parameter {name} must be in [{lo}, {hi}], got {given!r}") from exc
    for name, spec in SPECS.items():
        if spec.choices and values[name] not in spec.choices:
            raise StartupError(f"parameter {name} must be one of {list(spec.choices)}, got {values[name]!r}")
    if not _DEVICE.fullmatch(values["device"]):
        raise StartupError(f"parameter device must be auto, cpu, cuda or cuda:N, got {values['device']!r}")
    startup = StartupParams(
        checkpoint=values["checkpoint"],
        device=values["device"],
        torch_threads=values["torch_threads"],
        ground_gate=values["ground_gate"],
        cameras=camera_params(values),
        lidar_topic=values["lidar_topic"],
        warn_distortion=values["warn_distortion"],
        intensity_scale=values["intensity_scale"],
        input_qos=values["input_qos"],
        publish_markers=values["publish_markers"],
        publish_voxels=values["publish_voxels"],
        publish_bev=values["publish_bev"],
        slop_ns=round(values["sync.slop"] * 1e9),
        queue_size=values["sync.queue_size"],
        reset_threshold_ns=round(values["sync.reset_threshold"] * 1e9),
        extrinsics=ExtrinsicsParams(
            source=values["extrinsics.source"],
            xyz=tuple(values["extrinsics.xyz"]),
            quaternion=tuple(values["extrinsics.quaternion"]),
            matrix=tuple(values["extrinsics.matrix"]),
            grid_from_lidar=tuple(values["extrinsics.grid_from_lidar"]),
            calib_file=values["extrinsics.calib_file"],
            tf_timeout=values["extrinsics.tf_timeout"],
            grid_frame=values["grid_frame"],
            lidar_frame=values["lidar_frame"],
        ),
        region=RegionParams(
            values["region.margin"], values["region.azimuth_resolution"], values["region.elevation_resolution"]
        ),
        diagnostics_period=values["diagnostics_period"],
        stale_after=values["diagnostics.stale_after"],
        min_rate=values["diagnostics.min_rate"],
        log_throttle=values["log_throttle"],
    )
    try:
        runtime = _runtime(values)
    except ValueError as exc:
        raise StartupError(f"parameter {exc}") from exc
    return startup, runtime


def camera_params(values: Mapping[str, Any]) -> tuple[CameraParams, ...]:
    """The ``cameras.*`` parallel lists as one entry per camera; raises StartupError when their lengths differ,
    a name repeats, or a transport is unknown."""
    names = list(values["cameras.names"])
    lists = {key: list(values[f"cameras.{key}"]) for key in ("image_topics", "info_topics", "transports", "frames")}
    if not names or "" in names or len(set(names)) != len(names):
        raise StartupError(f"parameter cameras.names must be distinct non-empty names, got {names}")
    if lists["frames"] in ([], [""]):
        lists["frames"] = [""] * len(names)  # no overrides
    for key, items in lists.items():
        if len(items) != len(names):
            raise StartupError(
                f"parameter cameras.{key} must have one entry per camera ({len(names)}: {names}), got {items}"
            )
    for t in lists["transports"]:
        if t not in ("raw", "compressed"):
            raise StartupError(f"parameter cameras.transports entries must be raw or compressed, got {t!r}")
    return tuple(
        CameraParams(n, i, c, t, f)
        for n, i, c, t, f in zip(names, *(lists[k] for k in ("image_topics", "info_topics", "transports", "frames")))
    )


def match_cameras(cams: Sequence[CameraParams], wanted: Sequence[str]) -> tuple[CameraParams, ...]:
    """``cams`` in the checkpoint's camera order ``wanted`` (empty: any one camera): the same names are reordered
    to it; other names must be as many (used in the given order). Raises StartupError for a different count."""
    cams = tuple(cams)
    if not wanted:
        if len(cams) != 1:
            raise StartupError(f"the checkpoint takes one camera; cameras.names has {len(cams)}")
        return cams
    by_name = {c.name: c for c in cams}
    if set(by_name) == set(wanted):
        return tuple(by_name[n] for n in wanted)
    if len(cams) != len(wanted):
        raise StartupError(
            f"the checkpoint takes {len(wanted)} cameras {list(wanted)}; cameras.names has {len(cams)}: {list(by_name)}"
        )
    return cams


def _runtime(values: Mapping[str, Any]) -> RuntimeParams:
    """The runtime snapshot of ``values`` (flat parameter names); ValueError names the parameter."""
    band = (float(values["bev.z_min"]), float(values["bev.z_max"]))
    if not band[0] < band[1]:
        raise ValueError(f"bev.z_min must be below bev.z_max, got {band[0]} and {band[1]}")
    if values["publish_region"] not in SPECS["publish_region"].choices:
        raise ValueError(f"publish_region must be one of {list(SPECS['publish_region'].choices)}, "
                         f"got {values['publish_region']!r}")  # fmt: skip
    return RuntimeParams(
        marker_alpha=values["marker_alpha"],
        publish_classes=_classes(values["publish_classes"]),
        publish_region=values["publish_region"],
        max_range=values["max_range"],
        max_points=values["max_points"],
        marker_cap=values["markers.max_voxels"],
        marker_period=values["markers.period"],
        bev_band=band,
    )


def _classes(value: Sequence[str]) -> tuple[str, ...]:
    if len(value) == 0:
        raise ValueError("publish_classes is empty (expected class names or ['all'])")
    return tuple(value)


#: RuntimeParams field -> parameter name, for the fields whose parameter has another name
_RUNTIME_NAMES = {"marker_cap": "markers.max_voxels", "marker_period": "markers.period"}


def runtime_update(current: RuntimeParams, changes: Sequence[Parameter]) -> RuntimeParams:
    """``current`` with ``changes`` applied (names other than :data:`RUNTIME` are left to rclpy: read-only ones are
    refused before this is called). Types and ranges were checked by rclpy from the descriptors; raises
    ValueError for a value they cannot express (an empty class list, an unknown region, an empty BEV band)."""
    values: dict[str, Any] = {
        _RUNTIME_NAMES.get(f, f): getattr(current, f) for f in current.__dataclass_fields__ if f != "bev_band"
    }
    values["bev.z_min"], values["bev.z_max"] = current.bev_band
    for p in changes:
        if p.name in RUNTIME:
            values[p.name] = p.value
    return _runtime(values)
