"""Occ3D-nuScenes reader: a stand-in frame written in tmp_path is read back; bad files give clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from occle_core.data.occ3d import (
    Occ3DDataset,
    discover_tokens,
    read_occ3d_labels,
    read_pcd_bin,
    write_occ3d_frame,
)
from occle_core.data.sample import Sample

SHAPE = (200, 200, 16)
K = np.array([[120.0, 0, 80.0], [0, 120.0, 45.0], [0, 0, 1]])
# LiDAR sensor (x right, y forward, z up, as nuScenes LIDAR_TOP) -> camera (x right, y down, z forward)
T_CAM_LIDAR = np.array([[1.0, 0, 0, 0.1], [0, 0, -1, -0.3], [0, 1, 0, -0.5], [0, 0, 0, 1]])
# LiDAR sensor -> ego (Occ3D grid frame: x forward, y left, z up): a -90 deg yaw and a 1.8 m mount height
T_EGO_LIDAR = np.array([[0.0, 1, 0, 0.9], [-1, 0, 0, 0.0], [0, 0, 1, 1.8], [0, 0, 0, 1]])


def _frame(seed: int = 0):
    rng = np.random.default_rng(seed)
    sem = rng.integers(0, 18, SHAPE).astype(np.uint8)
    mask_lidar = rng.random(SHAPE) < 0.6
    mask_camera = rng.random(SHAPE) < 0.3
    points = np.zeros((500, 5), np.float32)
    points[:, :3] = rng.uniform(-30, 30, (500, 3))
    points[:, 3] = rng.uniform(0, 255, 500)
    points[:, 4] = rng.integers(0, 32, 500)
    image = rng.integers(0, 256, (90, 160, 3)).astype(np.uint8)
    return sem, mask_lidar, mask_camera, points, image


def test_round_trip(tmp_path):
    sem, ml, mc, points, image = _frame()
    pseudo = np.full(image.shape[:2], 255, np.uint8)
    pseudo[40:, :] = 11
    pose = np.eye(4)
    pose[:3, 3] = [100.0, 200.0, 0.0]
    write_occ3d_frame(
        tmp_path,
        "scene-0001/tok_a",
        image,
        points,
        K,
        T_CAM_LIDAR,
        sem,
        ml,
        mc,
        T_ego_lidar=T_EGO_LIDAR,
        pose=pose,
        pseudo2d=pseudo,
    )
    ds = Occ3DDataset(tmp_path, ["scene-0001/tok_a"])
    assert len(ds) == 1
    s = ds[0]
    assert isinstance(s, Sample) and s.frame_id == "scene-0001/tok_a"
    np.testing.assert_array_equal(s.voxel_labels, sem)
    assert s.voxel_labels.dtype == np.uint8
    np.testing.assert_array_equal(s.camera_mask, mc)
    np.testing.assert_array_equal(s.invalid, ~ml)
    np.testing.assert_array_equal(s.image, image)
    np.testing.assert_array_equal(s.pseudo2d, pseudo)
    np.testing.assert_array_equal(s.pose, pose)
    # points are returned in the ego (grid) frame with intensities scaled to [0, 1]
    ego = points[:, :3] @ T_EGO_LIDAR[:3, :3].T + T_EGO_LIDAR[:3, 3]
    assert s.points.shape == (500, 4) and s.points.dtype == np.float32
    np.testing.assert_allclose(s.points[:, :3], ego, atol=1e-4)
    np.testing.assert_allclose(s.points[:, 3], points[:, 3] / 255.0, rtol=1e-6)
    # projecting the ego-frame points with the sample's calib equals projecting the raw sensor points
    cam = points[:, :3] @ T_CAM_LIDAR[:3, :3].T + T_CAM_LIDAR[:3, 3]
    uv_expected = (cam @ K.T)[:, :2] / cam[:, 2:3]
    uv, depth, _ = s.calib.project(s.points)
    front = cam[:, 2] > 0.5
    np.testing.assert_allclose(uv[front], uv_expected[front], rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(depth, cam[:, 2], atol=1e-3)
    assert s.calib.image_size == (90, 160)


def test_masks_options_discovery_split_file_yaml_and_jpg(tmp_path):
    sem, ml, mc, points, _ = _frame(1)
    yy, xx = np.mgrid[0:90, 0:160]
    image = np.stack([xx, yy * 2, np.full_like(xx, 90)], axis=-1).astype(np.uint8)  # smooth: jpg keeps it
    for tok in ("b", "a"):
        write_occ3d_frame(tmp_path, tok, image, points[:, :4], K, T_CAM_LIDAR, sem, ml, mc, image_format="jpg")
    assert discover_tokens(tmp_path) == ["a", "b"]
    # calib.yaml instead of calib.json
    doc = json.loads((tmp_path / "frames/b/calib.json").read_text())
    (tmp_path / "frames/b/calib.json").unlink()
    (tmp_path / "frames/b/calib.yaml").write_text(yaml.safe_dump(doc))
    split = tmp_path / "val.txt"
    split.write_text("# val split\nb\n\n")
    ds = Occ3DDataset(tmp_path, split, invalid_from="camera", intensity_scale=1.0)
    s = ds[0]
    assert s.frame_id == "b" and s.pseudo2d is None and s.pose is None
    np.testing.assert_array_equal(s.invalid, ~mc)
    np.testing.assert_allclose(s.points[:, :3], points[:, :3], atol=1e-5)  # no T_ego_lidar: identity
    np.testing.assert_allclose(s.points[:, 3], points[:, 3])
    assert np.abs(s.image.astype(int) - image).mean() < 3  # jpg: lossy but the same picture
    assert Occ3DDataset(tmp_path, invalid_from="none")[1].invalid is None
    unlabelled = Occ3DDataset(tmp_path, ["a"], with_labels=False)[0]
    assert unlabelled.voxel_labels is None and unlabelled.camera_mask is None


def test_missing_and_broken_files_are_named(tmp_path):
    sem, ml, mc, points, image = _frame(2)
    d = write_occ3d_frame(tmp_path, "f", image, points, K, T_CAM_LIDAR, sem, ml, mc)
    with pytest.raises(FileNotFoundError, match="1 of 2 split tokens.*nope"):
        Occ3DDataset(tmp_path, ["f", "nope"])
    ds = Occ3DDataset(tmp_path, ["f"])
    # truncated LiDAR file
    raw = (d / "lidar.pcd.bin").read_bytes()
    (d / "lidar.pcd.bin").write_bytes(raw[:-6])
    with pytest.raises(ValueError, match=r"lidar\.pcd\.bin.*not a multiple of 20"):
        ds[0]
    (d / "lidar.pcd.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"lidar\.pcd\.bin"):
        ds[0]
    (d / "lidar.pcd.bin").write_bytes(raw)
    assert read_pcd_bin(d / "lidar.pcd.bin").shape == (500, 5)
    # labels: wrong shape, missing key, values out of range, missing file
    np.savez_compressed(d / "labels.npz", semantics=sem[:100], mask_lidar=ml, mask_camera=mc)
    with pytest.raises(ValueError, match=r"labels\.npz.*'semantics' has shape \(100, 200, 16\)"):
        ds[0]
    np.savez_compressed(d / "labels.npz", semantics=sem, mask_lidar=ml)
    with pytest.raises(ValueError, match="missing array 'mask_camera'"):
        read_occ3d_labels(d / "labels.npz")
    bad = sem.copy()
    bad[0, 0, 0] = 42
    np.savez_compressed(d / "labels.npz", semantics=bad, mask_lidar=ml, mask_camera=mc)
    with pytest.raises(ValueError, match="outside 0..17"):
        ds[0]
    (d / "labels.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels\.npz"):
        ds[0]
    np.savez_compressed(d / "labels.npz", semantics=sem, mask_lidar=ml, mask_camera=mc)
    assert ds[0].voxel_labels.shape == SHAPE
    # calibration: missing key, wrong matrix shape, image size mismatch
    doc = json.loads((d / "calib.json").read_text())
    (d / "calib.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "K"}))
    with pytest.raises(ValueError, match=r"calib\.json: missing key 'K'"):
        ds[0]
    (d / "calib.json").write_text(json.dumps(dict(doc, T_cam_lidar=[[1, 0, 0]])))
    with pytest.raises(ValueError, match="'T_cam_lidar' has shape"):
        ds[0]
    (d / "calib.json").write_text(json.dumps(dict(doc, image_size=[100, 160])))
    with pytest.raises(ValueError, match="cam_front.png.*image_size"):
        ds[0]
    (d / "cam_front.png").unlink()
    with pytest.raises(FileNotFoundError, match="camera image not found"):
        ds[0]


def test_writer_rejects_bad_input(tmp_path):
    sem, ml, mc, points, image = _frame(3)
    with pytest.raises(ValueError, match="image must be"):
        write_occ3d_frame(tmp_path, "x", image[..., 0], points, K, T_CAM_LIDAR)
    with pytest.raises(ValueError, match="points must be"):
        write_occ3d_frame(tmp_path, "x", image, points[:, :3], K, T_CAM_LIDAR)
    with pytest.raises(ValueError, match="invalid_from"):
        Occ3DDataset(tmp_path, ["x"], invalid_from="radar")
