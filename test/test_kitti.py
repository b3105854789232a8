"""KITTI raw and KITTI object readers against replicas written in the released formats, and on real frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from occle_core.data import kitti, kitti_calib
from occle_core.data.sample import Sample
from occle_core.synth import kitti_layouts as kl

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "real" / "kitti"
DRIVE = "2011_09_26_drive_0005_sync"


def _rot(axis: int, angle: float) -> np.ndarray:
    """Right-handed rotation about x (0), y (1) or z (2)."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = (axis + 1) % 3, (axis + 2) % 3
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


P2 = np.array([[721.5, 0.0, 609.6, 44.86], [0.0, 721.5, 172.9, 0.2164], [0.0, 0.0, 1.0, 0.002746]])
R0 = _rot(1, 0.01) @ _rot(0, -0.005)
TR = np.eye(4)
TR[:3, :3] = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]) @ _rot(2, 0.02)
TR[:3, 3] = [-0.004, -0.076, -0.27]
R0_4 = np.eye(4)
R0_4[:3, :3] = R0
OBJECT_CALIB = (P2, R0, TR[:3])


def _objects(score: bool = False) -> kitti.KittiObjects:
    return kitti.KittiObjects(
        type=("Car", "Pedestrian"),
        truncated=np.array([0.0, 0.25]),
        occluded=np.array([1, 0]),
        alpha=np.array([-1.57, 0.5]),
        bbox=np.array([[10.5, 5.25, 30.0, 20.0], [40.0, 2.0, 44.5, 18.75]]),
        dimensions=np.array([[2.0, 1.0, 4.0], [1.75, 0.5, 0.75]]),  # h, w, l
        location=np.array([[1.0, 2.0, 10.0], [-2.0, 1.5, 6.0]]),
        rotation_y=np.array([0.0, np.pi / 2]),
        score=np.array([0.5, 0.25]) if score else None,
    )


# ------------------------------------------------------------------------------------------------- KITTI raw


def _packet(lat: float, lon: float, alt: float, roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0):
    p = np.zeros(kitti.OXTS_VALUES)
    p[:6] = lat, lon, alt, roll, pitch, yaw
    p[25:] = 4, 10, 4, 4, 0
    return p


