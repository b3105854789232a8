"""``occle-demo --bag``: presets, the camera <- LiDAR chain from a bag's /tf_static, and a one-frame KITTI ROS 1 bag
through occle_node over real DDS (1/1 frames: nothing lost to discovery). The nuScenes case: test_ros_e2e_bags.py."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers_bags import DRIVE, raw_drive

from occle_core.data import kitti
from occle_ros import demo, demo_bag, kitti2bag

pytestmark = pytest.mark.ros


def _pose(t: tuple[float, float, float], yaw: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = t
    return T


def test_chain_walks_the_tree_to_a_common_root():
    static = {
        "imu": ("base", _pose((1, 0, 0), 0.3)),
        "velo": ("imu", _pose((0, 2, 0))),
        "cam": ("imu", _pose((0, 0, 3), -1)),
    }
    T = demo_bag.chain(static, "cam", "velo")
    expected = np.linalg.inv(static["imu"][1] @ static["cam"][1]) @ static["imu"][1] @ static["velo"][1]
    np.testing.assert_allclose(T, expected, atol=1e-12)
    np.testing.assert_allclose(demo_bag.chain(static, "base", "velo"), static["imu"][1] @ static["velo"][1])
    with pytest.raises(ValueError, match="frame 'radar' is not in the bag's /tf_static"):
        demo_bag.chain(static, "radar", "velo")
    with pytest.raises(ValueError, match="does not connect 'cam' and 'x'"):
        demo_bag.chain({**static, "x": ("other_root", np.eye(4))}, "cam", "x")


def test_bag_facts_give_the_calibrated_extrinsics(tmp_path):
    scans, images = raw_drive(tmp_path / "raw", frames=2)
    bag = tmp_path / "k.bag"
    assert kitti2bag.main(["--format", "ros1-kitti2bag", "--raw", str(tmp_path / "raw"), "--drive", DRIVE,
                           "--out", str(bag), "--quiet"]) == 0  # fmt: skip
    assert demo_bag.detect_preset({"/a", *demo_bag.load_preset("kitti").topics}) == "kitti"
    assert demo_bag.detect_preset({"/a", *demo_bag.load_preset("nuscenes").topics}) == "nuscenes"
    with pytest.raises(ValueError, match="no preset fits"):
        demo_bag.detect_preset({"/a"})
    preset = demo_bag.load_preset("kitti")
    facts = demo_bag.read_bag_facts(bag, preset)
    assert len(facts.cloud_stamps) == 2 and facts.cloud_stamps[1] - facts.cloud_stamps[0] == 100_000_000
    (cam,) = facts.cameras
    np.testing.assert_array_equal(cam.image, images[0])
    np.testing.assert_array_equal(facts.points, scans[0])
    assert (cam.frame, facts.lidar_frame) == ("camera_color_left", "velo_link")
    calib = kitti.read_raw_calib(tmp_path / "raw" / DRIVE[:10], (24, 80))
    np.testing.assert_array_equal(cam.P, calib.P)
    # kitti2bag's camera_color_left frame is the rectified cam2 frame; with P_rect_02 the node needs rectified cam0
    (T,), T_grid = demo_bag.bag_extrinsics(facts, "lidar")
    np.testing.assert_allclose(T, calib.T_cam_lidar, atol=1e-9)
    np.testing.assert_array_equal(T_grid, np.eye(4))


def test_demo_plays_a_one_frame_kitti_bag_through_the_node(tmp_path, checkpoint, capsys):
    raw_drive(tmp_path / "raw", frames=1)
    bag = tmp_path / "k.bag"
    assert kitti2bag.main(["--format", "ros1-kitti2bag", "--raw", str(tmp_path / "raw"), "--drive", DRIVE,
                           "--out", str(bag), "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "demo"
    argv = ["--bag", str(bag), "--out", str(out), "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert demo.main([*argv, "--timeout", "300", "--rate", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("occle-demo: frames 1/1 received (0 dropped, 0 rejected), mean latency "), line
    assert (out / "bev_000000.png").is_file() and "no ground truth" in line
    written = yaml.safe_load((out / "extrinsics_from_bag.yaml").read_text())["/**"]["ros__parameters"]
    assert written["extrinsics"]["source"] == "matrix" and "grid_from_lidar" not in written["extrinsics"]
    np.testing.assert_allclose(  # what the node was given
        np.reshape(written["extrinsics"]["matrix"], (4, 4)),
        kitti.read_raw_calib(tmp_path / "raw" / DRIVE[:10], (24, 80)).T_cam_lidar,
        atol=1e-9,
    )
    received = np.load(out / "received.npz")
    assert sorted(received.files) == ["bev_000000", "labels_000000"] and received["bev_000000"].shape == (64, 64)
