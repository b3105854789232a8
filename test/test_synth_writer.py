"""occle-synth output: the written SemanticKITTI layout read back, byte-exact voxel files, determinism per seed,
calibration consistency and argument checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from occle_core.data import semantic_kitti as sk
from occle_core.data.kitti_calib import read_kitti_calib
from occle_core.labels import class_table
from occle_core.synth.cli import main
from occle_core.synth.sensors import LidarModel, kitti_calib
from occle_core.synth.sequence import SyntheticSequence

TINY = ["--image-scale", "0.25", "--azimuth-steps", "400", "--window", "2", "--window-stride", "1"]
TINY_KW = dict(image_scale=0.25, lidar=LidarModel(azimuth_steps=400), window=2, stride=1)


def _write(root: Path, seed: int, frames: int, *extra: str) -> Path:
    assert main(["--out", str(root), "--seed", str(seed), "--frames", str(frames), *TINY, *extra, "--quiet"]) == 0
    return root / "sequences" / "00"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-frame sequence, voxels every 2nd frame, small image and LiDAR."""
    return _write(tmp_path_factory.mktemp("synth"), 5, 3, "--voxel-every", "2").parent.parent


def test_layout_of_the_written_sequence(tiny: Path) -> None:
    d = tiny / "sequences" / "00"
    for sub, suffix in (("velodyne", ".bin"), ("labels", ".label"), ("image_2", ".png"), ("pseudo_2d", ".png")):
        assert sorted(p.name for p in (d / sub).iterdir()) == [f"{i:06d}{suffix}" for i in range(3)]
    assert sorted(p.name for p in (d / "voxels").iterdir()) == [
        f"{i:06d}{s}" for i in (0, 2) for s in (".bin", ".invalid", ".label", ".occluded")
    ]
    for p in (d / "voxels").glob("*.label"):
        assert p.stat().st_size == 256 * 256 * 32 * 2
    for suffix in (".bin", ".invalid", ".occluded"):
        for p in (d / "voxels").glob(f"*{suffix}"):
            assert p.stat().st_size == 256 * 256 * 32 // 8
    assert len(sk.read_poses(d / "poses.txt")) == 3
    np.testing.assert_allclose(sk.read_times(d / "times.txt"), [0.0, 0.1, 0.2])
    np.testing.assert_allclose(sk.read_poses(d / "poses.txt")[0], np.eye(4), atol=1e-9)


def test_reader_loads_the_sequence(tiny: Path) -> None:
    labelled = sk.SemanticKittiDataset(tiny, ["00"])
    assert [f for _, f in labelled.frames] == ["000000", "000002"]
    all_frames = sk.SemanticKittiDataset(tiny, ["00"], with_labels=False)
    assert len(all_frames) == 3
    s = labelled[1]
    h, w = round(376 * 0.25), round(1241 * 0.25)
    assert s.image.shape == (h, w, 3) and s.calib.image_size == (h, w)
    assert s.pseudo2d.shape == (h, w) and s.pseudo2d.dtype == np.uint8
    assert s.points.dtype == np.float32 and s.points.shape[1] == 4
    assert 0.75 * 64 * 400 < len(s.points) <= 64 * 400
    assert s.points[:, 3].min() >= 0.0 and s.points[:, 3].max() < 1.0
    assert s.voxel_labels.shape == (256, 256, 32) and s.invalid.shape == (256, 256, 32)
    assert np.all(s.voxel_labels[s.invalid] == 255)
    valid = s.voxel_labels[~s.invalid]
    assert (valid > 0).sum() > 1000 and np.all(valid < 20)
    assert s.pose.shape == (4, 4) and abs(np.linalg.det(s.pose[:3, :3]) - 1) < 1e-6
    np.testing.assert_allclose(all_frames[0].pose, np.eye(4), atol=1e-6)
    pooled = sk.SemanticKittiDataset(tiny, ["00"], grid_scale=2)[0]
    assert pooled.voxel_labels.shape == (128, 128, 16)


