"""Multi-frame LiDAR input (``data.past_frames``): past scans moved into the current frame through the poses, the
time-offset column, K = 0 unchanged, collation (dt carried, targets from the frame's own scan only), a multi-frame
training run and its checkpoint (``model.time_features``), and single-frame checkpoints left as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_overrides, write_tiny_dataset

from occle_core.checkpoint import load_model
from occle_core.config import OccleConfig, load_config
from occle_core.data import semantic_kitti as sk
from occle_core.data.batch import add_targets, collate_inputs
from occle_core.data.factory import build_dataset
from occle_core.data.kitti_calib import write_kitti_calib
from occle_core.data.multiframe import MultiFrameDataset
from occle_core.data.sample import Sample
from occle_core.engine.trainer import MODEL_NAME, Trainer
from occle_core.geometry import Calib
from occle_core.model.lidar_encoder import in_channels_for
from occle_core.model.occle import synthetic_batch
from occle_core.predictor import Predictor, default_checkpoint
from occle_core.predictor import main as predict_main

# velodyne -> camera 0 (KITTI's axes: x_cam = -y_velo, y_cam = -z_velo, z_cam = x_velo) and an offset
TR = np.array([[0, -1, 0, 0.1], [0, 0, -1, -0.2], [1, 0, 0, -0.3], [0, 0, 0, 1]], np.float64)
# LiDAR poses (LiDAR -> first LiDAR frame): frame 1 is 2 m ahead and turned 90 degrees left
YAW90 = np.array([[0, -1, 0, 2.0], [1, 0, 0, 0.0], [0, 0, 1, 0.0], [0, 0, 0, 1]], np.float64)
LIDAR_POSES = [np.eye(4), YAW90, YAW90]
SCANS = [
    np.array([[10.0, 1.0, 0.0, 0.5], [4.0, -2.0, 1.0, 0.25]], np.float32),
    np.array([[3.0, 3.0, 0.5, 0.75]], np.float32),
    np.array([[5.0, 0.0, 0.0, 0.1], [6.0, 1.0, 0.0, 0.2], [7.0, 2.0, 0.0, 0.3]], np.float32),
]
TIMES = [0.0, 0.1, 0.2]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-frame SemanticKITTI-layout sequence 00 (no voxel labels) with known poses and times."""
    root = tmp_path_factory.mktemp("mf")
    seq = root / "sequences" / "00"
    for sub in ("velodyne", "image_2"):
        (seq / sub).mkdir(parents=True)
    P = np.array([[10.0, 0, 8, 0], [0, 10, 4, 0], [0, 0, 1, 0]])
    write_kitti_calib(seq / "calib.txt", Calib(P, TR, (8, 16)))
    sk.write_poses(seq / "poses.txt", np.stack([TR @ L @ np.linalg.inv(TR) for L in LIDAR_POSES]))  # cam0 poses
    sk.write_times(seq / "times.txt", np.array(TIMES))
    for i, pts in enumerate(SCANS):
        sk.write_points(seq / "velodyne" / f"{i:06d}.bin", pts)
        sk.write_image(seq / "image_2" / f"{i:06d}.png", np.full((8, 16, 3), 40 * i, np.uint8))
    return root


def test_a_known_pose_pair_moves_a_point_as_hand_computed(root: Path) -> None:
    base = sk.SemanticKittiDataset(root, ["00"], with_labels=False)
    s = MultiFrameDataset(base, 1)[1]
    assert s.points.shape == (3, 5) and s.points.dtype == np.float32 and s.extras["current_points"] == 1
    np.testing.assert_array_equal(s.points[0], [3.0, 3.0, 0.5, 0.75, 0.0])  # the current scan, first, dt 0
    # scan 0 point (10, 1, 0) in frame 1: undo the 2 m move, then turn 90 deg right: (8, 1, 0) -> (1, -8, 0)
    np.testing.assert_allclose(s.points[1], [1.0, -8.0, 0.0, 0.5, -0.1], atol=1e-5)
    np.testing.assert_allclose(s.points[2], [-2.0, -2.0, 1.0, 0.25, -0.1], atol=1e-5)  # (4, -2, 1) -> (2, -2, 1)
    # K = 2 at frame 2: scan 1 (same pose: unmoved, dt -0.1), then scan 0 (dt -0.2); frame 0 has no past
    mf = MultiFrameDataset(base, 2)
    s2 = mf[2]
    assert s2.extras["current_points"] == 3 and s2.points.shape == (6, 5)
    np.testing.assert_allclose(s2.points[3], [3.0, 3.0, 0.5, 0.75, -0.1], atol=1e-5)
    np.testing.assert_allclose(s2.points[4:, :3], [[1.0, -8.0, 0.0], [-2.0, -2.0, 1.0]], atol=1e-5)
    np.testing.assert_allclose(s2.points[4:, 4], [-0.2, -0.2], atol=1e-6)
    first = mf[0]
    assert first.points.shape == (2, 5) and first.extras["current_points"] == 2 and not first.points[:, 4].any()


