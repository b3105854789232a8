"""Bags in the layouts of the widely used converters, written from dataset replicas and read back / played:

- ``occle-nuscenes2bag``: a nuScenes v1.0 replica scene -> ROS 2 mcap (nuscenes2mcap topics), checked against the
  tables and files it was written from, and played by ``occle-play`` into real DDS subscribers;
- ``occle-kitti2bag --format ros1-kitti2bag``: a KITTI raw replica drive -> the ROS 1 bag of tomas789/kitti2bag,
  checked against the calibration chain, and played by the ``occle-play`` executable, which waits for the
  subscriptions first so that every frame arrives (counts are exact, no discovery sleep).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_bags import DRIVE, raw_drive
from helpers_ros import Spinner, wait_until
from PIL import Image as PILImage
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from transforms3d.quaternions import quat2mat

from occle_core.data import kitti
from occle_core.data.nuscenes import CAMERAS, read_pcd_bin
from occle_core.synth import released
from occle_ros import bag_player, kitti2bag, nuscenes2bag
from occle_ros import msgs as ros_msgs
from occle_ros.kitti_raw_bag import TOPICS, camera_from_imu, read_timestamps

pytestmark = pytest.mark.ros


def _read_bag(path: Path) -> dict[str, list[tuple[int, object, str]]]:
    """``{topic: [(bag time ns, message, msgtype), ...]}`` of any bag."""
    out: dict[str, list] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.LATEST)) as reader:
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp, reader.deserialize(raw, conn.msgtype), conn.msgtype))
    return out


def _stamp(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _matrix(tf) -> np.ndarray:
    r, t = tf.transform.rotation, tf.transform.translation
    T = np.eye(4)
    T[:3, :3] = quat2mat([r.w, r.x, r.y, r.z])
    T[:3, 3] = t.x, t.y, t.z
    return T


# ------------------------------------------------------------------------------------------------ nuScenes


@pytest.fixture(scope="module")
def nuscenes_replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("nusc")
    replica = released.write_nuscenes_replica(root / "data", samples_per_scene=2, image_size=(18, 32), occ3d=False)
    tables = {n: json.loads((root / "data" / "v1.0-mini" / f"{n}.json").read_text()) for n in
              ("sample_data", "calibrated_sensor", "sensor", "ego_pose")}  # fmt: skip
    return replica, tables


def test_nuscenes2bag_matches_the_tables(nuscenes_replica, tmp_path):
    replica, tables = nuscenes_replica
    out = tmp_path / "bag"
    argv = ["--data", str(replica.root), "--version", "v1.0-mini", "--scene", "scene-0061", "--out", str(out)]
    assert nuscenes2bag.main([*argv, "--quiet"]) == 0
    assert [p.suffix for p in out.iterdir() if p.suffix == ".mcap"] == [".mcap"]
    bag = _read_bag(out)
    cams = [nuscenes2bag.image_topic(c) for c in CAMERAS] + [nuscenes2bag.camera_info_topic(c) for c in CAMERAS]
    assert set(bag) == {"/tf_static", "/tf", "/LIDAR_TOP", *cams}
    counts = {"/tf_static": 1, "/tf": 14, "/LIDAR_TOP": 2, **dict.fromkeys(cams, 2)}  # 2 samples x (6 cameras + LiDAR)
    assert {t: len(v) for t, v in bag.items()} == counts
    channel_of = {s["token"]: s["channel"] for s in tables["sensor"]}
    calib = {c["token"]: c for c in tables["calibrated_sensor"]}
    key = [r for r in tables["sample_data"] if r["is_key_frame"]]
    by_channel = {ch: [r for r in key if channel_of[calib[r["calibrated_sensor_token"]]["sensor_token"]] == ch]
                  for ch in (*CAMERAS, "LIDAR_TOP")}  # fmt: skip
    # stamps: bag time = header stamp = sample_data timestamp (us -> ns)
    for ch, recs in by_channel.items():
        topic = "/LIDAR_TOP" if ch == "LIDAR_TOP" else nuscenes2bag.image_topic(ch)
        want = [r["timestamp"] * 1000 for r in recs]
        assert [s for s, _, _ in bag[topic]] == want == [_stamp(m.header) for _, m, _ in bag[topic]]
        assert {m.header.frame_id for _, m, _ in bag[topic]} == {ch}
    # the JPEG bytes as stored; camera_info from camera_intrinsic
    front = by_channel["CAM_FRONT"][1]
    _, img, msgtype = bag[nuscenes2bag.image_topic("CAM_FRONT")][1]
    assert msgtype == "sensor_msgs/msg/CompressedImage" and img.format == "jpeg"
    assert img.data.tobytes() == (replica.root / front["filename"]).read_bytes()
    _, info, _ = bag[nuscenes2bag.camera_info_topic("CAM_FRONT")][1]
    K = np.asarray(calib[front["calibrated_sensor_token"]]["camera_intrinsic"])
    np.testing.assert_array_equal(info.k.reshape(3, 3), K)
    np.testing.assert_array_equal(info.p.reshape(3, 4), np.c_[K, np.zeros(3)])
    assert (info.height, info.width, info.header.frame_id) == (18, 32, "CAM_FRONT") and not info.d.any()
    # tf_static: base_link -> every channel, equal to its calibrated_sensor; offered transient-local (latched)
    with AnyReader([out]) as reader:
        (qos,) = next(c for c in reader.connections if c.topic == "/tf_static").ext.offered_qos_profiles
    assert (qos.durability.name, qos.reliability.name) == ("TRANSIENT_LOCAL", "RELIABLE")
    static = {tf.child_frame_id: tf for tf in bag["/tf_static"][0][1].transforms}
    assert set(static) == {*CAMERAS, "LIDAR_TOP"} and {tf.header.frame_id for tf in static.values()} == {"base_link"}
    lidar_cs = calib[by_channel["LIDAR_TOP"][0]["calibrated_sensor_token"]]
    T_lidar = _matrix(static["LIDAR_TOP"])
    np.testing.assert_allclose(T_lidar[:3, 3], lidar_cs["translation"], atol=1e-12)
    np.testing.assert_allclose(T_lidar[:3, :3], quat2mat(lidar_cs["rotation"]), atol=1e-12)
    np.testing.assert_allclose(T_lidar, released.lidar_extrinsic(), atol=1e-9)
    np.testing.assert_allclose(_matrix(static["CAM_BACK"]), released.camera_extrinsic("CAM_BACK"), atol=1e-9)
    # LiDAR: the .pcd.bin bytes (x y z intensity ring, sensor frame) -> the replica's ego-frame points
    for k, (_, cloud, _) in enumerate(bag["/LIDAR_TOP"]):
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity", "ring"] and cloud.point_step == 20
        pts = np.frombuffer(cloud.data.tobytes(), np.float32).reshape(-1, 5)
        np.testing.assert_array_equal(pts, read_pcd_bin(replica.root / by_channel["LIDAR_TOP"][k]["filename"]))
        ego = pts[:, :3].astype(np.float64) @ T_lidar[:3, :3].T + T_lidar[:3, 3]
        np.testing.assert_allclose(ego, replica.points[replica.samples[k]][:, :3], atol=1e-4)
    # /tf: map -> base_link at each sample_data time, its ego_pose
    lidar_stamp = by_channel["LIDAR_TOP"][1]["timestamp"]
    tf = next(m.transforms[0] for s, m, _ in bag["/tf"] if s == lidar_stamp * 1000)
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "base_link")
    np.testing.assert_allclose(_matrix(tf), released.ego_pose_at(lidar_stamp), atol=1e-9)


def test_nuscenes2bag_sweeps_and_errors(nuscenes_replica, tmp_path, capsys):
    replica, tables = nuscenes_replica
    counts = nuscenes2bag.write_scene_bag(replica.root, "v1.0-mini", "scene-0061", tmp_path / "b", sweeps=True,
                                          progress=False)  # fmt: skip
    lidar = [r for r in tables["sample_data"] if r["filename"].startswith(("samples/LIDAR", "sweeps/LIDAR"))]
    assert counts["/LIDAR_TOP"] == len(lidar) == 4  # 2 key frames + the 2 sweeps before the second one
    stamps = [s for s, _, _ in _read_bag(tmp_path / "b")["/LIDAR_TOP"]]
    assert stamps == sorted(r["timestamp"] * 1000 for r in lidar)
    argv = ["--data", str(replica.root), "--quiet", "--out"]
    assert nuscenes2bag.main([*argv, str(tmp_path / "c"), "--scene", "scene-0999"]) == 1
    assert "scene 'scene-0999' is not in" in capsys.readouterr().err
    assert nuscenes2bag.main([*argv, str(tmp_path / "b"), "--scene", "scene-0061"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_nuscenes_bag_plays_into_dds(nuscenes_replica, tmp_path, ros_context):
    replica, tables = nuscenes_replica
    bag = tmp_path / "bag"
    nuscenes2bag.write_scene_bag(replica.root, "v1.0-mini", "scene-0061", bag, progress=False)
    topics = {"/CAM_FRONT/image_rect_compressed": CompressedImage, "/CAM_FRONT/camera_info": CameraInfo,
              "/LIDAR_TOP": PointCloud2}  # fmt: skip
    received: dict[str, list] = {t: [] for t in topics}
    sub = Node("nusc_collector", context=ros_context)
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    for topic, cls in topics.items():
        sub.create_subscription(cls, topic, lambda m, t=topic: received[t].append(m), qos)
    spinner = Spinner(ros_context, sub)
    node = Node("nusc_player", context=ros_context)
    try:
        player = bag_player.BagPlayer(node, bag, rate=20.0, topics=list(topics))
        with pytest.raises(ValueError, match=r"--wait-topics \['/CAM_BACK/camera_info'\] are not played from"):
            player.wait_for_subscribers(1.0, topics=["/CAM_BACK/camera_info"])  # not among the played topics
        assert player.wait_for_subscribers(60.0, topics=list(topics)), player.unmatched
        player.play()
        assert wait_until(lambda: all(len(v) == 2 for v in received.values()))
    finally:
        node.destroy_node()
        spinner.close()
    jpeg = received["/CAM_FRONT/image_rect_compressed"][0]
    assert jpeg.format == "jpeg" and bytes(jpeg.data)[:2] == b"\xff\xd8"
    with PILImage.open(io.BytesIO(bytes(jpeg.data))) as im:
        rgb = np.asarray(im.convert("RGB"), np.int16)
    assert np.abs(rgb - replica.images[replica.samples[0]]["CAM_FRONT"]).mean() < 4  # JPEG quality 95
    assert received["/CAM_FRONT/camera_info"][0].k[0] > 0
    xyzi = ros_msgs.pointcloud2_to_xyzi(received["/LIDAR_TOP"][1])  # x y z intensity of the 5 fields
    np.testing.assert_array_equal(xyzi, read_pcd_bin(replica.root / _key_lidar_files(tables)[1])[:, :4])


def _key_lidar_files(tables: dict) -> list[str]:
    """The key-frame LIDAR_TOP files of the replica in time order."""
    recs = [r for r in tables["sample_data"] if r["is_key_frame"] and r["filename"].startswith("samples/LIDAR_TOP")]
    return [r["filename"] for r in sorted(recs, key=lambda r: r["timestamp"])]


# ------------------------------------------------------------------------------------------ KITTI raw, ROS 1


def test_kitti_raw_ros1_bag_as_kitti2bag_writes_it(tmp_path):
    scans, images = raw_drive(tmp_path / "raw", frames=2)
    out = tmp_path / "kitti.bag"
    argv = ["--format", "ros1-kitti2bag", "--raw", str(tmp_path / "raw"), "--drive", DRIVE[:-5], "--out", str(out)]
    assert kitti2bag.main([*argv, "--quiet"]) == 0
    bag = _read_bag(out)
    assert set(bag) == {*TOPICS.values(), "/tf", "/tf_static"} and {len(v) for v in bag.values()} == {2}
    base = 1317042145 * 1_000_000_000 + 123
    assert [s for s, _, _ in bag["/tf"]] == [base, base + 100_000_000]
    assert [_stamp(m.header) for _, m, _ in bag[TOPICS["image"]]] == [base + 1_000_000, base + 101_000_000]
    assert [s for s, _, _ in bag[TOPICS["points"]]] == [base + 3_500_000, base + 103_500_000]
    _, img, msgtype = bag[TOPICS["image"]][1]
    assert msgtype == "sensor_msgs/msg/Image" and (img.encoding, img.header.frame_id) == ("bgr8", "camera_color_left")
    np.testing.assert_array_equal(img.data.reshape(24, 80, 3)[:, :, ::-1], images[1])
    _, cloud, _ = bag[TOPICS["points"]][0]
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "i"] and cloud.header.frame_id == "velo_link"
    np.testing.assert_array_equal(np.frombuffer(cloud.data.tobytes(), np.float32).reshape(-1, 4), scans[0])
    _, info, _ = bag[TOPICS["camera_info"]][0]
    calib = kitti.read_raw_calib(tmp_path / "raw" / DRIVE[:10], (24, 80))
    np.testing.assert_array_equal(info.P.reshape(3, 4), calib.P)  # the ROS 1 field names: K, D, R, P
    assert (info.height, info.width, info.distortion_model) == (24, 80, "plumb_bob")
    # tf_static: base_link -> imu_link -> velo_link and the cameras; the chain gives pykitti's T_cam2_velo
    static = {(tf.header.frame_id, tf.child_frame_id): _matrix(tf) for tf in bag["/tf_static"][0][1].transforms}
    assert set(static) == {("base_link", "imu_link"), ("imu_link", "velo_link"), ("imu_link", "camera_gray_left"),
                           ("imu_link", "camera_gray_right"), ("imu_link", "camera_color_left"),
                           ("imu_link", "camera_color_right")}  # fmt: skip
    T_cam2_velo = np.linalg.inv(static[("imu_link", "camera_color_left")]) @ static[("imu_link", "velo_link")]
    shift = np.eye(4)
    shift[0, 3] = calib.P[0, 3] / calib.P[0, 0]
    np.testing.assert_allclose(T_cam2_velo, shift @ calib.T_cam_lidar, atol=1e-9)
    np.testing.assert_allclose(static[("base_link", "imu_link")][:3, 3], [-1.405, 0.32, 0.93])
    # /tf: world -> base_link = the OXTS IMU pose (first frame at the origin)
    tf1 = bag["/tf"][1][1].transforms[0]
    assert (tf1.header.frame_id, tf1.child_frame_id) == ("world", "base_link")
    packets = np.stack([kitti.read_oxts(p) for p in sorted((tmp_path / "raw").glob("*/*/oxts/data/*.txt"))])
    np.testing.assert_allclose(_matrix(tf1), kitti.oxts_poses(packets)[1], atol=1e-6)
    assert bag["/kitti/oxts/imu"][0][1].angular_velocity.z == pytest.approx(0.1)
    assert camera_from_imu(tmp_path / "raw" / DRIVE[:10], (24, 80)).keys() == {
        "camera_gray_left", "camera_gray_right", "camera_color_left", "camera_color_right"
    }  # fmt: skip


def test_kitti_raw_errors_are_one_line(tmp_path, capsys):
    raw_drive(tmp_path / "raw", frames=2)
    argv = ["--format", "ros1-kitti2bag", "--raw", str(tmp_path / "raw"), "--quiet"]
    assert kitti2bag.main([*argv, "--out", str(tmp_path / "a.bag")]) == 2
    assert "--format ros1-kitti2bag needs --drive" in capsys.readouterr().err
    stamps = tmp_path / "raw" / DRIVE[:10] / DRIVE / "velodyne_points" / "timestamps.txt"
    stamps.write_text("2011-09-26 13:02:25\n")
    assert kitti2bag.main([*argv, "--drive", DRIVE, "--out", str(tmp_path / "b.bag")]) == 1
    assert f"{stamps}:1: expected 'YYYY-MM-DD HH:MM:SS.fffffffff'" in capsys.readouterr().err
    stamps.unlink()
    assert kitti2bag.main([*argv, "--drive", DRIVE, "--out", str(tmp_path / "c.bag")]) == 1
    assert f"KITTI raw timestamps not found: {stamps}" in capsys.readouterr().err
    stamps.write_text("2011-09-26 13:02:25.000000001\n")  # one scan left, with its stamp
    (stamps.parent / "data" / "0000000001.bin").unlink()
    assert kitti2bag.main([*argv, "--drive", DRIVE, "--out", str(tmp_path / "d.bag")]) == 1
    assert "image_02 has 2 frames, velodyne_points 1, oxts 2" in capsys.readouterr().err
    assert read_timestamps(stamps.parent.parent / "oxts" / "timestamps.txt")[0] % 1_000_000_000 == 123


@pytest.mark.parametrize("frames", [1, 2])
def test_occle_play_waits_for_subscribers_so_every_frame_arrives(tmp_path, ros_context, frames):
    """The executable starts first and waits; the subscribers come later: still frames/frames, nothing lost."""
    scans, images = raw_drive(tmp_path / "raw", frames=frames)
    bag = tmp_path / "kitti.bag"
    assert kitti2bag.main(["--format", "ros1-kitti2bag", "--raw", str(tmp_path / "raw"), "--drive", DRIVE,
                           "--out", str(bag), "--quiet"]) == 0  # fmt: skip
    inputs = {TOPICS["image"]: Image, TOPICS["camera_info"]: CameraInfo, TOPICS["points"]: PointCloud2}
    player = subprocess.Popen(
        [sys.executable, "-m", "occle_ros.bag_player", str(bag), "--rate", "5", "--wait-subscribers", "120",
         "--wait-topics", *inputs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    received: dict[str, list] = {t: [] for t in inputs}
    sub = Node("kitti_collector", context=ros_context)
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    for topic, cls in inputs.items():
        sub.create_subscription(cls, topic, lambda m, t=topic: received[t].append(m), qos)
    spinner = Spinner(ros_context, sub)
    try:
        output, _ = player.communicate(timeout=180)
        assert player.returncode == 0, output
        assert wait_until(lambda: all(len(v) >= frames for v in received.values()))
    finally:
        if player.poll() is None:
            player.kill()
        spinner.close()
    assert {t: len(v) for t, v in received.items()} == dict.fromkeys(inputs, frames)
    assert "every waited-for topic has a subscriber" in output
    for i in range(frames):
        np.testing.assert_array_equal(ros_msgs.image_to_rgb(received[TOPICS["image"]][i]), images[i])
        np.testing.assert_array_equal(ros_msgs.pointcloud2_to_xyzi(received[TOPICS["points"]][i]), scans[i])
    assert received[TOPICS["camera_info"]][0].p[3] == pytest.approx(4.5)  # P_rect_02 via the ROS 1 -> 2 conversion
