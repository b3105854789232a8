"""SemanticKITTI reader / writers (byte layout, size checks, frame lists, pooling) and free_space_mask."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from occle_core.data import semantic_kitti as sk
from occle_core.data.kitti_calib import write_kitti_calib
from occle_core.data.label_png import read_label_png, write_label_png
from occle_core.data.sample import Sample
from occle_core.geometry import SEMANTIC_KITTI_GRID, Calib, VoxelGrid, free_space_mask
from occle_core.labels import class_table

P2 = np.array([[718.856, 0.0, 607.1928, 45.38225], [0.0, 718.856, 185.2157, -0.1130887], [0.0, 0.0, 1.0, 0.0037]])
TR = np.array(
    [
        [0.0, -1.0, 0.0, -0.01],
        [0.0, 0.0, -1.0, -0.05],
        [1.0, 0.0, 0.0, -0.29],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _yaw_pose(x: float, yaw: float) -> np.ndarray:
    T = np.eye(4)
    T[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    T[0, 3] = x
    return T


def make_sequence(root: Path, frames: int = 3, labelled: tuple[int, ...] = (0, 2), seq: str = "00") -> dict:
    """A hand-made sequence written with the module's own writers (no generator involved)."""
    rng = np.random.default_rng(7)
    d = root / "sequences" / seq
    for sub in ("velodyne", "labels", "image_2", "voxels", "pseudo_2d"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    calib = Calib(P2, TR, (40, 120))
    write_kitti_calib(d / "calib.txt", calib)
    lidar = np.stack([_yaw_pose(1.0 * i, 0.05 * i) for i in range(frames)])
    sk.write_poses(d / "poses.txt", sk.camera_poses(lidar, TR))
    sk.write_times(d / "times.txt", np.arange(frames) * 0.1)
    out = {"dir": d, "lidar_poses": lidar, "points": [], "voxel_raw": {}, "invalid": {}}
    for i in range(frames):
        name = f"{i:06d}"
        pts = rng.normal(0, 5, (100 + i, 4)).astype(np.float32)
        sk.write_points(d / "velodyne" / f"{name}.bin", pts)
        sk.write_point_labels(d / "labels" / f"{name}.label", sk.join_point_labels(np.full(len(pts), 40), None))
        sk.write_image(d / "image_2" / f"{name}.png", rng.integers(0, 255, (40, 120, 3), dtype=np.uint8))
        write_label_png(d / "pseudo_2d" / f"{name}.png", np.full((40, 120), 9, np.uint8))
        out["points"].append(pts)
        if i in labelled:
            raw = np.zeros(sk.VOXEL_SHAPE, np.uint16)
            raw[10:20, 100:110, 2] = 40  # road -> 9
            raw[30:32, 50:52, 3:5] = 10  # car -> 1
            raw[0, 0, 0] = 52  # other-structure -> 255 (ignored, evaluate_completion.py)
            invalid = np.zeros(sk.VOXEL_SHAPE, bool)
            invalid[200:, :, :] = True
            invalid[10, 100, 2] = True  # a labelled but invalid voxel -> 255
            sk.write_voxel_labels(d / "voxels" / f"{name}.label", raw)
            sk.write_voxel_bits(d / "voxels" / f"{name}.invalid", invalid)
            sk.write_voxel_bits(d / "voxels" / f"{name}.bin", raw > 0)
            sk.write_voxel_bits(d / "voxels" / f"{name}.occluded", np.zeros(sk.VOXEL_SHAPE, bool))
            out["voxel_raw"][i], out["invalid"][i] = raw, invalid
    return out


# ------------------------------------------------------------------------------------------ file formats


def test_voxel_bits_byte_layout(tmp_path: Path) -> None:
    mask = np.zeros(sk.VOXEL_SHAPE, bool)
    mask[0, 0, 0] = True  # first bit of the first byte (big-endian bit order) -> 0x80
    mask[0, 0, 9] = True  # byte 1, bit 1 -> 0x40
    mask[255, 255, 31] = True  # last bit of the last byte -> 0x01
    path = tmp_path / "a.invalid"
    sk.write_voxel_bits(path, mask)
    raw = path.read_bytes()
    assert len(raw) == 262144 == sk.PACKED_BYTES
    assert raw[0] == 0x80 and raw[1] == 0x40 and raw[-1] == 0x01 and sum(raw) == 0x80 + 0x40 + 0x01
    # the SemanticKITTI API unpacking: bit 7 of each byte first, C order (X, Y, Z)
    b = np.frombuffer(raw, np.uint8)
    api = np.stack([(b >> s) & 1 for s in range(7, -1, -1)], axis=1).reshape(sk.VOXEL_SHAPE)
    np.testing.assert_array_equal(api.astype(bool), mask)
    np.testing.assert_array_equal(sk.read_voxel_bits(path), mask)


def test_voxel_files_round_trip_byte_for_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mask = rng.random(sk.VOXEL_SHAPE) < 0.3
    labels = rng.integers(0, 260, sk.VOXEL_SHAPE).astype(np.uint16)
    sk.write_voxel_bits(tmp_path / "a.bin", mask)
    sk.write_voxel_labels(tmp_path / "a.label", labels)
    assert (tmp_path / "a.label").stat().st_size == 2 * 256 * 256 * 32
    np.testing.assert_array_equal(sk.read_voxel_labels(tmp_path / "a.label"), labels)
    sk.write_voxel_bits(tmp_path / "b.bin", sk.read_voxel_bits(tmp_path / "a.bin"))
    sk.write_voxel_labels(tmp_path / "b.label", sk.read_voxel_labels(tmp_path / "a.label"))
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert (tmp_path / "a.label").read_bytes() == (tmp_path / "b.label").read_bytes()
    # little-endian uint16 on disk
    assert (tmp_path / "a.label").read_bytes()[:2] == int(labels[0, 0, 0]).to_bytes(2, "little")


def test_points_and_point_labels_round_trip(tmp_path: Path) -> None:
    pts = np.arange(40, dtype=np.float32).reshape(10, 4)
    sk.write_points(tmp_path / "p.bin", pts)
    assert (tmp_path / "p.bin").read_bytes() == pts.astype("<f4").tobytes()
    np.testing.assert_array_equal(sk.read_points(tmp_path / "p.bin"), pts)
    lab = sk.join_point_labels(np.array([10, 40, 252]), np.array([3, 0, 65535]))
    sk.write_point_labels(tmp_path / "p.label", lab)
    back = sk.read_point_labels(tmp_path / "p.label", num_points=3)
    sem, inst = sk.split_point_labels(back)
    np.testing.assert_array_equal(sem, [10, 40, 252])
    np.testing.assert_array_equal(inst, [3, 0, 65535])
    assert int(back[0]) == 10 | (3 << 16)


def test_poses_times_images_round_trip(tmp_path: Path) -> None:
    poses = np.stack([_yaw_pose(x, 0.1 * x) for x in range(4)])
    sk.write_poses(tmp_path / "poses.txt", poses)
    assert all(len(line.split()) == 12 for line in (tmp_path / "poses.txt").read_text().splitlines())
    np.testing.assert_allclose(sk.read_poses(tmp_path / "poses.txt"), poses, atol=1e-9)
    sk.write_times(tmp_path / "times.txt", np.array([0.0, 0.1, 0.2]))
    np.testing.assert_allclose(sk.read_times(tmp_path / "times.txt"), [0.0, 0.1, 0.2])
    img = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    sk.write_image(tmp_path / "i.png", img)
    np.testing.assert_array_equal(sk.read_image(tmp_path / "i.png"), img)
    lab = np.array([[0, 255], [19, 7]], np.uint8)
    write_label_png(tmp_path / "l.png", lab)
    np.testing.assert_array_equal(read_label_png(tmp_path / "l.png"), lab)


def test_lidar_poses_are_the_conjugate_of_camera_poses() -> None:
    lidar = np.stack([_yaw_pose(2.0, 0.3), _yaw_pose(-1.0, -0.2)])
    cam = sk.camera_poses(lidar, TR)
    np.testing.assert_allclose(sk.lidar_poses(cam, TR), lidar, atol=1e-12)
    np.testing.assert_allclose(cam, TR @ lidar @ np.linalg.inv(TR), atol=1e-12)


# ------------------------------------------------------------------------------------------ size errors


def test_size_errors_name_the_file_and_the_expected_size(tmp_path: Path) -> None:
    (tmp_path / "v.bin").write_bytes(b"\0" * 32768)
    with pytest.raises(ValueError, match=r"v\.bin.*32768 bytes, expected 262144"):
        sk.read_voxel_bits(tmp_path / "v.bin")
    (tmp_path / "v.label").write_bytes(b"\0" * (262144 * 2))
    with pytest.raises(ValueError, match=r"v\.label.*524288 bytes, expected 4194304"):
        sk.read_voxel_labels(tmp_path / "v.label")
    (tmp_path / "p.bin").write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match=r"p\.bin.*20 bytes is not a multiple of 16"):
        sk.read_points(tmp_path / "p.bin")
    (tmp_path / "p.label").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match=r"p\.label.*2 labels, expected 3"):
        sk.read_point_labels(tmp_path / "p.label", num_points=3)
    (tmp_path / "q.label").write_bytes(b"\0" * 6)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        sk.read_point_labels(tmp_path / "q.label")
    (tmp_path / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(ValueError, match=r"poses\.txt:1: 11 values, expected 12"):
        sk.read_poses(tmp_path / "poses.txt")
    for reader in (sk.read_voxel_bits, sk.read_voxel_labels, sk.read_points, sk.read_image, sk.read_poses):
        with pytest.raises(FileNotFoundError, match="missing.file"):
            reader(tmp_path / "missing.file")


def test_writers_reject_wrong_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        sk.write_points(tmp_path / "x.bin", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="uint16"):
        sk.write_voxel_labels(tmp_path / "x.label", np.full((2, 2, 2), 70000))
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        sk.write_voxel_bits(tmp_path / "x.invalid", np.zeros((4, 4)))


# -------------------------------------------------------------------------------------------- pooling


def test_pool_labels_hand_made_blocks() -> None:
    lab = np.zeros((4, 2, 2), np.uint8)  # two coarse voxels along x for factor 2
    # block 0: empty + two cars + one road + invalid -> car (majority of the non-empty)
    lab[0, 0, 0], lab[0, 0, 1], lab[1, 1, 1], lab[1, 0, 0] = 1, 1, 9, 255
    # block 1: all invalid
    lab[2:4] = 255
    out, invalid = sk.pool_labels(lab, 2)
    assert out.shape == (2, 1, 1)
    assert out[0, 0, 0] == 1 and not invalid[0, 0, 0]
    assert out[1, 0, 0] == 255 and invalid[1, 0, 0]
    # empty + invalid only -> empty; a tie between two classes -> the lower id
    lab2 = np.zeros((2, 2, 2), np.uint8)
    lab2[0, 0, 0] = 255
    assert sk.pool_labels(lab2, 2)[0][0, 0, 0] == 0
    lab2[0, 1, 0], lab2[1, 1, 0] = 15, 15
    lab2[0, 0, 1], lab2[1, 0, 1] = 13, 13
    assert sk.pool_labels(lab2, 2)[0][0, 0, 0] == 13


def test_pool_labels_matches_a_loop_reference() -> None:
    rng = np.random.default_rng(3)
    lab = rng.choice([0, 0, 0, 1, 4, 9, 15, 255], size=(8, 8, 8)).astype(np.uint8)
    for f in (2, 4):
        out, invalid = sk.pool_labels(lab, f)
        for i, j, k in np.ndindex(out.shape):
            blk = lab[i * f : (i + 1) * f, j * f : (j + 1) * f, k * f : (k + 1) * f].ravel()
            valid = blk[blk != 255]
            votes = valid[valid != 0]
            if valid.size == 0:
                expected = 255
            elif votes.size == 0:
                expected = 0
            else:
                expected = int(np.bincount(votes, minlength=20).argmax())
            assert out[i, j, k] == expected
            assert invalid[i, j, k] == (valid.size == 0)
    with pytest.raises(ValueError, match="divide"):
        sk.pool_labels(lab, 3)


# -------------------------------------------------------------------------------------------- dataset


def test_dataset_labelled_frames_and_sample_fields(tmp_path: Path) -> None:
    made = make_sequence(tmp_path)
    ds = sk.SemanticKittiDataset(tmp_path, ["00"])
    assert ds.frames == [("00", "000000"), ("00", "000002")]
    s = ds[1]
    assert isinstance(s, Sample) and s.frame_id == "00/000002"
    assert s.image.shape == (40, 120, 3) and s.image.dtype == np.uint8
    assert s.calib.image_size == (40, 120)
    np.testing.assert_allclose(s.calib.P, P2, atol=1e-9)
    np.testing.assert_array_equal(s.points, made["points"][2])
    assert s.points.dtype == np.float32
    assert s.voxel_labels.shape == (256, 256, 32) and s.voxel_labels.dtype == np.uint8
    assert s.voxel_labels[11, 101, 2] == 9 and s.voxel_labels[30, 50, 3] == 1
    assert s.voxel_labels[0, 0, 0] == 255 and s.voxel_labels[0, 0, 1] == 0  # other-structure ignored, 0 empty
    assert s.voxel_labels[10, 100, 2] == 255  # invalid -> 255
    assert np.all(s.voxel_labels[200:] == 255)
    np.testing.assert_array_equal(s.invalid, made["invalid"][2])
    np.testing.assert_array_equal(s.pseudo2d, np.full((40, 120), 9, np.uint8))
    np.testing.assert_allclose(s.pose, made["lidar_poses"][2], atol=1e-6)


def test_dataset_unlabelled_grid_scale_and_max_points(tmp_path: Path) -> None:
    make_sequence(tmp_path)
    ds = sk.SemanticKittiDataset(tmp_path, ["0"], with_labels=False, max_points=50)
    assert len(ds) == 3
    s = ds[1]
    assert s.voxel_labels is None and len(s.points) == 50
    np.testing.assert_array_equal(ds[1].points, s.points)  # the subset is fixed per frame
    ds2 = sk.SemanticKittiDataset(tmp_path, ["00"], grid_scale=2)
    s2 = ds2[0]
    assert s2.voxel_labels.shape == (128, 128, 16) and s2.invalid.shape == (128, 128, 16)
    assert s2.voxel_labels[15, 25, 1] == 1  # the car block survives pooling
    assert np.all(s2.voxel_labels[100:] == 255) and np.all(s2.invalid[100:])
    assert sk.SemanticKittiDataset(tmp_path, ["00"], grid_scale=4)[0].voxel_labels.shape == (64, 64, 8)


def test_dataset_errors(tmp_path: Path) -> None:
    make_sequence(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"unknown sequence '07'.*\['00'\]"):
        sk.SemanticKittiDataset(tmp_path, ["07"])
    with pytest.raises(ValueError, match="grid_scale"):
        sk.SemanticKittiDataset(tmp_path, ["00"], grid_scale=3)
    d = tmp_path / "sequences" / "00"
    # a label file whose frame has no scan
    sk.write_point_labels(d / "labels" / "000009.label", np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match=r"labels.*have no velodyne scan.*000009"):
        sk.SemanticKittiDataset(tmp_path, ["00"])
    (d / "labels" / "000009.label").unlink()
    # a scan without its image
    (d / "image_2" / "000001.png").unlink()
    with pytest.raises(ValueError, match=r"no image_2.*000001"):
        sk.SemanticKittiDataset(tmp_path, ["00"], with_labels=False)


def test_dataset_reports_a_truncated_voxel_file(tmp_path: Path) -> None:
    make_sequence(tmp_path)
    path = tmp_path / "sequences" / "00" / "voxels" / "000002.invalid"
    path.write_bytes(path.read_bytes()[:-1])
    ds = sk.SemanticKittiDataset(tmp_path, ["00"])
    with pytest.raises(ValueError, match=r"000002\.invalid.*262143 bytes, expected 262144"):
        ds[1]


def test_dataset_checks_the_number_of_poses(tmp_path: Path) -> None:
    make_sequence(tmp_path)
    d = tmp_path / "sequences" / "00"
    lines = (d / "poses.txt").read_text().splitlines()
    (d / "poses.txt").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(ValueError, match=r"poses\.txt: 2 poses, expected at least 3"):
        sk.SemanticKittiDataset(tmp_path, ["00"])


def test_learning_map_of_voxel_labels() -> None:
    table = class_table("semantic_kitti")
    raw = np.array([0, 10, 40, 44, 48, 50, 52, 60, 70, 72, 80, 81, 252], np.uint16)
    np.testing.assert_array_equal(table.map_raw(raw), [0, 1, 9, 10, 11, 13, 255, 9, 15, 17, 18, 19, 1])


# ------------------------------------------------------------------------------------ free_space_mask


def test_free_space_mask_axis_aligned_ray() -> None:
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (10, 3, 3))
    occ, free = free_space_mask(grid, np.array([[7.5, 1.5, 1.5]]), origin=(0.5, 1.5, 1.5))
    assert occ.sum() == 1 and occ[7, 1, 1]
    np.testing.assert_array_equal(np.flatnonzero(free[:, 1, 1]), np.arange(0, 7))
    assert free.sum() == 7
    # a point beyond the grid: the ray is free up to the boundary, nothing is occupied
    occ, free = free_space_mask(grid, np.array([[25.0, 1.5, 1.5]]), origin=(0.5, 1.5, 1.5))
    assert occ.sum() == 0 and free[:, 1, 1].all() and free.sum() == 10
    # the origin outside the grid: sampling starts where the ray enters
    occ, free = free_space_mask(grid, np.array([[4.5, 1.5, 1.5]]), origin=(-5.0, 1.5, 1.5))
    assert occ[4, 1, 1] and np.array_equal(np.flatnonzero(free[:, 1, 1]), np.arange(4))


