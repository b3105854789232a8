"""occle-launch (plain pip environments) and launch/occle.launch.py (where ROS ``launch`` exists)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from occle_ros import launcher

REPO = Path(__file__).resolve().parent.parent


def test_parse_and_plan_default_arguments():
    args = launcher.parse_launch_args([])
    specs = launcher.plan(args, python="py")
    assert [s.name for s in specs] == ["occle_node"]  # no bag, no rviz by default
    node = specs[0].cmd
    assert node[:3] == ["py", "-m", "occle_ros.node"] and "--ros-args" in node
    params_file = node[node.index("--params-file") + 1]
    assert Path(params_file) == REPO / "config" / "preset_kitti.yaml"  # dataset:=kitti
    assert 'input_qos:="sensor_data"' in node  # live sensors: best effort
    assert not any(t.startswith(("device:=", "checkpoint:=")) for t in node)  # left to the parameter files
    specs = launcher.plan(launcher.parse_launch_args(["rviz:=true"]), python="py")
    assert specs[1].optional and specs[1].cmd[:2] == ["rviz2", "-d"]
    assert Path(specs[1].cmd[2]) == REPO / "rviz" / "occle.rviz"


def test_plan_with_bag_and_overrides(tmp_path):
    user = tmp_path / "p.yaml"
    user.write_text("/**:\n  ros__parameters:\n    device: cpu\n")
    args = launcher.parse_launch_args(
        ["bag:=/data/x.bag", "rate:=0.5", "loop:=true", "clock:=true", "device:=cuda", "use_sim_time:=true",
         "checkpoint:=/m.pt", "calib_file:=/c.txt", "points_topic:=/lidar", f"params_file:={user}"]
    )  # fmt: skip
    specs = launcher.plan(args, python="py")
    assert [s.name for s in specs] == ["occle_node", "occle-play"]
    node, play = specs[0].cmd, specs[1].cmd
    for token in (str(user), 'device:="cuda"', 'checkpoint:="/m.pt"', 'extrinsics.source:="calib_file"',
                  'extrinsics.calib_file:="/c.txt"', 'lidar_topic:="/lidar"', 'input_qos:="reliable"'):  # fmt: skip
        assert token in node
    # the preset first, use_sim_time before the user's file (a value there wins), explicit arguments last
    order = [node.index(t) for t in (str(REPO / "config" / "preset_kitti.yaml"), "use_sim_time:=true", str(user),
                                     'device:="cuda"')]  # fmt: skip
    assert order == sorted(order)
    waits = ["--wait-subscribers", "30", "--wait-topics", "/kitti/camera_color_left/image_raw",
             "/kitti/camera_color_left/camera_info", "/lidar"]  # fmt: skip  # the node's inputs, preset + overrides
    assert play[3:] == ["/data/x.bag", "--rate", "0.5", "--loop", "--clock", *waits]


@pytest.mark.ros
def test_node_arguments_parse_back_as_typed_by_rcl(tmp_path):
    """rcl reads the launcher's arguments: a checkpoint named 1e3 stays a string, topics a string list, the
    nuScenes preset gives six compressed cameras, and use_sim_time from the user's file wins."""
    from rclpy.node import Node

    user = tmp_path / "mine.yaml"
    user.write_text("/**:\n  ros__parameters:\n    use_sim_time: true\n")
    args = launcher.parse_launch_args(["dataset:=nuscenes", f"params_file:={user}", "checkpoint:=1e3",
                                       "image_topic:=/cam/image"])  # fmt: skip
    ros_args = launcher.node_ros_args(args)
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(args=["occle_node", *ros_args], context=ctx)
    try:
        values = {k: p.value for k, p in Node("occle_node", context=ctx)._parameter_overrides.items()}
    finally:
        rclpy.shutdown(context=ctx)
    assert values["checkpoint"] == "1e3" and values["cameras.image_topics"] == ["/cam/image"]
    assert values["cameras.transports"] == ["compressed"] * 6 and values["lidar_topic"] == "/LIDAR_TOP"
    assert values["use_sim_time"] is True and values["grid_frame"] == "base_link"


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["bag"], "expected NAME:=VALUE"),
        (["bags:=x"], "unknown launch argument 'bags'"),
        (["rviz:=maybe"], "rviz must be true or false"),
        (["rate:=fast"], "rate must be a number"),
        (["input_qos:=fast"], "input_qos must be auto, sensor_data or reliable"),
        (["dataset:=waymo"], "dataset must be one of kitti, nuscenes or none"),
    ],
)
def test_bad_launch_arguments(argv, pattern, capsys):
    assert launcher.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("occle-launch: error:") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(pattern, err)


def test_help_lists_every_argument(capsys):
    assert launcher.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"{a.name}:=" in out for a in launcher.ARGUMENTS)


def test_demo_fails_clearly_without_a_checkpoint(tmp_path, capsys):
    from occle_ros import demo

    assert demo.main(["--out", str(tmp_path / "demo"), "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("occle-demo: error: checkpoint not found") and "occle_tiny_synthetic.pt" in err


def test_launch_file_declares_the_same_arguments():
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    spec = importlib.util.spec_from_file_location("occle_launch", REPO / "launch" / "occle.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from launch.actions import DeclareLaunchArgument

    desc = module.generate_launch_description()
    declared = {e.name for e in desc.entities if isinstance(e, DeclareLaunchArgument)}
    assert declared == set(launcher.ARGUMENT_NAMES)


def test_launch_file_parses_without_launch_installed():
    """Even without ROS ``launch`` the file must at least be valid Python."""
    src = (REPO / "launch" / "occle.launch.py").read_text()
    compile(src, "occle.launch.py", "exec")
    assert "generate_launch_description" in src
    assert sys.version_info >= (3, 10)


@pytest.mark.ros
def test_occle_launch_runs_node_and_player_and_stops_on_sigterm(tmp_path):
    """occle-launch with a looping bag: outputs arrive over DDS, SIGTERM stops every child cleanly."""
    import os
    import signal
    import subprocess
    import threading
    import time

    import rclpy
    from helpers_ros import HW, build_checkpoint, write_sequence
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    from occle_ros import kitti2bag

    seq = write_sequence(tmp_path / "data", frames=2, seed=4, hw=HW)
    bag = tmp_path / "bag"
    kitti2bag.write_bag(tmp_path / "data", "00", bag, rate=0.5)  # frames 2 s apart: a loop jumps back > 1 s
    ckpt = build_checkpoint(tmp_path / "tiny.pt")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = Node("launch_probe", context=ctx)
    got: list[PointCloud2] = []
    node.create_subscription(
        PointCloud2, "/occupancy/voxels", got.append, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    )
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    argv = [f"bag:={bag}", "rviz:=false", "loop:=true", "rate:=4.0", f"checkpoint:={ckpt}", "device:=cpu",
            f"calib_file:={seq / 'calib.txt'}"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "occle_ros.launcher", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(got) < 2 and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert len(got) >= 2, f"{len(got)} outputs in 90 s; occle-launch printed:\n{out}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert got[0].header.frame_id == "velo_link"