def _raw_drive(root: Path, frames: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    T_velo_imu = np.eye(4)
    T_velo_imu[:3, 3] = [-0.81, 0.32, -0.80]
    kl.write_raw_calib(root / DRIVE[:10], P2, R0, TR, (24, 80), T_velo_imu)
    packets = [_packet(49.0, 8.0, 110.0), _packet(49.0 + 1e-4, 8.0 + 1e-4, 111.0, yaw=np.pi / 2)]
    scans = []
    for i in range(frames):
        pts = rng.normal(0, 5, (50 + i, 4)).astype(np.float32)
        img = rng.integers(0, 255, (24, 80, 3), dtype=np.uint8)
        kl.write_raw_frame(root / DRIVE[:10] / DRIVE, i, pts, img, packets[i])
        scans.append(pts)
    return scans


def test_raw_replica_reads_back_matrix_for_matrix_and_byte_for_byte(tmp_path: Path) -> None:
    scans = _raw_drive(tmp_path)
    date = tmp_path / DRIVE[:10]
    calib = kitti_calib.read_raw_calib(date, (24, 80))
    np.testing.assert_allclose(calib.P, P2, rtol=1e-12)
    np.testing.assert_allclose(calib.T_cam_lidar, R0_4 @ TR, atol=1e-12)
    cam = kitti_calib.read_calib_file(date / "calib_cam_to_cam.txt")
    assert "calib_time" not in cam and cam["S_rect_02"].tolist() == [80, 24]
    np.testing.assert_allclose(cam["R_rect_00"].reshape(3, 3), R0, atol=1e-12)
    # written again from what was read: the same bytes
    velo = kitti_calib.read_calib_file(date / "calib_velo_to_cam.txt")
    Tr = np.c_[velo["R"].reshape(3, 3), velo["T"]]
    h, w = cam["S_rect_02"][::-1].astype(int)
    again = (cam["P_rect_02"].reshape(3, 4), cam["R_rect_00"].reshape(3, 3), Tr, (h, w))
    kl.write_raw_calib(tmp_path / "again", *again, kitti_calib.read_imu_to_velo(date))
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt"):
        assert (tmp_path / "again" / name).read_bytes() == (date / name).read_bytes()
    oxts = date / DRIVE / "oxts" / "data" / "0000000001.txt"
    kl.write_oxts(tmp_path / "o.txt", kitti.read_oxts(oxts))
    assert (tmp_path / "o.txt").read_bytes() == oxts.read_bytes()
    assert oxts.read_text().split()[-5:] == ["4", "10", "4", "4", "0"]

    ds = kitti.KittiRawDataset(tmp_path)
    assert ds.drives == [DRIVE] and len(ds) == 2
    s = ds[1]
    assert isinstance(s, Sample) and s.frame_id == f"{DRIVE}/0000000001" and s.grid_frame == "lidar"
    assert s.cameras[0].name == "image_02" and s.image.shape == (24, 80, 3)
    np.testing.assert_array_equal(s.points, scans[1])
    np.testing.assert_allclose(s.calib.lidar_to_image, P2 @ R0_4 @ TR, atol=1e-9)


def test_oxts_poses_by_hand(tmp_path: Path) -> None:
    _raw_drive(tmp_path)
    first, second = _packet(49.0, 8.0, 110.0), _packet(49.0 + 1e-4, 8.0 + 1e-4, 111.0, yaw=np.pi / 2)
    T = kitti.oxts_poses(np.stack([first, second]))
    np.testing.assert_allclose(T[0], np.eye(4), atol=1e-9)  # the first frame is the origin
    er, deg = 6378137.0, np.pi / 180
    # Mercator with scale cos(lat0): east = cos(lat0) * er * dlon; north ~ er * dlat for a small step
    np.testing.assert_allclose(T[1, :3, 3], [np.cos(49 * deg) * er * 1e-4 * deg, er * 1e-4 * deg, 1.0], atol=2e-3)
    np.testing.assert_allclose(T[1, :3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)  # yaw 90 deg
    # roll, pitch, yaw compose as Rz @ Ry @ Rx
    R = kitti.oxts_poses(_packet(49.0, 8.0, 0.0, 0.1, 0.2, 0.3))[0, :3, :3]
    np.testing.assert_allclose(R, _rot(2, 0.3) @ _rot(1, 0.2) @ _rot(0, 0.1), atol=1e-12)
    # the dataset's pose: LiDAR = T_world_imu @ inv(T_velo_imu), origin from the drive's first frame
    pose = kitti.KittiRawDataset(tmp_path).sample(DRIVE, 1).pose
    T_velo_imu = kitti_calib.read_imu_to_velo(tmp_path / DRIVE[:10])
    np.testing.assert_allclose(pose, T[1] @ np.linalg.inv(T_velo_imu), atol=1e-9)


def test_raw_errors_name_the_file_and_key(tmp_path: Path) -> None:
    _raw_drive(tmp_path)
    date = tmp_path / DRIVE[:10]
    with pytest.raises(FileNotFoundError, match="0000000007.bin"):
        kitti.KittiRawDataset(tmp_path).sample(DRIVE, 7)
    with pytest.raises(FileNotFoundError, match="2011_09_26_drive_0009_sync"):
        kitti.KittiRawDataset(tmp_path, ["2011_09_26_drive_0009_sync"])
    text = (date / "calib_cam_to_cam.txt").read_text()
    (date / "calib_cam_to_cam.txt").write_text(text.replace("P_rect_02", "P_rect_2x"))
    with pytest.raises(ValueError, match=r"calib_cam_to_cam\.txt: missing key 'P_rect_02'"):
        kitti_calib.read_raw_calib(date, (24, 80))
    (date / "calib_velo_to_cam.txt").write_text("R: 1 0 0 0 1 0 0 0\nT: 0 0 0\n")
    (date / "calib_cam_to_cam.txt").write_text(text)
    with pytest.raises(ValueError, match="key 'R' has 8 values, expected 9"):
        kitti_calib.read_raw_calib(date, (24, 80))
    (date / DRIVE / "oxts" / "data" / "0000000001.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="3 values, expected 30"):
        kitti.KittiRawDataset(tmp_path).pose(DRIVE, 1)


# ----------------------------------------------------------------------------------------------- KITTI object


def test_object_replica_reads_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pts = rng.normal(0, 5, (64, 4)).astype(np.float32)
    kl.write_object_frame(tmp_path, 7, pts, np.zeros((24, 80, 3), np.uint8), OBJECT_CALIB, _objects())
    ds = kitti.KittiObjectDataset(tmp_path)
    assert ds.frames == ["000007"]
    s = ds.sample(7)
    assert s.frame_id == "000007" and s.cameras[0].name == "image_2"
    np.testing.assert_array_equal(s.points, pts)
    np.testing.assert_allclose(s.calib.T_cam_lidar, R0_4 @ TR, atol=1e-12)
    np.testing.assert_allclose(s.calib.lidar_to_image, P2 @ R0_4 @ TR, atol=1e-9)
    calib_txt = tmp_path / "training" / "calib" / "000007.txt"
    keys = [line.split(":")[0] for line in calib_txt.read_text().splitlines()]
    assert keys == ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"]
    obj = s.extras["objects"]
    assert obj.type == ("Car", "Pedestrian") and obj.score is None
    for field in ("truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y"):
        np.testing.assert_allclose(getattr(obj, field), getattr(_objects(), field), atol=0.006)
    assert obj.occluded.dtype == np.int64
    label = tmp_path / "training" / "label_2" / "000007.txt"
    assert (
        label.read_text().splitlines()[0]
        == "Car 0.00 1 -1.57 10.50 5.25 30.00 20.00 2.00 1.00 4.00 1.00 2.00 10.00 0.00"
    )
    kl.write_object_labels(tmp_path / "again.txt", obj)
    assert (tmp_path / "again.txt").read_bytes() == label.read_bytes()
    kl.write_object_labels(tmp_path / "scored.txt", _objects(score=True))
    np.testing.assert_allclose(kitti.read_object_labels(tmp_path / "scored.txt").score, [0.5, 0.25])
    values = kitti_calib.read_calib_file(calib_txt)
    kl.write_object_calib(tmp_path / "c.txt", *(values[k].reshape(3, -1) for k in ("P2", "R0_rect", "Tr_velo_to_cam")))
    assert (tmp_path / "c.txt").read_bytes() == calib_txt.read_bytes()
    kl.write_object_frame(tmp_path, 3, pts, np.zeros((24, 80, 3), np.uint8), OBJECT_CALIB, split="testing")
    assert kitti.KittiObjectDataset(tmp_path, "testing").sample("3").extras == {}  # no label_2 in testing


def test_box_corners_and_points_in_boxes_by_hand() -> None:
    obj = _objects()
    c = obj.corners_camera()
    # car: ry 0, l 4 along x, h 2 up (-y), w 1 along z, bottom centre (1, 2, 10)
    np.testing.assert_allclose(c[0, 0], [3.0, 2.0, 10.5])
    np.testing.assert_allclose(c[0, 6], [-1.0, 0.0, 9.5])
    # pedestrian: ry 90 deg turns its length onto -z: x' = z, z' = -x
    np.testing.assert_allclose(c[1, 0], [-2.0 + 0.25, 1.5, 6.0 - 0.375], atol=1e-12)
    T = R0_4 @ TR
    lidar = obj.corners_lidar(T)
    back = lidar.reshape(-1, 3) @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(back.reshape(2, 8, 3), c, atol=1e-9)
    # points in the camera frame: each box's centre, a point just inside / outside the car's +x face, above it
    cam = np.array([[1.0, 1.0, 10.0], [-2.0, 0.625, 6.0], [2.99, 1.0, 10.0], [3.01, 1.0, 10.0], [1.0, -0.1, 10.0]])
    Tinv = np.linalg.inv(T)
    pts = cam @ Tinv[:3, :3].T + Tinv[:3, 3]
    inside = obj.points_in_boxes(np.c_[pts, np.zeros(5)], T)
    assert inside.shape == (5, 2)
    np.testing.assert_array_equal(inside, [[1, 0], [0, 1], [1, 0], [0, 0], [0, 0]])
    # the pedestrian's length runs along z after the 90 deg turn: 0.3 m along z is inside, along x is not
    along = np.array([[-2.0, 1.0, 6.3], [-2.3, 1.0, 6.0]]) @ Tinv[:3, :3].T + Tinv[:3, 3]
    np.testing.assert_array_equal(obj.points_in_boxes(along, T)[:, 1], [True, False])


def test_object_errors(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Car 0.00 0 -1.58 587.27 175.34 666.88 250.56 1.56 1.65\n")
    with pytest.raises(ValueError, match=r"a\.txt:1: 10 values, expected 15"):
        kitti.read_object_labels(tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text("Car 0.00 0 -1.58 x 175.34 666.88 250.56 1.56 1.65 3.69 0.34 1.64 16.95 -1.56\n")
    with pytest.raises(ValueError, match="non-numeric"):
        kitti.read_object_labels(tmp_path / "b.txt")
    (tmp_path / "c.txt").write_text("P2: 1 2 3\n")
    with pytest.raises(ValueError, match="key 'P2' has 3 values, expected 12"):
        kitti_calib.read_object_calib(tmp_path / "c.txt", (10, 10))
    with pytest.raises(FileNotFoundError, match="velodyne"):
        kitti.KittiObjectDataset(tmp_path)
    with pytest.raises(ValueError, match="'training' or 'testing'"):
        kitti.KittiObjectDataset(tmp_path, "val")


# -------------------------------------------------------------------------------------------------- real data


def _real() -> Path:
    if not (REAL / "training" / "velodyne").is_dir():
        pytest.skip(f"real KITTI object frames not available ({REAL} is absent)")
    return REAL


def _direct_projection(calib_txt: Path) -> np.ndarray:
    """P2 @ R0_rect(4x4) @ Tr_velo_to_cam(4x4), parsed here line by line."""
    rows = {
        k.strip(): np.array(v.split(), float)
        for k, _, v in (x.partition(":") for x in calib_txt.read_text().splitlines() if x)
    }
    R0 = np.eye(4)
    R0[:3, :3] = rows["R0_rect"].reshape(3, 3)
    Tr = np.vstack([rows["Tr_velo_to_cam"].reshape(3, 4), [0, 0, 0, 1]])
    return rows["P2"].reshape(3, 4) @ R0 @ Tr


def test_real_object_frames() -> None:
    root = _real()
    ds = kitti.KittiObjectDataset(root)
    assert len(ds) == 6 and "002155" in ds.frames
    for frame in ds.frames:
        s = ds.sample(frame)
        assert s.points.shape[1] == 4 and len(s.points) > 10_000 and s.points.dtype == np.float32
        assert s.image.shape[2] == 3 and 370 <= s.image.shape[0] <= 376
        np.testing.assert_allclose(
            s.calib.lidar_to_image,
            _direct_projection(root / "training" / "calib" / f"{frame}.txt"),
            rtol=1e-12,
            atol=1e-9,
        )
        _, depth, visible = s.calib.project(s.points)
        assert visible.mean() > 0.9  # these scans hold the camera's field of view (points behind it removed)
    s = ds.sample("002155")
    obj = s.extras["objects"]
    assert len(obj) == 15 and obj.type[:2] == ("Car", "Van") and obj.type.count("DontCare") == 2
    np.testing.assert_allclose(obj.location[0], [0.34, 1.64, 16.95])
    assert obj.occluded.tolist()[:3] == [0, 0, 2]
    cars = np.array([t == "Car" for t in obj.type])
    inside = obj.points_in_boxes(s.points, s.calib.T_cam_lidar)[:, cars]
    counts = inside.sum(0)
    assert counts[0] > 100  # the nearest car (17 m ahead) holds many LiDAR returns
    assert (counts > 0).sum() >= 8  # most cars are hit
    # the LiDAR points inside a car box project inside its 2D box (loose: boxes are tight, points sparse)
    uv, _, _ = s.calib.project(s.points[inside[:, 0]])
    left, top, right, bottom = obj.bbox[0]
    assert (
        np.mean((uv[:, 0] > left - 5) & (uv[:, 0] < right + 5) & (uv[:, 1] > top - 5) & (uv[:, 1] < bottom + 5)) > 0.95
    )
