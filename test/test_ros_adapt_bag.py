"""``occle-adapt-bag``: a KITTI raw replica as a kitti2bag ROS 1 bag read back as the dataset reader reads the drive,
and two adaptation steps of the shipped checkpoint on it (before / after consistency of a held-out frame); a nuScenes
replica as a ROS 2 bag read back in the ego grid frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_bags import DRIVE, raw_drive

from occle_core.checkpoint import load_checkpoint
from occle_core.data.kitti import KittiRawDataset
from occle_core.data.label_png import write_label_png
from occle_core.data.nuscenes import CAMERAS, NuScenesDataset
from occle_core.synth import released
from occle_ros import adapt_bag, kitti2bag, nuscenes2bag
from occle_ros.bag_frames import BagFrames, nearest
from occle_ros.demo_bag import load_preset

pytestmark = pytest.mark.ros
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "occle_tiny_synthetic.pt"


@pytest.fixture(scope="module")
def kitti_bag(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("raw")
    raw_drive(root / "raw", frames=3)
    bag = root / "k.bag"
    argv = ["--format", "ros1-kitti2bag", "--raw", str(root / "raw"), "--drive", DRIVE, "--out", str(bag), "--quiet"]
    assert kitti2bag.main(argv) == 0
    return root / "raw", bag


def test_nearest_within_the_slop():
    stamps = np.array([30, 10, 20], np.int64)
    np.testing.assert_array_equal(nearest(stamps, np.array([9, 16, 26, 33, 50]), 4), [1, 2, 0, 0, -1])


def test_bag_frames_equal_the_dataset_reader(kitti_bag):
    raw, bag = kitti_bag
    preset = load_preset("kitti")
    frames, reader = BagFrames(bag, preset, preset.cameras, "lidar"), KittiRawDataset(raw)
    assert len(frames) == len(reader) == 3 and frames.skipped == 0
    for i in range(3):
        got, want = frames[i], reader[i]
        assert got.frame_id == f"{i:06d}" and got.grid_frame == want.grid_frame == "lidar"
        np.testing.assert_allclose(got.points, want.points, atol=1e-5)
        np.testing.assert_array_equal(got.image, want.image)
        assert got.calib.image_size == want.calib.image_size
        np.testing.assert_allclose(got.calib.lidar_to_image, want.calib.lidar_to_image, atol=1e-5)
    # the images are 2.5 ms before the scans: a tighter slop leaves no frame
    with pytest.raises(ValueError, match="no LiDAR message on /kitti/velo/pointcloud has an image"):
        BagFrames(bag, preset, preset.cameras, "lidar", slop=0.001)


def test_nuscenes_bag_frames_are_in_the_ego_grid(tmp_path):
    replica = released.write_nuscenes_replica(tmp_path / "data", samples_per_scene=2, image_size=(18, 32), occ3d=False)
    bag = tmp_path / "bag"
    argv = ["--data", str(replica.root), "--version", "v1.0-mini", "--scene", "scene-0061", "--out", str(bag)]
    assert nuscenes2bag.main([*argv, "--quiet"]) == 0
    preset = load_preset("nuscenes")
    frames = BagFrames(bag, preset, preset.cameras, "ego", intensity_scale=1 / 255)  # the reader's 0..1 range
    reader = NuScenesDataset(replica.root)
    assert len(frames) == len(reader) == 2
    for i in range(2):
        got, want = frames[i], reader[i]
        assert got.grid_frame == "ego" and [c.name for c in got.cameras] == list(CAMERAS)
        np.testing.assert_allclose(got.points[:, :4], want.points[:, :4], atol=1e-5)
        for a, b in zip(got.cameras, want.cameras):
            np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_allclose(got.extras["lidar_origin"], released.lidar_extrinsic()[:3, 3], atol=1e-6)


def test_two_adaptation_steps_on_the_bag(kitti_bag, tmp_path, capsys):
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} is not shipped in this checkout")
    _, bag = kitti_bag
    labels = np.full((24, 80), 9, np.uint8)  # cached 2D pseudo labels: the segmenter model is never loaded
    labels[:12] = 13
    for f in ("000000", "000001"):
        write_label_png(tmp_path / "pseudo_2d" / f"{f}.png", labels)
    argv = [
        "--bag", str(bag), "--checkpoint", str(SHIPPED), "--segmenter", "deeplab-cityscapes",
        "--segmenter-model", str(tmp_path / "absent.tflite"), "--out", str(tmp_path), "--device", "cpu",
        "--no-progress", "--steps", "2", "--guard-every", "1", "--guard-warn", "1e3", "--guard-stop", "1e3",
    ]  # fmt: skip
    assert adapt_bag.main([*argv, "--hold-out", "000009"]) == 2
    assert "occle-adapt-bag: error: --hold-out ['000009'] are not frames" in capsys.readouterr().err
    assert adapt_bag.main([*argv, "--preset", "nuscenes"]) == 2  # six cameras for a one-camera checkpoint
    assert "occle-adapt-bag: error: the checkpoint takes 1 cameras ['image_2']" in capsys.readouterr().err
    assert adapt_bag.main([*argv, "--bag", str(bag.with_name("absent.bag"))]) == 2
    assert f"occle-adapt-bag: error: bag not found: {bag.with_name('absent.bag')}" in capsys.readouterr().err
    assert adapt_bag.main([*argv, "--hold-out", "000002"]) == 0
    assert load_checkpoint(tmp_path / "model.pt")["step"] == 2
    summary = json.loads((tmp_path / "adapt.json").read_text())
    assert summary["frames_adapted"] == ["000000", "000001"] and summary["frames_reported"] == ["000002"]
    assert summary["pseudo_labels_computed"] == 0 and summary["stopped_by"] is None
    for name in ("consistency_before.json", "consistency_after.json"):
        report = json.loads((tmp_path / name).read_text())
        assert [f["frame_id"] for f in report["frames"]] == ["000002"] and report["total"]["hit_voxels"] > 0
    out = capsys.readouterr().out
    assert "before, held-out frames" in out and "after 2 steps" in out
