"""Rendering: voxels land on the expected pixels in their class colours; z-buffer; speed; the comparison PNG."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from occle_core.geometry import SEMANTIC_KITTI_GRID
from occle_core.labels import class_table
from occle_core.render import (
    BACKGROUND,
    PerspectiveView,
    occupied_mask,
    render_bev,
    render_comparison,
    render_perspective,
    save_png,
)

SK = class_table("semantic_kitti")


def street_grid(shape=(256, 256, 32)) -> np.ndarray:
    """A hand-built SemanticKITTI-like street: road, sidewalks, terrain, buildings, cars, a truck, trees, poles."""
    X, Y, Z = shape
    g = np.zeros(shape, np.uint8)
    yc = Y // 2
    g[:, yc - 40 : yc + 40, 7] = 9  # road
    g[:, yc - 55 : yc - 40, 7:9] = 11  # sidewalks, one voxel above the road
    g[:, yc + 40 : yc + 55, 7:9] = 11
    g[:, : yc - 55, 7] = 17  # terrain
    g[:, yc + 55 :, 7] = 17
    for x0 in range(10, X - 30, 45):  # buildings on both sides
        g[x0 : x0 + 35, yc + 60 : yc + 90, 8:28] = 13
        g[x0 + 5 : x0 + 40, yc - 95 : yc - 62, 8:24] = 13
    for x0 in range(20, X - 30, 40):  # parked cars
        g[x0 : x0 + 20, yc + 25 : yc + 34, 8:15] = 1
    g[60:80, yc - 10 : yc - 1, 8:15] = 1
    g[150:190, yc + 2 : yc + 14, 8:24] = 4  # truck
    for x0 in range(15, X - 16, 30):  # trees (trunk + crown), poles with signs
        g[x0 : x0 + 2, yc - 50 : yc - 48, 9:18] = 16
        g[x0 - 4 : x0 + 6, yc - 54 : yc - 44, 18:26] = 15
        g[x0 + 12, yc + 47, 9:25] = 18
        g[x0 + 12, yc + 45 : yc + 49, 25:28] = 19
    g[100:104, yc - 30 : yc - 28, 8:17] = 6  # a person
    g[:, :, 29:] = 255  # unobserved
    return g


def test_bev_single_voxel_pixel_and_colour():
    g = np.zeros((20, 30, 8), np.uint8)
    g[3, 5, 6] = 13  # building
    g[3, 5, 2] = 1  # below it: hidden in the top view
    g[10, 10, 7] = 255  # ignored: not drawn
    img = render_bev(g, SK, scale=1)
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    shade = 0.6 + 0.4 * 6 / 7
    expected = np.clip(SK.colors[13] * shade + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(img[20 - 1 - 3, 30 - 1 - 5], expected)  # forward up, left on the left
    drawn = np.any(img != np.array(BACKGROUND, np.uint8), axis=2)
    assert drawn.sum() == 1
    big = render_bev(g, SK, scale=3)
    assert big.shape == (60, 90, 3)
    assert (big[(19 - 3) * 3 : (19 - 3) * 3 + 3, (29 - 5) * 3 : (29 - 5) * 3 + 3] == expected).all()


def test_bev_marks_the_ego():
    img = render_bev(np.zeros(SEMANTIC_KITTI_GRID.shape, np.uint8), SK, scale=1, grid=SEMANTIC_KITTI_GRID)
    # LiDAR origin: i = 0 (bottom row), j = 128 (centre column)
    assert (img[255, 127] == 255).all()
    assert (img[100, 127] == np.array(BACKGROUND)).all()


def shade_of(img: np.ndarray, color: np.ndarray, tol: float = 0.03) -> np.ndarray:
    """(H, W) bool: pixels that are a darker or lighter shade of ``color`` (proportional RGB)."""
    px = img.astype(float)
    norm = px / np.maximum(px.max(axis=2, keepdims=True), 1)
    c = np.asarray(color, float)
    return np.all(np.abs(norm - c / c.max()) < tol, axis=2) & (px.max(axis=2) > 20)


def _centre_pixel(view: PerspectiveView, xyz) -> tuple[int, int]:
    R, f, cx, cy = view.basis()
    c = R @ (np.asarray(xyz, float) - np.asarray(view.eye))
    return int(f * c[1] / c[2] + cy), int(f * c[0] / c[2] + cx)


def test_perspective_single_voxel_lands_where_the_camera_projects_it():
    g = np.zeros((64, 64, 8), np.uint8)
    g[30, 20, 2] = 1  # car
    view = PerspectiveView.behind(g.shape, width=320, height=200)
    img = render_perspective(g, SK, view)
    assert img.shape == (200, 320, 3) and img.dtype == np.uint8
    r, c = _centre_pixel(view, (30.5, 20.5, 2.5))
    px = img[r, c].astype(float)
    car = SK.colors[1].astype(float)
    # a shade of the car colour: proportional to it, not the background
    assert np.allclose(px / px.max(), car / car.max(), atol=0.03)
    drawn = np.argwhere(np.any(img != np.array(BACKGROUND, np.uint8), axis=2))
    assert 5 < len(drawn) < 400  # one small cube
    assert np.abs(drawn.mean(0) - [r, c]).max() < 6
    # empty / ignored voxels are not drawn
    g[:] = 0
    g[10:20, 10:20, :4] = 255
    assert (render_perspective(g, SK, view) == np.array(BACKGROUND, np.uint8)).all()


def test_perspective_z_buffer_hides_voxels_behind_a_wall():
    g = np.zeros((64, 64, 16), np.uint8)
    g[40, 22:26, 6:10] = 6  # a small person
    view = PerspectiveView.behind(g.shape, width=320, height=200)
    r, c = _centre_pixel(view, (40.5, 24.0, 8.0))
    seen = render_perspective(g, SK, view)
    assert shade_of(seen, SK.colors[6])[r, c]
    g[20:50, :, 12:14] = 13  # a building slab above the person, between it and the (high) camera
    hidden = render_perspective(g, SK, view)
    assert not shade_of(hidden, SK.colors[6]).any()  # the person is hidden everywhere
    assert shade_of(hidden, SK.colors[13], tol=0.05)[r, c]  # its pixel shows the building


def test_chunked_rasterisation_is_identical_and_close_cameras_work(monkeypatch):
    import occle_core.render as render

    g = street_grid()[:96, 80:176]  # (96, 96, 32), road along the middle
    whole = render_perspective(g, SK)
    monkeypatch.setattr(render, "CANDIDATES_PER_CHUNK", 5000)  # many chunks
    np.testing.assert_array_equal(render_perspective(g, SK), whole)
    # a camera inside the grid, just above the road: faces behind or crossing the camera are dropped
    close = PerspectiveView(eye=(5.0, 48.0, 10.0), target=(60.0, 48.0, 6.0), width=160, height=100)
    img = render_perspective(g, SK, close)
    assert img.shape == (100, 160, 3)
    assert shade_of(img, SK.colors[9]).sum() > 1000  # mostly road ahead


@pytest.mark.bench  # a timing: run with -m bench, not in the default suite
def test_perspective_speed_100k_voxels():
    rng = np.random.default_rng(0)
    g = np.zeros((256, 256, 32), np.uint8)
    g[:, :, 3] = 9  # ground plane: 65k voxels
    flat = rng.choice(256 * 256 * 28, 35_000, replace=False)  # scattered objects above it
    sub = g[:, :, 4:].reshape(-1).copy()
    sub[flat] = rng.integers(1, 20, flat.size)
    g[:, :, 4:] = sub.reshape(256, 256, 28)
    assert 95_000 < occupied_mask(g, SK).sum() < 105_000
    render_perspective(g[:32, :32], SK)  # warm-up
    t0 = time.perf_counter()
    img = render_perspective(g, SK)
    elapsed = time.perf_counter() - t0
    assert img.shape == (400, 640, 3)
    assert elapsed < 2.0, f"render_perspective took {elapsed:.2f} s for ~100k voxels"


def test_comparison_png(tmp_path):
    truth = street_grid()
    pred = truth.copy()
    pred[truth == 4] = 1  # the truck predicted as a car
    pred[truth == 16] = 15  # trunks predicted as vegetation
    out = tmp_path / "figs" / "cmp.png"
    fig = render_comparison(
        pred, truth, SK, out, title="street", lines=["IoU 99.0  mIoU 80.0"], grid=SEMANTIC_KITTI_GRID
    )
    assert out.is_file()
    back = np.asarray(Image.open(out).convert("RGB"))
    np.testing.assert_array_equal(back, fig)
    h, w, _ = fig.shape
    assert w >= 2 * 640 and h > 400 + 512
    # the truck colour appears in the truth panel (right half) only, in the image rows of the views
    views = shade_of(fig, SK.colors[4])[60 : h - 60]
    assert views[:, w // 2 :].sum() > 50
    assert views[:, : w // 2].sum() == 0


def test_comparison_mask_and_input_checks(tmp_path):
    g = np.zeros((32, 32, 8), np.uint8)
    g[5:10, 5:10, 0:3] = 13
    mask = np.zeros(g.shape, bool)  # nothing evaluated: nothing drawn in the views
    fig = render_comparison(g, g, SK, mask=mask)
    assert not shade_of(fig, SK.colors[13]).any()
    with pytest.raises(ValueError, match="differs from truth shape"):
        render_comparison(g, g[:, :, :4], SK)
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        render_bev(g[:, :, 0], SK)
    with pytest.raises(ValueError, match="uint8"):
        save_png(np.zeros((4, 4, 3), np.float32), tmp_path / "x.png")
    p = save_png(np.zeros((4, 5), np.uint8), tmp_path / "a" / "b.png")
    assert Image.open(p).size == (5, 4)


def test_sample_overview_stacks_image_pseudo_and_views(tmp_path) -> None:
    from occle_core.render import render_sample_overview

    table = class_table("semantic_kitti")
    labels = np.zeros((32, 32, 8), np.uint8)
    labels[:, 10:20, 0] = 9  # a road strip
    image = np.full((40, 120, 3), 90, np.uint8)
    pseudo = np.full((40, 120), 9, np.uint8)
    out = render_sample_overview(image, labels, table, pseudo, tmp_path / "o.png")
    assert out.shape[1] == 120 and out.shape[0] > 80
    assert (out[:40] == 90).all() and (out[40:80] == table.colors[9]).all()
    assert (tmp_path / "o.png").is_file()
