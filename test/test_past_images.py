"""Past images as extra camera views (``data.past_images``): the past view's calibration against a world point's
own projection in the past frame, the views and their pseudo labels, config validation, a training run with its
checkpoint's camera set, ``Predictor`` / ``occle-predict`` with the past views, and ``occle_node``'s refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_multiframe import TR
from test_train import tiny_overrides, write_tiny_dataset

from occle_core.checkpoint import load_checkpoint, load_model, make_checkpoint, save_checkpoint
from occle_core.config import load_config
from occle_core.data import semantic_kitti as sk
from occle_core.data.batch import collate, resize_nearest
from occle_core.data.factory import build_dataset
from occle_core.data.kitti_calib import read_kitti_calib, write_kitti_calib
from occle_core.data.label_png import write_label_png
from occle_core.data.multiframe import MultiFrameDataset
from occle_core.engine.trainer import MODEL_NAME, Trainer
from occle_core.geometry import Calib
from occle_core.model.occle import OccLE
from occle_core.predictor import Predictor
from occle_core.predictor import main as predict_main

HW = (48, 160)


def pose(yaw_deg: float, x: float, y: float, z: float = 0.0) -> np.ndarray:
    """(4, 4) LiDAR pose: a turn of ``yaw_deg`` about z and a translation."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    return np.array([[c, -s, 0, x], [s, c, 0, y], [0, 0, 1, z], [0, 0, 0, 1]], np.float64)


# LiDAR poses (LiDAR -> first LiDAR frame): driving forward while turning left, a little climb
LIDAR_POSES = [np.eye(4), pose(8.0, 1.5, 0.2, 0.05), pose(17.0, 2.9, 0.7, 0.1)]


def write_poses_and_times(seq: Path, lidar_poses: list[np.ndarray], T_cam_lidar: np.ndarray) -> None:
    """``poses.txt`` (camera-0 poses of the LiDAR poses) and ``times.txt`` (10 Hz) of a sequence folder."""
    sk.write_poses(seq / "poses.txt", np.stack([T_cam_lidar @ L @ np.linalg.inv(T_cam_lidar) for L in lidar_poses]))
    sk.write_times(seq / "times.txt", 0.1 * np.arange(len(lidar_poses)))


