"""Predictor: checkpoint loading, devices, input validation, determinism, and the occle-predict CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_model import SMALL_MODEL
from helpers_numeric import assert_labels_are_argmax, head_rounding_bound

from occle_core.checkpoint import CheckpointError, make_checkpoint, save_checkpoint
from occle_core.config import OccleConfig
from occle_core.data.kitti_calib import write_kitti_calib
from occle_core.geometry import Calib, VoxelGrid
from occle_core.model.occle import OccLE
from occle_core.predictor import Predictor, default_checkpoint, main, parse_frames

GRID = {"origin": [0.0, -6.4, -2.0], "voxel_size": 0.4, "shape": [32, 32, 8]}
H, W = 60, 180


def _cfg(**model) -> OccleConfig:
    return OccleConfig.from_dict({"data": {"grid": GRID, "image_size": [32, 96]}, "model": {**SMALL_MODEL, **model}})


def _checkpoint(tmp_path, cfg: OccleConfig | None = None, seed: int = 0):
    cfg = cfg or _cfg()
    torch.manual_seed(seed)
    model = OccLE(cfg).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), model.state_dict()))
    return path, model, cfg


def _calib(h: int = H, w: int = W) -> Calib:
    P = np.array([[w / 2.0, 0, w / 2.0, 0], [0, w / 2.0, h / 2.0, 0], [0, 0, 1.0, 0]])
    T = np.eye(4)
    T[:3, :3] = [[0, -1.0, 0], [0, 0, -1.0], [1.0, 0, 0]]
    return Calib(P, T, (h, w))


def _frame(seed: int = 0, n: int = 3000):
    rng = np.random.default_rng(seed)
    grid = VoxelGrid.from_dict(GRID)
    pts = np.concatenate([rng.uniform(grid.origin, grid.upper, (n, 3)), rng.uniform(0, 1, (n, 1))], 1)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return image, pts.astype(np.float32), _calib()


def test_predict_shape_dtype_determinism_and_from_model(tmp_path):
    path, model, cfg = _checkpoint(tmp_path)
    pred = Predictor(path, device="cpu")
    assert pred.device == torch.device("cpu") and pred.grid == VoxelGrid.from_dict(GRID)
    assert pred.classes.num_classes == 20 and not pred.model.training
    image, pts, calib = _frame()
    labels = pred.predict(image, pts, calib)
    assert labels.shape == (32, 32, 8) and labels.dtype == np.uint8 and labels.max() < 20
    assert np.array_equal(labels, pred.predict(image, pts, calib))
    direct = Predictor.from_model(model, cfg, device="cpu")
    assert np.array_equal(labels, direct.predict(image, pts, calib))
    # the network itself, on the same preprocessing: argmax of its logits
    logits = pred.predict_logits(image, pts, calib)
    assert logits.shape == (20, 32, 32, 8)
    with torch.inference_mode():
        tol = head_rounding_bound(pred.model.heads["logits"], pred.model.features(pred.batch(image, pts, calib)))
    assert_labels_are_argmax(torch.from_numpy(labels), logits, tol, dim=0)  # other GEMM shapes: ties may differ


def test_ground_gate_from_the_checkpoint_or_the_caller(tmp_path):
    path, _, _ = _checkpoint(tmp_path, _cfg(ground_gate=0.8))
    assert Predictor(path, device="cpu").model.ground_gate == 0.8
    pred = Predictor(path, device="cpu", ground_gate=0.0)
    assert pred.model.ground_gate == 0.0 and pred.config.model.ground_gate == 0.0
    image, pts, calib = _frame()
    labels, logits = pred.predict(image, pts, calib), pred.predict_logits(image, pts, calib)
    with torch.inference_mode():
        tol = head_rounding_bound(pred.model.heads["logits"], pred.model.features(pred.batch(image, pts, calib)))
    assert_labels_are_argmax(torch.from_numpy(labels), logits, tol, dim=0)  # no gate: the network's argmax
    with pytest.raises(ValueError, match="model.ground_gate must be a number of metres >= 0"):
        Predictor(path, device="cpu", ground_gate=-1.0)


def test_non_finite_points_are_dropped_and_extra_columns_ignored(tmp_path):
    path, _, _ = _checkpoint(tmp_path)
    pred = Predictor(path, device="cpu")
    image, pts, calib = _frame()
    base = pred.predict(image, pts, calib)
    dirty = np.concatenate([pts, np.array([[np.nan, 0, 0, 0], [1.0, np.inf, 0, 0]], np.float32)])
    assert np.array_equal(base, pred.predict(image, dirty, calib))
    wide = np.concatenate([pts, np.ones((len(pts), 2), np.float32)], 1)  # e.g. ring and time columns
    assert np.array_equal(base, pred.predict(image, wide, calib))
    empty = pred.predict(image, np.zeros((0, 4), np.float32), calib)  # no points: still a grid
    assert empty.shape == (32, 32, 8)


@pytest.mark.parametrize(
    "field, make, message",
    [
        ("image", lambda im, p, c: (im.astype(np.float32), p, c), "uint8"),
        ("image", lambda im, p, c: (im[..., 0], p, c), r"\(H, W, 3\)"),
        ("calib", lambda im, p, c: (im, p, _calib(H + 4, W)), "calib image_size"),
        ("calib", lambda im, p, c: (im, p, "P2"), "Calib"),
        ("points", lambda im, p, c: (im, p[:, :3], c), r"\(N, >=4\)"),
        ("points", lambda im, p, c: (im, p.astype(np.int32), c), "floating point"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_field(tmp_path, field, make, message):
    path, _, _ = _checkpoint(tmp_path)
    pred = Predictor(path, device="cpu")
    with pytest.raises(ValueError, match=message) as err:
        pred.predict(*make(*_frame()))
    assert field in str(err.value)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        Predictor(tmp_path / "missing.pt", device="cpu")
    path, model, cfg = _checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["grid"]["voxel_size"] = 0.2
    torch.save(ckpt, tmp_path / "other_grid.pt")
    with pytest.raises(CheckpointError, match="grid"):
        Predictor(tmp_path / "other_grid.pt", device="cpu")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["model"]["feat_dim"] = 16  # weights no longer fit the network of the config
    torch.save(ckpt, tmp_path / "other_width.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        Predictor(tmp_path / "other_width.pt", device="cpu")


def test_stored_pretrained_backbone_path_is_not_needed(tmp_path):
    cfg = _cfg()
    cfg.model.pretrained_image = str(tmp_path / "gone.pt")  # existed at training time, not here
    torch.manual_seed(0)
    model = OccLE(_cfg())
    path = tmp_path / "m.pt"
    save_checkpoint(path, make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), model.state_dict()))
    assert Predictor(path, device="cpu").predict(*_frame()).shape == (32, 32, 8)


def test_lidar_only_and_occ3d_checkpoints(tmp_path):
    cfg = _cfg(use_image=False, use_semantic_branch=False)
    path, _, _ = _checkpoint(tmp_path, cfg)
    assert Predictor(path, device="cpu").predict(*_frame()).shape == (32, 32, 8)
    occ = OccleConfig.from_dict(  # Occ3D classes, one camera (the six-camera call: test_cameras.py)
        {
            "data": {"dataset": "occ3d_nuscenes", "grid": GRID, "image_size": [32, 96], "cameras": ["CAM_FRONT"]},
            "model": SMALL_MODEL,
        }
    )
    path, _, _ = _checkpoint(tmp_path, occ)
    pred = Predictor(path, device="cpu")
    labels = pred.predict(*_frame())
    assert pred.classes.num_classes == 18 and labels.max() < 18
    assert pred.grid_frame == "ego" and pred.camera_names == ["CAM_FRONT"]


def test_default_checkpoint_location():
    try:
        path = default_checkpoint()
    except FileNotFoundError as exc:  # not trained / shipped yet: the error names where it looked
        assert "occle_tiny_synthetic.pt" in str(exc)
    else:
        assert path.name == "occle_tiny_synthetic.pt" and path.is_file()


def test_parse_frames():
    assert parse_frames(["0", "5", "10-12", "3,4"]) == [0, 5, 10, 11, 12, 3, 4]
    assert parse_frames(["2-3", "3"]) == [2, 3]
    for bad in (["x"], ["5-2"], ["1-"]):
        with pytest.raises(ValueError, match="frames"):
            parse_frames(bad)


def _write_sequence(root, frames: int = 2) -> None:
    from occle_core.data.semantic_kitti import write_image, write_points, write_voxel_bits, write_voxel_labels

    seq = root / "sequences" / "07"
    for sub in ("velodyne", "image_2", "voxels"):
        (seq / sub).mkdir(parents=True)
    write_kitti_calib(seq / "calib.txt", _calib())
    for i in range(frames):
        image, pts, _ = _frame(i)
        write_points(seq / "velodyne" / f"{i:06d}.bin", pts)
        write_image(seq / "image_2" / f"{i:06d}.png", image)
    # frame 0 has (full-size SemanticKITTI) voxel labels: shape differs from the model grid, so no comparison
    write_voxel_labels(seq / "voxels" / "000000.label", np.zeros((256, 256, 32), np.uint16))
    write_voxel_bits(seq / "voxels" / "000000.invalid", np.zeros((256, 256, 32), bool))


def test_cli_writes_labels_and_pngs(tmp_path, capsys):
    path, _, _ = _checkpoint(tmp_path)
    _write_sequence(tmp_path / "data")
    out = tmp_path / "out"
    rc = main(["--checkpoint", str(path), "--data", str(tmp_path / "data"), "--sequence", "07", "--out", str(out),
               "--device", "cpu"])  # fmt: skip
    assert rc == 0
    labels = sorted((out / "sequences" / "07" / "predictions").glob("*.label"))
    assert [p.name for p in labels] == ["000000.label", "000001.label"]
    raw = np.fromfile(labels[0], dtype="<u2")
    assert raw.size == 32 * 32 * 8
    # raw SemanticKITTI ids: the image of the learning map's inverse
    from occle_core.labels import class_table

    assert set(np.unique(raw)) <= set(class_table("semantic_kitti").learning_map_inv.tolist())
    assert sorted(p.name for p in (out / "png").glob("*.png")) == ["07_000000.png", "07_000001.png"]
    assert "wrote 2 predictions" in capsys.readouterr().out
    rc = main(["--checkpoint", str(path), "--data", str(tmp_path / "data"), "--sequence", "07", "--out", str(out),
               "--frames", "1", "9", "--no-png"])  # fmt: skip
    assert rc == 2 and "frames [9] not in sequence" in capsys.readouterr().err
