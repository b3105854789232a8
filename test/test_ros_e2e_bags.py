"""Issue 13 end to end: replicas of released datasets -> the converters' bags -> ``occle-demo --bag`` -> the real
``occle_node`` and ``occle-play`` processes over real DDS.

- nuScenes: a v1.0 replica scene -> ``occle-nuscenes2bag`` -> ``--preset nuscenes`` with a six-camera, ego-frame
  checkpoint: every frame received, none rejected; and the geometry: the node's voxels and bird's-eye view lie
  where the replica's LiDAR points are in the ego frame (LIDAR_TOP's own frame, x right / y forward / 1.84 m up,
  used as the grid would put them elsewhere, which the test checks too).
- KITTI raw: a replica drive -> ``occle-kitti2bag --format ros1-kitti2bag`` (ROS 1) -> ``--preset kitti`` with the
  shipped single-camera checkpoint.

The nuScenes checkpoint is untrained, with its empty-class bias raised until no voxel away from the LiDAR points is
occupied on the test's own inputs (an untrained network's LiDAR features stand out where the points are): its
occupied voxels then mark where the node put the points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_bags import DRIVE, raw_drive
from sensor_msgs.msg import CompressedImage

from occle_core.checkpoint import make_checkpoint, save_checkpoint
from occle_core.config import load_config
from occle_core.geometry import Calib, VoxelGrid
from occle_core.model.occle import OccLE
from occle_core.predictor import Predictor
from occle_core.resources import config_path
from occle_core.synth import released
from occle_ros import demo, kitti2bag, nuscenes2bag
from occle_ros.pipeline import image_rgb

pytestmark = pytest.mark.ros

GRID = {"origin": [-12.8, -12.8, -2.0], "voxel_size": 0.4, "shape": [64, 64, 16]}  # ego frame, z up from -2 m
IMAGE_HW = (36, 64)  # replica images; the model resizes them to its own 32 x 56
REACH = 2  # voxels: how far from a point voxel an occupied voxel may lie


def _summary(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def _near(points: np.ndarray, grid: VoxelGrid, reach: int) -> np.ndarray:
    """(X, Y, Z) bool: voxels within ``reach`` voxels (Chebyshev) of a voxel holding one of ``points`` (N, >=3)."""
    idx = np.floor((points[:, :3] - np.asarray(grid.origin)) / grid.voxel_size).astype(np.int64)
    idx = idx[((idx >= 0) & (idx < np.asarray(grid.shape))).all(1)]
    mask = np.zeros(grid.shape, bool)
    mask[tuple(idx.T)] = True
    for axis in range(3):  # a box dilation is separable
        grown = mask.copy()
        for s in range(1, reach + 1):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(s, None), slice(None, -s)
            grown[tuple(lo)] |= mask[tuple(hi)]
            grown[tuple(hi)] |= mask[tuple(lo)]
        mask = grown
    return mask


def _front_left_points(seed: int) -> np.ndarray:
    """(N, 5) ego-frame points on a block 5-9 m ahead, 2-6 m to the left, 0.4-1.6 m up (x, y, z, i, ring)."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([5.0, 2.0, 0.4], [9.0, 6.0, 1.6], (400, 3))
    # intensities up to 255^2: after the preset's 1/255 they span 0..255, where this untrained network's LiDAR
    # features stand out of the image features (with 0..1 they do not, for any seed tried)
    return np.c_[xyz, rng.uniform(0, 255 * 255, 400), rng.integers(0, 32, 400)].astype(np.float32)


def _views(replica: released.Replica, token: str) -> list[tuple[np.ndarray, Calib]]:
    """The six views of a key frame as the node should see them: the stored JPEGs decoded as the node decodes them,
    K from the replica's intrinsics and T_cam<-ego from its extrinsics."""
    views = []
    for ch in released.CAMERAS:
        jpeg = sorted((replica.root / "samples" / ch).glob("*.jpg"))[replica.samples.index(token)]  # time order
        rgb = image_rgb(CompressedImage(format="jpeg", data=jpeg.read_bytes()))
        P = np.c_[released.camera_intrinsic(ch, IMAGE_HW), np.zeros(3)]
        views.append((rgb, Calib(P, np.linalg.inv(released.camera_extrinsic(ch)), IMAGE_HW)))
    return views


