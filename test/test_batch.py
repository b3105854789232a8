"""collate_inputs() / add_targets() / collate(): resizing, point selection, targets and validation of Samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occle_core.config import OccleConfig
from occle_core.data.batch import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Batch,
    add_targets,
    collate,
    collate_inputs,
    image_to_tensor,
    resize_nearest,
    select_points,
    voxel_truth,
)
from occle_core.data.sample import Sample
from occle_core.geometry import Calib, VoxelGrid, free_space_mask
from occle_core.pseudo.lift import lift_to_voxels

GRID = {"origin": [0.0, -3.2, -1.6], "voxel_size": 0.2, "shape": [32, 32, 16]}
H, W = 40, 80


def _cfg(**data) -> OccleConfig:
    return OccleConfig.from_dict({"data": {"grid": GRID, "image_size": [20, 40], **data}})


def _calib(h: int = H, w: int = W) -> Calib:
    P = np.array([[w / 2.0, 0, w / 2.0, 0], [0, w / 2.0, h / 2.0, 0], [0, 0, 1.0, 0]])
    T = np.eye(4)
    T[:3, :3] = [[0, -1.0, 0], [0, 0, -1.0], [1.0, 0, 0]]
    return Calib(P, T, (h, w))


def _sample(seed: int = 0, n: int = 500, labels: bool = True, pseudo: bool = True) -> Sample:
    rng = np.random.default_rng(seed)
    grid = VoxelGrid.from_dict(GRID)
    pts = np.concatenate([rng.uniform(grid.origin, grid.upper, (n, 3)), rng.uniform(0, 1, (n, 1))], axis=1).astype(
        np.float32
    )
    pts[:5, 0] += 100.0  # outside the grid
    lab = rng.integers(0, 20, grid.shape).astype(np.uint8) if labels else None
    invalid = np.zeros(grid.shape, bool)
    invalid[0] = True
    return Sample.single(
        f"00/{seed:06d}",
        rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        pts,
        _calib(),
        pseudo2d=rng.integers(0, 20, (H, W)).astype(np.uint8) if pseudo else None,
        voxel_labels=lab,
        invalid=invalid if labels else None,
    )


def test_shapes_dtypes_and_normalisation():
    cfg = _cfg()
    s = _sample()
    b = collate([s, _sample(1)], cfg)
    assert isinstance(b, Batch) and b.batch_size == 2
    assert b.image.shape == (2, 3, 20, 40) and b.image.dtype == torch.float32
    assert b.points.shape[1] == 6 and set(b.points[:, 0].tolist()) == {0.0, 1.0}
    assert not b.points[:, 5].any()  # one scan per frame: dt = 0 (data/batch.py point_time)
    assert b.lidar_to_image.shape == (2, 3, 4)
    assert b.voxel_labels.shape == (2, 32, 32, 16) and b.voxel_labels.dtype == torch.int64
    assert b.label_mask.dtype == torch.bool and b.pseudo2d.shape == (2, 20, 40)
    assert b.pseudo3d.shape == (2, 32, 32, 16) and b.frame_ids == ["00/000000", "00/000001"]
    # the mean over a uniform image of 255 maps to (1 - mean) / std
    white = Sample.single("w", np.full((H, W, 3), 255, np.uint8), s.points, s.calib)
    img = collate([white], cfg).image[0]
    expected = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(img[:, 5, 5], expected)


def test_calibration_is_resized_with_the_image():
    s = _sample()
    b = collate([s], _cfg())
    np.testing.assert_allclose(b.lidar_to_image[0].numpy(), s.calib.resized(20, 40).lidar_to_image, rtol=1e-6)
    # a point projects to half the pixel coordinates in the half-size image
    p = np.array([[10.0, 1.0, 0.5, 1.0]])
    hom = b.lidar_to_image[0].double().numpy() @ p[0]
    uv_small = hom[:2] / hom[2]
    uv_full, _, _ = s.calib.project(p)
    np.testing.assert_allclose(uv_small, uv_full[0] / 2.0, rtol=1e-5)


def test_points_inside_grid_finite_and_capped():
    s = _sample(n=500)
    s.points[10] = np.nan
    s.points[11, 2] = np.inf
    b = collate([s], _cfg())
    grid = VoxelGrid.from_dict(GRID)
    xyz = b.points[:, 1:4].numpy()
    _, inside = grid.point_indices(xyz)
    assert inside.all() and np.isfinite(xyz).all()
    assert len(xyz) == 500 - 5 - 2
    capped = collate([s], _cfg(max_points=100))
    assert capped.points.shape[0] == 100
    # reproducible per frame id, different with another generator
    again = collate([s], _cfg(max_points=100))
    assert torch.equal(capped.points, again.points)
    other = collate([s], _cfg(max_points=100), rng=np.random.default_rng(123))
    assert not torch.equal(capped.points, other.points)


def test_targets_invalid_label_mask_pseudo_and_free_space():
    s = _sample()
    budget = np.zeros(s.voxel_labels.shape, bool)
    budget[1:5] = True
    s.label_mask = budget
    b = collate([s], _cfg())
    lab = b.voxel_labels[0]
    assert (lab[0] == 255).all()  # invalid voxels are ignored
    assert torch.equal(lab[1:], torch.from_numpy(s.voxel_labels[1:]).long())
    assert torch.equal(b.label_mask[0], torch.from_numpy(budget) & (lab != 255))
    # without a budget every valid labelled voxel counts
    s.label_mask = None
    assert torch.equal(collate([s], _cfg()).label_mask[0], lab != 255)
    grid = VoxelGrid.from_dict(GRID)
    expected3d = lift_to_voxels(s.points, s.pseudo2d, s.calib, grid, 20)
    assert torch.equal(b.pseudo3d[0], torch.from_numpy(expected3d).long())
    assert torch.equal(b.pseudo2d[0], torch.from_numpy(resize_nearest(s.pseudo2d, (20, 40))).long())
    occ, free = free_space_mask(grid, s.points)
    assert torch.equal(b.occupied[0], torch.from_numpy(occ)) and torch.equal(b.free[0], torch.from_numpy(free))
    assert b.occupied.any() and b.free.any()
    # an ego-frame sample: the rays start at its extras["lidar_origin"]
    s.extras["lidar_origin"] = (1.0, 0.5, 1.2)
    moved = collate([s], _cfg())
    _, free_mount = free_space_mask(grid, s.points, (1.0, 0.5, 1.2))
    assert torch.equal(moved.free[0], torch.from_numpy(free_mount)) and not torch.equal(moved.free[0], b.free[0])
    s.extras["lidar_origin"] = (1.0, 0.5)
    with pytest.raises(ValueError, match=r"extras\['lidar_origin'\] must be 3 finite numbers"):
        collate([s], _cfg())


def test_unlabelled_samples_and_inference_mode():
    b = collate([_sample(labels=False, pseudo=False)], _cfg())
    assert b.voxel_labels is None and b.label_mask is None and b.pseudo2d is None and b.pseudo3d is None
    mixed = collate([_sample(0), _sample(1, labels=False, pseudo=False)], _cfg())
    assert (mixed.voxel_labels[1] == 255).all() and not mixed.label_mask[1].any()
    assert (mixed.pseudo2d[1] == 255).all()
    bare = collate([_sample()], _cfg(), with_targets=False)
    assert bare.voxel_labels is None and bare.occupied is None and bare.free is None and bare.pseudo3d is None


def test_inputs_and_targets_are_built_apart():
    samples, cfg = [_sample(0), _sample(1, labels=False)], _cfg()
    inputs = collate_inputs(samples, cfg)
    targets = ("voxel_labels", "label_mask", "pseudo2d", "pseudo3d", "occupied", "free")
    assert all(getattr(inputs, name) is None for name in targets)
    full = add_targets(inputs, samples, cfg)
    assert all(getattr(inputs, name) is None for name in targets), "add_targets must not modify its input"
    whole = collate(samples, cfg)
    for name in ("image", "points", "lidar_to_image", *targets):
        assert torch.equal(getattr(full, name), getattr(whole, name)), name
    assert full.frame_ids == whole.frame_ids == ["00/000000", "00/000001"]
    truth = voxel_truth(samples, VoxelGrid.from_dict(GRID))
    assert truth.dtype == np.uint8 and (truth[0, 0] == 255).all() and (truth[1] == 255).all()
    np.testing.assert_array_equal(truth[0, 1:], samples[0].voxel_labels[1:])
    assert voxel_truth([_sample(labels=False)], VoxelGrid.from_dict(GRID)) is None


def test_resize_nearest_picks_pixel_centres():
    lab = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert resize_nearest(lab, (2, 2)).tolist() == [[5, 7], [13, 15]]
    assert resize_nearest(lab, (8, 8))[::2, ::2].tolist() == lab.tolist()
    assert resize_nearest(lab, (4, 4)) is lab


def test_to_moves_every_tensor():
    b = collate([_sample()], _cfg())
    moved = b.to("cpu")
    assert moved is not b and torch.equal(moved.points, b.points) and moved.frame_ids == b.frame_ids


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image", np.zeros((H, W), np.uint8), r"\(H, W, 3\)"),
        ("image", np.zeros((H, W, 3), np.float32), "uint8"),
        ("image", np.zeros((H + 2, W, 3), np.uint8), "calib image_size"),
        ("points", np.zeros((5, 3), np.float32), r"\(N, >=4\)"),
        ("voxel_labels", np.zeros((4, 4, 4), np.uint8), "voxel_labels has shape"),
        ("pseudo2d", np.zeros((3, 3), np.uint8), "pseudo2d has shape"),
    ],
)
def test_bad_samples_are_refused_naming_the_field(field, value, message):
    s = _sample()
    setattr(s.cameras[0] if field in ("image", "pseudo2d") else s, field, value)
    with pytest.raises(ValueError, match=message):
        collate([s], _cfg())


def test_empty_list_is_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        collate([], _cfg())


def test_crop_matches_voxel_indices_and_takes_read_only_views():
    grid = VoxelGrid.from_dict(GRID)
    rng = np.random.default_rng(0)
    lo, hi = np.asarray(grid.origin), grid.upper
    pts = np.concatenate([rng.uniform(lo - 1, hi + 1, (2000, 3)), rng.random((2000, 1))], 1).astype(np.float32)
    pts[:8, :3] = np.stack([lo, hi, lo - 1e-6, hi - 1e-4, lo + 1e-4, [np.nan, 1, 1], [1, np.inf, 1], hi])  # edges
    pts[8, 3] = np.nan  # finite xyz, NaN intensity: dropped
    ijk = np.floor((pts[:, :3] - lo.astype(np.float32)) / np.float32(grid.voxel_size))
    want = np.all((ijk >= 0) & (ijk < np.asarray(grid.shape)), axis=1)  # the row-wise definition
    assert np.array_equal(grid.inside_mask(pts), want)
    assert np.array_equal(grid.inside_mask(pts.astype(np.float64)), grid.point_indices(pts.astype(np.float64))[1])
    view = pts.copy()
    view.flags.writeable = False
    kept = select_points(view, grid, 0, rng)
    want[8] = False
    np.testing.assert_array_equal(kept, pts[want])


def test_uint8_resize_is_within_one_grey_level_of_the_float_resize():
    img = np.random.default_rng(0).integers(0, 256, (75, 248, 3), dtype=np.uint8)
    img.flags.writeable = False  # images decoded from messages can be read-only
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255.0
    ref = torch.nn.functional.interpolate(x, size=(20, 40), mode="bilinear", align_corners=False, antialias=True)[0]
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    got = image_to_tensor(img, (20, 40)) * std + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert got.shape == (3, 20, 40) and got.is_contiguous()
    assert (got - ref).abs().max().item() * 255 <= 1.0 + 1e-3