def test_zero_past_frames_is_todays_sample(root: Path) -> None:
    base = sk.SemanticKittiDataset(root, ["00"], with_labels=False)
    cfg = load_config(None, {"data": {"root": str(root), "val_sequences": ["00"]}})
    assert type(build_dataset(cfg, "val", with_labels=False)) is sk.SemanticKittiDataset
    for i in range(3):
        a, b = MultiFrameDataset(base, 0)[i], base[i]
        assert a.frame_id == b.frame_id and a.extras == b.extras == {}
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.pose, b.pose)
    cfg.data.past_frames = 2
    assert isinstance(build_dataset(cfg, "val", with_labels=False), MultiFrameDataset)


def test_missing_times_and_bad_k_are_named(root: Path, tmp_path: Path) -> None:
    base = sk.SemanticKittiDataset(root, ["00"], with_labels=False)
    with pytest.raises(ValueError, match="past_frames must be an integer >= 0"):
        MultiFrameDataset(base, -1)
    copy = tmp_path / "sequences" / "00"
    copy.mkdir(parents=True)
    for item in (root / "sequences" / "00").iterdir():
        if item.name != "times.txt":
            (copy / item.name).symlink_to(item)
    with pytest.raises(ValueError, match="times.txt"):
        MultiFrameDataset(sk.SemanticKittiDataset(tmp_path, ["00"], with_labels=False), 1)
    with pytest.raises(ValueError, match="data.past_frames must be an integer >= 0"):
        load_config(None, {"data": {"past_frames": 1.5}}).data.validate()
    with pytest.raises(ValueError, match="data.pseudo_dir must be a folder name"):
        load_config(None, {"data": {"pseudo_dir": "a/b"}}).data.validate()
    with pytest.raises(ValueError, match="model.time_features must be false when data.past_frames is 0"):
        load_config(None, {"model": {"time_features": True}}).validate()
    ablation = load_config(None, {"data": {"past_frames": 2}, "model": {"time_features": False}})
    ablation.validate()
    assert ablation.model.time_features is False
    saved = ablation.to_dict()
    del saved["model"]["time_features"]  # a checkpoint written before the switch: trained without time channels
    assert OccleConfig.from_saved(saved).model.time_features is False
    assert OccleConfig.from_dict(saved).model.time_features is True  # a new config: derived from data.past_frames


def test_collate_takes_the_extra_column_and_targets_read_the_own_scan(root: Path) -> None:
    grid = {"origin": [-12.8, -12.8, -2.0], "voxel_size": 0.8, "shape": [32, 32, 8]}
    cfg = load_config(None, {"data": {"grid": grid, "image_size": [8, 16], "max_points": 0}})
    s = MultiFrameDataset(sk.SemanticKittiDataset(root, ["00"], with_labels=False), 2)[2]
    batch = collate_inputs([s], cfg)
    assert batch.points.shape == (6, 6)  # [batch index, x, y, z, intensity, dt]
    np.testing.assert_allclose(batch.points[:, 1:].numpy(), s.points, atol=0)
    assert batch.points[:3, 5].tolist() == [0.0, 0.0, 0.0] and bool((batch.points[3:, 5] < 0).all())
    own = Sample.single("00/000002", s.image, s.points[:3, :4].copy(), s.calib)
    assert not collate_inputs([own], cfg).points[:, 5].any()  # a scan without the time column: dt = 0
    merged, single = add_targets(batch, [s], cfg), add_targets(collate_inputs([own], cfg), [own], cfg)
    assert merged.occupied.sum() == 3  # the 3 points of frame 2 (all past points are inside the grid too)
    assert np.array_equal(merged.occupied.numpy(), single.occupied.numpy())
    assert np.array_equal(merged.free.numpy(), single.free.numpy())


