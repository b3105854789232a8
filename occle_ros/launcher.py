"""``occle-launch``: start occle's processes without the ROS ``launch`` package (plain pip environments).

``occle-launch [bag:=PATH] [rviz:=false] [params_file:=...] [name:=value ...]`` starts what
``ros2 launch occle_ros occle.launch.py`` starts, from the same arguments (:data:`ARGUMENTS`, shared with
``launch/occle.launch.py``):

- ``occle_node`` with the parameter sources in this order (a later one wins, as rcl applies them): the dataset
  preset (``dataset:=kitti|nuscenes``: ``config/preset_<dataset>.yaml``, topics, cameras and frames),
  ``use_sim_time``, the user's ``params_file``, then the launch arguments given explicitly (device, checkpoint,
  calibration, topics). ``use_sim_time`` comes before the user's file so that a value there is kept. String
  values are passed quoted (``checkpoint:="1e3"`` stays a string, not the float 1000.0);
- ``occle-play`` when ``bag`` is set (waiting for the node's subscriptions first, so no frame is lost while
  the model loads);
- ``rviz2 -d rviz/occle.rviz`` when ``rviz`` is true and ``rviz2`` is on the PATH (a note otherwise).

Every child gets the shipped Fast DDS large-data profile (``config/fastdds_large_data.xml``) unless the user
configured Fast DDS or another RMW (:mod:`occle_ros.dds`).

SIGINT/SIGTERM stop every child (SIGINT first, SIGTERM/SIGKILL after a grace period). The launcher exits when
the node exits (with its status), or, with ``exit_after_bag:=true``, once the bag has been played.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LaunchArgument:
    """One launch argument: name, default (a string, as in ROS launch) and description."""

    name: str
    default: str
    description: str


def _share(*parts: str) -> str:
    from occle_core.resources import resource_path

    try:
        return str(resource_path(*parts))
    except FileNotFoundError:
        return ""


#: The launch arguments of ``occle.launch.py`` and ``occle-launch`` (defaults resolved lazily for share paths).
ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("dataset", "kitti", "preset of topics, cameras and frames: kitti | nuscenes | none"),
    LaunchArgument("params_file", "", "your node parameter file, applied after the preset"),
    LaunchArgument("bag", "", "bag to play: ROS 2 folder (sqlite3/mcap) or ROS 1 .bag; empty = live sensors"),
    LaunchArgument("rate", "1.0", "bag playback speed factor"),
    LaunchArgument("loop", "false", "play the bag in a loop"),
    LaunchArgument("clock", "false", "publish /clock from the bag (pair with use_sim_time:=true)"),
    LaunchArgument("use_sim_time", "false", "node uses /clock time"),
    LaunchArgument("rviz", "false", "start rviz2 with rviz/occle.rviz (skipped when rviz2 is not installed)"),
    LaunchArgument("rviz_config", "", "RViz config (default: the shipped rviz/occle.rviz)"),
    LaunchArgument("device", "", "inference device: auto | cpu | cuda | cuda:N; empty = the parameter files'"),
    LaunchArgument("checkpoint", "", "model checkpoint (default: the shipped models/occle_tiny_synthetic.pt)"),
    LaunchArgument("calib_file", "", "KITTI calib.txt giving the LiDAR->camera extrinsics (overrides params)"),
    LaunchArgument("image_topic", "", "image topic of a single camera; empty = the preset's / parameter files'"),
    LaunchArgument("camera_info_topic", "", "camera_info topic of a single camera; empty = the preset's"),
    LaunchArgument("points_topic", "", "LiDAR point cloud topic; empty = the preset's / parameter files'"),
    LaunchArgument(
        "input_qos", "auto", "node input QoS: sensor_data | reliable | auto (reliable when a bag is played)"
    ),
    LaunchArgument("wait_subscribers", "30", "seconds the player waits for the node's subscriptions"),
    LaunchArgument("exit_after_bag", "false", "occle-launch only: stop everything once the bag has been played"),
)
ARGUMENT_NAMES = tuple(a.name for a in ARGUMENTS)


def _truthy(value: str, name: str) -> bool:
    v = str(value).strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"launch argument {name} must be true or false, got {value!r}")


def parse_launch_args(argv: Sequence[str]) -> dict[str, str]:
    """``["bag:=x", "rviz:=false"]`` -> every argument with its value (defaults filled in).

    Raises:
        ValueError: a token without ``:=`` or an unknown argument name (the known ones are listed).
    """
    values = {a.name: a.default for a in ARGUMENTS}
    for token in argv:
        name, sep, value = token.partition(":=")
        if not sep:
            raise ValueError(f"expected NAME:=VALUE, got {token!r} (arguments: {', '.join(ARGUMENT_NAMES)})")
        if name not in values:
            raise ValueError(f"unknown launch argument {name!r} (arguments: {', '.join(ARGUMENT_NAMES)})")
        values[name] = value
    return values


@dataclass
class ProcessSpec:
    """A process to start: a name for messages and its command line."""

    name: str
    cmd: list[str]
    optional: bool = False  # a missing executable is a note, not an error
    env: dict[str, str] = field(default_factory=dict)


#: the datasets with a preset file config/preset_<name>.yaml
DATASETS = ("kitti", "nuscenes")


def preset_file(dataset: str) -> str:
    """The preset parameter file of ``dataset`` ("" for none); ValueError for an unknown name."""
    if dataset in ("", "none"):
        return ""
    if dataset not in DATASETS:
        raise ValueError(f"launch argument dataset must be one of {', '.join(DATASETS)} or none, got {dataset!r}")
    return _share("config", f"preset_{dataset}.yaml")


def node_parameters(args: dict[str, str]) -> list[tuple[str, object]]:
    """The node's parameter sources for the launch arguments, in order (a later one wins): ``("file", path)`` or
    ``("value", (name, value))`` with ``value`` typed (str, bool or list of str)."""
    out: list[tuple[str, object]] = []
    if preset := preset_file(args["dataset"]):
        out.append(("file", preset))
    out.append(("value", ("use_sim_time", _truthy(args["use_sim_time"], "use_sim_time"))))  # before the user's file
    if args["params_file"]:
        out.append(("file", args["params_file"]))
    qos = args["input_qos"]
    if qos == "auto":
        qos = "reliable" if args["bag"] else "sensor_data"
    if qos not in ("sensor_data", "reliable"):
        raise ValueError(f"launch argument input_qos must be auto, sensor_data or reliable, got {qos!r}")
    values: list[tuple[str, object]] = [("input_qos", qos)]
    for name in ("device", "checkpoint"):
        if args[name]:
            values.append((name, args[name]))
    if args["calib_file"]:
        values += [("extrinsics.source", "calib_file"), ("extrinsics.calib_file", args["calib_file"])]
    if args["image_topic"]:
        values.append(("cameras.image_topics", [args["image_topic"]]))
    if args["camera_info_topic"]:
        values.append(("cameras.info_topics", [args["camera_info_topic"]]))
    if args["points_topic"]:
        values.append(("lidar_topic", args["points_topic"]))
    return out + [("value", v) for v in values]


def _cli_value(value: object) -> str:
    """``-p name:=VALUE`` text rcl parses back to ``value``: strings double-quoted (YAML), so ``1e3`` or ``true``
    stay strings; booleans as true / false; string lists as a YAML flow sequence of quoted strings."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(str(value))