@pytest.fixture(scope="module")
def turn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-frame sequence 00 with the turning LIDAR_POSES, an offset Tr, distinct images, pseudo labels for frame 1."""
    root = tmp_path_factory.mktemp("past_images")
    seq = root / "sequences" / "00"
    for sub in ("velodyne", "image_2", "pseudo_2d"):
        (seq / sub).mkdir(parents=True)
    P = np.array([[80.0, 0, 80, 4.5], [0, 80, 24, 0.3], [0, 0, 1, 0.002]])  # P2 with KITTI-like offset terms
    write_kitti_calib(seq / "calib.txt", Calib(P, TR, HW))
    write_poses_and_times(seq, LIDAR_POSES, TR)
    for i in range(3):
        sk.write_points(seq / "velodyne" / f"{i:06d}.bin", np.array([[5.0 + i, 0.0, 0.0, 0.5]], np.float32))
        sk.write_image(seq / "image_2" / f"{i:06d}.png", np.full((*HW, 3), 40 * (i + 1), np.uint8))
    write_label_png(seq / "pseudo_2d" / "000001.png", np.full(HW, 7, np.uint8))
    return root


def pixel(calib: Calib, point: np.ndarray) -> np.ndarray:
    """(2,) float64 pixel (column, row) of a homogeneous (4,) point."""
    h = calib.lidar_to_image @ point  # (3,)
    return h[:2] / h[2]


def test_a_world_point_lands_on_its_pixel_in_the_past_image(turn_root: Path) -> None:
    base = sk.SemanticKittiDataset(turn_root, ["00"], with_labels=False)
    sample = MultiFrameDataset(base, 2, 2)[2]
    assert [v.name for v in sample.cameras] == ["image_2", "image_2@-1", "image_2@-2"]
    world = np.array([14.0, 3.0, 0.4, 1.0])  # fixed in the first LiDAR frame, ahead of every pose
    in_current = np.linalg.inv(LIDAR_POSES[2]) @ world  # where the current frame sees it
    for m, view in enumerate(sample.cameras[1:], 1):
        own = base.camera_view("00", f"{2 - m:06d}")  # the past frame's own image and calibration
        np.testing.assert_array_equal(view.image, own.image)
        in_past = np.linalg.inv(LIDAR_POSES[2 - m]) @ world  # the same world point in the past LiDAR frame
        expected = pixel(own.calib, in_past)
        assert np.all((expected >= 0) & (expected < HW[::-1]))  # inside the past image
        np.testing.assert_allclose(pixel(view.calib, in_current), expected, rtol=0, atol=1e-6)
        # the mistakes this catches: no pose at all, or the transform's direction reversed
        backwards = own.calib.T_cam_lidar @ np.linalg.inv(LIDAR_POSES[2]) @ LIDAR_POSES[2 - m]
        for wrong in (own.calib, Calib(own.calib.P, backwards, HW)):
            assert np.abs(pixel(wrong, in_current) - expected).max() > 1.0
    # each past view carries its own frame's pseudo labels (frame 1: all 7, frame 0: none); frame 0's past views are
    # frame 0 itself through the identity transform
    assert sample.cameras[1].pseudo2d is not None and (sample.cameras[1].pseudo2d == 7).all()
    assert sample.cameras[2].pseudo2d is None
    first = MultiFrameDataset(base, 2, 2)[0]
    for view in first.cameras[1:]:
        np.testing.assert_allclose(view.calib.T_cam_lidar, first.calib.T_cam_lidar, atol=1e-12)
        np.testing.assert_array_equal(view.image, first.image)
    only_scans = MultiFrameDataset(base, 2)[2]
    assert [v.name for v in only_scans.cameras] == ["image_2"]


def test_past_images_are_validated_naming_the_field(turn_root: Path) -> None:
    with pytest.raises(ValueError, match=r"data.past_images must be an integer in \[0, data.past_frames = 1\]"):
        load_config(None, {"data": {"past_frames": 1, "past_images": 2}}).validate()
    with pytest.raises(ValueError, match=r"data.past_images must be an integer in \[0, data.past_frames = 0\]"):
        load_config(None, {"data": {"past_images": 1}}).validate()
    with pytest.raises(ValueError, match="data.past_images must be a number"):
        load_config(None, {"data": {"past_frames": 1, "past_images": "1"}}).validate()
    with pytest.raises(ValueError, match="data.past_images must be 0 for datasets other than semantic_kitti"):
        load_config(None, {"data": {"dataset": "occ3d_nuscenes", "past_frames": 1, "past_images": 1}}).validate()
    with pytest.raises(ValueError, match=r"data.cameras must be .*data.past_images = 1: \['image_2@-1'\]"):
        load_config(
            None, {"data": {"past_frames": 2, "past_images": 1, "cameras": ["image_2", "image_2@-2"]}}
        ).validate()
    base = sk.SemanticKittiDataset(turn_root, ["00"], with_labels=False)
    with pytest.raises(ValueError, match=r"past_images must be an integer in \[0, past_frames = 1\]"):
        MultiFrameDataset(base, 1, 2)
    cfg = load_config(None, {"data": {"past_frames": 2, "past_images": 2}})
    cfg.validate()
    assert cfg.data.camera_names() == ["image_2", "image_2@-1", "image_2@-2"]
    cfg.data.cameras = cfg.data.camera_names()  # what a loaded checkpoint's config holds: the same set, once
    cfg.validate()
    assert cfg.data.camera_names() == ["image_2", "image_2@-1", "image_2@-2"]
    assert load_config(None, {"data": {"past_frames": 2}}).data.camera_names() == ["image_2"]


@pytest.fixture(scope="module")
def posed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_train's tiny box scenes (train 00: 3 frames, val 01: 2; pseudo labels on every frame) with the turning
    poses and 10 Hz times."""
    root = write_tiny_dataset(tmp_path_factory.mktemp("past_images_train"), {"00": 3, "01": 2})
    T_cam_lidar = read_kitti_calib(root / "sequences" / "00" / "calib.txt").T_cam_lidar
    for seq, n in (("00", 3), ("01", 2)):
        write_poses_and_times(root / "sequences" / seq, LIDAR_POSES[:n], T_cam_lidar)
    return root


