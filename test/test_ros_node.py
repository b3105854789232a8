"""OccleNode over real rclpy/DDS: outputs equal Predictor.predict, bad input is skipped and counted, the worker
keeps only the newest frame, start-up errors are one line, and a kitti2bag bag played by occle-play flows
through the node."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from helpers_ros import (
    HW,
    STAMP,
    Spinner,
    frame_messages,
    make_frame,
    node_params,
    run_node_process,
    wait_until,
    write_sequence,
)
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from occle_ros import bag_player, kitti2bag
from occle_ros import conversions as cv
from occle_ros import node as occle_node

pytestmark = pytest.mark.ros


class Harness:
    """OccleNode + a test node (sensor publishers, output subscribers) spun by one background executor."""

    def __init__(self, ctx, checkpoint, predictor=None, **params) -> None:
        self.node = occle_node.OccleNode(
            predictor=predictor, context=ctx, parameter_overrides=node_params(checkpoint, **params)
        )
        self.io = Node("test_io", context=ctx)
        self.pubs = {
            "image": self.io.create_publisher(Image, "image", qos_profile_sensor_data),
            "camera_info": self.io.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data),
            "points": self.io.create_publisher(PointCloud2, "points", qos_profile_sensor_data),
        }
        self.markers: list[MarkerArray] = []
        self.voxels: list[PointCloud2] = []
        self.diag: list[DiagnosticArray] = []
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.io.create_subscription(MarkerArray, "occupancy/markers", self.markers.append, qos)
        self.io.create_subscription(PointCloud2, "occupancy/voxels", self.voxels.append, qos)
        self.io.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 10)
        self.spinner = Spinner(ctx, self.node, self.io)
        assert self.wait(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values()))
        assert self.wait(lambda: self.node.pub_voxels.get_subscription_count() > 0)

    def send(self, image, info, cloud) -> None:
        self.pubs["camera_info"].publish(info)
        self.pubs["image"].publish(image)
        self.pubs["points"].publish(cloud)

    wait = staticmethod(wait_until)

    def close(self) -> None:
        self.spinner.close()


def test_node_outputs_equal_predictor(ros_context, checkpoint, predictor):
    threads = torch.get_num_threads()
    h = Harness(ros_context, checkpoint, predictor=predictor, marker_alpha=0.5, torch_threads=1)
    try:
        assert torch.get_num_threads() == 1  # the torch_threads parameter
        rgb, pts, calib = make_frame(1)
        stamp = 1_700_000_000_123_456_789
        h.send(*frame_messages(rgb, pts, stamp, encoding="bgr8"))
        assert h.wait(lambda: h.markers and h.voxels), f"no output; stats {h.node.statistics()}"
        assert h.wait(
            lambda: any(kv.key == "processed" and kv.value == "1" for d in h.diag for kv in d.status[0].values)
        )
    finally:
        h.close()
        torch.set_num_threads(threads)
    expected = predictor.predict(rgb, pts, calib)  # (X, Y, Z) uint8
    assert len(np.unique(expected)) > 2, "the test model should predict several classes"
    voxels, markers = h.voxels[0], h.markers[0]
    assert (voxels.header.stamp.sec, voxels.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert voxels.header.frame_id == "velo" and markers.markers[1].header.frame_id == "velo"
    assert markers.markers[0].action == Marker.DELETEALL
    assert markers.markers[1].header.stamp == voxels.header.stamp
    assert markers.markers[1].color.a == pytest.approx(0.5)
    np.testing.assert_array_equal(cv.pointcloud2_to_occupancy(voxels, predictor.grid, 0), expected)
    np.testing.assert_array_equal(cv.marker_array_to_occupancy(markers, predictor.grid, predictor.classes), expected)
    values = {kv.key: kv.value for kv in h.diag[-1].status[0].values}
    for key in ("latency_p50_ms", "latency_p95_ms", "input_rate_hz", "dropped_superseded", "rejected", "sync_dropped"):
        assert key in values


def test_bad_input_is_counted_skipped_and_the_node_keeps_running(ros_context, checkpoint, predictor):
    h = Harness(ros_context, checkpoint, predictor=predictor, publish_classes=["car", "road", "building"])
    try:
        rgb, pts, _ = make_frame(2)
        t = STAMP
        image, info, cloud = frame_messages(rgb, pts, t)
        cloud.fields = cloud.fields[:2]  # no z
        h.send(image, info, cloud)
        assert h.wait(lambda: h.node.statistics().get("rejected.cloud_invalid") == 1)
        image, info, cloud = frame_messages(rgb, pts, t + 100_000_000)
        image.encoding = "yuv422"
        h.send(image, info, cloud)
        assert h.wait(lambda: h.node.statistics().get("rejected.image_invalid") == 1)
        image, info, cloud = frame_messages(rgb, pts, t + 200_000_000)
        info.p = np.zeros(12)
        info.k = np.zeros(9)
        h.send(image, info, cloud)
        assert h.wait(lambda: h.node.statistics().get("rejected.camera_info_invalid") == 1)
        image, info, cloud = frame_messages(rgb, pts, t + 300_000_000)
        info.width = 99
        h.send(image, info, cloud)
        assert h.wait(lambda: h.node.statistics().get("rejected.image_size_mismatch") == 1)
        image, info, cloud = frame_messages(rgb, np.full((10, 4), np.nan, np.float32), t + 400_000_000)
        h.send(image, info, cloud)
        assert h.wait(lambda: h.node.statistics().get("rejected.cloud_empty") == 1)
        h.send(*frame_messages(rgb, pts, t + 500_000_000))  # a good frame still goes through
        assert h.wait(lambda: len(h.voxels) == 1)
        stats = h.node.statistics()
        assert stats["rejected"] == 5 and stats["processed"] == 1
        assert h.wait(lambda: any(d.status[0].level == b"\x01" for d in h.diag))  # WARN after rejects
    finally:
        h.close()
    labels = cv.pointcloud2_to_occupancy(h.voxels[0], predictor.grid, 0)
    assert set(np.unique(labels)) <= {0, 1, 9, 13}  # only the published classes
    assert {m.ns for m in h.markers[0].markers[1:]} <= {"car", "road", "building"}


class SlowPredictor:
    """Wraps a predictor and sleeps, so that frames arrive faster than they are processed."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.grid, self.classes = inner.grid, inner.classes
        self.calls: list[int] = []

    def predict(self, image, points, calib):
        self.calls.append(len(points))
        time.sleep(self.delay)
        return self.inner.predict(image, points, calib)