def node_ros_args(args: dict[str, str]) -> list[str]:
    """``--ros-args`` of occle_node for the launch arguments (:func:`node_parameters`, in order)."""
    out = ["--ros-args"]
    for kind, item in node_parameters(args):
        if kind == "file":
            out += ["--params-file", str(item)]
        else:
            name, value = item
            out += ["-p", f"{name}:={_cli_value(value)}"]
    return out


def player_args(args: dict[str, str]) -> list[str]:
    """Command-line options of occle-play for the launch arguments (without the program)."""
    out = [args["bag"], "--rate", args["rate"]]
    if _truthy(args["loop"], "loop"):
        out.append("--loop")
    if _truthy(args["clock"], "clock"):
        out.append("--clock")
    if float(args["wait_subscribers"]) > 0:  # until the node's inputs are matched (its model is loaded by then)
        out += ["--wait-subscribers", args["wait_subscribers"], "--wait-topics", *input_topics(args)]
    return out


def input_topics(args: dict[str, str]) -> list[str]:
    """The node's input topics (every camera's image and camera_info, then the LiDAR) as its parameter sources
    resolve them, in :func:`node_parameters`' order (a later source wins)."""
    import yaml

    from occle_ros.params import flatten

    values: dict[str, object] = {}
    for kind, item in node_parameters(args):
        if kind == "file":
            with open(item) as f:
                doc = yaml.safe_load(f) or {}
            for section in doc.values():  # "/**" or the node's name
                values.update(flatten((section or {}).get("ros__parameters", {})))
        else:
            values[item[0]] = item[1]
    topics = [*values.get("cameras.image_topics", []), *values.get("cameras.info_topics", [])]
    return [*topics, values["lidar_topic"]] if "lidar_topic" in values else topics



