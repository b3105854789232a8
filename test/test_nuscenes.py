"""nuScenes v1.0 reader: a tiny replica written in tmp_path is read back matrix for matrix; the official devkit
agrees on it; bad tables and files give clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occle_core.data.nuscenes import (
    CAMERAS,
    LIDAR,
    NuScenesDataset,
    NuScenesTables,
    find_version,
    read_pcd_bin,
    scene_splits,
    split_scenes,
)
from occle_core.synth.released import (
    CAMERA_RIG,
    camera_extrinsic,
    camera_intrinsic,
    ego_pose_at,
    lidar_extrinsic,
    write_nuscenes_replica,
)

HERE = Path(__file__).resolve().parent
DEVKIT_ENV = "OCCLE_NUSCENES_DEVKIT_PYTHON"


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuscenes")
    return write_nuscenes_replica(root, "v1.0-mini", ("scene-0061",), samples_per_scene=3, sweeps_between=2)


def _key_times(tables: NuScenesTables, token: str) -> tuple[int, dict[str, int]]:
    lidar = tables.key_record(token, LIDAR)["timestamp"]
    return lidar, {ch: tables.key_record(token, ch)["timestamp"] for ch in CAMERAS}


def test_replica_reads_back_matrix_for_matrix(replica):
    ds = NuScenesDataset(replica.root, split="train")  # scene-0061 is in the official mini_train
    assert find_version(replica.root) == "v1.0-mini"
    assert ds.tokens == replica.samples and len(ds) == 3
    for i, token in enumerate(replica.samples):
        s = ds[i]
        assert s.frame_id == f"scene-0061/{token}" and s.grid_frame == "ego"
        assert [c.name for c in s.cameras] == list(CAMERAS)
        given = replica.points[token]  # (N, 5) ego frame
        key = s.points[: len(given)]
        assert s.points.shape[1] == 6 and s.points.dtype == np.float32
        np.testing.assert_allclose(key[:, :3], given[:, :3], atol=1e-4)  # written in the sensor frame, float32
        np.testing.assert_allclose(key[:, 3], given[:, 3] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(key[:, 4], given[:, 4])
        assert np.all(key[:, 5] == 0.0)
        t_lidar, t_cams = _key_times(ds.tables, token)
        assert s.timestamp_us == t_lidar and s.extras["camera_timestamps_us"] == t_cams
        np.testing.assert_allclose(s.pose, ego_pose_at(t_lidar), atol=1e-9)
        lidar_calib = ds.tables.calibs[ds.tables.key_record(token, LIDAR)["calibrated_sensor_token"]]
        np.testing.assert_allclose(s.extras["lidar_origin"], lidar_calib["translation"])  # the rays start there
        np.testing.assert_allclose(s.extras["lidar_origin"], lidar_extrinsic()[:3, 3], atol=1e-9)
        for cam in s.cameras:
            # the camera sees the world at its own time: its own ego pose, not the LiDAR's
            assert t_cams[cam.name] - t_lidar == CAMERA_RIG[cam.name][3]
            expected = np.linalg.inv(camera_extrinsic(cam.name)) @ np.linalg.inv(ego_pose_at(t_cams[cam.name]))
            expected = expected @ ego_pose_at(t_lidar)
            np.testing.assert_allclose(cam.calib.T_cam_lidar, expected, atol=1e-9)
            naive = np.linalg.inv(camera_extrinsic(cam.name))
            assert np.abs(cam.calib.T_cam_lidar[:3, 3] - naive[:3, 3]).max() > 0.02  # 8 m/s x >= 4 ms
            np.testing.assert_allclose(cam.calib.P[:, :3], camera_intrinsic(cam.name, (90, 160)), atol=1e-12)
            assert cam.calib.image_size == (90, 160)
            path = replica.root / ds.tables.key_record(token, cam.name)["filename"]
            with Image.open(path) as im:
                np.testing.assert_array_equal(cam.image, np.asarray(im))  # the file, byte for byte decoded
            assert np.abs(cam.image.astype(int) - replica.images[token][cam.name]).mean() < 3  # JPEG q95
    # the LiDAR mount: 1.84 m up, sensor x to the right, y forward
    T = lidar_extrinsic()
    np.testing.assert_allclose(T[:3, 3], [0.943713, 0.0, 1.84023])
    np.testing.assert_allclose(T[:3, :3] @ [0, 1, 0], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(T[:3, :3] @ [1, 0, 0], [0, -1, 0], atol=1e-12)


def test_sweeps_are_motion_compensated(replica):
    tables = NuScenesTables(replica.root, "v1.0-mini")
    token = replica.samples[2]
    t_key = tables.key_record(token, LIDAR)["timestamp"]
    pts = tables.lidar_points(token, sweeps=10)  # chain: key, 2 sweeps, key 1, 2 sweeps, key 0: 7 in all
    lags = np.unique(pts[:, 5])
    assert len(lags) == 7 and lags[0] == 0.0 and lags[-1] == pytest.approx(1.0)
    world_in_key = (np.linalg.inv(ego_pose_at(t_key)) @ np.c_[replica.world, np.ones(len(replica.world))].T)[:3].T
    sweep_lags = [lag for lag in lags if abs(lag * 2 - round(lag * 2)) > 1e-3]  # key frames every 0.5 s
    assert len(sweep_lags) == 4
    for lag in sweep_lags:  # every sweep of the static world lands on the same world points
        np.testing.assert_allclose(pts[pts[:, 5] == lag, :3], world_in_key, atol=2e-3)
    assert len(tables.lidar_points(token, sweeps=3)) == len(replica.points[token]) + 2 * len(replica.world)
    close = tables.lidar_points(token, sweeps=1, min_distance=20.0)
    assert 0 < len(close) < len(replica.points[token])
    with pytest.raises(ValueError, match="sweeps must be >= 1"):
        tables.lidar_points(token, sweeps=0)


def test_official_scene_splits():
    s = scene_splits()
    assert {k: len(v) for k, v in s.items()} == {"train": 700, "val": 150, "test": 150, "mini_train": 8, "mini_val": 2}
    assert len(set(s["train"]) | set(s["val"]) | set(s["test"])) == 1000
    assert set(s["mini_train"]) | set(s["mini_val"]) <= set(s["train"]) | set(s["val"])
    assert "scene-0061" in split_scenes("v1.0-mini", "train") and split_scenes("v1.0-mini", "val")[0] == "scene-0103"
    assert "scene-0003" in split_scenes("v1.0-trainval", "val")
    with pytest.raises(ValueError, match="split must be one of"):
        split_scenes("v1.0-test", "train")
    with pytest.raises(ValueError, match="version must be one of"):
        split_scenes("v2.0", "train")


def test_bad_tables_and_files_are_named(tmp_path):
    rep = write_nuscenes_replica(tmp_path, "v1.0-trainval", ("scene-0001",), 2, 1, occ3d=False)
    tables_dir = tmp_path / "v1.0-trainval"
    token = rep.samples[0]
    ds = NuScenesDataset(tmp_path)
    # a truncated LiDAR file, then a missing one
    lidar_file = tmp_path / ds.tables.key_record(token, LIDAR)["filename"]
    raw = lidar_file.read_bytes()
    lidar_file.write_bytes(raw[:-6])
    with pytest.raises(ValueError, match=r"\.pcd\.bin.*not a multiple of 20"):
        ds[0]
    lidar_file.unlink()
    with pytest.raises(FileNotFoundError, match="LiDAR file not found"):
        ds[0]
    lidar_file.write_bytes(raw)
    assert read_pcd_bin(lidar_file).shape == (len(rep.points[token]), 5)
    # an image whose size differs from its sample_data record, then a missing image
    image_file = tmp_path / ds.tables.key_record(token, "CAM_BACK")["filename"]
    image_file.rename(image_file.with_suffix(".bak"))
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(image_file)
    with pytest.raises(ValueError, match="CAM_BACK.*height, width"):
        ds[0]
    image_file.unlink()
    with pytest.raises(FileNotFoundError, match="camera image not found"):
        ds[0]
    # tables: a record without a field, a rotation that is no unit quaternion, a missing table
    original = (tables_dir / "calibrated_sensor.json").read_text()
    records = json.loads(original)
    records[0].pop("camera_intrinsic")
    (tables_dir / "calibrated_sensor.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"calibrated_sensor\.json: record 0 .* lacks field 'camera_intrinsic'"):
        NuScenesTables(tmp_path)
    records = json.loads(original)
    records[0]["rotation"] = [1.0, 1.0, 0.0, 0.0]
    (tables_dir / "calibrated_sensor.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="field 'rotation' must be a unit quaternion"):
        NuScenesTables(tmp_path)
    records = json.loads(original)
    cam = next(r for r in records if r["camera_intrinsic"])
    cam["camera_intrinsic"] = [[1.0, 0.0], [0.0, 1.0]]
    (tables_dir / "calibrated_sensor.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="'camera_intrinsic' must be a 3x3 matrix"):
        [NuScenesTables(tmp_path).camera(token, ch) for ch in CAMERAS]
    (tables_dir / "calibrated_sensor.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"calibrated_sensor\.json"):
        NuScenesTables(tmp_path)
    with pytest.raises(FileNotFoundError, match="no nuScenes tables"):
        NuScenesTables(tmp_path / "nowhere")
    with pytest.raises(KeyError, match="not in"):
        NuScenesTables.scene_samples(ds.tables, "scene-9999")


def _devkit_python() -> str | None:
    """An interpreter with nuscenes-devkit: $OCCLE_NUSCENES_DEVKIT_PYTHON, else this one if it has it."""
    candidates = [os.environ[DEVKIT_ENV]] if os.environ.get(DEVKIT_ENV) else [sys.executable]
    for exe in candidates:
        probe = subprocess.run([exe, "-c", "import nuscenes.nuscenes"], capture_output=True, timeout=120)
        if probe.returncode == 0:
            return exe
    return None


def test_matches_the_official_devkit(tmp_path):
    exe = _devkit_python()
    if exe is None:
        pytest.skip(
            f"nuscenes-devkit is not importable (pip install nuscenes-devkit==1.2.0 in a separate venv, it pins "
            f"numpy<2, and point {DEVKIT_ENV} at that venv's python)"
        )
    rep = write_nuscenes_replica(tmp_path, "v1.0-mini", ("scene-0061",), 3, 2, occ3d=False, seed=5)
    run = subprocess.run(
        [exe, str(HERE / "helpers_nuscenes_devkit.py"), str(tmp_path), "v1.0-mini", "10", "1.0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    devkit = json.loads(run.stdout)
    tables = NuScenesTables(tmp_path, "v1.0-mini")
    assert sorted(devkit) == sorted(rep.samples)
    for token, dev in devkit.items():
        s = tables.sample(token)
        ego = np.asarray(dev["ego"])  # (4, N)
        np.testing.assert_allclose(s.points[:, :3], ego[:3].T, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(s.points[:, 3], ego[3])
        hom = np.c_[s.points[:, :3].astype(np.float64), np.ones(len(s.points))]
        for cam in s.cameras:
            d = dev["cams"][cam.name]
            M = cam.calib.P @ cam.calib.T_cam_lidar  # (3, 4) ego(t_lidar) -> pixels
            np.testing.assert_allclose(M, np.asarray(d["M"]), rtol=1e-6, atol=1e-6)
            # the devkit steps through global coordinates (~1.6 km here) in float32: 1e-4 m is its own rounding
            np.testing.assert_allclose(hom @ cam.calib.T_cam_lidar[:3].T, np.asarray(d["cam"]).T, atol=1e-3)
            # the devkit's own filter (depth > 1 m, 1 px inside the border) on our projection gives its pixels
            p = hom @ M.T
            uv = p[:, :2] / p[:, 2:]
            h, w = cam.calib.image_size
            keep = (p[:, 2] > 1.0) & (uv[:, 0] > 1) & (uv[:, 0] < w - 1) & (uv[:, 1] > 1) & (uv[:, 1] < h - 1)
            assert keep.any(), cam.name
            np.testing.assert_allclose(uv[keep], np.asarray(d["pix"]).T, atol=0.02)  # same float32 rounding
        multi = np.asarray(dev["multi"])  # (4, M) ego frame
        ours = tables.lidar_points(token, sweeps=10, min_distance=1.0)
        assert ours.shape[0] == multi.shape[1]
        np.testing.assert_allclose(ours[:, :3], multi[:3].T, rtol=1e-6, atol=2e-5)  # float32 points
        np.testing.assert_array_equal(ours[:, 3], multi[3])
        np.testing.assert_allclose(ours[:, 5], dev["times"], atol=1e-6)


def test_replica_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"points: expected one entry per key frame \(2\), got 1"):
        write_nuscenes_replica(tmp_path, samples_per_scene=2, points=[np.zeros((5, 4), np.float32)], occ3d=False)
    with pytest.raises(ValueError, match=r"points\[0\]: expected an \(N, 4\) or \(N, 5\) array"):
        write_nuscenes_replica(tmp_path, samples_per_scene=1, points=[np.zeros((5, 3), np.float32)], occ3d=False)
    with pytest.raises(ValueError, match=r"images\[0\]\['CAM_FRONT'\]: expected \(90, 160, 3\) uint8"):
        write_nuscenes_replica(
            tmp_path, samples_per_scene=1, images=[dict.fromkeys(CAMERAS, np.zeros((9, 16, 3), np.uint8))]
        )
    with pytest.raises(ValueError, match=r"occupancy\[0\]: expected three \(200, 200, 16\) arrays"):
        write_nuscenes_replica(tmp_path, samples_per_scene=1, occupancy=[(np.zeros((2, 2, 2)),) * 3])
