"""occle_ros.params, occle_ros.extrinsics, occle_ros.diagnostics: typed read-only / runtime parameters over real
rclpy, QoS overrides, extrinsics sources (TF cached, calibration-file fallback) and the time-windowed arrivals."""

from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped
from helpers_ros import SEQ_T_AXES, STAMP, T_AXES, frame_messages, make_frame, node_params, write_sequence
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data

from occle_ros import extrinsics, params
from occle_ros import node as occle_node
from occle_ros.diagnostics import RATE_WINDOW_S, FrameStats

pytestmark = pytest.mark.ros


@pytest.fixture
def node(ros_context, checkpoint, predictor):
    n = occle_node.OccleNode(
        predictor=predictor,
        context=ros_context,
        parameter_overrides=node_params(
            checkpoint,
            max_range=50,
            use_sim_time=False,
            **{"qos_overrides./points.subscription.reliability": "reliable"},
        ),
    )
    yield n
    n.destroy_node()


def test_yaml_and_specs_name_the_same_parameters():
    values = params.default_values()  # raises when config/occle.yaml and SPECS disagree
    assert set(values) == set(params.SPECS)
    assert set(params.RUNTIME) == {
        "marker_alpha",
        "publish_classes",
        "publish_region",
        "max_range",
        "max_points",
        "markers.max_voxels",
        "markers.period",
        "bev.z_min",
        "bev.z_max",
    }


def test_descriptors_types_ranges_and_read_only(node):
    for name in params.SPECS:
        d = node.describe_parameter(name)
        assert d.description and d.read_only == (name not in params.RUNTIME), name
        assert not d.dynamic_typing
    assert node.describe_parameter("marker_alpha").floating_point_range[0].to_value == 1.0
    assert node.describe_parameter("max_points").integer_range[0].from_value == 1
    assert node.get_parameter("max_range").value == 50.0  # an integer given for a float parameter


def test_runtime_parameters_are_validated_and_used_on_the_next_frame(node):
    rgb, pts, _ = make_frame(4, n=400)
    seen: list[int] = []
    inner = node.predictor
    node.predictor = type("Spy", (), {"predict": lambda self, im, p, c: seen.append(len(p)) or inner.predict(im, p, c),
                                      "grid": inner.grid, "classes": inner.classes})()  # fmt: skip
    assert node.handle_frame(*frame_messages(rgb, pts, STAMP)) is not None
    ok = node.set_parameters([Parameter("max_points", value=50), Parameter("publish_classes", value=["car"])])
    assert all(r.successful for r in ok)
    assert node.handle_frame(*frame_messages(rgb, pts, STAMP + 1)) is not None
    assert seen == [400, 50]
    assert node._outputs.lut.nonzero()[0].tolist() == [node.classes.names.index("car")]
    refused = {
        "marker_alpha": (Parameter("marker_alpha", value=1.5), "out of range"),
        "max_points": (Parameter("max_points", value=1.5), "Wrong parameter type"),
        "publish_classes": (Parameter("publish_classes", value=["spaceship"]), "unknown class 'spaceship'"),
        "checkpoint": (Parameter("checkpoint", value="/other.pt"), "read-only"),
        "sync.slop": (Parameter("sync.slop", value=0.1), "read-only"),
    }
    for name, (param, reason) in refused.items():
        (result,) = node.set_parameters([param])
        assert not result.successful and reason in result.reason, (name, result.reason)
    assert node.get_parameter("max_points").value == 50 and node._outputs.params.publish_classes == ("car",)


def test_qos_override_reaches_the_subscription(node):
    qos = {s.topic_name: s.qos_profile for s in node.subscriptions}
    assert qos["/points"].reliability == ReliabilityPolicy.RELIABLE  # the override
    assert qos["/image"].reliability == ReliabilityPolicy.BEST_EFFORT  # the sensor-data default
    assert qos_profile_sensor_data.reliability == ReliabilityPolicy.BEST_EFFORT  # rclpy's shared profile untouched


def test_extrinsics_from_parameters():
    q_default = params.default_values()["extrinsics.quaternion"]
    m_default = params.default_values()["extrinsics.matrix"]
    np.testing.assert_allclose(extrinsics.from_xyz_quaternion([0, 0, 0], q_default), np.reshape(m_default, (4, 4)),
                               atol=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match="not all 0"):
        extrinsics.from_xyz_quaternion([0, 0, 0], [0, 0, 0, 0])
    with pytest.raises(ValueError, match="not a rigid transform"):
        extrinsics.from_matrix([1.0] * 16)


def _ext(**kw) -> params.ExtrinsicsParams:
    base = {"source": "tf", "xyz": (0.0, 0.0, 0.0), "quaternion": (1.0, 0.0, 0.0, 0.0), "matrix": (),
            "grid_from_lidar": (0.0,) * 16, "calib_file": "", "tf_timeout": 0.05, "grid_frame": "",
            "lidar_frame": ""}  # fmt: skip
    return params.ExtrinsicsParams(**{**base, **kw})


