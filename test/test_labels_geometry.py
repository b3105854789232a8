"""Class tables, grids, calibration and checkpoints (the foundation modules)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occle_core.checkpoint import CheckpointError, check_compatible, load_checkpoint, make_checkpoint, save_checkpoint
from occle_core.config import OccleConfig, load_config
from occle_core.data.kitti_calib import read_kitti_calib, write_kitti_calib
from occle_core.geometry import OCC3D_GRID, SEMANTIC_KITTI_GRID, Calib, VoxelGrid, frustum_mask, voxelize_labels
from occle_core.labels import class_table

# KITTI odometry sequence 00 calibration (camera 2 and velodyne -> cam0).
P2 = np.array([[718.856, 0.0, 607.1928, 45.38225], [0.0, 718.856, 185.2157, -0.1130887], [0.0, 0.0, 1.0, 0.003779761]])
TR = np.array(
    [
        [4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02],
        [-7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02],
        [9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def kitti_calib() -> Calib:
    return Calib(P2, TR, (376, 1241))


def test_semantic_kitti_learning_map() -> None:
    table = class_table("semantic_kitti")
    assert table.num_classes == 20 and table.empty_index == 0
    assert len(table.semantic_classes) == 19
    raw = np.array([0, 1, 10, 252, 40, 60, 44, 48, 50, 52, 70, 71, 72, 80, 81, 99, 30, 254, (7 << 16) | 10, 2, 300])
    # evaluate_completion.py: outlier (1), other-structure (52), other-object (99) and ids the map does not
    # list (2, 300) are ignored (255); only raw 0 is empty
    expected = [0, 255, 1, 1, 9, 9, 10, 11, 13, 255, 15, 16, 17, 18, 19, 255, 6, 6, 1, 255, 255]
    assert table.map_raw(raw).tolist() == expected
    assert table.names[table.map_raw(np.array([81]))[0]] == "traffic-sign"
    # car is blue-ish in RGB (SemanticKITTI's BGR [245, 150, 100] reversed)
    assert table.colors[1].tolist() == [100, 150, 245]


def test_occ3d_table() -> None:
    table = class_table("occ3d_nuscenes")
    assert table.num_classes == 18 and table.empty_index == 17
    assert table.semantic_classes == list(range(17))
    assert table.colors.shape == (18, 3)
    with pytest.raises(ValueError, match="dataset must be one of"):
        class_table("kitti360")


def test_colorize_ignores_255() -> None:
    table = class_table("semantic_kitti")
    rgb = table.colorize(np.array([[1, 255]]))
    assert rgb.shape == (1, 2, 3)
    assert rgb[0, 0].tolist() == table.colors[1].tolist() and rgb[0, 1].tolist() == [0, 0, 0]


def test_grid_indices_and_centres() -> None:
    g = SEMANTIC_KITTI_GRID
    pts = np.array([[0.1, -25.5, -1.9], [51.1, 25.5, 4.3], [51.3, 0, 0], [-0.1, 0, 0]], np.float32)
    ijk, inside = g.point_indices(pts)
    assert inside.tolist() == [True, True, False, False]
    assert ijk.tolist() == [[0, 0, 0], [255, 255, 31]]
    assert np.allclose(g.centers_of(ijk), [[0.1, -25.5, -1.9], [51.1, 25.5, 4.3]], atol=1e-5)
    assert g.centers()[255, 255, 31].tolist() == pytest.approx([51.1, 25.5, 4.3], abs=1e-5)
    assert OCC3D_GRID.num_voxels == 200 * 200 * 16
    assert g.scaled(2).shape == (128, 128, 16) and g.scaled(2).voxel_size == pytest.approx(0.4)
    with pytest.raises(ValueError, match="voxel_size"):
        VoxelGrid((0, 0, 0), 0.0, (1, 1, 1))


def test_voxelize_majority() -> None:
    g = VoxelGrid((0, 0, 0), 1.0, (2, 2, 2))
    pts = np.array([[0.5, 0.5, 0.5]] * 3 + [[1.5, 1.5, 1.5]] * 2 + [[0.5, 1.5, 0.5]], np.float32)
    lab = np.array([3, 3, 4, 7, 255, 255])
    out = voxelize_labels(g, pts, lab, num_classes=10)
    assert out[0, 0, 0] == 3 and out[1, 1, 1] == 7 and out[0, 1, 0] == 255 and out[1, 0, 0] == 255


def test_projection_matches_kitti() -> None:
    calib = kitti_calib()
    # a point 10 m ahead on the LiDAR x axis projects near the principal point row/column
    uv, depth, vis = calib.project(np.array([[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0]]))
    assert vis.tolist() == [True, False]
    cam = TR @ np.array([10.0, 0.0, 0.0, 1.0])
    pix = P2 @ cam
    assert np.allclose(uv[0], pix[:2] / pix[2], atol=1e-3) and depth[0] == pytest.approx(pix[2], rel=1e-5)
    half = calib.resized(188, 620)
    uv2, _, _ = half.project(np.array([[10.0, 0.0, 0.0]]))
    assert np.allclose(uv2[0], uv[0] * [620 / 1241, 188 / 376], atol=1e-3)
    fm = frustum_mask(SEMANTIC_KITTI_GRID, calib)
    assert fm[128, 128, 10] and not fm[0, 0, 0]  # straight ahead is seen; the near corner is not


def test_calib_validation_and_roundtrip(tmp_path) -> None:
    with pytest.raises(ValueError, match="P must be 3x4"):
        Calib(np.eye(3), TR, (10, 10))
    with pytest.raises(ValueError, match="finite"):
        Calib(np.full((3, 4), np.nan), TR, (10, 10))
    path = tmp_path / "calib.txt"
    write_kitti_calib(path, kitti_calib())
    back = read_kitti_calib(path)
    assert np.allclose(back.P, P2) and np.allclose(back.T_cam_lidar, TR)
    path.write_text("P2: 1 2 3\n")
    with pytest.raises(ValueError, match="'P2' has 3 values"):
        read_kitti_calib(path)
    with pytest.raises(FileNotFoundError, match="calibration file not found"):
        read_kitti_calib(tmp_path / "missing.txt")


def test_config_presets_and_errors(tmp_path) -> None:
    cfg = load_config(None)
    assert cfg.model.size == "tiny" and cfg.data.voxel_grid() == SEMANTIC_KITTI_GRID
    paper = OccleConfig.from_dict({"model": {"size": "paper", "mamba_layers": 3}})
    assert paper.model.feat_dim == 64 and paper.model.mamba_layers == 3
    assert OccleConfig.from_dict(paper.to_dict()) == paper
    with pytest.raises(ValueError, match="unknown key.*'lr_max'.*'train'"):
        OccleConfig.from_dict({"train": {"lr_max": 1}})
    with pytest.raises(ValueError, match="model.size"):
        OccleConfig.from_dict({"model": {"size": "huge"}})
    with pytest.raises(ValueError, match="data.dataset"):
        OccleConfig.from_dict({"data": {"dataset": "kitti360"}})
    occ = OccleConfig.from_dict({"data": {"dataset": "occ3d_nuscenes"}})
    assert occ.data.voxel_grid() == OCC3D_GRID and occ.data.classes().num_classes == 18


def test_checkpoint_roundtrip_and_checks(tmp_path) -> None:
    table = class_table("semantic_kitti")
    ckpt = make_checkpoint({"a": 1}, table, SEMANTIC_KITTI_GRID, {"w": torch.ones(3)}, step=5)
    path = tmp_path / "c.pt"
    save_checkpoint(path, ckpt)
    back = load_checkpoint(path)
    assert back["step"] == 5 and torch.equal(back["model"]["w"], torch.ones(3))
    check_compatible(back, table, SEMANTIC_KITTI_GRID)
    with pytest.raises(CheckpointError, match="20 classes.*expected 18"):
        check_compatible(back, class_table("occ3d_nuscenes"))
    with pytest.raises(CheckpointError, match="grid"):
        check_compatible(back, grid=OCC3D_GRID)
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "f.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an occle checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "f.pt", "t.pt"]  # no temp files left