def test_worker_takes_the_newest_frame_and_counts_drops(ros_context, checkpoint, predictor):
    slow = SlowPredictor(predictor, delay=0.4)
    h = Harness(ros_context, checkpoint, predictor=slow)
    try:
        rgb, pts, _ = make_frame(3, n=500)
        t = STAMP
        sent = []
        for i in range(8):  # 8 frames 50 ms apart: far faster than the 0.4 s model
            stamp = t + i * 50_000_000
            h.send(*frame_messages(rgb, pts[: 100 + 50 * i], stamp))
            sent.append(stamp)
            time.sleep(0.05)
        # the executor was never blocked: every message reached the synchroniser while the model slept
        assert h.wait(lambda: h.node.statistics().get("sync_matched") == 8, timeout=5)
        assert h.wait(lambda: (lambda s: s["processed"] + s["dropped_superseded"] == 8)(h.node.statistics()))
        assert h.wait(lambda: len(h.voxels) == h.node.statistics()["processed"])
    finally:
        h.close()
    stats = h.node.statistics()
    assert stats["dropped_superseded"] >= 3 and stats["processed"] <= 5
    last = h.voxels[-1].header.stamp
    assert last.sec * 1_000_000_000 + last.nanosec == sent[-1]  # the newest frame is always processed
    assert slow.calls[-1] == 100 + 50 * 7


