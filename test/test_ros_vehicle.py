"""OccleNode on a vehicle, over real rclpy/DDS: compressed cameras, six cameras + LiDAR in sync (into an ego grid),
the TF-less extrinsics fallback, the BEV outputs on a known scene, the publish region and marker cap changed at
run time, and diagnostics that go WARN when the inputs stop and ERROR when nothing is published.

A fake predictor (the :class:`occle_ros.pipeline.OccupancyPredictor` protocol) returns fixed labels and records
what it was given, so these tests check the node's own work, fast."""

from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from helpers_ros import HW, SEQ_T_AXES, STAMP, T_AXES, P, Spinner, node_params, wait_until, write_sequence
from nav_msgs.msg import OccupancyGrid
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from occle_core.geometry import VoxelGrid
from occle_core.labels import class_table
from occle_ros import msgs as ros_msgs
from occle_ros import node as occle_node
from occle_ros.msgs.compressed import compressed_to_rgb, decode_jpeg, rgb_to_compressed

pytestmark = pytest.mark.ros

GRID = VoxelGrid((0.0, -6.4, -2.0), 0.4, (32, 32, 8))  # x 0..12.8, y -6.4..6.4, z -2..1.2
CLASSES = class_table("semantic_kitti")
WALL, CAR = CLASSES.names.index("building"), CLASSES.names.index("car")


def scene_labels() -> np.ndarray:
    """A wall at x 8.0..8.4 (i 20) for y -2..2 (j 11..20), a car voxel behind it (i 28, j 16) and one voxel at
    the right edge near the sensor (i 2, j 0), outside the camera's 90 degree view and every LiDAR ray."""
    labels = np.zeros(GRID.shape, np.uint8)
    labels[20, 11:21, 2:6] = WALL
    labels[28, 16, 3] = CAR
    labels[2, 0, 3] = CAR
    return labels


def wall_points() -> np.ndarray:
    """(N, 4) LiDAR returns on the wall's front face (x 8.05), y -2..2, z -1.2..0.8."""
    y, z = np.meshgrid(np.arange(-2.0, 2.0, 0.05), np.arange(-1.2, 0.8, 0.05), indexing="ij")
    return np.c_[np.full(y.size, 8.05), y.ravel(), z.ravel(), np.zeros(y.size)].astype(np.float32)


class FakePredictor:
    """Returns ``labels`` for any input and records each call's (views, points); raises while ``fail``."""

    def __init__(self, labels: np.ndarray, camera_names=None, grid_frame: str = "lidar") -> None:
        self.grid, self.classes, self.labels = GRID, CLASSES, labels
        self.camera_names, self.grid_frame = camera_names, grid_frame
        self.calls: list[tuple[list, np.ndarray]] = []
        self.fail = False

    def predict(self, image, points, calib=None):
        if self.fail:
            raise RuntimeError("model failed")
        views = [(image, calib)] if calib is not None else list(image)
        self.calls.append((views, np.array(points)))
        return self.labels


def camera_messages(rgb: np.ndarray, stamp: int, frame: str = "camera", fmt: str = "raw"):
    """(image or compressed image, camera_info) of one camera."""
    if fmt == "raw":
        image = ros_msgs.array_to_image(rgb, "rgb8", frame, stamp)
    else:
        image = rgb_to_compressed(rgb, fmt, frame, stamp)
    return image, ros_msgs.projection_to_camera_info(P, HW, frame, stamp)


class Rig:
    """An OccleNode with ``predictor`` + a test node publishing ``inputs`` ({topic: type}) and recording outputs."""

    def __init__(self, ctx, checkpoint, predictor, inputs: dict, **params) -> None:
        self.node = occle_node.OccleNode(predictor=predictor, context=ctx,
                                         parameter_overrides=node_params(checkpoint, **params))  # fmt: skip
        self.io = Node("vehicle_io", context=ctx)
        self.pubs = {t: self.io.create_publisher(m, t, qos_profile_sensor_data) for t, m in inputs.items()}
        self.got: dict[str, list] = {"voxels": [], "markers": [], "bev": [], "bev_semantic": [], "diag": []}
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for name, msg_type in (("voxels", PointCloud2), ("markers", MarkerArray), ("bev", OccupancyGrid),
                               ("bev_semantic", Image)):  # fmt: skip
            self.io.create_subscription(msg_type, f"occupancy/{name}", self.got[name].append, qos)
        self.io.create_subscription(DiagnosticArray, "/diagnostics", self.got["diag"].append, 50)
        self.spinner = Spinner(ctx, self.node, self.io)
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values()))
        assert wait_until(lambda: self.node.pub_bev.get_subscription_count() > 0)

    def publish(self, topic: str, msg) -> None:
        self.pubs[topic].publish(msg)

    def close(self) -> None:
        self.spinner.close()


