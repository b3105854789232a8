"""The height-shift and mirror augmentations (occle_core/data/augment.py): exact for voxels, points and cameras."""

from __future__ import annotations

import numpy as np
import pytest
from test_train import tiny_config, tiny_data  # noqa: F401  (session fixture)

from occle_core.config import load_config
from occle_core.data.augment import Augmentation, draw_height_shift, mirror_y, shift_height
from occle_core.data.factory import TrainFrames, build_dataset
from occle_core.data.sample import Sample, lidar_origin
from occle_core.geometry import Calib, VoxelGrid
from occle_core.labels import IGNORE_INDEX

GRID = VoxelGrid(origin=(0.0, -4.0, -2.0), voxel_size=0.5, shape=(16, 16, 8))


def _sample(rng: np.random.Generator) -> Sample:
    H, W = 40, 80
    P = np.array([[W / 2, 0, W / 2, 0], [0, W / 2, H / 2, 0], [0, 0, 1, 0]], np.float64)
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    T[:3, 3] = [0.1, -0.3, 0.2]
    pts = np.c_[rng.uniform([0.5, -4, -2], [8, 4, 2], (500, 3)), rng.uniform(0, 1, 500)].astype(np.float32)
    labels = rng.integers(0, 20, GRID.shape).astype(np.uint8)
    return Sample.single(
        "00/000000",
        rng.integers(0, 255, (H, W, 3), dtype=np.uint8),
        pts,
        Calib(P, T, (H, W)),
        voxel_labels=labels,
        invalid=rng.random(GRID.shape) < 0.3,
        label_mask=rng.random(GRID.shape) < 0.1,
        pose=np.eye(4),
    )


@pytest.mark.parametrize("layers", [-2, -1, 1, 3])
def test_shift_moves_labels_points_and_keeps_every_projection(layers):
    s = _sample(np.random.default_rng(0))
    t = shift_height(s, layers, GRID.voxel_size)
    dz = layers * GRID.voxel_size
    np.testing.assert_allclose(t.points[:, 2], s.points[:, 2] + dz, atol=1e-5)
    np.testing.assert_array_equal(t.points[:, [0, 1, 3]], s.points[:, [0, 1, 3]])
    # every point lands in the voxel one `layers` above its old one, and that voxel holds the old voxel's label
    ijk_s, in_s = GRID.point_indices(s.points[:, :3])
    ijk_t, in_t = GRID.point_indices(t.points[:, :3])
    old = np.full((len(s.points), 3), -1)
    new = np.full((len(s.points), 3), -1)
    old[in_s], new[in_t] = ijk_s, ijk_t
    keep = in_s & in_t
    np.testing.assert_array_equal(new[keep], old[keep] + [0, 0, layers])
    i, j = old[keep].T, new[keep].T
    np.testing.assert_array_equal(t.voxel_labels[j[0], j[1], j[2]], s.voxel_labels[i[0], i[1], i[2]])
    # layers moved in from outside are ignored, invalid and unlabelled
    vacated = slice(0, layers) if layers > 0 else slice(GRID.shape[2] + layers, None)
    assert (t.voxel_labels[:, :, vacated] == IGNORE_INDEX).all()
    assert t.invalid[:, :, vacated].all() and not t.label_mask[:, :, vacated].any()
    # the camera sees every point where it saw it before; the rays start one shift higher
    uv_s, _, vis_s = s.calib.project(s.points[:, :3])
    uv_t, _, vis_t = t.calib.project(t.points[:, :3])
    np.testing.assert_array_equal(vis_s, vis_t)
    np.testing.assert_allclose(uv_t[vis_t], uv_s[vis_s], atol=1e-3)
    assert lidar_origin(t) == pytest.approx((0.0, 0.0, dz))
    np.testing.assert_allclose(t.pose @ [0, 0, dz, 1], [0, 0, 0, 1], atol=1e-12)  # same world point
    # the input sample is untouched
    assert s.voxel_labels is not t.voxel_labels and lidar_origin(s) == (0.0, 0.0, 0.0)


def test_zero_shift_and_shift_out_of_the_grid():
    s = _sample(np.random.default_rng(1))
    assert shift_height(s, 0, GRID.voxel_size) is s
    t = shift_height(s, GRID.shape[2], GRID.voxel_size)
    assert (t.voxel_labels == IGNORE_INDEX).all() and t.invalid.all()


