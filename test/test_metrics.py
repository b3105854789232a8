"""SSC metrics against confusion matrices and scores computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from occle_core.labels import ClassTable, class_table
from occle_core.metrics import SSCMetrics

TOY = ClassTable("toy", ("empty", "a", "b"), np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8), 0)

# target / pred / mask of the toy case; the 255 target and the masked voxel do not count
T = np.array([0, 0, 1, 1, 1, 2, 2, 255, 1])
P = np.array([0, 1, 1, 1, 2, 2, 0, 1, 1])
M = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
# counted (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (1,2) (2,2) (2,0)
TOY_CONFUSION = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])


def test_toy_confusion_and_scores_by_hand():
    m = SSCMetrics(TOY)
    m.update(P, T, M)
    np.testing.assert_array_equal(m.confusion, TOY_CONFUSION)
    s = m.compute()
    # per class: TP / (row + col - TP): empty 1/(2+2-1), a 2/(3+3-2), b 1/(2+2-1)
    np.testing.assert_allclose(s["per_class_iou"], [1 / 3, 2 / 4, 1 / 3])
    assert s["miou"] == pytest.approx((2 / 4 + 1 / 3) / 2)  # over a, b only
    # completion: occupied = {a, b}; TP = 2+1+0+1 = 4, FP (empty->occ) = 1, FN (occ->empty) = 1
    assert s["iou"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(4 / 5)
    assert s["recall"] == pytest.approx(4 / 5)
    assert s["num_voxels"] == 7
    assert s["miou_classes"] == [1, 2]
    assert s["miou_present"] == s["miou"] and s["classes_present"] == 2


def test_torch_inputs_match_numpy_and_accumulate():
    m = SSCMetrics(TOY)
    m.update(torch.from_numpy(P), torch.from_numpy(T), torch.from_numpy(M))
    m.update(P.reshape(3, 3), T.reshape(3, 3), M.reshape(3, 3))  # any shape, numpy again
    np.testing.assert_array_equal(m.confusion, 2 * TOY_CONFUSION)
    assert m.compute()["miou"] == pytest.approx((2 / 4 + 1 / 3) / 2)  # ratios unchanged by doubling


def test_merge_reset_and_mask_none():
    a, b = SSCMetrics(TOY), SSCMetrics(TOY)
    a.update(P, T, M)
    b.update(P, T)  # without the mask the last voxel (1 -> 1) counts too
    expected_b = TOY_CONFUSION + np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(b.confusion, expected_b)
    a.merge(b)
    np.testing.assert_array_equal(a.confusion, TOY_CONFUSION + expected_b)
    a.reset()
    assert a.num_voxels == 0
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(SSCMetrics(class_table("semantic_kitti")))


def test_occ3d_camera_mask_by_hand():
    occ = class_table("occ3d_nuscenes")
    assert occ.empty_index == 17 and len(occ.semantic_classes) == 17
    target = np.array([17, 17, 4, 4, 11, 0]).reshape(1, 2, 3)
    pred = np.array([17, 4, 4, 17, 11, 11]).reshape(1, 2, 3)
    cam = np.array([1, 1, 1, 1, 1, 0], bool).reshape(1, 2, 3)
    m = SSCMetrics(occ)
    m.update(pred, target, cam)
    s = m.compute()
    # car (4): TP 1, row 2, col 2 -> 1/3; driveable_surface (11): 1/1; "others" (0) is outside the mask
    assert s["per_class_iou"][4] == pytest.approx(1 / 3)
    assert s["per_class_iou"][11] == pytest.approx(1.0)
    assert math.isnan(s["per_class_iou"][0])
    # Occ3D's official nanmean: the 15 absent classes are left out
    assert s["miou"] == pytest.approx((1 / 3 + 1) / 2) == s["miou_present"] and s["classes_present"] == 2
    assert s["iou"] == pytest.approx(2 / 4)  # TP (4,4),(11,11); FP (17->4); FN (4->17)
    m.reset()
    m.update(pred, target)  # no camera mask: (0 -> 11) counts
    s = m.compute()
    assert s["per_class_iou"][0] == 0.0
    assert s["per_class_iou"][11] == pytest.approx(1 / 2)
    assert s["miou"] == pytest.approx((0 + 1 / 3 + 1 / 2) / 3)
    assert s["iou"] == pytest.approx(3 / 5)


def test_semantic_kitti_19_classes_and_perfect_prediction():
    sk = class_table("semantic_kitti")
    rng = np.random.default_rng(0)
    target = rng.integers(0, 20, (16, 16, 4)).astype(np.uint8)
    target[0] = 255
    m = SSCMetrics(sk)
    m.update(target.copy(), target)  # pred == target, 255 voxels skipped (their pred 255 is never read)
    s = m.compute()
    assert len(s["miou_classes"]) == 19 and 0 not in s["miou_classes"]
    assert s["miou"] == 1.0 and s["iou"] == 1.0
    assert s["num_voxels"] == int((target != 255).sum())
    text = m.table()
    assert "traffic-sign" in text and "mIoU" in text and "100.00" in text


def test_semantic_kitti_absent_classes_count_zero_by_hand():
    """evaluate_completion.py: mIoU = mean over all 19 classes of tp / (tp + fp + fn + 1e-15)."""
    sk = class_table("semantic_kitti")
    assert sk.absent_iou_zero
    target = np.array([0, 0, 1, 1, 9, 9, 9, 255])
    pred = np.array([0, 1, 1, 1, 9, 9, 13, 4])  # the 255 voxel is not counted, so truck (4) stays absent
    m = SSCMetrics(sk)
    m.update(pred, target)
    s = m.compute()
    # car: TP 2, row 2, col 3 -> 2/3; road: TP 2, row 3, col 2 -> 2/3; building: TP 0, row 0, col 1 -> 0
    assert s["per_class_iou"][1] == pytest.approx(2 / 3) and s["per_class_iou"][9] == pytest.approx(2 / 3)
    assert s["per_class_iou"][13] == 0.0 and math.isnan(s["per_class_iou"][4])
    assert s["classes_present"] == 3
    assert s["miou_present"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert s["miou"] == pytest.approx((2 / 3 + 2 / 3) / 19)  # 16 absent classes count 0
    text = m.table()
    assert f"{100 * (4 / 3) / 19:8.2f}" in text and "mIoU (3 present)" in text
    # a perfect prediction of 2 classes is 2/19 officially, 1.0 over the present classes
    m.reset()
    m.update(np.where(target == 255, 0, target), target)
    s = m.compute()
    assert s["miou"] == pytest.approx(2 / 19) and s["miou_present"] == pytest.approx(1.0)


def test_empty_accumulator_gives_nan_not_errors():
    s = SSCMetrics(TOY).compute()
    assert math.isnan(s["iou"]) and math.isnan(s["miou"]) and math.isnan(s["miou_present"])
    assert s["classes_present"] == 0
    sk = SSCMetrics(class_table("semantic_kitti")).compute()
    assert math.isnan(sk["miou"]) and sk["classes_present"] == 0  # nothing counted: undefined, not 0
    assert "n/a" in SSCMetrics(TOY).table()


def test_bad_inputs_are_rejected():
    m = SSCMetrics(TOY)
    with pytest.raises(ValueError, match="pred holds class ids"):
        m.update(np.array([3]), np.array([1]))
    with pytest.raises(ValueError, match="target holds class ids"):
        m.update(np.array([1]), np.array([7]))
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(TypeError, match="integer"):
        m.update(np.zeros(3, np.float32), np.zeros(3, int))
    with pytest.raises(TypeError, match="integer"):
        m.update(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    assert m.num_voxels == 0