def test_parameter_sources_give_poses_in_the_grid_frame(tmp_path):
    seq = write_sequence(tmp_path, frames=1)
    source = extrinsics.resolve(_ext(source="calib_file", calib_file=str(seq / "calib.txt")), 1, "lidar", None, print)
    poses = source.poses(["cam"], "velo", "velo")
    np.testing.assert_allclose(poses.T_cam_grid[0], SEQ_T_AXES)  # a LiDAR grid: T_grid<-lidar is the identity
    assert not poses.optical_frames and np.array_equal(poses.T_grid_lidar, np.eye(4))
    with pytest.raises(params.StartupError, match="grid is in the ego frame: give extrinsics.grid_from_lidar"):
        extrinsics.resolve(_ext(source="matrix", matrix=tuple(T_AXES.ravel())), 1, "ego", None, print)
    lift = np.eye(4)
    lift[2, 3] = 1.8  # LiDAR 1.8 m above base_link
    two = tuple(T_AXES.ravel()) * 2
    source = extrinsics.resolve(_ext(source="matrix", matrix=two, grid_from_lidar=tuple(lift.ravel())), 2, "ego",
                                None, print)  # fmt: skip
    poses = source.poses(["a", "b"], "velo", "base_link")
    np.testing.assert_allclose(poses.T_grid_lidar, lift)
    np.testing.assert_allclose(poses.T_cam_grid[1] @ lift, T_AXES, atol=1e-12)  # T_cam<-grid T_grid<-lidar
    with pytest.raises(params.StartupError, match="16 values per camera \\(2 cameras: 32\\), got 16"):
        extrinsics.resolve(_ext(source="matrix", matrix=tuple(T_AXES.ravel())), 2, "lidar", None, print)
    with pytest.raises(params.StartupError, match="one camera's Tr; 2 cameras need tf or matrix"):
        extrinsics.resolve(_ext(calib_file=str(seq / "calib.txt")), 2, "lidar", None, print)


class StubBuffer:
    """Stands in for tf2_ros.Buffer (lookup_transform with its real signature); available after ``ready`` calls."""

    def __init__(self, T: np.ndarray, fail_first: int) -> None:
        from transforms3d.quaternions import mat2quat

        self.calls: list[float] = []  # the timeout of each call, seconds
        self.fail_first = fail_first
        self.tf = TransformStamped()
        w, x, y, z = mat2quat(T[:3, :3])
        r, t = self.tf.transform.rotation, self.tf.transform.translation
        r.w, r.x, r.y, r.z = w, x, y, z
        t.x, t.y, t.z = T[:3, 3]

    def lookup_transform(self, target_frame, source_frame, time, timeout=None):
        self.calls.append(timeout.nanoseconds / 1e9)
        if len(self.calls) <= self.fail_first:
            raise LookupError(f'"{target_frame}" passed to lookupTransform argument target_frame does not exist')
        return self.tf


def test_tf_lookup_is_cached_only_the_first_one_waits_and_invalidate_refreshes():
    buffer = StubBuffer(T_AXES, fail_first=2)
    warnings: list[str] = []
    fallback = extrinsics.FixedPoses([np.eye(4) * 2], np.eye(4), "calib_file x")
    tf = extrinsics.TfPoses(buffer, 0.05, "tf", fallback, warnings.append)
    assert tf.poses(["cam"], "velo", "velo").T_cam_grid[0][0, 0] == 2  # not yet in TF: the fallback, warned
    assert tf.poses(["cam"], "velo", "velo").T_cam_grid[0][0, 0] == 2
    for _ in range(5):
        poses = tf.poses(["cam"], "velo", "velo")
        np.testing.assert_allclose(poses.T_cam_grid[0], T_AXES, atol=1e-12)
        assert poses.optical_frames
    assert buffer.calls == [0.05, 0.0, 0.0] and len(warnings) == 2  # cached after the first success
    tf.invalidate()  # /tf_static changed
    tf.poses(["cam"], "velo", "velo")
    assert buffer.calls == [0.05, 0.0, 0.0, 0.0]
    no_fallback = extrinsics.TfPoses(StubBuffer(T_AXES, fail_first=1), 0.05, "tf")
    with pytest.raises(LookupError, match="no transform cam <- velo"):
        no_fallback.poses(["cam"], "velo", "velo")


def test_tf_without_tf2_ros_falls_back_to_the_calibration_file_with_a_warning(tmp_path):
    try:
        import tf2_ros  # noqa: F401

        pytest.skip("tf2_ros is importable here: the TF path is used")
    except ImportError:
        pass
    seq = write_sequence(tmp_path, frames=1)
    warnings: list[str] = []
    source = extrinsics.resolve(_ext(calib_file=str(seq / "calib.txt")), 1, "lidar", None, warnings.append)
    assert "tf2_ros not importable" in source.description and "tf2_ros is not importable" in warnings[0]
    np.testing.assert_allclose(source.poses(["cam"], "velo", "velo").T_cam_grid[0], SEQ_T_AXES)
    with pytest.raises(params.StartupError, match="tf2_ros is not importable here; set extrinsics.calib_file"):
        extrinsics.resolve(_ext(), 1, "lidar", None, warnings.append)


def test_arrivals_are_kept_for_the_rate_window_only():
    stats = FrameStats()
    for t in np.arange(0.0, 20.0, 0.5):
        stats.arrival(float(t))
    kept = stats.arrival_times()
    assert kept[-1] == 19.5 and kept[0] == 19.5 - RATE_WINDOW_S and len(kept) == int(RATE_WINDOW_S / 0.5) + 1
