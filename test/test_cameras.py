"""N cameras: collate stacks them frame-major, lifting is the masked mean over the cameras that see a voxel, the
projection runs per camera, one camera is the single-camera network, the checkpoint records the rig, and the
Predictor's multi-camera call validates its views; an Occ3D / nuScenes replica trains end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_model import SMALL_MODEL

from occle_core.checkpoint import CheckpointError, checkpoint_rig, make_checkpoint, save_checkpoint
from occle_core.config import OccleConfig, load_config
from occle_core.data.batch import collate, collate_inputs
from occle_core.data.label_png import write_label_png
from occle_core.data.nuscenes import CAMERAS
from occle_core.data.sample import CameraView, Sample
from occle_core.geometry import Calib, VoxelGrid
from occle_core.losses import compute_losses
from occle_core.model.occle import OccLE, ring_calibs, synthetic_batch
from occle_core.model.semantic_branch import lift_cameras, lift_image_features
from occle_core.predictor import Predictor
from occle_core.resources import config_path

GRID = {"origin": [-6.4, -6.4, -2.0], "voxel_size": 0.4, "shape": [32, 32, 8]}  # around the cameras


def _cfg(cameras: list[str] | None, **data) -> OccleConfig:
    d = {"dataset": "occ3d_nuscenes", "grid": GRID, "image_size": [24, 48], "cameras": cameras, **data}
    return OccleConfig.from_dict({"data": d, "model": SMALL_MODEL})


def _points(seed: int = 0, n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = VoxelGrid.from_dict(GRID)
    return np.c_[rng.uniform(grid.origin, grid.upper, (n, 3)), rng.uniform(0, 1, n)].astype(np.float32)


def _views(count: int, hw: tuple[int, int] = (30, 60), seed: int = 0) -> list[tuple[np.ndarray, Calib]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (*hw, 3), dtype=np.uint8), c) for c in ring_calibs(count, *hw)]


def _sample(names: list[str], seed: int = 0, pseudo: dict[str, int] | None = None) -> Sample:
    """A frame whose camera ``k`` of ``names`` looks along yaw 360 k / len(names); pseudo: name -> fill label."""
    views = []
    for name, (image, calib) in zip(names, _views(len(names), seed=seed)):
        fill = (pseudo or {}).get(name)
        p2d = None if fill is None else np.full(image.shape[:2], fill, np.uint8)
        views.append(CameraView(name, image, calib, p2d))
    return Sample(f"s/{seed}", _points(seed), views, grid_frame="ego")


def test_collate_stacks_the_camera_set_frame_major():
    names = ["CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT"]
    cfg = _cfg(names)
    samples = [_sample(names, 0, {"CAM_BACK": 3}), _sample(names, 1, {"CAM_FRONT": 5})]
    # the reader's camera order differs from the configured set: collate takes the set's order
    samples[1].cameras = samples[1].cameras[::-1]
    b = collate(samples, cfg)
    assert b.num_cameras == 3 and b.batch_size == 2
    assert b.image.shape == (6, 3, 24, 48) and b.lidar_to_image.shape == (6, 3, 4) and b.pseudo2d.shape == (6, 24, 48)
    assert b.per_camera(b.lidar_to_image).shape == (2, 3, 3, 4) and b.per_camera(b.pseudo2d).shape == (2, 3, 24, 48)
    for i, (frame, cam) in enumerate([(f, c) for f in range(2) for c in range(3)]):
        view = {v.name: v for v in samples[frame].cameras}[names[cam]]
        expected = view.calib.resized(24, 48).lidar_to_image.astype(np.float32)
        np.testing.assert_array_equal(b.lidar_to_image[i].numpy(), expected)  # each camera's calib, resized
    filled = {i: int(b.pseudo2d[i].unique()[0]) for i in range(6) if bool((b.pseudo2d[i] != 255).all())}
    assert filled == {1: 3, 3: 5}  # frame 0 CAM_BACK, frame 1 CAM_FRONT; the other cameras have none
    assert b.pseudo3d.shape == (2, 32, 32, 8) and set(b.pseudo3d[0].unique().tolist()) == {3, 255}
    with pytest.raises(ValueError, match=r"cameras \['CAM_BACK_RIGHT'\] of the camera set .* are missing"):
        collate_inputs([_sample(names)], _cfg([*names, "CAM_BACK_RIGHT"]))
    one = collate_inputs([_sample(names)], _cfg(["image_2"]))  # one camera: the front camera, whatever its name
    assert one.image.shape == (1, 3, 24, 48) and one.num_cameras == 1
    np.testing.assert_array_equal(
        one.lidar_to_image[0].numpy(), _sample(names).cameras[0].calib.resized(24, 48).lidar_to_image.astype(np.float32)
    )


def test_lifting_is_the_masked_mean_over_the_cameras_that_see_a_voxel():
    # camera 0 looks along +x, camera 1 along yaw 30 degrees; both have a 90 degree field of view
    H, W = 40, 80
    cams = [ring_calibs(1, H, W)[0], ring_calibs(12, H, W)[1]]
    bearings = [-30.0, 20.0, 60.0, 180.0]  # seen by: camera 0 only, both, camera 1 only, none
    centers = torch.tensor([[10 * math.cos(math.radians(a)), 10 * math.sin(math.radians(a)), 0.0] for a in bearings])
    l2i = torch.from_numpy(np.stack([c.lidar_to_image for c in cams])).float()  # (B*N = 2, 3, 4)
    feat = torch.ones(2, 2, 10, 20)  # constant features: camera 0 (1, 2), camera 1 (3, 6)
    feat[0, 1] = 2.0
    feat[1, 0], feat[1, 1] = 3.0, 6.0
    lifted, valid = lift_cameras(feat, centers, l2i, 2, (H, W), (4, 1, 1))
    assert lifted.shape == (1, 2, 4, 1, 1) and valid.shape == (1, 1, 4, 1, 1)
    expected = torch.tensor([[1.0, 2.0, 3.0, 0.0], [2.0, 4.0, 6.0, 0.0]])  # by hand: (1+3)/2 = 2, (2+6)/2 = 4
    torch.testing.assert_close(lifted[0, :, :, 0, 0], expected)
    assert valid.flatten().tolist() == [1.0, 1.0, 1.0, 0.0]
    # one camera: exactly the single-camera lifting
    single = lift_image_features(feat[:1], centers, l2i[:1], (H, W), (4, 1, 1))
    one = lift_cameras(feat[:1], centers, l2i[:1], 1, (H, W), (4, 1, 1))
    assert all(torch.equal(a, b) for a, b in zip(single, one))


def test_projection_runs_per_camera_with_a_cached_layout_each():
    cfg = _cfg(None)
    torch.manual_seed(0)
    model = OccLE(cfg).eval()
    batch = synthetic_batch(cfg, 2000, batch_size=2, num_cameras=3)
    with torch.no_grad():
        fused = model.features(batch)
        maps, weight = model.project(fused, batch.lidar_to_image, (24, 48), 3)
        assert maps.shape == (6, 18, 6, 12) and weight.shape == (6, 1, 6, 12)
        assert len(model._layouts._items) == 3  # one ray layout per camera calibration
        rig = batch.per_camera(batch.lidar_to_image)  # (2, 3, 3, 4)
        for n in range(3):  # each camera alone gives its own rows
            m, w = model.project(fused, rig[:, n].contiguous(), (24, 48), 1)
            torch.testing.assert_close(maps.view(2, 3, 18, 6, 12)[:, n], m, rtol=0, atol=0)
            torch.testing.assert_close(weight.view(2, 3, 1, 6, 12)[:, n], w, rtol=0, atol=0)
            assert bool((w > 0).any())
        assert len(model._layouts._items) == 3  # the per-camera calls hit the same three entries


def test_one_camera_is_the_single_camera_network():
    """A front camera plus a camera looking backwards at a grid that lies wholly in front (it sees no voxel) gives
    the front camera's network: the masked mean over one camera is that camera's feature."""
    cfg = OccleConfig.from_dict(
        {
            "data": {
                "grid": {"origin": [0.0, -6.4, -2.0], "voxel_size": 0.4, "shape": [32, 32, 8]},
                "image_size": [24, 48],
            },
            "model": SMALL_MODEL,
        }
    )
    torch.manual_seed(0)
    model = OccLE(cfg).eval()
    single = synthetic_batch(cfg, 2000)
    front_back = synthetic_batch(cfg, 2000, num_cameras=2)
    assert torch.equal(front_back.lidar_to_image[0], single.lidar_to_image[0])
    front_back.image[0] = single.image[0]
    with torch.no_grad():
        a, b = model(single), model(front_back)
    # the image encoder runs on a stack of 2 instead of 1 (other GEMM blocking): equal up to rounding
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.proj[:1], a.proj, rtol=1e-4, atol=1e-5)
    assert float(b.proj_weight[1].abs().max()) == 0.0  # nothing projects into the backward camera


def _checkpoint(tmp_path, cfg: OccleConfig) -> tuple:
    torch.manual_seed(0)
    model = OccLE(cfg).eval()
    path = tmp_path / "model.pt"
    ckpt = make_checkpoint(cfg.to_dict(), cfg.data.classes(), cfg.data.voxel_grid(), model.state_dict())
    save_checkpoint(path, ckpt)
    return path, ckpt


def test_checkpoint_records_the_rig_and_old_checkpoints_are_single_camera(tmp_path):
    path, ckpt = _checkpoint(tmp_path, _cfg(None))
    assert ckpt["grid_frame"] == "ego" and ckpt["cameras"] == list(CAMERAS)
    pred = Predictor(path, device="cpu")
    assert pred.grid_frame == "ego" and pred.camera_names == list(CAMERAS)
    del ckpt["grid_frame"], ckpt["cameras"]  # written before the entries existed
    save_checkpoint(tmp_path / "old.pt", ckpt)
    old = Predictor(tmp_path / "old.pt", device="cpu")
    assert (old.grid_frame, old.camera_names) == ("lidar", ["image_2"])
    image, calib = _views(1)[0]
    assert old.predict(image, _points(), calib).shape == (32, 32, 8)
    with pytest.raises(CheckpointError, match="checkpoint grid_frame must be one of"):
        checkpoint_rig({"grid_frame": "map"})
    with pytest.raises(CheckpointError, match="cameras must be a non-empty list"):
        make_checkpoint(_cfg(None).to_dict(), _cfg(None).data.classes(), VoxelGrid.from_dict(GRID), {}, cameras=[])


def test_shipped_checkpoint_is_lidar_frame_single_camera():
    try:
        pred = Predictor(device="cpu")
    except FileNotFoundError:
        pytest.skip("models/occle_tiny_synthetic.pt is not shipped in this checkout")
    assert pred.grid_frame == "lidar" and pred.camera_names == ["image_2"]


def test_predictor_multi_camera_call_and_its_errors(tmp_path):
    cfg = _cfg(None)
    path, _ = _checkpoint(tmp_path, cfg)
    pred = Predictor(path, device="cpu")
    views, pts = _views(6), _points()
    labels = pred.predict(views, pts)
    assert labels.shape == (32, 32, 8) and labels.dtype == np.uint8 and labels.max() < 18
    assert np.array_equal(labels, pred.predict(tuple(views), pts))
    mixed = [views[0], *_views(6, hw=(45, 80))[1:]]  # cameras of other sizes are resized like the rest
    assert pred.predict(mixed, pts).shape == (32, 32, 8)
    bad = [
        ((views[:2], pts), r"views: this checkpoint takes 6 camera\(s\) \['CAM_FRONT'"),
        (
            (views[0][0], pts, views[0][1]),
            r"views: this checkpoint takes 6 cameras .* call predict\(\[\(image, calib\)",
        ),
        ((views, pts, views[0][1]), "calib must be None when views are given"),
        (([*views[:5], views[5][0]], pts), r"views\[5\] must be an \(image, Calib\) pair"),
        (([*views[:2], (views[2][0][..., 0], views[2][1]), *views[3:]], pts), r"views\[2\] \(CAM_FRONT_LEFT\) image"),
        (([*views[:3], (views[3][0], "P2"), *views[4:]], pts), r"views\[3\] \(CAM_BACK\) calib must be"),
        ((views, pts[:, :3]), r"points must be an \(N, >=4\)"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            pred.predict(*args)


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    from occle_core.synth.released import write_nuscenes_replica

    return write_nuscenes_replica(tmp_path_factory.mktemp("nusc"), "v1.0-mini", ("scene-0061",), 2, 1)


def test_occ3d_six_camera_training_step_reaches_the_encoder_from_every_camera(replica):
    from occle_core.data.occ3d import Occ3DDataset

    token = replica.samples[0]
    frame = f"{replica.scene_of[token]}/{token}"
    for i, channel in enumerate(("CAM_FRONT", "CAM_BACK")):  # 2D pseudo labels for two of the six cameras
        pseudo = np.full((90, 160), 255, np.uint8)
        pseudo[45:] = (11, 15)[i]
        path = replica.root / "pseudo_2d" / frame / f"{channel}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_label_png(path, pseudo)
    cfg = load_config(config_path("train_occ3d_tiny.yaml"), {"data": {"image_size": [32, 64]}})
    assert cfg.data.camera_names() == list(CAMERAS) and cfg.data.frame() == "ego"
    sample = Occ3DDataset(replica.root, [frame])[0]
    assert sample.grid_frame == "ego" and len(sample.cameras) == 6
    batch = collate([sample], cfg)
    assert batch.image.shape == (6, 3, 32, 64) and batch.pseudo2d.shape == (6, 32, 64)
    torch.manual_seed(0)
    model = OccLE(cfg).train()
    batch.image.requires_grad_(True)
    out = model(batch)
    assert out.logits.shape == (1, 18, 200, 200, 16) and out.sem2d.shape == (6, 18, 32, 64)
    assert out.proj.shape == (6, 18, 8, 16)
    total, terms = compute_losses(out, batch, cfg.loss, empty_index=17)
    assert {"voxel_ce", "pseudo_2d", "pseudo_3d", "geometry", "projection"} <= set(terms)
    assert bool(torch.isfinite(total)) and all(bool(torch.isfinite(v)) for v in terms.values())
    total.backward()
    per_camera = batch.image.grad.abs().flatten(1).sum(1)  # through the shared encoder, from every camera
    assert per_camera.shape == (6,) and bool((per_camera > 0).all())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.image_encoder.parameters())
