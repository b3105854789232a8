"""occle-kitti2bag and occle-play: bags written and played through real rclpy/DDS (ROS 1 and ROS 2 bags)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers_ros import SEQ_T_AXES, Spinner, wait_until, write_sequence
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import Writer as Writer2
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String

from occle_ros import bag_player, kitti2bag
from occle_ros import msgs as ros_msgs

pytestmark = pytest.mark.ros


class Collector:
    """A node that records every message of some topics, spun by a background executor."""

    def __init__(self, ctx, topics: dict[str, type]) -> None:
        self.node = Node("collector", context=ctx)
        self.msgs: dict[str, list] = {t: [] for t in topics}
        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        for topic, cls in topics.items():
            self.node.create_subscription(cls, topic, lambda m, t=topic: self.msgs[t].append(m), qos)
        self.spinner = Spinner(ctx, self.node)

    def wait(self, counts: dict[str, int], timeout: float = 10.0) -> bool:
        """True once every topic in ``counts`` has at least its count of messages (False after ``timeout`` s)."""
        return wait_until(lambda: all(len(self.msgs[t]) >= n for t, n in counts.items()), timeout)

    def close(self) -> None:
        self.spinner.close()


# ------------------------------------------------------------------------------------------------ kitti2bag


def test_kitti2bag_writes_every_topic(tmp_path):
    seq = write_sequence(tmp_path / "data", frames=3)
    out = tmp_path / "bag"
    assert kitti2bag.main(["--data", str(tmp_path / "data"), "--sequence", "0", "--out", str(out)]) == 0
    assert any(p.suffix == ".mcap" for p in out.iterdir())
    typestore = get_typestore(Stores.LATEST)
    with AnyReader([out], default_typestore=typestore) as reader:
        by_topic: dict[str, list] = {}
        for conn, stamp, raw in reader.messages():
            by_topic.setdefault(conn.topic, []).append((stamp, reader.deserialize(raw, conn.msgtype)))
    topics = kitti2bag.DEFAULT_TOPICS
    assert {len(v) for k, v in by_topic.items() if k != "/tf_static"} == {3}
    assert len(by_topic["/tf_static"]) == 1
    stamps = [s for s, _ in by_topic[topics["points"]]]
    assert stamps == [1_700_000_000_000_000_000 + i * 100_000_000 for i in range(3)]
    img = by_topic[topics["image"]][1][1]
    assert (img.encoding, img.height, img.width) == ("rgb8", 24, 80)
    from occle_core.data.semantic_kitti import read_image, read_points

    np.testing.assert_array_equal(img.data.reshape(24, 80, 3), read_image(seq / "image_2" / "000001.png"))
    cloud = by_topic[topics["points"]][2][1]
    pts = np.frombuffer(cloud.data.tobytes(), np.float32).reshape(-1, 4)
    np.testing.assert_array_equal(pts, read_points(seq / "velodyne" / "000002.bin"))
    info = by_topic[topics["camera_info"]][0][1]
    assert info.p[0] == 50.0 and (info.height, info.width) == (24, 80)
    static = by_topic["/tf_static"][0][1].transforms[0]
    assert (static.header.frame_id, static.child_frame_id) == ("velo_link", "camera_color_left")
    assert static.transform.translation.x == pytest.approx(np.linalg.inv(SEQ_T_AXES)[0, 3])
    odom = by_topic["/tf"][2][1].transforms[0]
    assert odom.child_frame_id == "velo_link" and odom.transform.translation.x == pytest.approx(1.4)


def test_kitti2bag_errors_are_one_line(tmp_path, capsys):
    write_sequence(tmp_path / "data", frames=1)
    assert kitti2bag.main(["--data", str(tmp_path / "data"), "--sequence", "07", "--out", str(tmp_path / "b")]) == 1
    assert "unknown sequence '07'" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    assert (
        kitti2bag.main(["--data", str(tmp_path / "data"), "--sequence", "00", "--out", str(tmp_path / "exists")]) == 1
    )
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- occle-play


def test_play_ros2_mcap_bag_publishes_every_frame(tmp_path, ros_context):
    seq = write_sequence(tmp_path / "data", frames=3, seed=1)
    bag = tmp_path / "bag"
    kitti2bag.write_bag(tmp_path / "data", "00", bag, rate=20.0)
    topics = kitti2bag.DEFAULT_TOPICS
    col = Collector(ros_context, {topics["image"]: Image, topics["camera_info"]: CameraInfo, "/cloud": PointCloud2})
    node = Node("player", context=ros_context)
    try:
        player = bag_player.BagPlayer(node, bag, rate=4.0, remap={topics["points"]: "/cloud"})
        assert player.wait_for_subscribers(5.0)  # creates the publishers and waits for their match
        t0 = time.monotonic()
        stats = player.play()
        elapsed = time.monotonic() - t0
        assert col.wait({topics["image"]: 3, topics["camera_info"]: 3, "/cloud": 3})
    finally:
        node.destroy_node()
        col.close()
    # 3 frames 50 ms apart at 4x speed: the player sleeps at least 25 ms (no upper bound: a busy machine is slower)
    assert elapsed >= 0.05 / 4.0 * 2 * 0.9
    assert stats.published[topics["points"]] == 3
    tf_available = bag_player.ros2_message_class("tf2_msgs/msg/TFMessage") is not None
    assert ("/tf" in stats.skipped_types) == (not tf_available)
    from occle_core.data.semantic_kitti import read_points

    for i, msg in enumerate(col.msgs["/cloud"]):
        np.testing.assert_array_equal(ros_msgs.pointcloud2_to_xyzi(msg), read_points(seq / "velodyne" / f"{i:06d}.bin"))
    assert [m.header.stamp.nanosec for m in col.msgs[topics["image"]]] == [0, 50_000_000, 100_000_000]
    assert col.msgs[topics["camera_info"]][0].p[2] == 40.0


def test_play_ros1_bag_converts_and_skips_unknown_types(tmp_path, ros_context):
    ts = get_typestore(Stores.ROS1_NOETIC)
    ts.register(get_types_from_msg("int32 value", "my_pkg/msg/Custom"))
    t = ts.types
    bag = tmp_path / "kitti.bag"
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    pts = np.arange(20, dtype=np.float32).reshape(5, 4)
    with Writer1(bag) as w:
        c_img = w.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=ts)
        c_info = w.add_connection("/cam/info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_pts = w.add_connection("/velo", "sensor_msgs/msg/PointCloud2", typestore=ts)
        c_custom = w.add_connection("/custom", "my_pkg/msg/Custom", typestore=ts)
        for i in range(2):
            stamp = 1_000_000_000 + i * 20_000_000
            hdr = t["std_msgs/msg/Header"](
                seq=i, stamp=t["builtin_interfaces/msg/Time"](sec=1, nanosec=i * 20_000_000), frame_id="cam"
            )
            img = t["sensor_msgs/msg/Image"](
                header=hdr, height=2, width=3, encoding="bgr8", is_bigendian=0, step=9, data=rgb.reshape(-1)
            )
            roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            P = np.arange(12, dtype=np.float64) + i
            info = t["sensor_msgs/msg/CameraInfo"](
                header=hdr, height=2, width=3, distortion_model="plumb_bob", D=np.zeros(5), K=np.ones(9),
                R=np.eye(3).reshape(-1), P=P, binning_x=0, binning_y=0, roi=roi,
            )  # fmt: skip
            pf = t["sensor_msgs/msg/PointField"]
            cloud = t["sensor_msgs/msg/PointCloud2"](
                header=hdr, height=1, width=5,
                fields=[pf(name=n, offset=4 * k, datatype=7, count=1) for k, n in enumerate(["x", "y", "z", "i"])],
                is_bigendian=False, point_step=16, row_step=80, data=pts.view(np.uint8).reshape(-1), is_dense=True,
            )  # fmt: skip
            w.write(c_img, stamp, ts.serialize_ros1(img, "sensor_msgs/msg/Image"))
            w.write(c_info, stamp, ts.serialize_ros1(info, "sensor_msgs/msg/CameraInfo"))
            w.write(c_pts, stamp, ts.serialize_ros1(cloud, "sensor_msgs/msg/PointCloud2"))
            w.write(c_custom, stamp, ts.serialize_ros1(t["my_pkg/msg/Custom"](value=i), "my_pkg/msg/Custom"))
    col = Collector(ros_context, {"/cam/image": Image, "/cam/info": CameraInfo, "/velo": PointCloud2})
    node = Node("player1", context=ros_context)
    try:
        player = bag_player.BagPlayer(node, bag, rate=10.0)
        stats = player.play()
        assert col.wait({"/cam/image": 2, "/cam/info": 2, "/velo": 2})
    finally:
        node.destroy_node()
        col.close()
    assert stats.skipped_types == {"/custom": "my_pkg/msg/Custom"}
    img = col.msgs["/cam/image"][1]
    assert img.header.stamp.nanosec == 20_000_000 and img.header.frame_id == "cam"
    np.testing.assert_array_equal(ros_msgs.image_to_rgb(img), rgb[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(col.msgs["/cam/info"][1].p), np.arange(12) + 1.0)
    np.testing.assert_array_equal(ros_msgs.pointcloud2_to_xyzi(col.msgs["/velo"][0]), pts)


def _string_bag(path: Path, n: int = 5, period_ns: int = 100_000_000, storage=StoragePlugin.SQLITE3) -> None:
    ts = get_typestore(Stores.LATEST)
    with Writer2(path, version=9, storage_plugin=storage) as w:
        c = w.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
        for i in range(n):
            msg = ts.types["std_msgs/msg/String"](data=f"m{i}")
            w.write(c, 5_000_000_000 + i * period_ns, ts.serialize_cdr(msg, "std_msgs/msg/String"))


def test_play_rate_offset_clock_and_loop(tmp_path, ros_context):
    bag = tmp_path / "chatter"
    _string_bag(bag)  # sqlite3 storage, 5 messages 100 ms apart
    col = Collector(ros_context, {"/chatter": String, "/clock": Clock})
    node = Node("player2", context=ros_context)
    try:
        t0 = time.monotonic()
        stats = bag_player.BagPlayer(node, bag, rate=2.0, start_offset=0.15, clock=True).play()
        elapsed = time.monotonic() - t0
        assert col.wait({"/chatter": 3, "/clock": 3})
        assert [m.data for m in col.msgs["/chatter"]] == ["m2", "m3", "m4"]  # offset 0.15 s skips m0, m1
        assert elapsed >= 0.09  # 200 ms of bag at 2x: at least 100 ms of sleeps (no upper bound: load makes it slower)
        assert col.msgs["/clock"][0].clock.sec == 5 and col.msgs["/clock"][0].clock.nanosec == 200_000_000
        assert stats.published == {"/chatter": 3}

        col.msgs["/chatter"].clear()
        stop = threading.Event()
        looper = bag_player.BagPlayer(node, bag, rate=20.0, loop=True)
        thread = threading.Thread(target=looper.play, args=(stop,))
        thread.start()
        assert col.wait({"/chatter": 12}, timeout=10)
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive() and looper.stats.loops >= 2
        assert [m.data for m in col.msgs["/chatter"][:6]] == ["m0", "m1", "m2", "m3", "m4", "m0"]
    finally:
        node.destroy_node()
        col.close()


def test_convert_matches_raw_for_ros2_bags():
    """The generic rosbags -> rclpy conversion gives the message rclpy itself decodes from the same bytes."""
    from rclpy.serialization import deserialize_message

    ts = get_typestore(Stores.LATEST)
    t = ts.types
    hdr = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=3, nanosec=9), frame_id="f")
    roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=1, y_offset=2, height=3, width=4, do_rectify=True)
    info = t["sensor_msgs/msg/CameraInfo"](
        header=hdr, height=5, width=6, distortion_model="plumb_bob", d=np.arange(5.0), k=np.arange(9.0),
        r=np.arange(9.0), p=np.arange(12.0), binning_x=1, binning_y=2, roi=roi,
    )  # fmt: skip
    raw = bytes(ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
    assert bag_player.to_ros2_message(info, CameraInfo) == deserialize_message(raw, CameraInfo)


def test_occle_play_cli_errors(tmp_path, capsys):
    assert bag_player.main([str(tmp_path / "missing")]) == 2
    assert "bag not found" in capsys.readouterr().err
    bag = tmp_path / "chatter"
    _string_bag(bag, n=1)
    assert bag_player.main([str(bag), "--remap", "nonsense"]) == 2
    assert "FROM:=TO" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9, storage_identifier: mcap")
    assert bag_player.main([str(broken)]) == 1
    assert f"cannot open bag {broken}" in capsys.readouterr().err