def test_point_labels_match_the_scan(tiny: Path) -> None:
    d = tiny / "sequences" / "00"
    pts = sk.read_points(d / "velodyne" / "000001.bin")
    lab = sk.read_point_labels(d / "labels" / "000001.label", num_points=len(pts))
    sem, inst = sk.split_point_labels(lab)
    table = class_table("semantic_kitti")
    assert set(np.unique(sem)) <= {10, 11, 13, 15, 18, 30, 40, 44, 48, 49, 50, 51, 60, 70, 71, 72, 80, 81}
    things = np.isin(sem, [10, 11, 13, 15, 18, 30])
    assert np.all(inst[things] > 0) and np.all(inst[~things] == 0)
    assert np.all(table.map_raw(sem) > 0)  # every point carries a semantic class
    ground = np.isin(sem, [40, 44, 60])
    assert abs(np.median(pts[ground, 2]) + 1.73) < 0.1  # the road lies 1.73 m below the sensor


def test_voxel_files_re_read_byte_for_byte(tiny: Path, tmp_path: Path) -> None:
    vox = tiny / "sequences" / "00" / "voxels"
    for suffix in (".bin", ".invalid", ".occluded"):
        sk.write_voxel_bits(tmp_path / f"x{suffix}", sk.read_voxel_bits(vox / f"000002{suffix}"))
        assert (tmp_path / f"x{suffix}").read_bytes() == (vox / f"000002{suffix}").read_bytes()
    sk.write_voxel_labels(tmp_path / "x.label", sk.read_voxel_labels(vox / "000002.label"))
    assert (tmp_path / "x.label").read_bytes() == (vox / "000002.label").read_bytes()
    # the same arrays as the generator API makes them (the CLI is a thin writer)
    v = SyntheticSequence(5, 3, **TINY_KW).voxels(2)
    np.testing.assert_array_equal(sk.read_voxel_labels(vox / "000002.label"), v["label"])
    for key in ("bin", "invalid", "occluded"):
        np.testing.assert_array_equal(sk.read_voxel_bits(vox / f"000002.{key}"), v[key])
    # sanity of the masks: occupancy of the scan is labelled, hits are never invalid
    assert not np.any(v["invalid"] & (v["label"] > 0))
    assert np.all(v["label"][v["bin"]] > 0)


def test_deterministic_per_seed(tiny: Path, tmp_path: Path) -> None:
    again = _write(tmp_path / "a", 5, 3, "--voxel-every", "2")
    first = tiny / "sequences" / "00"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = _write(tmp_path / "b", 6, 1)
    assert (other / "velodyne" / "000000.bin").read_bytes() != (first / "velodyne" / "000000.bin").read_bytes()


def test_calibration_is_consistent_with_image_and_scan(tiny: Path) -> None:
    d = tiny / "sequences" / "00"
    calib = read_kitti_calib(d / "calib.txt", image_size=sk.read_image(d / "image_2" / "000000.png").shape[:2])
    ref = kitti_calib(0.25)
    np.testing.assert_allclose(calib.P, ref.P, rtol=1e-9)
    np.testing.assert_allclose(calib.T_cam_lidar, ref.T_cam_lidar, atol=1e-9)
    # LiDAR points projected with calib.txt land on pixels of their own class in the rendered image
    seq = SyntheticSequence(5, 3, **TINY_KW)
    truth = seq.render(0).truth
    pts = sk.read_points(d / "velodyne" / "000000.bin")
    sem = class_table("semantic_kitti").map_raw(sk.read_point_labels(d / "labels" / "000000.label"))
    uv, depth, vis = calib.project(pts)
    vis &= depth > 4.0
    px = uv[vis].astype(int)
    agree = (truth[px[:, 1], px[:, 0]] == sem[vis]).mean()
    assert vis.sum() > 1000 and agree > 0.85


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    for bad in (["--frames", "0"], ["--sequence", "abc"], ["--image-scale", "0"], ["--window", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(tmp_path), "--quiet", *bad])
        assert exc.value.code == 2
    with pytest.raises(ValueError, match="frames must be >= 1"):
        SyntheticSequence(0, 0)
