"""Knobs of the synthetic world (issue 14): LiDAR rig, intensity scale, dropouts and noise, camera-FOV clouds,
label accumulation, realistic appearance, and their CLI flags."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from occle_core.data import semantic_kitti as sk
from occle_core.labels import class_table
from occle_core.synth.classes import BOX, BUILDING
from occle_core.synth.cli import main
from occle_core.synth.isp import camera_response, develop, gaussian_blur
from occle_core.synth.noise import stream
from occle_core.synth.primitives import PrimBuilder
from occle_core.synth.raycast import sun_shadow
from occle_core.synth.scene import build_scene
from occle_core.synth.sensors import LidarModel, beam_elevations
from occle_core.synth.sequence import SyntheticSequence

GROUND = (40, 44, 48, 60, 72)  # road, parking, sidewalk, lane marking, terrain


def _tiny(lidar: LidarModel | None = None, **kw) -> SyntheticSequence:
    return SyntheticSequence(2, 1, image_scale=0.25, lidar=lidar or LidarModel(azimuth_steps=300), window=1, **kw)


def _ground(seq: SyntheticSequence) -> np.ndarray:
    sc = seq.scan(0)
    road = np.isin(sc.labels & 0xFFFF, [40, 60]) & (np.linalg.norm(sc.points[:, :2], axis=1) < 20)
    return sc.points[road]


@pytest.mark.parametrize("beams, top_deg, bottom_deg", [(32, 10.67, -30.67), (64, 2.0, -24.9), (128, 15.0, -25.0)])
def test_beam_patterns_span_their_sensor(beams: int, top_deg: float, bottom_deg: float) -> None:
    el = beam_elevations(beams)
    assert el.shape == (beams,) and np.all(np.diff(el) < 0)
    np.testing.assert_allclose(np.rad2deg(el[[0, -1]]), [top_deg, bottom_deg], atol=1e-9)
    seq = _tiny(LidarModel(azimuth_steps=120, elevations=el))
    sc = seq.scan(0)
    assert sc.depth.shape == (beams, 120)
    elev = np.rad2deg(np.arctan2(sc.points[:, 2], np.linalg.norm(sc.points[:, :2], axis=1)))
    assert elev.max() <= top_deg + 0.5 and elev.min() >= bottom_deg - 0.5
    assert 0.5 * beams * 120 < len(sc.points) <= beams * 120
    with pytest.raises(ValueError, match="beams must be one of"):
        beam_elevations(16)


def test_mounting_height_moves_the_ground() -> None:
    for height in (1.73, 1.84, 2.5):
        pts = _ground(_tiny(LidarModel(azimuth_steps=300, height=height)))
        assert len(pts) > 200 and abs(np.median(pts[:, 2]) + height) < 0.05


def test_pitch_tilts_the_lidar_frame_and_the_calibration_follows() -> None:
    flat, pitched = _tiny(), _tiny(LidarModel(azimuth_steps=300, pitch=4.0))
    for seq, slope in ((flat, 0.0), (pitched, np.tan(np.deg2rad(4.0)))):
        pts = _ground(seq)
        fit = np.polyfit(pts[:, 0], pts[:, 2], 1)  # z = a x + b over the road ahead and behind
        assert abs(fit[0] - slope) < 0.015, (slope, fit)
    # LiDAR points projected with the pitched calibration land on pixels of their own class
    truth = pitched.render(0).truth
    sc = pitched.scan(0)
    uv, depth, vis = pitched.calib.project(sc.points)
    vis &= depth > 4.0
    px = uv[vis].astype(int)
    sem = class_table("semantic_kitti").map_raw(sc.labels & 0xFFFF)
    assert vis.sum() > 300 and (truth[px[:, 1], px[:, 0]] == sem[vis]).mean() > 0.85
    # the camera is fixed to the vehicle: the pitch changes Tr, not the picture
    np.testing.assert_array_equal(flat.render(0).truth, truth)
    # the grid tilts with the LiDAR: its far end dips under the road, more of it is unobservable
    v_flat, v_pitched = flat.voxels(0), pitched.voxels(0)
    assert not np.any(v_pitched["invalid"] & (v_pitched["label"] > 0))
    assert v_pitched["invalid"].mean() > v_flat["invalid"].mean() + 0.05
    with pytest.raises(ValueError, match="pitch"):
        LidarModel(pitch=45.0)


def test_intensity_scales() -> None:
    def intensity(scale: str) -> np.ndarray:
        return _tiny(LidarModel(azimuth_steps=300, intensity=scale)).scan(0).points[:, 3]

    refl, kitti, nus = intensity("reflectance"), intensity("kitti"), intensity("nuscenes")
    assert len(refl) == len(kitti) == len(nus)  # the same returns, other scales
    assert refl.min() >= 0.0 and refl.max() < 1.0
    assert np.array_equal(nus, np.round(nus)) and nus.min() >= 0 and nus.max() <= 255
    assert nus.max() > 150 and np.median(nus) < 40  # bright markings and signs, mostly dark surfaces
    # real KITTI returns: 0.01 steps, some zeros, median near 0.28
    assert np.allclose(kitti * 100, np.round(kitti * 100), atol=1e-3) and kitti.max() < 1.0
    assert 0.03 < (kitti == 0).mean() < 0.3 and 0.2 < np.median(kitti) < 0.36
    assert np.all(np.diff(kitti[np.argsort(refl, kind="stable")]) >= 0)  # monotone in the reflectance
    with pytest.raises(ValueError, match="intensity"):
        LidarModel(intensity="velodyne")


def test_dropout_and_range_noise() -> None:
    def rig(**kw: float) -> SyntheticSequence:
        return _tiny(LidarModel(azimuth_steps=300, **kw))

    n0 = len(rig(dropout=0.0).scan(0).points)
    n3 = len(rig(dropout=0.3).scan(0).points)
    assert 0.6 < n3 / n0 < 0.8
    exact, noisy = rig(range_noise=0.0).scan(0).depth, rig(range_noise=0.2).scan(0).depth  # (B, A) ranges
    both = np.isfinite(exact) & np.isfinite(noisy)
    assert both.sum() > 5000 and 0.17 < np.std(noisy[both] - exact[both]) < 0.23


def test_fov_only_cloud_keeps_the_points_in_the_image() -> None:
    full, fov = _tiny(), _tiny(fov_only=True)
    pts, labels = fov.cloud(0)
    assert len(pts) == len(labels) and 0.1 * len(full.scan(0).points) < len(pts) < 0.4 * len(full.scan(0).points)
    assert fov.calib.project(pts)[2].all()
    assert np.array_equal(full.cloud(0)[0], full.scan(0).points)
    v_full, v_fov = full.voxels(0), fov.voxels(0)
    np.testing.assert_array_equal(v_full["label"], v_fov["label"])  # truth from the whole scans
    assert v_fov["bin"].sum() < v_full["bin"].sum()  # .bin is the published cloud


def test_accumulating_more_scans_fills_the_labels() -> None:
    kw = dict(image_scale=0.25, lidar=LidarModel(azimuth_steps=500), window=1, stride=1)
    few, many = SyntheticSequence(3, 1, accumulate=1, **kw), SyntheticSequence(3, 1, accumulate=8, **kw)
    a, b = few.voxels(0)["label"] > 0, many.voxels(0)["label"] > 0
    assert not np.any(a & ~b)  # votes only add
    far = np.zeros_like(a)
    far[125:] = True  # beyond 25 m ahead
    assert (b & far).sum() > 1.5 * (a & far).sum()
    with pytest.raises(ValueError, match="accumulate"):
        SyntheticSequence(3, 1, accumulate=0, **kw)


def test_sun_shadow_of_a_box() -> None:
    prims = PrimBuilder()
    obj, _ = prims.new_object(thing=False)
    prims.add(BOX, (10.0, 5.0, 3.0), 0.3, (1.0, 0.5, 0.5), BUILDING, obj, 0, (0.5, 0.5, 0.5))
    scene = replace(build_scene(0, 1), prims=prims.build())
    up, slanted = np.array([0.0, 0.0, 1.0]), np.array([0.6, 0.0, 0.8])
    below = np.array([10.0, 5.0, 0.0], np.float32)  # 2.5 m under the box's bottom
    beside = below + np.array([3.0, 0.0, 0.0], np.float32)
    toward = below - np.array([0.75 * 3.0, 0.0, 0.0], np.float32)  # its ray towards the slanted sun hits the box
    pts = np.stack([below, beside, toward])
    np.testing.assert_array_equal(sun_shadow(scene, pts, up), [True, False, False])
    np.testing.assert_array_equal(sun_shadow(scene, pts, slanted), [False, False, True])


def test_camera_response_blur_and_noise() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((20, 30, 3)).astype(np.float32)
    blurred = gaussian_blur(img, 1.5)
    assert blurred.shape == img.shape and abs(blurred.mean() - img.mean()) < 0.01 and blurred.std() < 0.5 * img.std()
    assert gaussian_blur(img, 0.0) is img
    resp = camera_response(3)
    a = develop(img, resp, stream(3, 9, 0), 0.25)
    assert a.dtype == np.uint8 and a.shape == img.shape
    assert np.array_equal(a, develop(img, resp, stream(3, 9, 0), 0.25))
    assert not np.array_equal(a, develop(img, resp, stream(3, 9, 1), 0.25))


def test_realistic_appearance() -> None:
    flat, real = _tiny(), _tiny(appearance="realistic")
    cf, cr = flat.render(0), real.render(0)
    assert cr.image.shape == cf.image.shape and cr.image.dtype == np.uint8
    np.testing.assert_array_equal(cf.truth, cr.truth)  # labels do not depend on the look
    assert np.array_equal(cr.image, real.render(0).image)
    assert np.abs(cr.image.astype(int) - cf.image.astype(int)).mean() > 10
    names = {n: i for i, n in enumerate(flat.classes.names)}
    rgb = cr.image.astype(float)
    green = rgb[..., 1] - 0.5 * (rgb[..., 0] + rgb[..., 2])
    veg, road = cr.truth == names["vegetation"], cr.truth == names["road"]
    assert veg.sum() > 50 and road.sum() > 50
    assert green[veg].mean() > green[road].mean() + 5
    with pytest.raises(ValueError, match="appearance"):
        _tiny(appearance="cartoon")


def test_cli_knobs(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--frames", "1", "--image-scale", "0.25", "--azimuth-steps", "200", "--quiet"]
    knobs = ["--beams", "32", "--lidar-height", "1.84", "--lidar-pitch", "1.5", "--intensity", "nuscenes"]
    knobs += ["--dropout", "0.05", "--range-noise", "0.03", "--fov-only", "--accumulate", "3", "--window", "2"]
    knobs += ["--appearance", "realistic"]
    assert main(args + knobs) == 0
    d = tmp_path / "sequences" / "00"
    meta = json.loads((d / "synthetic.json").read_text())
    expect = dict(beams=32, lidar_height=1.84, lidar_pitch=1.5, intensity="nuscenes", dropout=0.05)
    expect.update(range_noise=0.03, fov_only=True, accumulate=3, window=2, appearance="realistic")
    assert {k: meta[k] for k in expect} == expect
    pts = sk.read_points(d / "velodyne" / "000000.bin")
    assert 0 < len(pts) < 32 * 200 / 2 and pts[:, 3].max() > 1.0
    for bad in (["--beams", "16"], ["--lidar-height", "0"], ["--accumulate", "0"], ["--intensity", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(args + bad)
        assert exc.value.code == 2