def rviz_config(args: dict[str, str]) -> str:
    """The RViz config file of the launch arguments."""
    return args["rviz_config"] or _share("rviz", "occle.rviz")


def plan(args: dict[str, str], python: str = sys.executable) -> list[ProcessSpec]:
    """The processes for the launch arguments (node first). Validates flags and numbers (ValueError)."""
    for flag in ("loop", "clock", "use_sim_time", "rviz", "exit_after_bag"):
        _truthy(args[flag], flag)
    preset_file(args["dataset"])
    for num in ("rate", "wait_subscribers"):
        try:
            float(args[num])
        except ValueError:
            raise ValueError(f"launch argument {num} must be a number, got {args[num]!r}") from None
    specs = [ProcessSpec("occle_node", [python, "-m", "occle_ros.node", *node_ros_args(args)])]
    if args["bag"]:
        specs.append(ProcessSpec("occle-play", [python, "-m", "occle_ros.bag_player", *player_args(args)]))
    if _truthy(args["rviz"], "rviz"):
        specs.append(ProcessSpec("rviz2", ["rviz2", "-d", rviz_config(args)], optional=True))
    return specs


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` (Linux) that makes the child get SIGTERM when the launcher dies, even by SIGKILL.

    libc is loaded here, in the parent, so the child only makes one system call between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG = 1
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ProcessGroup:
    """Children started from :class:`ProcessSpec` objects, stopped together."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, spec: ProcessSpec, **popen: object) -> subprocess.Popen | None:
        """Start one process (None when an optional executable is missing)."""
        if shutil.which(spec.cmd[0]) is None and not os.path.isfile(spec.cmd[0]):
            if spec.optional:
                print(f"occle-launch: {spec.cmd[0]} not found; not starting {spec.name}", file=sys.stderr)
                return None
            raise FileNotFoundError(f"executable {spec.cmd[0]!r} of {spec.name} not found")
        from occle_ros.dds import dds_environment

        env = dds_environment({**os.environ, **spec.env})  # Fast DDS large-data profile unless configured
        proc = subprocess.Popen(spec.cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent_hook(), **popen)
        self.procs[spec.name] = proc
        return proc

    def stop(self, grace: float = 5.0) -> None:
        """SIGINT every running child, then SIGTERM, then SIGKILL after ``grace`` seconds each."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in self.procs.values() if p.poll() is None]
            if not alive:
                return
            for p in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in alive):
                time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``occle-launch``; returns the node's exit status (0 after a clean shutdown)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print("usage: occle-launch [NAME:=VALUE ...]\n\narguments:")
        for a in ARGUMENTS:
            print(f"  {a.name}:={a.default or '<empty>'}\n      {a.description}")
        return 0
    try:
        args = parse_launch_args(argv)
        specs = plan(args)
    except ValueError as exc:
        print(f"occle-launch: error: {exc}", file=sys.stderr)
        return 2
    group = ProcessGroup()
    stopping = {"signal": None}

    def _on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for spec in specs:
            group.start(spec)
        node = group.procs["occle_node"]
        player = group.procs.get("occle-play")
        exit_after_bag = _truthy(args["exit_after_bag"], "exit_after_bag")
        while stopping["signal"] is None:
            code = node.poll()
            if code is not None:
                status = code
                break
            if player is not None and player.poll() is not None:
                if player.returncode != 0:
                    print(f"occle-launch: occle-play exited with status {player.returncode}", file=sys.stderr)
                    status = player.returncode
                    break
                if exit_after_bag:
                    break
                player = None
            time.sleep(0.1)
    except FileNotFoundError as exc:
        print(f"occle-launch: error: {exc}", file=sys.stderr)
        status = 1
    finally:
        group.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


if __name__ == "__main__":
    sys.exit(main())
