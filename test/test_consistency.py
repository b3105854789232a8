"""Label-free consistency metrics, each checked against counts worked out by hand on tiny grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from occle_core.consistency import (
    ConsistencyFrame,
    ConsistencyReport,
    consistency_report,
    frame_consistency,
    kitti_vehicle_boxes,
    points_in_boxes,
    pool,
)
from occle_core.data.kitti import read_object_labels
from occle_core.evaluate import main as eval_main
from occle_core.geometry import VoxelGrid
from occle_core.ground import GROUND, NEITHER, RAISED, fit_ground_plane, ground_target, plane_heights
from occle_core.labels import class_table
from occle_core.predictor import default_checkpoint

SK = class_table("semantic_kitti")
OCC = class_table("occ3d_nuscenes")
CAR, ROAD, BUILDING = SK.names.index("car"), SK.names.index("road"), SK.names.index("building")
FLAT = (0.0, 0.0, 1.0, -0.5)  # the plane z = 0.5


def ray_frame():
    """Sensor at (0, .5, .5), two returns straight down the x axis, in voxels 5 and 7 of an (8, 2, 2) grid."""
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (8, 2, 2))
    points = np.array([[5.5, 0.5, 0.5], [7.5, 0.5, 0.5]])
    labels = np.zeros(grid.shape, np.uint8)
    labels[5, 0, 0] = CAR  # a hit voxel predicted occupied; voxel 7 (hit) is predicted empty
    labels[2, 0, 0] = ROAD  # a crossed (free) voxel predicted occupied
    labels[7, 1, 1] = BUILDING  # an unobserved voxel
    return grid, points, labels


def test_hit_recall_free_space_and_occupied_shares():
    grid, points, labels = ray_frame()
    fr = frame_consistency(points, labels, grid, SK, origin=(0, 0.5, 0.5), free_margin=1.6, plane=FLAT)
    # hits: voxels 5 and 7. Rays shortened by 1.6 m end at x = 3.9 and 5.9: crossed voxels 0..3 and 0..5;
    # minus the hits: free = 0..4
    assert (fr.hit_voxels, fr.hit_predicted_occupied) == (2, 1)
    assert (fr.free_voxels, fr.free_predicted_occupied) == (5, 1)
    assert fr.hit_recall == 0.5 and fr.free_false_occupancy == 0.2
    assert (fr.voxels, fr.predicted_occupied) == (32, 3) and fr.occupied_share == 3 / 32
    assert (fr.observed_voxels, fr.observed_predicted_occupied) == (7, 2)
    assert fr.observed_occupied_share == 2 / 7 and fr.lidar_occupied_share == 2 / 7
    # with a margin under a voxel, the second ray's free voxel 6 (between the two returns) counts too
    fr0 = frame_consistency(points, labels, grid, SK, origin=(0, 0.5, 0.5), free_margin=0.6, plane=FLAT)
    assert (fr0.free_voxels, fr0.free_predicted_occupied) == (6, 1)
    assert fr.vehicle_recall is None and fr.false_vehicle_share is None


def test_occ3d_empty_class_is_free():
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (4, 1, 1))
    labels = np.full(grid.shape, OCC.empty_index, np.uint8)
    labels[3] = OCC.names.index("car")
    fr = frame_consistency(np.array([[3.5, 0.5, 0.5]]), labels, grid, OCC, origin=(0, 0.5, 0.5), plane=FLAT)
    # free (17) is not occupied: voxels 0..2 (free, ray end at 2.9) hold 17, the hit voxel a car
    assert fr.hit_recall == 1.0 and fr.free_voxels == 3 and fr.free_false_occupancy == 0.0


def test_ground_consistency_counts_returns_near_the_plane():
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (4, 1, 2))
    labels = np.zeros(grid.shape, np.uint8)
    labels[0, 0, 0] = labels[1, 0, 0] = ROAD
    labels[2, 0, 0] = CAR
    labels[2, 0, 1] = CAR
    points = np.array(
        [[0.5, 0.5, 0.55], [1.5, 0.5, 0.4], [2.5, 0.5, 0.5], [3.5, 0.5, 0.5], [2.5, 0.5, 1.5], [9.0, 0.5, 0.5]]
    )
    fr = frame_consistency(points, labels, grid, SK, origin=(0, 0.5, 1.9), plane=FLAT)
    # near the plane and in the grid: the first four (the last is outside); on road: the first two
    assert (fr.ground_returns, fr.ground_returns_ground_class) == (4, 2)
    assert fr.ground_consistency == 0.5
    tilted = (0.0, -np.sin(0.3), np.cos(0.3), 0.0)  # a plane the returns do not lie near
    assert frame_consistency(points, labels, grid, SK, plane=tilted).ground_returns < 4


def test_ground_plane_fit_finds_a_tilted_road_under_clutter():
    rng = np.random.default_rng(3)
    xy = rng.uniform([0, -20], [40, 20], (3000, 2))
    road = np.c_[xy, 0.03 * xy[:, 0] - 0.02 * xy[:, 1] - 1.7 + rng.normal(0, 0.02, 3000)]
    wall = np.c_[rng.uniform(0, 40, 1500), np.full(1500, 8.0), rng.uniform(-1.7, 4, 1500)]
    roof = np.c_[rng.uniform(0, 10, (800, 2)), np.full(800, 2.5)]  # a smaller raised flat surface
    plane = fit_ground_plane(np.r_[road, wall, roof])
    expect = np.array([-0.03, 0.02, 1.0, 1.7]) / np.linalg.norm([-0.03, 0.02, 1.0])
    np.testing.assert_allclose(plane, expect, atol=0.01)
    with pytest.raises(ValueError, match="at least 3"):
        fit_ground_plane(np.zeros((2, 3)))


def test_plane_heights_of_tilted_planes():
    grid = VoxelGrid((0.0, -4.0, -2.0), 0.4, (20, 20, 10))
    n = np.array([0.05, -0.03, 1.0])
    planes = np.stack([np.append(n, 1.6), [0.0, 0.0, 1.0, 2.0]]) / np.array([[np.linalg.norm(n)], [1.0]])
    got = plane_heights(grid, torch.from_numpy(planes))  # (2, X, Y, Z)
    centres = grid.centers().reshape(-1, 3).astype(np.float64)
    assert got.shape == (2, 20, 20, 10) and got.dtype == torch.float32
    for b in range(2):
        want = centres @ planes[b, :3] + planes[b, 3]  # z = -1.6 - 0.05 x + 0.03 y (scaled), and the grid floor
        np.testing.assert_allclose(got[b].reshape(-1).numpy(), want, atol=1e-5)
    assert float(got[1].min()) == pytest.approx(0.2)  # the lowest centres: half a voxel above the floor


def test_ground_target_marks_ground_and_raised_voxels():
    grid = VoxelGrid((0.0, -2.0, -2.0), 0.5, (8, 8, 4))  # x 0..4, y -2..2, z -2..0
    rng = np.random.default_rng(0)
    road = np.c_[rng.uniform([0, -2], [4, 2], (4000, 2)), np.full(4000, -1.95)]  # ~62 returns per road voxel
    foot = np.c_[rng.uniform([1.0, 0.0], [1.5, 0.5], (400, 2)), rng.uniform(-1.7, -1.55, 400)]  # 0.25-0.4 m up
    wheel = np.c_[rng.uniform([3.0, -2.0], [3.5, -1.5], (20, 2)), rng.uniform(-1.7, -1.55, 20)]  # fewer
    wall = np.c_[rng.uniform([0.0, 1.5], [4.0, 2.0], (800, 2)), rng.uniform(-1.0, 0.0, 800)]  # 0.95-1.95 m up
    target = ground_target(np.r_[road, foot, wheel, wall], grid)
    assert (target[:, :, 0] == GROUND).sum() == 64 - 1
    assert target[2, 4, 0] == NEITHER and target[6, 0, 0] == GROUND  # the foot outnumbers the road; the wheel not
    assert (target[:, 7, 2:] == RAISED).all() and (target[:, :7, 1:] == NEITHER).all()
    assert (ground_target(np.zeros((2, 3)), grid) == NEITHER).all()
    # blocks of 2^3 voxels (a model's feature voxels): no road voxel is ground in a block with a return above the band
    blocked = ground_target(np.r_[road, foot, wheel, wall], grid, block=2)
    assert (blocked[:, :, 0] == GROUND).sum() == 64 - 4 - 4  # the foot's block and the wheel's block
    assert blocked[3, 5, 0] == blocked[7, 1, 0] == NEITHER and blocked[4, 4, 0] == GROUND
    assert np.array_equal(blocked == RAISED, target == RAISED)
    with pytest.raises(ValueError, match="block 3"):
        ground_target(road, grid, block=3)


def test_points_in_rotated_boxes():
    boxes = np.array([[5.0, 0.0, 0.0, 4.0, 2.0, 2.0, np.pi / 2]])  # length along y after the yaw
    points = np.array([[5.0, 1.8, 0.0], [6.5, 0.0, 0.0], [5.9, 0.0, 0.9], [6.1, 0.0, 0.0], [5.0, 0.0, 1.2]])
    np.testing.assert_array_equal(points_in_boxes(points, boxes), [True, False, True, False, False])
    np.testing.assert_array_equal(points_in_boxes(points, boxes, margin=0.2), [True, False, True, True, True])
    assert not points_in_boxes(points, np.zeros((0, 7))).any()


def test_vehicle_recall_and_false_vehicle_share():
    grid = VoxelGrid((0.0, 0.0, 0.0), 1.0, (10, 1, 3))
    labels = np.zeros(grid.shape, np.uint8)
    labels[1, 0, 1] = CAR  # in the box
    labels[6, 0, 1] = CAR  # outside it
    labels[8, 0, 0] = CAR  # a ground voxel painted car: not above ground, not counted
    labels[4, 0, 1] = BUILDING
    boxes = np.array([[1.5, 0.5, 1.5, 2.0, 1.0, 1.0, 0.0]])  # covers x 0.5..2.5 (+ margin), z 1..2
    points = np.array(
        [
            [1.5, 0.5, 1.5],  # in box, car voxel
            [2.2, 0.5, 1.5],  # in box, empty voxel
            [4.5, 0.5, 1.5],  # outside, building
            [6.5, 0.5, 1.5],  # outside, car -> false vehicle
            [7.5, 0.5, 1.5],  # outside, empty
            [8.5, 0.5, 0.1],  # ground return in a car voxel (plane z = 0)
        ]
    )
    fr = frame_consistency(points, labels, grid, SK, boxes, origin=(0, 0.5, 2.5), plane=(0, 0, 1, 0.0))
    assert (fr.box_returns, fr.box_returns_vehicle) == (2, 1) and fr.vehicle_recall == 0.5
    assert (fr.vehicle_returns, fr.vehicle_returns_outside_boxes) == (2, 1) and fr.false_vehicle_share == 0.5
    # the rate: of the 3 above-ground returns outside the box (building, car, empty) 1 is called a vehicle
    assert fr.outside_box_returns == 3 and fr.false_vehicle_rate == pytest.approx(1 / 3)
    # returns in an unannotated region are judged only when a box holds them
    unjudged = np.array([True, False, False, True, False, False])
    fu = frame_consistency(
        points, labels, grid, SK, boxes, origin=(0, 0.5, 2.5), plane=(0, 0, 1, 0.0), unjudged=unjudged
    )
    assert (fu.box_returns, fu.box_returns_vehicle) == (2, 1)  # the in-box return stays judged
    assert (fu.vehicle_returns, fu.vehicle_returns_outside_boxes, fu.outside_box_returns) == (1, 0, 2)
    assert fu.false_vehicle_rate == 0.0 and fu.false_vehicle_share == 0.0
    with pytest.raises(ValueError, match="unjudged must have one entry per point"):
        frame_consistency(points, labels, grid, SK, boxes, plane=(0, 0, 1, 0.0), unjudged=unjudged[:2])


def test_dontcare_regions_and_added_objects(tmp_path):
    from occle_core.consistency import consistency_frame
    from occle_core.data.sample import Sample
    from occle_core.geometry import Calib

    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # LiDAR x forward, y left, z up -> camera x right, y down
    P = np.array([[100.0, 0, 50, 0], [0, 100, 50, 0], [0, 0, 1, 0]])
    calib = Calib(P, T, (100, 100))
    path = tmp_path / "000001.txt"
    path.write_text(
        "Car 0.00 0 0 0 0 0 0 1.50 1.60 4.00 1.00 1.70 10.00 -1.5707963\n"
        "DontCare -1 -1 -10 60 40 80 60 -1 -1 -1 -1000 -1000 -1000 -10\n"
    )
    objects = read_object_labels(path)
    # (10, -1, 0) projects to u = 50 + 100 * 1 / 10 = 60, v = 50: inside the DontCare region; (10, 1, 0) to u = 40
    points = np.array([[10.0, -1.0, 0.0, 0.5], [10.0, 1.0, 0.0, 0.5], [-5.0, 0.0, 0.0, 0.5]], np.float32)
    image = np.zeros((100, 100, 3), np.uint8)
    sample = Sample.single(
        "000001", image, points, calib, name="image_2", grid_frame="lidar", extras={"objects": objects}
    )
    frame = consistency_frame(sample)
    assert frame.boxes.shape == (1, 7)
    np.testing.assert_array_equal(frame.unjudged(), [True, False, False])  # behind the camera: not in the region
    extra = tmp_path / "extra.txt"
    extra.write_text("Truck 0.30 0 0 0 0 0 0 3.00 2.50 7.00 -5.00 1.70 12.00 -1.5707963\n")
    added = consistency_frame(sample, read_object_labels(extra))
    assert added.boxes.shape == (2, 7) and len(added.unannotated) == 1
    np.testing.assert_allclose(added.boxes[1, :3], [12.0, 5.0, -0.2], atol=1e-6)  # bottom 1.7 m down, 3 m tall
    joined = objects.concat(read_object_labels(extra))
    assert joined.type == ("Car", "DontCare", "Truck") and joined.bbox.shape == (3, 4) and joined.score is None
    no_label = Sample.single("000002", image, points, calib, name="image_2", grid_frame="lidar")
    assert consistency_frame(no_label).boxes is None and consistency_frame(no_label).unjudged() is None
    assert consistency_frame(no_label, read_object_labels(extra)).boxes.shape == (1, 7)


def test_kitti_label_boxes_to_lidar(tmp_path):
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # LiDAR x forward, y left, z up -> camera x right, y down, z fwd
    path = tmp_path / "000001.txt"
    path.write_text(
        "Car 0.00 0 0 0 0 0 0 1.50 1.60 4.00 1.00 1.70 10.00 -1.5707963\n"
        "DontCare -1 -1 -10 0 0 0 0 -1 -1 -1 -1000 -1000 -1000 -10\n"
        "Van 0.00 0 0 0 0 0 0 2.00 1.80 5.00 -2.00 1.70 20.00 0.0\n"
    )
    boxes = kitti_vehicle_boxes(read_object_labels(path), T)
    # the car faces forward (ry = -pi/2 -> yaw 0); bottom centre 1.7 m below the camera -> centre 0.95 m below
    np.testing.assert_allclose(boxes[0], [10.0, -1.0, -0.95, 4.0, 1.6, 1.5, 0.0], atol=1e-6)
    # ry = 0: the van's length points along camera x (right) = LiDAR -y
    np.testing.assert_allclose(boxes[1], [20.0, 2.0, -0.7, 5.0, 1.8, 2.0, -np.pi / 2], atol=1e-6)
    assert boxes.shape == (2, 7)  # DontCare is not a vehicle
    assert kitti_vehicle_boxes(read_object_labels(path), T, types=("Truck",)).shape == (0, 7)


def test_pooled_table_and_json():
    grid, points, labels = ray_frame()
    kw = {"origin": (0, 0.5, 0.5), "plane": FLAT}
    a = frame_consistency(points, labels, grid, SK, frame_id="a", **kw)
    b = frame_consistency(points[:1], labels, grid, SK, np.zeros((0, 7)), frame_id="b", **kw)
    total = pool([a, b])
    assert total.hit_voxels == a.hit_voxels + b.hit_voxels and total.free_voxels == a.free_voxels + b.free_voxels
    assert total.box_returns == 0 and math.isnan(total.vehicle_recall)  # only b has boxes, with no returns in them
    report = ConsistencyReport([a, b])
    lines = report.table().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("| all | 66.7 |")  # hits 2 of 3 voxels
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["frames"][0]["vehicle_recall"] is None and doc["total"]["hit_recall"] == pytest.approx(2 / 3)


def test_consistency_report_runs_a_predictor():
    grid, points, labels = ray_frame()

    class Fixed:
        def __init__(self):
            self.grid, self.classes = grid, SK

        def predict(self, image, points, calib):
            return labels

    rep = consistency_report(Fixed(), [ConsistencyFrame("f", None, points, None, None, (0, 0.5, 0.5))], plane=FLAT)
    assert [f.frame_id for f in rep.frames] == ["f"] and rep.frames[0].hit_recall == 0.5
    with pytest.raises(ValueError, match="grid shape"):
        frame_consistency(points, labels[:-1], grid, SK, plane=FLAT)


REAL_KITTI = Path(__file__).resolve().parents[1] / ".." / "shared" / "real" / "kitti" / "training"


def test_consistency_cli_on_a_kitti_object_replica(tmp_path, capsys):
    from helpers_adapt import tiny_checkpoint, write_object_replica

    data = write_object_replica(tmp_path / "kitti")
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    argv = ["--consistency", "--dataset", "kitti_object", "--checkpoint", str(ckpt), "--data", str(data)]
    assert eval_main([*argv, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    doc = json.loads((tmp_path / "out" / "consistency.json").read_text())
    assert [f["frame_id"] for f in doc["frames"]] == ["000000", "000001", "000002"]
    labelled, unlabelled = doc["frames"][0], doc["frames"][1]
    assert labelled["box_returns"] > 0 and labelled["vehicle_recall"] is not None  # the car's returns, from label_2
    assert unlabelled["box_returns"] is None and unlabelled["vehicle_recall"] is None
    assert doc["total"]["hit_voxels"] == sum(f["hit_voxels"] for f in doc["frames"]) > 0
    table = capsys.readouterr().out
    assert "| 000001 |" in table and "| all |" in table
    # objects added from a folder of label files: frame 000001 (no label_2) gets the box of the extra file
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "000001.txt").write_text((data / "label_2" / "000000.txt").read_text())
    assert eval_main([*argv, "--out", str(tmp_path / "out2"), "--extra-labels", str(extra), "--device", "cpu"]) == 0
    doc2 = json.loads((tmp_path / "out2" / "consistency.json").read_text())
    assert doc2["frames"][1]["box_returns"] is not None and doc2["frames"][2]["box_returns"] is None
    assert doc2["frames"][0] == labelled
    assert eval_main([*argv, "--extra-labels", str(tmp_path / "nowhere")]) == 2
    assert "--extra-labels: no folder" in capsys.readouterr().err
    # the same frames by the root above the split, two of them
    assert eval_main([*argv[:-1], str(data.parent), "--frames", "2", "--device", "cpu"]) == 0
    assert "(kitti_object, 2 frames)" in capsys.readouterr().out
    assert eval_main([a for a in argv if a not in ("--dataset", "kitti_object")]) == 2
    assert "--consistency needs --dataset" in capsys.readouterr().err
    # the ground gate: stated in the header when on, refused when negative
    assert eval_main([*argv, "--ground-gate", "0.6", "--device", "cpu"]) == 0
    assert "label-free consistency (ground gate 0.6 m)" in capsys.readouterr().out
    assert eval_main([*argv, "--ground-gate", "-1", "--device", "cpu"]) == 2
    assert "model.ground_gate must be a number of metres >= 0" in capsys.readouterr().err


@pytest.mark.skipif(not REAL_KITTI.is_dir(), reason="../shared/real/kitti (real KITTI object frames) is absent")
def test_consistency_cli_on_the_real_kitti_frames(tmp_path):
    argv = ["--consistency", "--dataset", "kitti_object", "--data", str(REAL_KITTI), "--out", str(tmp_path)]
    assert eval_main(["--checkpoint", str(default_checkpoint()), *argv, "--device", "cpu"]) == 0
    doc = json.loads((tmp_path / "consistency.json").read_text())
    frames = {f["frame_id"]: f for f in doc["frames"]}
    assert sorted(frames) == ["000000", "000001", "000002", "000003", "002155", "007347"]
    assert frames["002155"]["box_returns"] > 100  # the annotated cars hold LiDAR returns
    assert frames["002155"]["outside_box_returns"] > 1000
    assert all(f["box_returns"] is None for k, f in frames.items() if k != "002155")
    assert all(f["hit_voxels"] > 1000 and f["ground_returns"] > 1000 for f in frames.values())
    assert 0.0 < doc["total"]["hit_recall"] <= 1.0


def test_label_free_readers_nuscenes_lidar_origin_and_bad_selections(tmp_path, capsys):
    from helpers_adapt import tiny_checkpoint

    from occle_core.data.factory import build_label_free
    from occle_core.synth.released import lidar_extrinsic, write_nuscenes_replica

    write_nuscenes_replica(tmp_path / "nusc", samples_per_scene=2)
    frames = build_label_free("nuscenes", tmp_path / "nusc")
    s = frames[1]
    assert len(frames) == 2 and [c.name for c in s.cameras] == ["CAM_FRONT"] and s.grid_frame == "ego"
    np.testing.assert_allclose(s.extras["lidar_origin"], lidar_extrinsic()[:3, 3])  # the rays start at the mount
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    argv = ["--consistency", "--dataset", "nuscenes", "--checkpoint", str(ckpt), "--data", str(tmp_path / "nusc")]
    assert eval_main([*argv, "--device", "cpu"]) == 0 and "(nuscenes, 2 frames)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="semantic_kitti needs the sequences"):
        build_label_free("semantic_kitti", tmp_path)
    with pytest.raises(ValueError, match="one split"):
        build_label_free("kitti_object", tmp_path, ["training", "testing"])
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_label_free("waymo", tmp_path)
