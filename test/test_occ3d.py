"""Occ3D-nuScenes reader: gts/ and annotations.json beside a nuScenes replica are read back; splits; clear errors;
the Occ3D mIoU under one mask, by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from occle_core.config import OccleConfig
from occle_core.data.augment import mirror_y
from occle_core.data.batch import collate
from occle_core.data.label_png import write_label_png
from occle_core.data.nuscenes import CAMERAS
from occle_core.data.occ3d import Occ3DDataset, discover_tokens, read_annotations, read_occ3d_labels
from occle_core.data.sample import Sample, lidar_origin
from occle_core.geometry import OCC3D_GRID
from occle_core.metrics_occ3d import Occ3DMIoU
from occle_core.synth.released import lidar_extrinsic, write_nuscenes_replica

SHAPE = (200, 200, 16)


def _occupancy(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    for _ in range(n):
        sem = rng.integers(0, 18, SHAPE).astype(np.uint8)
        mask_lidar = (rng.random(SHAPE) < 0.6).astype(np.uint8)
        mask_camera = (rng.random(SHAPE) < 0.3).astype(np.uint8)
        out.append((sem, mask_lidar, mask_camera))
    return out


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("occ3d")
    occ = _occupancy(np.random.default_rng(0), 3)
    # scene-0061 is in the official mini_train, scene-0103 in mini_val
    return write_nuscenes_replica(root, "v1.0-mini", ("scene-0061", "scene-0103"), 2, 1, occupancy=occ + occ[:1])


def test_round_trip_labels_cameras_and_pseudo(replica):
    frames = [f"{replica.scene_of[t]}/{t}" for t in replica.samples]
    assert discover_tokens(replica.root) == sorted(frames)
    token = replica.samples[1]
    pseudo = np.full((90, 160), 255, np.uint8)
    pseudo[50:] = 11
    pseudo_file = replica.root / "pseudo_2d" / frames[1] / "CAM_BACK.png"
    pseudo_file.parent.mkdir(parents=True)
    write_label_png(pseudo_file, pseudo)
    ds = Occ3DDataset(replica.root, "train")  # annotations.json: train_split = [scene-0061]
    assert ds.tokens == frames[:2]
    s = ds[1]
    assert isinstance(s, Sample) and s.frame_id == frames[1] and s.grid_frame == "ego"
    sem, mask_lidar, mask_camera = replica.occupancy[token]
    np.testing.assert_array_equal(s.voxel_labels, sem)
    assert s.voxel_labels.dtype == np.uint8
    np.testing.assert_array_equal(s.camera_mask, mask_camera.astype(bool))
    np.testing.assert_array_equal(s.invalid, ~mask_lidar.astype(bool))
    assert [c.name for c in s.cameras] == list(CAMERAS)
    np.testing.assert_array_equal(s.cameras[CAMERAS.index("CAM_BACK")].pseudo2d, pseudo)
    assert s.cameras[0].pseudo2d is None
    given = replica.points[token]
    np.testing.assert_allclose(s.points[: len(given), :3], given[:, :3], atol=1e-4)
    np.testing.assert_allclose(s.points[: len(given), 3], given[:, 3] / 255.0, rtol=1e-6)
    by_camera = Occ3DDataset(replica.root, "train", invalid_from="camera")[1]
    np.testing.assert_array_equal(by_camera.invalid, ~mask_camera.astype(bool))
    assert Occ3DDataset(replica.root, "train", invalid_from="none")[0].invalid is None
    unlabelled = Occ3DDataset(replica.root, [token], with_labels=False, sweeps=3)[0]  # a bare sample token
    assert unlabelled.voxel_labels is None and unlabelled.camera_mask is None and unlabelled.frame_id == frames[1]
    assert len(np.unique(unlabelled.points[:, 5])) == 3  # key frame 1, its sweep, key frame 0


def test_free_space_targets_cast_the_rays_from_the_lidar_mount(tmp_path):
    # one return on the road 12 m ahead (ego frame): its ray starts at LIDAR_TOP, 1.84 m up, not at the ego origin
    hit = np.array([12.2, 0.2, -0.5])
    points = [np.array([[*hit, 100.0]], np.float32)]
    replica = write_nuscenes_replica(tmp_path, "v1.0-mini", ("scene-0061",), 1, 1, points=points)
    s = Occ3DDataset(replica.root, "train")[0]
    mount = lidar_extrinsic()[:3, 3]
    np.testing.assert_allclose(s.extras["lidar_origin"], mount)
    b = collate([s], OccleConfig.from_dict({"data": {"dataset": "occ3d_nuscenes", "image_size": [18, 32]}}))

    def voxel(p: np.ndarray) -> tuple[int, ...]:
        return tuple(int(v) for v in np.floor((p - np.asarray(OCC3D_GRID.origin)) / OCC3D_GRID.voxel_size))

    free, occupied = b.free[0].numpy(), b.occupied[0].numpy()
    assert occupied[voxel(hit)] and occupied.sum() == 1
    for t in (0.25, 0.5, 0.75):
        assert free[voxel(mount + t * (hit - mount))], f"the voxel {t:.2f} of the way from the mount is not free"
    # on the ray from the ego origin (at road level) only: >= 1 m below the mount's ray at 0.25 and 0.5 of the way
    for t in (0.25, 0.5):
        assert not free[voxel(t * hit)], f"the voxel {t:.2f} of the way from the ego origin is free"


def test_splits_from_annotations_or_the_official_scene_split(replica, tmp_path):
    doc = read_annotations(replica.root / "annotations.json")
    assert doc["train_split"] == ["scene-0061"] and doc["val_split"] == ["scene-0103"]
    info = doc["scene_infos"]["scene-0103"][replica.samples[2]]
    assert info["gt_path"] == f"gts/scene-0103/{replica.samples[2]}/labels.npz" and info["prev"] == "EOF"
    assert set(info["camera_sensor"]) == set(CAMERAS)
    assert {"img_path", "intrinsics", "extrinsic", "ego_pose"} <= set(info["camera_sensor"]["CAM_FRONT"])
    val = Occ3DDataset(replica.root, "val")
    assert val.tokens == [f"scene-0103/{t}" for t in replica.samples[2:]]
    # a split file of frames; then annotations.json that moves scene-0103 into training
    split = tmp_path / "mine.txt"
    split.write_text(f"# two frames\nscene-0103/{replica.samples[3]}\n\n{replica.samples[0]}\n")
    expected = [f"scene-0103/{replica.samples[3]}", f"scene-0061/{replica.samples[0]}"]
    assert Occ3DDataset(replica.root, split).tokens == expected
    original = (replica.root / "annotations.json").read_text()
    try:
        (replica.root / "annotations.json").write_text(json.dumps(dict(doc, train_split=["scene-0103"])))
        assert Occ3DDataset(replica.root, "train").tokens == val.tokens
        (replica.root / "annotations.json").unlink()  # no annotations.json: the official v1.0-mini split
        assert Occ3DDataset(replica.root, "val").tokens == val.tokens
        (replica.root / "annotations.json").write_text(json.dumps({"train_split": []}))
        with pytest.raises(ValueError, match="'val_split' must be a JSON list"):
            Occ3DDataset(replica.root, "val")
    finally:
        (replica.root / "annotations.json").write_text(original)


def test_missing_and_broken_files_are_named(tmp_path):
    occ = _occupancy(np.random.default_rng(1), 2)
    rep = write_nuscenes_replica(tmp_path, "v1.0-mini", ("scene-0061",), 2, 0, occupancy=occ)
    frames = [f"scene-0061/{t}" for t in rep.samples]
    path = tmp_path / "gts" / frames[0] / "labels.npz"
    sem, ml, mc = rep.occupancy[rep.samples[0]]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"1 of 2 split frames have no labels.npz.*{rep.samples[0]}"):
        Occ3DDataset(tmp_path, frames)
    np.savez_compressed(path, semantics=sem[:100], mask_lidar=ml, mask_camera=mc)
    ds = Occ3DDataset(tmp_path, frames)
    with pytest.raises(ValueError, match=r"labels\.npz.*'semantics' has shape \(100, 200, 16\)"):
        ds[0]
    np.savez_compressed(path, semantics=sem, mask_lidar=ml)
    with pytest.raises(ValueError, match="missing array 'mask_camera'"):
        read_occ3d_labels(path)
    bad = sem.copy()
    bad[0, 0, 0] = 42
    np.savez_compressed(path, semantics=bad, mask_lidar=ml, mask_camera=mc)
    with pytest.raises(ValueError, match="outside 0..17"):
        ds[0]
    np.savez_compressed(path, semantics=sem, mask_lidar=ml, mask_camera=mc)
    assert ds[0].voxel_labels.shape == SHAPE
    with pytest.raises(ValueError, match="invalid_from"):
        Occ3DDataset(tmp_path, frames, invalid_from="radar")
    with pytest.raises(ValueError, match="belongs to scene-0061"):
        Occ3DDataset(tmp_path, [f"scene-0103/{rep.samples[0]}"], with_labels=False)[0]
    with pytest.raises(KeyError, match="not in"):
        Occ3DDataset(tmp_path, ["0" * 32], with_labels=False)
    with pytest.raises(FileNotFoundError, match="gts folder not found"):
        discover_tokens(tmp_path / "nowhere")


def test_occ3d_miou_by_hand_under_one_mask():
    # six voxels: gt / pred, class 17 = free
    gt = np.array([17, 17, 4, 4, 11, 0]).reshape(1, 2, 3)
    pred = np.array([17, 4, 4, 17, 11, 11]).reshape(1, 2, 3)
    mask_camera = np.array([1, 1, 1, 1, 1, 0], np.uint8).reshape(1, 2, 3)
    mask_lidar = np.array([0, 1, 1, 0, 1, 1], np.uint8).reshape(1, 2, 3)
    cam = Occ3DMIoU()  # official: under mask_camera
    cam.update(pred, gt, mask_camera=mask_camera, mask_lidar=mask_lidar)
    s = cam.compute()
    # car (4): TP 1, FP 1 (17 -> 4), FN 1 (4 -> 17) -> 1/3; driveable surface (11): 1/1; others (0) unseen: NaN
    assert s["per_class_iou"][4] == pytest.approx(1 / 3) and s["per_class_iou"][11] == pytest.approx(1.0)
    assert math.isnan(s["per_class_iou"][0]) and s["num_voxels"] == 5
    assert s["miou"] == pytest.approx((1 / 3 + 1) / 2)
    lidar = Occ3DMIoU("lidar")  # voxels 1, 2, 4, 5: (17 -> 4), (4 -> 4), (11 -> 11), (0 -> 11)
    lidar.update(pred, gt, mask_camera=mask_camera, mask_lidar=mask_lidar)
    s = lidar.compute()
    assert s["per_class_iou"][4] == pytest.approx(1 / 2) and s["per_class_iou"][11] == pytest.approx(1 / 2)
    assert s["per_class_iou"][0] == 0.0 and s["num_voxels"] == 4
    assert s["miou"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)  # not the intersection of both masks (3 voxels)
    none = Occ3DMIoU("none")
    none.update(pred, gt)
    none.update(pred, gt)  # accumulates
    assert none.compute()["num_voxels"] == 12 and none.compute()["per_class_iou"][11] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="mask_camera is required"):
        Occ3DMIoU().update(pred, gt)
    with pytest.raises(ValueError, match="mask must be one of"):
        Occ3DMIoU("both")
    with pytest.raises(ValueError, match="outside 0..17"):
        none.update(pred * 0 + 30, gt)


def test_mirror_of_a_six_camera_ego_frame_keeps_every_camera_projection(replica):
    s = Occ3DDataset(replica.root, "train", invalid_from="none")[0]
    t = mirror_y(s, OCC3D_GRID)
    assert [v.name for v in t.cameras] == [v.name for v in s.cameras] and len(t.cameras) == 6
    np.testing.assert_array_equal(t.camera_mask, s.camera_mask[:, ::-1])
    np.testing.assert_array_equal(t.voxel_labels, s.voxel_labels[:, ::-1])
    ox, oy, oz = lidar_origin(s)
    assert lidar_origin(t) == pytest.approx((ox, -oy, oz))
    seen = 0
    for a, b in zip(s.cameras, t.cameras):  # the mirrored scan lands on each flipped image where it was
        uv_a, d_a, vis_a = a.calib.project(s.points[:, :3])
        uv_b, d_b, vis_b = b.calib.project(t.points[:, :3])
        np.testing.assert_allclose(d_b, d_a, rtol=1e-4, atol=1e-4)
        w = a.calib.image_size[1]
        np.testing.assert_allclose(uv_b[vis_a], uv_a[vis_a] * [-1, 1] + [w, 0], atol=2e-2)
        seen += int(vis_a.sum())
    assert seen > 0
