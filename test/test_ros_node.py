"""OccleNode over real rclpy/DDS: outputs equal Predictor.predict, bad input is skipped and counted, the worker
keeps only the newest frame, start-up errors are one line, and a kitti2bag bag played by occle-play flows
through the node."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from helpers_ros import (
    GRID,
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

from occle_core.checkpoint import make_checkpoint, save_checkpoint
from occle_core.config import load_config
from occle_core.model.occle import OccLE
from occle_ros import bag_player, kitti2bag, readback
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


#: Labels are compared where the best class leads the runner-up by more than this share of the logits' scale.
#: Why: the node and the reference run the same float32 network, but a different kernel or thread split sums the
#: convolutions in another order; each reordered float32 reduction changes a value by a few ulps (~1e-7
#: relative) and ~30 layers compound that to ~1e-5 of the logits' magnitude. 1e-4 leaves ten times that, and a
#: voxel whose top two classes are closer than this is a tie that either answer may win: there the node's class
#: must be one of the tied ones.
TIE_MARGIN = 1e-4


def assert_labels_match_up_to_ties(labels: np.ndarray, logits: np.ndarray) -> None:
    """``labels`` (X, Y, Z) equal ``logits`` (K, X, Y, Z).argmax(0) wherever the top-2 logits differ by more than
    TIE_MARGIN * max|logits|; elsewhere ``labels`` is one of the classes within that margin of the best."""
    margin = TIE_MARGIN * float(np.abs(logits).max())
    top2 = np.sort(logits, axis=0)[-2:]  # (2, X, Y, Z)
    clear = top2[1] - top2[0] > margin
    assert clear.mean() > 0.99, "the test model should decide almost every voxel clearly"
    np.testing.assert_array_equal(labels[clear], logits.argmax(0)[clear])
    chosen = np.take_along_axis(logits, labels[None].astype(np.int64), axis=0)[0]  # (X, Y, Z)
    assert (top2[1] - chosen <= margin)[~clear].all(), "a tied voxel got a class that is not among the tied ones"


def test_node_outputs_equal_predictor(ros_context, checkpoint, predictor):
    threads = torch.get_num_threads()
    h = Harness(ros_context, checkpoint, predictor=predictor, marker_alpha=0.5, torch_threads=1)
    rgb, pts, calib = make_frame(1)
    try:
        assert torch.get_num_threads() == 1  # the torch_threads parameter
        stamp = 1_700_000_000_123_456_789
        h.send(*frame_messages(rgb, pts, stamp, encoding="bgr8"))
        assert h.wait(lambda: h.markers and h.voxels), f"no output; stats {h.node.statistics()}"
        assert h.wait(
            lambda: any(kv.key == "processed" and kv.value == "1" for d in h.diag for kv in d.status[0].values)
        )
        # the reference under the node's thread count: like with like
        expected = predictor.predict(rgb, pts, calib)  # (X, Y, Z) uint8
        logits = predictor.predict_logits(rgb, pts, calib).detach().float().cpu().numpy()  # (K, X, Y, Z)
    finally:
        h.close()
        torch.set_num_threads(threads)
    assert len(np.unique(expected)) > 2, "the test model should predict several classes"
    voxels, markers = h.voxels[0], h.markers[0]
    assert (voxels.header.stamp.sec, voxels.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    assert voxels.header.frame_id == "velo" and markers.markers[1].header.frame_id == "velo"
    assert markers.markers[0].action == Marker.DELETEALL
    assert markers.markers[1].header.stamp == voxels.header.stamp
    assert markers.markers[1].color.a == pytest.approx(0.5)
    from_voxels = readback.pointcloud2_to_occupancy(voxels, predictor.grid, 0)
    np.testing.assert_array_equal(readback.marker_array_to_occupancy(markers, predictor.grid, predictor.classes),
                                  from_voxels)  # fmt: skip
    assert_labels_match_up_to_ties(from_voxels, logits)
    assert_labels_match_up_to_ties(expected, logits)
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
    labels = readback.pointcloud2_to_occupancy(h.voxels[0], predictor.grid, 0)
    assert set(np.unique(labels)) <= {0, 1, 9, 13}  # only the published classes
    assert {m.ns for m in h.markers[0].markers[1:]} <= {"car", "road", "building"}


class GatedPredictor:
    """Wraps a predictor; each call waits until the test opens the gate, so frames pile up while one runs."""

    def __init__(self, inner) -> None:
        self.inner, self.gate = inner, threading.Event()
        self.grid, self.classes = inner.grid, inner.classes
        self.calls: list[int] = []

    def predict(self, image, points, calib):
        self.calls.append(len(points))
        assert self.gate.wait(60.0), "the test never opened the gate"
        return self.inner.predict(image, points, calib)


def test_worker_takes_the_newest_frame_and_counts_drops(ros_context, checkpoint, predictor):
    gated = GatedPredictor(predictor)
    h = Harness(ros_context, checkpoint, predictor=gated)
    try:
        rgb, pts, _ = make_frame(3, n=500)
        stamps = [STAMP + i * 50_000_000 for i in range(8)]
        h.send(*frame_messages(rgb, pts[:100], stamps[0]))
        assert h.wait(lambda: len(gated.calls) == 1)  # the worker is inside the model with frame 0
        for i in range(1, 8):  # one set at a time (a burst could overflow the best-effort keep-last-5 queues)
            h.send(*frame_messages(rgb, pts[: 100 + 50 * i], stamps[i]))
            # the executor is never blocked: each set reaches the synchroniser while the model waits
            assert h.wait(lambda n=i + 1: h.node.statistics().get("sync_matched") == n)
        gated.gate.set()
        assert h.wait(lambda: len(h.voxels) == 2)
    finally:
        h.close()
    stats = h.node.statistics()
    # frames 1..6 were each replaced in the one-slot mailbox by the next one; frame 7 ran after frame 0
    assert stats["processed"] == 2 and stats["dropped_superseded"] == 6
    assert gated.calls == [100, 100 + 50 * 7]
    last = h.voxels[-1].header.stamp
    assert last.sec * 1_000_000_000 + last.nanosec == stamps[-1]  # the newest frame is always processed


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
        logits = predictor.predict_logits(sample.image, sample.points, sample.calib).detach().float().cpu().numpy()
        assert_labels_match_up_to_ties(readback.pointcloud2_to_occupancy(msg, predictor.grid, 0), logits)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"checkpoint": "/nonexistent/model.pt"}, "checkpoint.*not found"),
        ({"marker_alpha": 2.0}, "parameter marker_alpha must be in \\[0.0, 1.0\\]"),
        ({"publish_classes": ["car", "spaceship"]}, "parameter publish_classes: unknown class 'spaceship'"),
        ({"device": "tpu"}, "parameter device must be auto, cpu, cuda or cuda:N"),
        ({"extrinsics.source": "calib_file"}, "extrinsics.calib_file is empty"),
        ({"extrinsics.source": "matrix", "extrinsics.matrix": [1.0] * 16}, "not a rigid transform"),
        ({"sync.queue_size": "ten"}, "parameter sync.queue_size must be of type integer \\(e.g. 10\\), got 'ten'"),
        ({"torch_threads": -1}, "parameter torch_threads must be in \\[0, 1024\\], got -1"),
        ({"torch_threads": 1.5}, "parameter torch_threads must be of type integer"),
        ({"ground_gate": -2.0}, "parameter ground_gate must be in \\[-1.0, 100.0\\], got -2.0"),
        ({"input_qos": "fast"}, "parameter input_qos must be one of \\['sensor_data', 'reliable'\\]"),
        ({"marker_alfa": 0.3}, "unknown parameter\\(s\\) \\['marker_alfa'\\]"),
    ],
)
def test_startup_errors_raise_one_clear_message(ros_context, checkpoint, override, pattern):
    params = node_params(checkpoint)
    params += [Parameter(k, value=v) for k, v in override.items()]
    with pytest.raises(occle_node.StartupError, match=pattern):
        occle_node.OccleNode(context=ros_context, parameter_overrides=params)


def test_ground_gate_parameter_reaches_the_predictor(ros_context, checkpoint):
    for value, expect in ((-1.0, 0.0), (0.5, 0.5)):  # -1: the checkpoint's (off in the test checkpoint)
        params = node_params(checkpoint) + [Parameter("ground_gate", value=value)]
        node = occle_node.OccleNode(context=ros_context, parameter_overrides=params)
        try:
            assert node.predictor.model.ground_gate == expect
        finally:
            node.destroy_node()


def test_foreign_checkpoint_and_cuda_on_cpu(ros_context, tmp_path, checkpoint):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(occle_node.StartupError, match="not an occle checkpoint"):
        occle_node.OccleNode(context=ros_context, parameter_overrides=node_params(foreign))
    if not torch.cuda.is_available():
        with pytest.raises(occle_node.StartupError, match="cuda"):
            occle_node.OccleNode(context=ros_context, parameter_overrides=node_params(checkpoint, device="cuda"))


def test_a_multi_frame_checkpoint_is_refused_naming_the_setting(ros_context, tmp_path, checkpoint):
    """The node feeds one scan per frame: a checkpoint trained on merged past scans (model.time_features) is refused
    at start-up instead of being fed points without their time offsets."""
    cfg = load_config(None, {"data": {"grid": GRID, "image_size": list(HW), "past_frames": 2}})
    path = tmp_path / "multi_frame.pt"
    weights = OccLE(cfg).state_dict()
    save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), weights))
    pattern = r"checkpoint: .*multi-frame input \(model.time_features true, data.past_frames 2\).*does not accumulate"
    with pytest.raises(occle_node.StartupError, match=pattern):
        occle_node.OccleNode(context=ros_context, parameter_overrides=node_params(path))


def test_occle_node_process_exits_with_one_line(tmp_path):
    """The executable: a missing checkpoint gives exit status 1 and a single error line, no traceback."""
    proc, lines = run_node_process("-p", f"checkpoint:={tmp_path / 'none.pt'}")
    assert proc.returncode == 1
    assert len(lines) == 1 and lines[0].startswith("occle_node: error: checkpoint"), proc.stderr
    assert "Traceback" not in proc.stderr
