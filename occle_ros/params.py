"""The parameters of ``occle_node``: each declared once, typed, described, range-checked by rclpy.

Defaults come from one place, the shipped ``config/occle.yaml`` (which documents them); :data:`SPECS` adds what a
YAML file cannot say (description, range, choices, whether the value may change while the node runs). The type
of each parameter is the type of its default (rclpy's static typing: ``ros2 param set max_points 1.5`` is
refused); an integer given for a floating-point parameter in a parameters file or ``-p`` is read as a float.

Start-up only parameters are declared ``read_only``: ``ros2 param set`` refuses them instead of accepting a value
the node would never use. :data:`RUNTIME` parameters (``marker_alpha``, ``publish_classes``, ``max_range``,
``max_points``) are validated by :func:`runtime_update` (called from the node's
``add_on_set_parameters_callback``; a bad value is refused with the reason) and take effect on the next frame.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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
    "publish_classes": Spec("class names to publish; ['all'] = every class but the empty one", runtime=True),
    "max_range": Spec(
        "points farther than this from the LiDAR (m) are dropped; 0 = keep all", (0.0, 1e4), runtime=True
    ),
    "max_points": Spec("larger clouds are randomly subsampled to this many points", (1, 100_000_000), runtime=True),
    "intensity_scale": Spec("multiplier of the cloud's intensity field", (0.0, 1e6)),
    "marker_alpha": Spec("alpha of the CUBE_LIST markers", (0.0, 1.0), runtime=True),
    "output_frame": Spec("frame of the published markers / voxels; empty = the input cloud's frame"),
    "input_qos": Spec("QoS of the inputs", choices=("sensor_data", "reliable")),
    "publish_markers": Spec("publish occupancy/markers (MarkerArray)"),
    "publish_voxels": Spec("publish occupancy/voxels (PointCloud2)"),
    "sync.slop": Spec("largest stamp difference (s) of one image / camera_info / cloud set", (0.0, 10.0)),
    "sync.queue_size": Spec("messages kept per input while waiting for a match", (1, 10_000)),
    "sync.reset_threshold": Spec("a stamp this much (s) older than the newest clears the queues", (1e-3, 1e6)),
    "extrinsics.source": Spec("where T_cam_lidar comes from", choices=("xyz_quaternion", "matrix", "calib_file", "tf")),
    "extrinsics.xyz": Spec("translation (m) of T_cam_lidar (source xyz_quaternion)"),
    "extrinsics.quaternion": Spec("rotation w, x, y, z of T_cam_lidar (source xyz_quaternion)"),
    "extrinsics.matrix": Spec("row-major 4x4 T_cam_lidar (source matrix)"),
    "extrinsics.calib_file": Spec("KITTI calib.txt whose Tr is T_cam_lidar (source calib_file; tf fallback)"),
    "extrinsics.tf_timeout": Spec("seconds to wait for the first TF lookup of a frame pair (source tf)", (0.0, 60.0)),
    "diagnostics_period": Spec("period (s) of /diagnostics", (0.01, 3600.0)),
    "log_throttle": Spec("bad input is logged at most once per this many seconds per reason", (0.0, 3600.0)),
}
RUNTIME = tuple(name for name, spec in SPECS.items() if spec.runtime)


@dataclass(frozen=True)
class RuntimeParams:
    """The parameters that may change while the node runs; the worker reads one snapshot per frame."""

    marker_alpha: float
    publish_classes: tuple[str, ...]  # ("all",) or class names
    max_range: float  # m; 0 = no limit
    max_points: int


@dataclass(frozen=True)
class ExtrinsicsParams:
    """The ``extrinsics.*`` parameters (see :mod:`occle_ros.extrinsics`)."""

    source: str
    xyz: tuple[float, ...]
    quaternion: tuple[float, ...]  # w, x, y, z
    matrix: tuple[float, ...]  # 16, row-major
    calib_file: str
    tf_timeout: float


@dataclass(frozen=True)
class StartupParams:
    """The read-only parameters, read once at start-up."""

    checkpoint: str
    device: str
    torch_threads: int
    intensity_scale: float
    output_frame: str
    input_qos: str
    publish_markers: bool
    publish_voxels: bool
    slop_ns: int
    queue_size: int
    reset_threshold_ns: int
    extrinsics: ExtrinsicsParams
    diagnostics_period: float
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
    values = _flatten(params)
    if set(values) != set(SPECS):
        raise StartupError(
            f"{path} and occle_ros/params.py disagree: only in the file {sorted(set(values) - set(SPECS))}, "
            f"only in the code {sorted(set(SPECS) - set(values))}"
        )
    return values


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
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
        intensity_scale=values["intensity_scale"],
        output_frame=values["output_frame"],
        input_qos=values["input_qos"],
        publish_markers=values["publish_markers"],
        publish_voxels=values["publish_voxels"],
        slop_ns=round(values["sync.slop"] * 1e9),
        queue_size=values["sync.queue_size"],
        reset_threshold_ns=round(values["sync.reset_threshold"] * 1e9),
        extrinsics=ExtrinsicsParams(
            source=values["extrinsics.source"],
            xyz=tuple(values["extrinsics.xyz"]),
            quaternion=tuple(values["extrinsics.quaternion"]),
            matrix=tuple(values["extrinsics.matrix"]),
            calib_file=values["extrinsics.calib_file"],
            tf_timeout=values["extrinsics.tf_timeout"],
        ),
        diagnostics_period=values["diagnostics_period"],
        log_throttle=values["log_throttle"],
    )
    runtime = RuntimeParams(
        marker_alpha=values["marker_alpha"],
        publish_classes=_classes(values["publish_classes"]),
        max_range=values["max_range"],
        max_points=values["max_points"],
    )
    return startup, runtime


def _classes(value: Sequence[str]) -> tuple[str, ...]:
    if len(value) == 0:
        raise ValueError("publish_classes is empty (expected class names or ['all'])")
    return tuple(value)


def runtime_update(current: RuntimeParams, changes: Sequence[Parameter]) -> RuntimeParams:
    """``current`` with ``changes`` applied (names other than :data:`RUNTIME` are left to rclpy: read-only ones are
    refused before this is called). Types and ranges were checked by rclpy from the descriptors; raises
    ValueError for a value they cannot express (an empty class list)."""
    update: dict[str, Any] = {}
    for p in changes:
        if p.name == "publish_classes":
            update["publish_classes"] = _classes(p.value)
        elif p.name in RUNTIME:
            update[p.name] = p.value
    return replace(current, **update)
