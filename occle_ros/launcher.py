"""``occle-launch``: start occle's processes without the ROS ``launch`` package (plain pip environments).

``occle-launch [bag:=PATH] [rviz:=false] [params_file:=...] [name:=value ...]`` starts what
``ros2 launch occle_ros occle.launch.py`` starts, from the same arguments (:data:`ARGUMENTS`, shared with
``launch/occle.launch.py``):

- ``occle_node`` with the parameter file, the device/checkpoint/calibration overrides and the topic remaps;
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
    LaunchArgument("params_file", "", "node parameter file (default: the shipped config/occle.yaml)"),
    LaunchArgument("bag", "", "bag to play: ROS 2 folder (sqlite3/mcap) or ROS 1 .bag; empty = live sensors"),
    LaunchArgument("rate", "1.0", "bag playback speed factor"),
    LaunchArgument("loop", "false", "play the bag in a loop"),
    LaunchArgument("clock", "false", "publish /clock from the bag (pair with use_sim_time:=true)"),
    LaunchArgument("use_sim_time", "false", "node uses /clock time"),
    LaunchArgument("rviz", "true", "start rviz2 with rviz/occle.rviz (skipped when rviz2 is not installed)"),
    LaunchArgument("rviz_config", "", "RViz config (default: the shipped rviz/occle.rviz)"),
    LaunchArgument("device", "auto", "inference device: auto | cpu | cuda | cuda:N"),
    LaunchArgument("checkpoint", "", "model checkpoint (default: the shipped models/occle_tiny_synthetic.pt)"),
    LaunchArgument("calib_file", "", "KITTI calib.txt giving the LiDAR->camera extrinsics (overrides params)"),
    LaunchArgument("image_topic", "/kitti/camera_color_left/image_raw", "camera image topic"),
    LaunchArgument("camera_info_topic", "/kitti/camera_color_left/camera_info", "camera info topic"),
    LaunchArgument("points_topic", "/kitti/velo/pointcloud", "LiDAR point cloud topic"),
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


def node_ros_args(args: dict[str, str]) -> list[str]:
    """``--ros-args`` of occle_node for the launch arguments (parameter file, overrides, remaps)."""
    params_file = args["params_file"] or _share("config", "occle.yaml")
    out = ["--ros-args"]
    if params_file:
        out += ["--params-file", params_file]
    sim = str(_truthy(args["use_sim_time"], "use_sim_time")).lower()
    out += ["-p", f"device:={args['device']}", "-p", f"use_sim_time:={sim}"]
    qos = args["input_qos"]
    if qos == "auto":
        qos = "reliable" if args["bag"] else "sensor_data"
    if qos not in ("sensor_data", "reliable"):
        raise ValueError(f"launch argument input_qos must be auto, sensor_data or reliable, got {qos!r}")
    out += ["-p", f"input_qos:={qos}"]
    if args["checkpoint"]:
        out += ["-p", f"checkpoint:={args['checkpoint']}"]
    if args["calib_file"]:
        out += ["-p", "extrinsics.source:=calib_file", "-p", f"extrinsics.calib_file:={args['calib_file']}"]
    for key in ("image", "camera_info", "points"):
        out += ["-r", f"{key}:={args[key + '_topic']}"]
    return out


def player_args(args: dict[str, str]) -> list[str]:
    """Command-line options of occle-play for the launch arguments (without the program)."""
    out = [args["bag"], "--rate", args["rate"]]
    if _truthy(args["loop"], "loop"):
        out.append("--loop")
    if _truthy(args["clock"], "clock"):
        out.append("--clock")
    if float(args["wait_subscribers"]) > 0:  # until the node's inputs are matched (its model is loaded by then)
        topics = [args[f"{key}_topic"] for key in ("image", "camera_info", "points")]
        out += ["--wait-subscribers", args["wait_subscribers"], "--wait-topics", *topics]
    return out


def rviz_config(args: dict[str, str]) -> str:
    """The RViz config file of the launch arguments."""
    return args["rviz_config"] or _share("rviz", "occle.rviz")


def plan(args: dict[str, str], python: str = sys.executable) -> list[ProcessSpec]:
    """The processes for the launch arguments (node first). Validates flags and numbers (ValueError)."""
    for flag in ("loop", "clock", "use_sim_time", "rviz", "exit_after_bag"):
        _truthy(args[flag], flag)
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