def test_free_space_mask_diagonal_ray_against_dense_sampling() -> None:
    grid = VoxelGrid((0.0, 0.0, 0.0), 0.5, (20, 20, 6))
    origin = np.array([0.3, 0.2, 1.1])
    pts = np.array([[8.7, 6.1, 0.2, 0.0], [3.3, 9.4, 2.6, 0.0], [9.9, 0.4, 1.3, 0.0]], np.float32)
    occ, free = free_space_mask(grid, pts, origin=origin)
    ref = np.zeros(grid.shape, bool)
    for p in pts[:, :3]:
        t = np.linspace(0.0, 1.0, 20001)[:-1]
        s = origin + t[:, None] * (p - origin)
        ijk = np.floor(s / 0.5).astype(int)
        ok = np.all((ijk >= 0) & (ijk < grid.shape), axis=1)
        ref[tuple(ijk[ok].T)] = True
    ref &= ~occ
    assert occ.sum() == 3
    assert not (free & ~ref).any()  # never marks a voxel the segment does not cross
    assert free.sum() >= 0.8 * ref.sum()  # half-voxel steps skip some corner-clipped voxels only
    _, fine = free_space_mask(grid, pts, origin=origin, step=0.02)
    assert not (fine & ~ref).any() and fine.sum() >= 0.97 * ref.sum()


def test_free_space_mask_validates_inputs() -> None:
    with pytest.raises(ValueError, match=r"points must have shape \(N, >=3\)"):
        free_space_mask(SEMANTIC_KITTI_GRID, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="origin"):
        free_space_mask(SEMANTIC_KITTI_GRID, np.zeros((4, 3)), origin=(0.0, 0.0))
    occ, free = free_space_mask(SEMANTIC_KITTI_GRID, np.zeros((0, 4), np.float32))
    assert occ.shape == free.shape == (256, 256, 32) and not occ.any() and not free.any()


@pytest.mark.bench
def test_free_space_mask_speed_on_a_full_scan() -> None:
    rng = np.random.default_rng(0)
    n = 120_000
    az = rng.uniform(-np.pi, np.pi, n)
    r = rng.exponential(12, n) + 3
    pts = np.stack([r * np.cos(az), r * np.sin(az), -1.73 + rng.normal(0, 0.3, n), np.zeros(n)], 1)
    t = time.process_time()
    free_space_mask(SEMANTIC_KITTI_GRID, pts.astype(np.float32))
    assert time.process_time() - t < 0.5