def test_draw_covers_the_range_and_refuses_negative():
    rng = np.random.default_rng(0)
    draws = {draw_height_shift(2, rng) for _ in range(200)}
    assert draws == {-2, -1, 0, 1, 2}
    assert draw_height_shift(0, rng) == 0
    with pytest.raises(ValueError, match="height_shift"):
        draw_height_shift(-1, rng)


def test_config_refuses_a_bad_height_shift():
    with pytest.raises(ValueError, match="data.height_shift"):
        load_config(None, {"data": {"height_shift": -1}})
    with pytest.raises(ValueError, match="data.height_shift"):
        load_config(None, {"data": {"height_shift": 0.5}})


def test_train_frames_shift_is_seeded_per_frame_and_epoch_and_keeps_the_budget(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path)
    base = build_dataset(cfg, "train")
    size = cfg.data.voxel_grid().voxel_size
    plain = TrainFrames(base, 0.1, 0, 7)
    shifted = TrainFrames(base, 0.1, 0, 7, augment=Augmentation(cfg.data.voxel_grid(), height_shift=1))
    seen = set()
    for epoch in range(4):
        plain.epoch = shifted.epoch = epoch
        for i in range(len(base)):
            a, b, again = plain[i], shifted[i], shifted[i]
            np.testing.assert_array_equal(b.points, again.points)  # a pure function of (seed, epoch, index)
            layers = round(float(np.median(b.points[:, 2] - a.points[:, 2])) / size)
            seen.add(layers)
            np.testing.assert_array_equal(b.label_mask, shift_height(a, layers, size).label_mask)
    assert seen == {-1, 0, 1}


def test_labelled_frame_share_serves_the_frame_budget_frames(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path)
    base = build_dataset(cfg, "train")
    every = TrainFrames(base, 0.5, 0, 7, budget="frame")
    only = TrainFrames(base, 0.5, 0, 7, budget="frame", labelled_share=1.0)
    labelled = [i for i in range(len(base)) if every[i].label_mask.any()]
    assert len(only) == len(labelled) == 2 < len(base)
    for k, i in enumerate(labelled):  # the same frames, read and budgeted as in the full view
        a, b = every[i], only[k]
        assert a.frame_id == b.frame_id and b.label_mask.any()
        np.testing.assert_array_equal(a.points, b.points)
    with pytest.raises(IndexError):
        only[len(only)]
    # a quarter labelled budget (1 of 4 frames) mixed to half of the epoch: the labelled frame 3 times, the rest once
    mixed = TrainFrames(base, 0.25, 0, 7, budget="frame", labelled_share=0.5)
    served = [mixed[k].label_mask.any() for k in range(len(mixed))]
    assert len(mixed) == 6 and sum(served) == 3
    for bad in ({"labelled_frame_share": 1.0}, {"labelled_frame_share": 0.0, "label_budget": "frame"}):
        with pytest.raises(ValueError, match="labelled_frame_share"):
            load_config(None, {"data": bad})
    with pytest.raises(ValueError, match="labelled_frame_share"):
        TrainFrames(base, 0.5, 0, 7, budget="voxel", labelled_share=1.0)


