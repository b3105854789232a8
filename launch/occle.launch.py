"""Launch occle: the occupancy node, optionally a bag player and RViz.

    ros2 launch occle_ros occle.launch.py bag:=/path/to/bag rviz:=true
    ros2 launch occle_ros occle.launch.py image_topic:=/cam/image points_topic:=/lidar/points device:=cuda

Arguments (``ros2 launch occle_ros occle.launch.py --show-args`` lists them with their descriptions):

- params_file: node parameter file (default: the installed config/occle.yaml)
- bag: bag to play (ROS 2 folder or ROS 1 .bag) with occle-play; empty = live sensors
- rate, loop, clock: playback speed factor, looping, /clock publishing
- use_sim_time: the node follows /clock
- rviz, rviz_config: start rviz2 with rviz/occle.rviz (or another config)
- device, checkpoint: inference device (auto | cpu | cuda | cuda:N) and model checkpoint
- calib_file: KITTI calib.txt with the LiDAR->camera extrinsics (overrides the parameter file)
- image_topic, camera_info_topic, points_topic: the sensor topics (remaps of image, camera_info, points)
- input_qos: node input QoS, sensor_data | reliable | auto (reliable when a bag is played, else sensor_data)
- wait_subscribers: seconds the player waits for the node's subscriptions before it starts

The processes get the shipped Fast DDS large-data profile (config/fastdds_large_data.xml: full-size camera
images over shared memory) unless FASTDDS_DEFAULT_PROFILES_FILE is set or the RMW is not Fast DDS
(occle_ros/dds.py).

The same arguments drive ``occle-launch`` (occle_ros/launcher.py) where the ROS ``launch`` package is not
installed; both take the argument list from ``occle_ros.launcher.ARGUMENTS``.
"""

from __future__ import annotations

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from occle_ros.dds import large_data_env
from occle_ros.launcher import ARGUMENT_NAMES, ARGUMENTS, _truthy, node_ros_args, player_args, rviz_config


def _resolved(context) -> dict[str, str]:
    return {name: LaunchConfiguration(name).perform(context) for name in ARGUMENT_NAMES}


def _node_parameters(ros_args: list[str]) -> tuple[list, list[tuple[str, str]]]:
    """Split the launcher's ``--ros-args`` into launch_ros parameters and remappings."""
    params: list = []
    overrides: dict[str, str | bool] = {}
    remaps: list[tuple[str, str]] = []
    it = iter(ros_args[1:])
    for flag in it:
        value = next(it)
        if flag == "--params-file":
            params.append(value)
        elif flag == "-p":
            key, _, val = value.partition(":=")
            # typed like `-p name:=value` on the command line: booleans as booleans, everything else as text
            overrides[key] = {"true": True, "false": False}.get(val, val)
        elif flag == "-r":
            src, _, dst = value.partition(":=")
            remaps.append((src, dst))
    if overrides:
        params.append(overrides)
    return params, remaps


def _launch_setup(context, *args, **kwargs):
    values = _resolved(context)
    params, remaps = _node_parameters(node_ros_args(values))
    # Fast DDS large-data profile for the processes below, unless the user (or an including launch file)
    # configured Fast DDS or another RMW
    env = getattr(context, "environment", os.environ)
    actions = [SetEnvironmentVariable(name, value) for name, value in large_data_env(env).items()]
    actions += [
        Node(
            package="occle_ros",
            executable="occle_node",
            name="occle_node",
            output="screen",
            parameters=params,
            remappings=remaps,
        )
    ]
    if values["bag"]:
        # occle-play is a console script of this package (lib/occle_ros/occle-play after colcon build)
        actions.append(
            Node(package="occle_ros", executable="occle-play", arguments=player_args(values), output="screen")
        )
    if _truthy(values["rviz"], "rviz"):
        actions.append(
            Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", rviz_config(values)], output="log")
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    """The node, an optional bag player and optional RViz, configured by the arguments above."""
    declared = [
        DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
        for a in ARGUMENTS
        if a.name != "exit_after_bag"
    ]
    declared.append(DeclareLaunchArgument("exit_after_bag", default_value="false", description="unused by ros2 launch"))
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_setup)])