def test_training_with_a_past_image_and_its_checkpoint(posed_root: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(posed_root, tmp_path / "run", steps=2, ckpt_every=0)
    overrides["data"].update(past_frames=1, past_images=1)
    cfg = load_config(None, overrides)
    train = build_dataset(cfg, "train")
    batch = collate([train[1], train[2]], cfg)  # what a training step reads: 2 frames x 2 cameras
    assert batch.num_cameras == 2 and batch.image.shape == (4, 3, *cfg.data.image_size)
    past_pseudo = resize_nearest(train[0].pseudo2d, cfg.data.image_size)  # frame 1's past view: frame 0's labels
    np.testing.assert_array_equal(batch.pseudo2d[1].numpy(), past_pseudo)
    summary = Trainer(cfg, device="cpu", progress=False).fit()
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    path = tmp_path / "run" / MODEL_NAME
    assert load_checkpoint(path)["cameras"] == ["image_2", "image_2@-1"]
    _, saved, _ = load_model(path)
    assert saved.data.past_images == 1 and saved.data.camera_names() == ["image_2", "image_2@-1"]
    predictor = Predictor(path, "cpu")
    assert predictor.camera_names == ["image_2", "image_2@-1"]
    frame = MultiFrameDataset(sk.SemanticKittiDataset(posed_root, ["01"], with_labels=False), 1, 1)[1]
    views = [(v.image, v.calib) for v in frame.cameras]
    labels = predictor.predict(views, frame.points)
    assert labels.shape == (32, 32, 4) and labels.dtype == np.uint8
    with pytest.raises(ValueError, match=r"this checkpoint takes 2 camera\(s\) \['image_2', 'image_2@-1'\]"):
        predictor.predict(views[:1], frame.points)
    current_twice = [views[0], views[0]]  # the past view is read: replacing it changes the logits
    assert not torch.equal(
        predictor.predict_logits(views, frame.points), predictor.predict_logits(current_twice, frame.points)
    )
    out = tmp_path / "pred"
    args = ["--checkpoint", str(path), "--data", str(posed_root), "--sequence", "01", "--out", str(out)]
    assert predict_main([*args, "--device", "cpu", "--no-png"]) == 0  # builds the past views itself
    assert sorted(p.name for p in (out / "sequences" / "01" / "predictions").iterdir()) == [
        "000000.label",
        "000001.label",
    ]


def test_occle_node_refuses_a_past_image_checkpoint(tmp_path: Path) -> None:
    pipeline = pytest.importorskip("occle_ros.pipeline")
    grid = {"origin": [0.0, -12.8, -2.0], "voxel_size": 1.6, "shape": [16, 16, 4]}
    for time_features in (False, True):  # refused whatever the time channels (false: the scan-ablation)
        cfg = load_config(
            None,
            {
                "data": {"grid": grid, "image_size": [32, 96], "past_frames": 1, "past_images": 1},
                "model": {"time_features": time_features},
            },
        )
        path = tmp_path / f"past_image_{time_features}.pt"
        weights = OccLE(cfg).state_dict()
        save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), weights))
        with pytest.raises(
            ValueError, match=r"past camera images \(data.past_images 1, camera set \['image_2', 'image_2@-1'\]\)"
        ):
            pipeline.require_single_frame(Predictor(path, "cpu"))
    single = load_config(None, {"data": {"grid": grid, "image_size": [32, 96]}})
    pipeline.require_single_frame(Predictor.from_model(OccLE(single), single, "cpu"))  # accepted