@pytest.mark.parametrize("origin_y", [-4.0, -3.0])  # centre line y = 0, and y = 1 m
def test_mirror_flips_labels_points_images_and_keeps_every_projection(origin_y):
    grid = VoxelGrid((0.0, origin_y, -2.0), GRID.voxel_size, GRID.shape)
    yc = origin_y + 4.0
    s = _sample(np.random.default_rng(2))
    s.cameras[0].pseudo2d = np.random.default_rng(3).integers(0, 20, s.image.shape[:2]).astype(np.uint8)
    t = mirror_y(s, grid)
    np.testing.assert_allclose(t.points[:, 1], 2 * yc - s.points[:, 1], atol=1e-5)
    np.testing.assert_array_equal(t.points[:, [0, 2, 3]], s.points[:, [0, 2, 3]])
    # each point lands in the mirrored voxel (j -> Y - 1 - j), which holds the old voxel's label
    ijk_s, in_s = grid.point_indices(s.points[:, :3])
    ijk_t, in_t = grid.point_indices(t.points[:, :3])
    assert np.array_equal(in_s, in_t)
    np.testing.assert_array_equal(ijk_t, ijk_s * [1, -1, 1] + [0, grid.shape[1] - 1, 0])
    i, j = ijk_s.T, ijk_t.T
    np.testing.assert_array_equal(t.voxel_labels[j[0], j[1], j[2]], s.voxel_labels[i[0], i[1], i[2]])
    for name in ("invalid", "label_mask"):
        np.testing.assert_array_equal(getattr(t, name), getattr(s, name)[:, ::-1])
    # every point projects onto the mirrored pixel of where it did, at the same depth, onto the same colour
    W = s.calib.image_size[1]
    uv_s, d_s, vis_s = s.calib.project(s.points[:, :3])
    uv_t, d_t, vis_t = t.calib.project(t.points[:, :3])
    np.testing.assert_allclose(d_t, d_s, rtol=1e-5)
    np.testing.assert_allclose(uv_t[vis_s], uv_s[vis_s] * [-1, 1] + [W, 0], atol=1e-3)
    inside = vis_s & vis_t
    assert inside.sum() > 50
    cols_s, rows = np.floor(uv_s[inside]).astype(int).T
    cols_t = np.floor(uv_t[inside, 0]).astype(int)
    exact = np.abs(uv_s[inside, 0] - np.round(uv_s[inside, 0])) > 1e-3  # not on a pixel border
    np.testing.assert_array_equal(t.image[rows[exact], cols_t[exact]], s.image[rows[exact], cols_s[exact]])
    np.testing.assert_array_equal(t.pseudo2d[rows[exact], cols_t[exact]], s.pseudo2d[rows[exact], cols_s[exact]])
    R = t.calib.T_cam_lidar[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0) and t.calib.P[0, 0] > 0  # a real camera
    assert lidar_origin(t) == pytest.approx((0.0, 2 * yc, 0.0))
    np.testing.assert_allclose(t.pose @ [1.0, 2 * yc - 0.5, 0.3, 1], [1.0, 0.5, 0.3, 1], atol=1e-12)  # same world point
    # twice is the identity; the input is untouched
    back = mirror_y(t, grid)
    np.testing.assert_allclose(back.points, s.points, atol=1e-5)
    np.testing.assert_allclose(back.calib.lidar_to_image, s.calib.lidar_to_image, atol=1e-9)
    np.testing.assert_array_equal(back.image, s.image)
    np.testing.assert_array_equal(back.voxel_labels, s.voxel_labels)
    assert lidar_origin(s) == (0.0, 0.0, 0.0)


def test_mirror_refuses_an_image_of_another_width():
    s = _sample(np.random.default_rng(4))
    s.cameras[0].pseudo2d = np.zeros((40, 60), np.uint8)
    with pytest.raises(ValueError, match="pseudo2d is 60 x 40 pixels, its calibration's image_size 80 x 40"):
        mirror_y(s, GRID)


def test_augmentation_draws_the_flip_only_when_it_is_on():
    aug = Augmentation(GRID, height_shift=1)
    np.random.seed(5)
    alone = [draw_height_shift(1) for _ in range(50)]
    np.random.seed(5)
    assert [aug.draw() for _ in range(50)] == [(k, False) for k in alone]  # the stream of runs before data.flip
    both = Augmentation(GRID, height_shift=1, flip=0.5)
    draws = [both.draw() for _ in range(200)]
    assert {m for _, m in draws} == {False, True} and {k for k, _ in draws} == {-1, 0, 1}
    assert not any(m for _, m in (Augmentation(GRID, flip=0.0).draw() for _ in range(50)))
    assert all(m for _, m in (Augmentation(GRID, flip=1.0).draw() for _ in range(50)))
    s = _sample(np.random.default_rng(6))
    np.testing.assert_array_equal(both.apply(s, (1, True)).points, mirror_y(shift_height(s, 1, 0.5), GRID).points)
    assert both.apply(s, (0, False)) is s


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "half"])
def test_config_refuses_a_bad_flip(bad):
    with pytest.raises(ValueError, match="data.flip"):
        load_config(None, {"data": {"flip": bad}})


def test_train_frames_mirror_is_seeded_per_frame_and_epoch(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data, tmp_path)
    base = build_dataset(cfg, "train")
    grid = cfg.data.voxel_grid()
    plain = TrainFrames(base, 0.1, 0, 7)
    flipped = TrainFrames(base, 0.1, 0, 7, augment=Augmentation(grid, flip=0.5))
    seen = set()
    for epoch in range(3):
        plain.epoch = flipped.epoch = epoch
        for i in range(len(base)):
            a, b = plain[i], flipped[i]
            np.testing.assert_array_equal(b.points, flipped[i].points)
            mirrored = not np.array_equal(a.points, b.points)
            seen.add(mirrored)
            want = mirror_y(a, grid) if mirrored else a
            np.testing.assert_array_equal(b.voxel_labels, want.voxel_labels)
            np.testing.assert_array_equal(b.label_mask, want.label_mask)  # the budget does not depend on it
    assert seen == {False, True}