def _point_marking_checkpoint(path: Path, replica: released.Replica) -> tuple[Path, VoxelGrid, int]:
    """A six-camera ego-grid checkpoint whose occupied voxels lie within REACH of the replica's points (see the
    module docstring); returns (path, grid, empty index)."""
    cfg = load_config(config_path("train_occ3d_tiny.yaml"), {"data": {"grid": GRID, "image_size": [32, 56]}})
    torch.manual_seed(0)
    model = OccLE(cfg)
    predictor = Predictor.from_model(model, cfg, device="cpu")
    grid, empty = predictor.grid, predictor.classes.empty_index
    shift, cover = -np.inf, []
    scale = yaml.safe_load(config_path("preset_nuscenes.yaml").read_text())["/**"]["ros__parameters"]["intensity_scale"]
    for token in replica.samples:
        points = replica.points[token][:, :4] * np.array([1, 1, 1, scale], np.float32)  # as the node scales them
        logits = predictor.predict_logits(_views(replica, token), points).numpy()  # (K, X, Y, Z)
        margin = np.delete(logits, empty, 0).max(0) - logits[empty]  # (X, Y, Z) > 0: occupied
        shift = max(shift, float(margin[~_near(points, grid, REACH)].max()) + 0.5)
        cover.append(margin)
    assert all((m > shift).sum() >= 10 for m in cover), "the LiDAR features do not stand out of this network"
    s = model.heads["logits"].stride ** 3
    with torch.no_grad():  # channels empty * s^3 ... of the head are the empty class at each child voxel
        model.heads["logits"].proj.bias[empty * s : (empty + 1) * s] += shift
    save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), grid, model.state_dict()))
    return path, grid, empty


def test_nuscenes_replica_bag_through_the_node_lands_in_the_ego_grid(tmp_path, capsys):
    frames = [_front_left_points(seed) for seed in (1, 2)]
    replica = released.write_nuscenes_replica(tmp_path / "data", samples_per_scene=2, image_size=IMAGE_HW,
                                              points=frames, occ3d=False)  # fmt: skip
    bag = tmp_path / "bag"
    argv = ["--data", str(replica.root), "--version", "v1.0-mini", "--scene", "scene-0061", "--out", str(bag)]
    assert nuscenes2bag.main([*argv, "--quiet"]) == 0
    ckpt, grid, empty = _point_marking_checkpoint(tmp_path / "nusc6.pt", replica)
    out = tmp_path / "demo"
    argv = ["--bag", str(bag), "--preset", "nuscenes", "--out", str(out), "--checkpoint", str(ckpt)]
    assert demo.main([*argv, "--device", "cpu", "--timeout", "300"]) == 0
    line = _summary(capsys)
    assert line.startswith("occle-demo: frames 2/2 received (0 dropped, 0 rejected), mean latency "), line
    received = np.load(out / "received.npz")
    T_ego_lidar = released.lidar_extrinsic()
    for k, token in enumerate(replica.samples):
        ego = replica.points[token]
        in_lidar = ego[:, :3] @ np.linalg.inv(T_ego_lidar)[:3, :3].T + np.linalg.inv(T_ego_lidar)[:3, 3]
        near, wrong = _near(ego, grid, REACH), _near(in_lidar, grid, REACH)
        assert not (near & wrong).any()  # a grid in the LiDAR's own frame would put the points elsewhere
        occupied = received[f"labels_{k:06d}"] != empty
        assert occupied.sum() >= 10 and near[occupied].all() and (occupied & _near(ego, grid, 0)).any()
        # bird's-eye view: occupied columns over the points; free cells on the rays from LIDAR_TOP to them
        bev = received[f"bev_{k:06d}"]
        assert (bev == 100).any() and near.any(axis=2)[bev == 100].all()
        i, j = np.nonzero(bev == 0)
        centres = np.asarray(grid.origin[:2]) + (np.c_[i, j] + 0.5) * grid.voxel_size - T_ego_lidar[:2, 3]
        far = np.hypot(*centres.T) > 1.5  # cells right around the sensor have no meaningful bearing
        bearing = np.degrees(np.arctan2(centres[far, 1], centres[far, 0]))
        rel = ego[:, :2] - T_ego_lidar[:2, 3]
        seen = np.degrees(np.arctan2(rel[:, 1], rel[:, 0]))
        assert far.sum() >= 5 and (bearing > seen.min() - 5).all() and (bearing < seen.max() + 5).all()


def test_kitti_raw_ros1_bag_through_the_node_with_the_shipped_checkpoint(tmp_path, capsys):
    raw_drive(tmp_path / "raw", frames=2)
    bag = tmp_path / "k.bag"
    assert kitti2bag.main(["--format", "ros1-kitti2bag", "--raw", str(tmp_path / "raw"), "--drive", DRIVE,
                           "--out", str(bag), "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "demo"
    assert demo.main(["--bag", str(bag), "--preset", "kitti", "--out", str(out), "--device", "cpu",
                      "--timeout", "300"]) == 0  # fmt: skip
    line = _summary(capsys)
    assert line.startswith("occle-demo: frames 2/2 received (0 dropped, 0 rejected), mean latency "), line
    assert sorted(np.load(out / "received.npz").files) == ["bev_000000", "bev_000001", "labels_000000",
                                                           "labels_000001"]  # fmt: skip