def test_compressed_jpeg_and_png_cameras(ros_context, checkpoint):
    fake = FakePredictor(scene_labels())
    rig = Rig(ros_context, checkpoint, fake, {"image": CompressedImage, "camera_info": CameraInfo,
              "points": PointCloud2}, **{"cameras.transports": ["compressed"]})  # fmt: skip
    yy, xx = np.mgrid[0 : HW[0], 0 : HW[1]]
    rgb = np.stack([xx * 1.5, yy * 5.0, (xx + yy) * 0.9], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it close
    try:
        for k, fmt in enumerate(("png", "jpeg")):
            stamp = STAMP + k * 100_000_000
            image, info = camera_messages(rgb, stamp, fmt=fmt)
            rig.publish("camera_info", info)
            rig.publish("image", image)
            rig.publish("points", ros_msgs.xyzi_to_pointcloud2(wall_points(), "velo", stamp))
            assert wait_until(lambda n=k + 1: len(fake.calls) == n), rig.node.statistics()
    finally:
        rig.close()
    (png_views, _), (jpeg_views, _) = fake.calls
    np.testing.assert_array_equal(png_views[0][0], rgb)  # PNG is lossless
    assert np.abs(jpeg_views[0][0].astype(int) - rgb).mean() < 3.0
    assert rig.node.statistics()["rejected"] == 0


def test_jpeg_decoders_agree_and_bad_payloads_are_named():
    rgb = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (32, 1, 3))
    msg = rgb_to_compressed(rgb, "jpeg")
    data = bytes(msg.data)
    a, b = decode_jpeg(data, "simplejpeg"), decode_jpeg(data, "pillow")
    assert a.shape == b.shape == (32, 64, 3) and np.abs(a.astype(int) - b).max() <= 2
    msg.data = b"GIF89a...."
    with pytest.raises(ros_msgs.ConversionError, match="neither JPEG .* nor PNG .*, starts with 47 49 46 38"):
        compressed_to_rgb(msg)
    msg.data = data[: len(data) // 2]
    with pytest.raises(ros_msgs.ConversionError, match="not a decodable JPEG"):
        decode_jpeg(msg.data, "pillow")


def test_six_cameras_and_lidar_in_sync_into_an_ego_grid(ros_context, checkpoint):
    names = [f"CAM_{i}" for i in range(6)]
    fake = FakePredictor(scene_labels(), camera_names=names, grid_frame="ego")
    given = names[::-1]  # another order than the checkpoint's: matched by name
    lift = np.eye(4)
    lift[2, 3] = 1.8  # LiDAR 1.8 m above base_link
    inputs = {f"/{n}/image": Image for n in given} | {f"/{n}/info": CameraInfo for n in given} | {"/lidar": PointCloud2}
    params = {"cameras.names": given, "cameras.image_topics": [f"/{n}/image" for n in given],
              "cameras.info_topics": [f"/{n}/info" for n in given], "cameras.transports": ["raw"] * 6,
              "lidar_topic": "/lidar", "extrinsics.matrix": T_AXES.ravel().tolist() * 6,
              "extrinsics.grid_from_lidar": lift.ravel().tolist(), "sync.slop": 0.05}  # fmt: skip
    rig = Rig(ros_context, checkpoint, fake, inputs, **params)
    points = wall_points()
    try:
        lone = STAMP - 1_000_000_000
        rig.publish(f"/{names[2]}/image", camera_messages(np.zeros((*HW, 3), np.uint8), lone)[0])  # never completed
        assert wait_until(lambda: rig.node.statistics().get(f"received_/{names[2]}/image") == 1)
        for i, n in enumerate(given):  # stamps jittered within the slop
            image, info = camera_messages(np.full((*HW, 3), 10 * names.index(n), np.uint8), STAMP + i * 3_000_000)
            rig.publish(f"/{n}/info", info)
            rig.publish(f"/{n}/image", image)
        rig.publish("/lidar", ros_msgs.xyzi_to_pointcloud2(points, "lidar_top", STAMP + 7_000_000))
        assert wait_until(lambda: len(fake.calls) == 1 and rig.got["voxels"]), rig.node.statistics()
        dropped = rig.node._sync.dropped_per_stream()
    finally:
        rig.close()
    views, got_points = fake.calls[0]
    assert [int(v[0][0, 0, 0]) for v in views] == [10 * i for i in range(6)]  # the checkpoint's camera order
    np.testing.assert_allclose(got_points[:, :3], points[:, :3] + [0, 0, 1.8], atol=1e-5)  # into the ego grid
    np.testing.assert_allclose(views[0][1].T_cam_lidar @ lift, T_AXES, atol=1e-9)  # T_cam<-grid
    assert rig.got["voxels"][0].header.frame_id == "base_link"
    cam2_image = 2 * names.index(names[2])  # the node's stream of CAM_2's image (checkpoint order)
    assert dropped[cam2_image] == 1 and sum(dropped) == 1  # the lone image, counted on its own stream


def test_tf_without_tf2_ros_uses_the_calibration_file(ros_context, checkpoint, tmp_path):
    try:
        import tf2_ros  # noqa: F401

        pytest.skip("tf2_ros is importable here: the TF path is used")
    except ImportError:
        pass
    seq = write_sequence(tmp_path, frames=1)
    fake = FakePredictor(scene_labels())
    node = occle_node.OccleNode(predictor=fake, context=ros_context, parameter_overrides=node_params(
        checkpoint, **{"extrinsics.source": "tf", "extrinsics.calib_file": str(seq / "calib.txt")}))  # fmt: skip
    try:
        assert "tf2_ros not importable" in node.poses.description
        image, info = camera_messages(np.zeros((*HW, 3), np.uint8), STAMP)
        assert node.handle_frame(image, info, ros_msgs.xyzi_to_pointcloud2(wall_points(), "velo", STAMP)) is not None
    finally:
        node.destroy_node()
    np.testing.assert_allclose(fake.calls[0][0][0][1].T_cam_lidar, SEQ_T_AXES)


def test_bev_on_a_known_scene_and_runtime_region_and_marker_cap(ros_context, checkpoint):
    fake = FakePredictor(scene_labels())
    rig = Rig(ros_context, checkpoint, fake, {}, publish_region="observed", **{"markers.max_voxels": 100_000,
              "bev.z_min": -1.4, "bev.z_max": 1.0})  # fmt: skip
    image, info = camera_messages(np.zeros((*HW, 3), np.uint8), STAMP)
    cloud = ros_msgs.xyzi_to_pointcloud2(wall_points(), "velo", STAMP)
    try:
        assert rig.node.handle_frame(image, info, cloud) is not None
        assert wait_until(lambda: rig.got["bev"] and rig.got["bev_semantic"] and rig.got["voxels"])
        ok = rig.node.set_parameters([Parameter("publish_region", value="all"),
                                      Parameter("markers.max_voxels", value=5)])  # fmt: skip
        assert all(r.successful for r in ok)
        (bad,) = rig.node.set_parameters([Parameter("publish_region", value="everywhere")])
        assert not bad.successful and "publish_region must be one of" in bad.reason
        assert rig.node.handle_frame(image, info, cloud) is not None
        assert wait_until(lambda: len(rig.got["bev"]) == 2 and len(rig.got["markers"]) == 2)
    finally:
        rig.close()
    bev = rig.got["bev"][0]
    assert (bev.info.width, bev.info.height, bev.header.frame_id) == (32, 32, "velo")
    assert bev.info.resolution == pytest.approx(0.4) and bev.info.origin.position.y == pytest.approx(-6.4)
    state = np.asarray(bev.data, np.int8).reshape(32, 32).T  # (X, Y)
    assert (state[20, 11:21] == 100).all()  # the wall
    assert (state[5:18, 15:17] == 0).all()  # free: LiDAR rays to the wall cross the band here
    assert state[28, 16] == 100  # behind the wall but inside the camera frustum: observed
    assert state[2, 0] == -1  # outside every frustum and ray: unknown, not published
    assert (state[24:, 25:] == -1).all() and (state[:, :4] <= 0).all()
    seen = ros_msgs.pointcloud2_to_array(rig.got["voxels"][0])
    assert len(seen) == 10 * 4 + 1  # the wall and the car behind it; not the voxel nobody observed
    image_bev = ros_msgs.image_to_array(rig.got["bev_semantic"][0])  # (X, Y, 3), forward up, left on the left
    np.testing.assert_array_equal(image_bev[31 - 20, 31 - 16], CLASSES.colors[WALL])
    np.testing.assert_array_equal(image_bev[31 - 28, 31 - 16], CLASSES.colors[CAR])
    assert not image_bev[31 - 10, 31 - 16].any()  # an empty column is black
    after = np.asarray(rig.got["bev"][1].data, np.int8).reshape(32, 32).T
    assert after[2, 0] == 100  # publish_region all, from the next frame on
    assert len(ros_msgs.pointcloud2_to_array(rig.got["voxels"][1])) == 10 * 4 + 2
    assert sum(len(m.points) for m in rig.got["markers"][1].markers) == 5  # markers.max_voxels
    assert sum(len(m.points) for m in rig.got["markers"][0].markers) == 41


def _occupancy(diag: DiagnosticArray) -> DiagnosticStatus | None:
    return next((s for s in diag.status if s.name.endswith(": occupancy")), None)


def _levels(got: list[DiagnosticArray], start: int = 0) -> list[bytes]:
    return [s.level for d in got[start:] if (s := _occupancy(d)) is not None]


def test_diagnostics_ok_while_frames_flow_warn_when_inputs_stop_error_when_nothing_is_published(
    ros_context, checkpoint
):
    fake = FakePredictor(scene_labels())
    rig = Rig(ros_context, checkpoint, fake, {"image": Image, "camera_info": CameraInfo, "points": PointCloud2},
              diagnostics_period=0.1, **{"diagnostics.stale_after": 0.3})  # fmt: skip
    stamp = [STAMP]

    def send() -> None:
        stamp[0] += 100_000_000
        image, info = camera_messages(np.zeros((*HW, 3), np.uint8), stamp[0])
        rig.publish("camera_info", info)
        rig.publish("image", image)
        rig.publish("points", ros_msgs.xyzi_to_pointcloud2(wall_points(), "velo", stamp[0]))

    try:
        assert wait_until(lambda: DiagnosticStatus.WARN in _levels(rig.got["diag"]))  # nothing received yet
        assert wait_until(lambda: send() or DiagnosticStatus.OK in _levels(rig.got["diag"]))  # frames flow
        names = {s.name for d in rig.got["diag"][-3:] for s in d.status}
        assert {"occle_node: image topic status", "occle_node: points topic status"} <= names
        mark = len(rig.got["diag"])
        assert wait_until(lambda: DiagnosticStatus.WARN in _levels(rig.got["diag"], mark))  # inputs stopped
        warn = next(s for d in rig.got["diag"][mark:] if (s := _occupancy(d)) and s.level == DiagnosticStatus.WARN)
        assert warn.message.startswith("no complete input set for")
        fake.fail = True  # sets arrive, nothing is published
        mark = len(rig.got["diag"])
        assert wait_until(lambda: send() or DiagnosticStatus.ERROR in _levels(rig.got["diag"], mark))
    finally:
        rig.close()
    error = next(s for d in rig.got["diag"][mark:] if (s := _occupancy(d)) and s.level == DiagnosticStatus.ERROR)
    assert "nothing was published" in error.message and "inference_error" in error.message


def test_tf_projection_drops_p_translation_and_distortion_warning():
    from occle_ros import pipeline

    info = ros_msgs.projection_to_camera_info(P, HW, "camera", STAMP)
    info.p = [80.0, 0, 80, -43.2, 0, 80.0, 24, 0.1, 0, 0, 1, 0.003]  # a rectified right camera: baseline in P
    as_given = pipeline.frame_calib(info, HW, T_AXES)
    optical = pipeline.frame_calib(info, HW, T_AXES, optical=True)
    assert as_given.P[0, 3] == pytest.approx(-43.2) and not optical.P[:, 3].any()
    np.testing.assert_array_equal(optical.P[:, :3], as_given.P[:, :3])
    info.d = [0.1, -0.2, 0.0, 0.0, 0.0]
    assert "does not look rectified" in pipeline.distortion_warning(info, "/cam/image_raw")
    assert pipeline.distortion_warning(info, "/cam/image_rect_color") is None
    info.d = [0.0] * 5
    assert pipeline.distortion_warning(info, "/cam/image_raw") is None
