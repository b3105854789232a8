"""occle-inspect on the real KITTI object frames and on SemanticKITTI / KITTI raw replicas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occle_core.cli import inspect_main
from occle_core.data import semantic_kitti as sk
from occle_core.data.kitti_calib import write_kitti_calib
from occle_core.geometry import Calib
from occle_core.synth import kitti_layouts as kl

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "real" / "kitti"
P2 = np.array([[60.0, 0.0, 40.0, 3.0], [0.0, 60.0, 12.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
TR = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.1], [1.0, 0.0, 0.0, -0.3], [0.0, 0.0, 0.0, 1.0]])
DRIVE = "2011_09_26_drive_0001_sync"


def _points(n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.c_[rng.uniform([-20, -20, -2], [40, 20, 2], (n, 3)), rng.random(n)].astype(np.float32)


def _direct_in_view(points: np.ndarray, calib_txt: Path, size: tuple[int, int]) -> int:
    """Points with depth > 0.1 m inside the image under P2 @ R0_rect @ Tr_velo_to_cam, parsed here."""
    rows = {}
    for line in calib_txt.read_text().splitlines():
        if line.strip():
            key, _, rest = line.partition(":")
            rows[key] = np.array(rest.split(), float)
    R0 = np.eye(4)
    R0[:3, :3] = rows["R0_rect"].reshape(3, 3)
    Tr = np.vstack([rows["Tr_velo_to_cam"].reshape(3, 4), [0, 0, 0, 1]])
    hom = (rows["P2"].reshape(3, 4) @ R0 @ Tr @ np.c_[points[:, :3], np.ones(len(points))].T).T
    z = hom[:, 2]
    u, v = hom[:, 0] / z, hom[:, 1] / z
    h, w = size
    return int(((z > 0.1) & (u >= 0) & (u < w) & (v >= 0) & (v < h)).sum())


def test_real_kitti_object_frames(tmp_path: Path, capsys) -> None:
    if not (REAL / "training" / "velodyne").is_dir():
        pytest.skip(f"real KITTI object frames not available ({REAL} is absent)")
    frames = sorted(p.stem for p in (REAL / "training" / "velodyne").glob("*.bin"))
    for frame in frames:
        out = tmp_path / frame
        args = ["--dataset", "kitti_object", "--data", str(REAL), "--frame", frame]
        args += ["--json", str(out / "f.json"), "--points-out", str(out / "p.npy")]
        args += ["--render", str(out / "f.png")] if frame == "002155" else []
        assert inspect_main(args) == 0
        doc = json.loads((out / "f.json").read_text())
        assert json.loads(capsys.readouterr().out) == doc
        raw = np.fromfile(REAL / "training" / "velodyne" / f"{frame}.bin", "<f4").reshape(-1, 4)
        pts = np.load(out / "p.npy")
        assert pts.dtype == np.float32 and np.array_equal(pts, raw)  # every point, as stored
        assert doc["points"]["count"] == len(raw) and doc["grid_frame"] == "lidar" and doc["frame"] == frame
        np.testing.assert_allclose(doc["points"]["xyz_min"], raw[:, :3].min(0), atol=1e-3)
        (cam,) = doc["cameras"]
        with Image.open(REAL / "training" / "image_2" / f"{frame}.png") as im:
            assert cam["image_size"] == [im.height, im.width] and cam["name"] == "image_2"
        expected = _direct_in_view(raw, REAL / "training" / "calib" / f"{frame}.txt", (im.height, im.width))
        # float32 projection in the tool vs float64 here: at most a point or two on the image border may differ
        assert abs(cam["points_in_view"] - expected) <= 2 and expected > 0.9 * len(raw)
    labels = json.loads((tmp_path / "002155" / "f.json").read_text())["labels"]
    assert labels["objects"] == 15 and labels["types"] == {"Car": 12, "Van": 1, "DontCare": 2}
    assert labels["boxes"][0]["type"] == "Car" and labels["boxes"][0]["points"] > 100
    with Image.open(tmp_path / "002155" / "f.png") as im:
        assert im.width == 1242 and im.height > 375 + 400  # the camera panel above the bird's-eye view


def _semantic_kitti(root: Path) -> np.ndarray:
    d = root / "sequences" / "04"
    for sub in ("velodyne", "image_2", "voxels"):
        (d / sub).mkdir(parents=True)
    write_kitti_calib(d / "calib.txt", Calib(P2, TR, (24, 80)))
    pts = _points()
    sk.write_points(d / "velodyne" / "000005.bin", pts)
    sk.write_image(d / "image_2" / "000005.png", np.zeros((24, 80, 3), np.uint8))
    raw = np.zeros(sk.VOXEL_SHAPE, np.uint16)
    raw[:2, :2, :2] = 10  # 8 car voxels
    raw[5, 5, 5] = 99  # other-object: ignored
    invalid = np.zeros(sk.VOXEL_SHAPE, bool)
    invalid[100:] = True
    sk.write_voxel_labels(d / "voxels" / "000005.label", raw)
    sk.write_voxel_bits(d / "voxels" / "000005.invalid", invalid)
    return pts


def test_semantic_kitti_replica(tmp_path: Path, capsys) -> None:
    pts = _semantic_kitti(tmp_path / "sk")
    png = tmp_path / "sk.png"
    args = ["--dataset", "semantic_kitti", "--data", str(tmp_path / "sk"), "--frame", "04/5", "--render", str(png)]
    assert inspect_main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["frame"] == "04/000005" and doc["points"]["count"] == len(pts)
    _, _, visible = Calib(P2, TR, (24, 80)).project(pts)
    assert doc["cameras"][0]["points_in_view"] == int(visible.sum()) > 0
    np.testing.assert_allclose(doc["cameras"][0]["T_cam_grid"], TR)
    lab = doc["labels"]
    assert lab["voxels"]["car"] == 8 and lab["invalid"] == 156 * 256 * 32
    assert lab["ignored"] == 156 * 256 * 32 + 1  # invalid voxels and the other-object voxel
    assert png.is_file()


def test_kitti_raw_replica(tmp_path: Path, capsys) -> None:
    pts = _points()
    kl.write_raw_calib(tmp_path / DRIVE[:10], P2, np.eye(3), TR, (24, 80))
    packet = np.zeros(30)
    packet[:3] = 49.0, 8.0, 100.0
    kl.write_raw_frame(tmp_path / DRIVE[:10] / DRIVE, 3, pts, np.zeros((24, 80, 3), np.uint8), packet)
    out = tmp_path / "p.npy"
    args = ["--dataset", "kitti_raw", "--data", str(tmp_path), "--frame", f"{DRIVE}/3", "--points-out", str(out)]
    assert inspect_main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["frame"] == f"{DRIVE}/0000000003" and doc["cameras"][0]["name"] == "image_02"
    np.testing.assert_allclose(doc["pose"], np.eye(4), atol=1e-9)  # the drive's only frame is the origin
    assert np.array_equal(np.load(out), pts) and doc["labels"] == {}


@pytest.mark.parametrize(
    ("dataset", "frame", "message"),
    [
        ("semantic_kitti", "04/7", "velodyne/000007.bin"),
        ("semantic_kitti", "4-5", "SS/NNNNNN"),
        ("semantic_kitti", "09/0", "sequences/09"),
        ("kitti_object", "000001", "training/velodyne"),
        ("kitti_raw", f"{DRIVE}/0", "2011_09_26_drive_0001_sync"),
        ("nuscenes", "abc", ""),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path: Path, capsys, dataset: str, frame: str, message: str) -> None:
    _semantic_kitti(tmp_path)
    assert inspect_main(["--dataset", dataset, "--data", str(tmp_path), "--frame", frame]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("occle-inspect: error:") and "\n" not in err and message in err


def test_wrong_size_names_the_file(tmp_path: Path, capsys) -> None:
    _semantic_kitti(tmp_path)
    (tmp_path / "sequences" / "04" / "velodyne" / "000005.bin").write_bytes(b"\0" * 10)
    assert inspect_main(["--dataset", "semantic_kitti", "--data", str(tmp_path), "--frame", "04/000005"]) == 2
    err = capsys.readouterr().err
    assert "000005.bin: size 10 bytes is not a multiple of 16" in err and err.count("\n") == 1


def test_points_are_drawn_where_they_project_nearest_on_top() -> None:
    from occle_core.inspect import depth_colors, draw_points_on_image

    assert depth_colors(np.array([0.0, 2.0, 4.0]), 0.0, 4.0).tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    img = np.zeros((10, 12, 3), np.uint8)
    uv = np.array([[3.5, 4.2], [3.9, 4.9], [10.0, 1.0]])  # the first two land on pixel (row 4, col 3)
    out = draw_points_on_image(img, uv, np.array([50.0, 3.0, 20.0]), radius=0)
    near = depth_colors(np.log([3.0]), *np.log([2.0, 60.0]))[0]
    assert out[4, 3].tolist() == near.tolist()  # the nearer point wins its pixel
    assert out[1, 10].any() and int((out.sum(-1) > 0).sum()) == 2 and not img.any()  # a copy, two pixels drawn