def test_bag_from_kitti2bag_through_occle_play_into_the_node(tmp_path, ros_context, checkpoint, predictor):
    seq = write_sequence(tmp_path / "data", frames=4, seed=5, hw=HW)
    bag = tmp_path / "bag"
    assert kitti2bag.main(["--data", str(tmp_path / "data"), "--sequence", "00", "--out", str(bag)]) == 0
    h = Harness(ros_context, checkpoint, predictor=predictor, **{"extrinsics.source": "calib_file",
                "extrinsics.calib_file": str(seq / "calib.txt")})  # fmt: skip
    player_node = Node("player", context=ros_context)
    try:
        topics = kitti2bag.DEFAULT_TOPICS
        remap = {topics["image"]: "/image", topics["camera_info"]: "/camera_info", topics["points"]: "/points"}
        player = bag_player.BagPlayer(player_node, bag, rate=0.5, remap=remap)
        stats = player.play()
        assert stats.published[topics["points"]] == 4

        def settled():
            s = h.node.statistics()
            return s["processed"] + s["dropped_superseded"] + s["rejected"] + s["sync_dropped"] >= 4

        assert h.wait(settled)
        assert h.wait(lambda: len(h.voxels) == h.node.statistics()["processed"])
    finally:
        player_node.destroy_node()
        h.close()
    s = h.node.statistics()
    assert s["rejected"] == 0 and s["processed"] >= 1
    assert s["processed"] + s["dropped_superseded"] + s["sync_dropped"] == 4  # every frame: output or counted drop
    assert len(h.markers) == s["processed"]
    from occle_core.data.semantic_kitti import SemanticKittiDataset

    ds = SemanticKittiDataset(tmp_path / "data", ["00"], with_labels=False, pseudo_dir="")
    stamps = kitti2bag.frame_stamps(seq, [f for _, f in ds.frames], 1_700_000_000.0, None).tolist()
    for msg in h.voxels:
        i = stamps.index(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        sample = ds[i]
        expected = predictor.predict(sample.image, sample.points, sample.calib)
        np.testing.assert_array_equal(cv.pointcloud2_to_occupancy(msg, predictor.grid, 0), expected)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"checkpoint": "/nonexistent/model.pt"}, "checkpoint.*not found"),
        ({"marker_alpha": 2.0}, "parameter marker_alpha must be in \\[0.0, 1.0\\]"),
        ({"publish_classes": ["car", "spaceship"]}, "parameter publish_classes: unknown class 'spaceship'"),
        ({"device": "tpu"}, "parameter device must be auto, cpu, cuda or cuda:N"),
        ({"extrinsics.source": "calib_file"}, "extrinsics.calib_file is empty"),
        ({"extrinsics.source": "matrix", "extrinsics.matrix": [1.0] * 16}, "not a rigid transform"),
        ({"sync.queue_size": "ten"}, "parameter sync.queue_size must be a number"),
        ({"torch_threads": -1}, "parameter torch_threads must be in \\[0, inf\\]"),
        ({"torch_threads": 1.5}, "parameter torch_threads must be an integer"),
        ({"marker_alfa": 0.3}, "unknown parameter\\(s\\) \\['marker_alfa'\\]"),
    ],
)
def test_startup_errors_raise_one_clear_message(ros_context, checkpoint, override, pattern):
    params = node_params(checkpoint)
    params += [Parameter(k, value=v) for k, v in override.items()]
    with pytest.raises(occle_node.StartupError, match=pattern):
        occle_node.OccleNode(context=ros_context, parameter_overrides=params)


def test_foreign_checkpoint_and_cuda_on_cpu(ros_context, tmp_path, checkpoint):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(occle_node.StartupError, match="not an occle checkpoint"):
        occle_node.OccleNode(context=ros_context, parameter_overrides=node_params(foreign))
    if not torch.cuda.is_available():
        with pytest.raises(occle_node.StartupError, match="cuda"):
            occle_node.OccleNode(context=ros_context, parameter_overrides=node_params(checkpoint, device="cuda"))


def test_occle_node_process_exits_with_one_line(tmp_path):
    """The executable: a missing checkpoint gives exit status 1 and a single error line, no traceback."""
    proc, lines = run_node_process("-p", f"checkpoint:={tmp_path / 'none.pt'}")
    assert proc.returncode == 1
    assert len(lines) == 1 and lines[0].startswith("occle_node: error: checkpoint"), proc.stderr
    assert "Traceback" not in proc.stderr
