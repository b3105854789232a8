"""Launch occle: the occupancy node, optionally a bag player and RViz.

    ros2 launch occle_ros occle.launch.py dataset:=nuscenes bag:=/path/to/bag rviz:=true
    ros2 launch occle_ros occle.launch.py dataset:=none params_file:=my_robot.yaml device:=cuda

Arguments (``ros2 launch occle_ros occle.launch.py --show-args`` lists them with their descriptions):

- dataset: kitti | nuscenes | none: preset topics, cameras and frames (config/preset_<dataset>.yaml)
- params_file: your node parameter file, applied after the preset (the node's defaults: config/occle.yaml)
- bag: bag to play (ROS 2 folder or ROS 1 .bag) with occle-play; empty = live sensors
- rate, loop, clock: playback speed factor, looping, /clock publishing
- use_sim_time: the node follows /clock (given before params_file: a value in your file wins)
- rviz, rviz_config: start rviz2 with rviz/occle.rviz (or another config); off by default, and skipped with a
  note when the rviz2 package is not installed (it is never required: its exit does not stop the node)
- device, checkpoint, calib_file, image_topic, camera_info_topic, points_topic: explicit overrides, applied last
  (empty = leave the parameter files' values)
- input_qos: node input QoS, sensor_data | reliable | auto (reliable when a bag is played, else sensor_data)
- wait_subscribers: seconds the player waits for the node's subscriptions before it starts

Parameter sources are passed in the order of ``occle_ros.launcher.node_parameters`` (launch_ros writes each to
a parameters file; a later one wins). String values are wrapped in ``ParameterValue(..., value_type=str)`` so
that a path such as ``1e3`` stays a string. The Fast DDS large-data profile (config/fastdds_large_data.xml)
goes into each process's own environment (``additional_env``) unless FASTDDS_DEFAULT_PROFILES_FILE is set or
the RMW is not Fast DDS (occle_ros/dds.py).

The same arguments drive ``occle-launch`` (occle_ros/launcher.py) where the ROS ``launch`` package is not
installed; both take the argument list from ``occle_ros.launcher.ARGUMENTS``.
"""

from __future__ import annotations

import os

from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription
from occle_ros.dds import large_data_env
from occle_ros.launcher import ARGUMENT_NAMES, ARGUMENTS, node_parameters, player_args, rviz_config


def _resolved(context) -> dict[str, str]:
    return {name: LaunchConfiguration(name).perform(context) for name in ARGUMENT_NAMES}


def _parameters(values: dict[str, str]) -> list:
    """launch_ros ``parameters``: files and one-entry dicts in the launcher's order, strings wrapped."""
    out: list = []
    for kind, item in node_parameters(values):
        if kind == "file":
            out.append(item)
        else:
            name, value = item
            out.append({name: ParameterValue(value, value_type=str) if isinstance(value, str) else value})
    return out


def _rviz_installed() -> bool:
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix("rviz2")
    except PackageNotFoundError:
        return False
    return True


def _launch_setup(context, *args, **kwargs):
    values = _resolved(context)
    env = large_data_env(getattr(context, "environment", os.environ))  # {} when the user configured DDS
    actions = [
        Node(
            package="occle_ros",
            executable="occle_node",
            name="occle_node",
            output="screen",
            parameters=_parameters(values),
            additional_env=env,
        )
    ]
    if values["bag"]:
        # occle-play is a console script of this package (lib/occle_ros/occle-play after colcon build)
        actions.append(
            Node(
                package="occle_ros",
                executable="occle-play",
                arguments=player_args(values),
                output="screen",
                additional_env=env,
            )  # fmt: skip
        )
    rviz = IfCondition(LaunchConfiguration("rviz"))
    if not rviz.evaluate(context):
        return actions
    if not _rviz_installed():
        return [*actions, LogInfo(msg="rviz:=true but the rviz2 package is not installed; not starting it")]
    # no on_exit shutdown (not `required`): closing RViz leaves the node running
    actions.append(
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", rviz_config(values)],
            output="log",
            condition=rviz,
        )  # fmt: skip
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