# class means of the shipped single-frame model's logits on synthetic_batch(cfg, 3000, seed=0): the time column
# (voxel input width 14 without it) must leave single-frame checkpoints as they were. First pinned on the previous
# shipped model before the time column existed (the same check passed); re-pinned when the shipped model was
# replaced by the randomised-scenes one and again by its hit-skip fine-tune (docs/real_frames.md): a single-frame
# model's hit skip ignores dt too.
SHIPPED_CLASS_MEANS = [
    2.22586, -2.60077, -2.94967, -5.56847, -3.33381, -5.02803, -2.59796, -6.23314, -5.68125, -1.60448,
    -2.02363, -0.70195, -2.91821, -1.85797, -2.10500, -1.95819, -2.63894, -1.13246, -2.31166, -3.15122,
]  # fmt: skip


def test_a_single_frame_checkpoint_predicts_as_before_and_ignores_dt() -> None:
    model, cfg, ckpt = load_model(default_checkpoint())
    assert cfg.model.time_features is False and cfg.data.past_frames == 0
    assert model.lidar_encoder.in_channels == in_channels_for(cfg.model.feature_stride) == 14
    assert ckpt["model"]["lidar_encoder.levels.0.0.conv.weight"].shape[-1] == 14
    batch = synthetic_batch(cfg, 3000, seed=0)
    assert batch.points.shape == (3000, 6) and not batch.points[:, 5].any()
    with torch.inference_mode():
        logits = model(batch, inference=True).logits
        batch.points[:, 5] = -torch.rand(3000, generator=torch.Generator().manual_seed(1))  # past points, say
        again = model(batch, inference=True).logits
    means = logits[0].double().mean(dim=(1, 2, 3))
    torch.testing.assert_close(means, torch.tensor(SHIPPED_CLASS_MEANS, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    assert torch.equal(logits, again)


@pytest.fixture(scope="module")
def mf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_train's tiny box scenes (train 00: 3 frames, val 01: 2) with poses (0.5 m forward per frame) and
    times (10 Hz)."""
    root = write_tiny_dataset(tmp_path_factory.mktemp("mf_train"), {"00": 3, "01": 2})
    T_cam_lidar = np.eye(4)
    T_cam_lidar[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # the calibration Tr write_tiny_dataset writes
    for seq, n in (("00", 3), ("01", 2)):
        poses = np.stack([np.eye(4)] * n)
        poses[:, 0, 3] = 0.5 * np.arange(n)  # LiDAR poses: x forward
        sk.write_poses(root / "sequences" / seq / "poses.txt", T_cam_lidar @ poses @ np.linalg.inv(T_cam_lidar))
        sk.write_times(root / "sequences" / seq / "times.txt", 0.1 * np.arange(n))
    return root


def test_multi_frame_training_run_and_its_checkpoint(mf_root: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(mf_root, tmp_path / "run", steps=2, ckpt_every=0)
    overrides["data"]["past_frames"] = 2
    cfg = load_config(None, overrides)
    assert cfg.model.time_features is True  # derived from data.past_frames
    summary = Trainer(cfg, device="cpu", progress=False).fit()
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    model, saved, _ = load_model(tmp_path / "run" / MODEL_NAME)
    assert saved.model.time_features is True and saved.data.past_frames == 2
    assert model.lidar_encoder.in_channels == in_channels_for(saved.model.feature_stride, True) == 16
    predictor = Predictor(tmp_path / "run" / MODEL_NAME, "cpu")
    assert predictor.time_features
    frame = MultiFrameDataset(sk.SemanticKittiDataset(mf_root, ["01"], with_labels=False), 2)[1]
    assert frame.points.shape[1] == 5 and (frame.points[:, 4] < 0).any()
    with pytest.raises(ValueError, match=r"points must be an \(N, >=5\) array of x, y, z, intensity, dt"):
        predictor.predict(frame.image, frame.points[:, :4], frame.calib)
    merged = predictor.predict_logits(frame.image, frame.points, frame.calib)
    as_current = frame.points.copy()
    as_current[:, 4] = 0.0
    assert merged.shape == (20, 32, 32, 4)
    assert not torch.equal(merged, predictor.predict_logits(frame.image, as_current, frame.calib))  # dt is read
    out = tmp_path / "pred"
    args = ["--checkpoint", str(tmp_path / "run" / MODEL_NAME), "--data", str(mf_root), "--sequence", "01"]
    assert predict_main([*args, "--out", str(out), "--device", "cpu", "--no-png"]) == 0  # merges the past scans
    assert sorted(p.name for p in (out / "sequences" / "01" / "predictions").iterdir()) == [
        "000000.label",
        "000001.label",
    ]
