"""2D pseudo labels: file-backed labeller, label maps, OccLE alignment by Boolean mask operations."""

from __future__ import annotations

import numpy as np
import pytest

from occle_core.data.label_png import write_label_png
from occle_core.labels import class_table
from occle_core.pseudo.align import (
    AlignedLabeller,
    FileOpenVocabSegmenter,
    align_pseudo_labels,
    load_label_map,
    normalise_name,
)
from occle_core.pseudo.labeller import FileLabeller, PseudoLabeller, split_frame_id

SK = class_table("semantic_kitti")
OCC = class_table("occ3d_nuscenes")
N = 255
# SemanticKITTI ids used below
CAR, PERSON, BICYCLIST, ROAD, PARKING, SIDEWALK, VEG, TRUNK = 1, 6, 7, 9, 10, 11, 15, 16


def test_file_labeller_reads_the_training_layout(tmp_path):
    labels = np.full((6, 8), N, np.uint8)
    labels[3:] = ROAD
    write_label_png(tmp_path / "sequences/04/pseudo_2d/000007.png", labels)
    lab = FileLabeller(tmp_path, classes=SK)
    assert lab.path("04/000007") == tmp_path / "sequences/04/pseudo_2d/000007.png"
    image = np.zeros((6, 8, 3), np.uint8)
    np.testing.assert_array_equal(lab(image, "04/000007"), labels)
    assert isinstance(lab, PseudoLabeller)
    with pytest.raises(FileNotFoundError, match="000008.png"):
        lab.label(image, "04/000008")
    with pytest.raises(ValueError, match=r"labels are \(6, 8\) but the image is \(6, 9\)"):
        lab.label(np.zeros((6, 9, 3), np.uint8), "04/000007")
    with pytest.raises(ValueError, match="image must be"):
        lab.label(np.zeros((6, 8), np.uint8), "04/000007")
    bad = labels.copy()
    bad[0, 0] = 40  # not a SemanticKITTI learning class
    write_label_png(tmp_path / "sequences/04/pseudo_2d/000009.png", bad)
    with pytest.raises(ValueError, match="class ids >= 20"):
        lab.label(image, "04/000009")
    custom = FileLabeller(tmp_path, pattern="labels/{frame_id}.png")
    write_label_png(tmp_path / "labels/tok.png", labels)
    np.testing.assert_array_equal(custom.label(image, "tok"), labels)
    assert split_frame_id("08/000120") == ("08", "000120") and split_frame_id("tok") == ("", "tok")


def test_label_maps_load_for_both_targets():
    sk = load_label_map("cityscapes", "semantic_kitti")
    lut = sk.lut()
    names = list(sk.source_names)
    assert len(names) == 19
    assert lut[names.index("road")] == ROAD
    assert lut[names.index("traffic sign")] == SK.names.index("traffic-sign")
    assert lut[names.index("bus")] == SK.names.index("other-vehicle")
    assert lut[names.index("sky")] == N and lut[names.index("rider")] == N
    assert lut[19:].tolist() == [N] * (256 - 19)  # unknown ids -> none
    assert set(sk.open_vocab) == {TRUNK, PARKING, SK.names.index("other-ground"), BICYCLIST, 8}
    assert sk.refines[TRUNK] == (VEG, SK.names.index("pole"))
    assert "tree trunk" in sk.open_vocab[TRUNK]
    # every target class is reachable: from the map or from an open-vocabulary prompt
    reachable = {int(v) for v in lut[:19] if v != N} | set(sk.open_vocab)
    assert reachable == set(SK.semantic_classes)
    occ = load_label_map("cityscapes", "occ3d_nuscenes")
    olut = occ.lut()
    assert olut[names.index("road")] == OCC.names.index("driveable_surface")
    assert olut[names.index("person")] == OCC.names.index("pedestrian")
    reachable = {int(v) for v in olut[:19] if v != N} | set(occ.open_vocab)
    assert reachable == set(OCC.semantic_classes) - {OCC.names.index("others")}
    # a model's own class names (other spelling, an extra class) map by normalised name
    model_names = ["Road", "Traffic_Sign", "unknown thing"]
    np.testing.assert_array_equal(sk.lut(model_names)[:3], [ROAD, SK.names.index("traffic-sign"), N])
    assert sk.unmapped(model_names) == ["unknown thing"]
    with pytest.raises(ValueError, match="no entry"):
        sk.lut(model_names, strict=True)
    assert normalise_name(" Traffic-Sign ") == "traffic sign"


def test_label_map_errors(tmp_path):
    with pytest.raises(ValueError, match="no source label space 'mseg'"):
        load_label_map("mseg", "semantic_kitti")
    with pytest.raises(ValueError, match="no table for target"):
        load_label_map("cityscapes", "nuscenes_lidarseg")
    bad = tmp_path / "map.yaml"
    bad.write_text(
        "sources:\n  s:\n    names: [a, b]\n    targets:\n      semantic_kitti:\n        map: {a: road, b: lorry}\n"
    )
    with pytest.raises(ValueError, match="'lorry' is not a semantic_kitti class"):
        load_label_map("s", "semantic_kitti", bad)
    bad.write_text("sources:\n  s:\n    names: [a, b]\n    targets:\n      semantic_kitti:\n        map: {a: road}\n")
    with pytest.raises(ValueError, match=r"without a map entry.*\['b'\]"):
        load_label_map("s", "semantic_kitti", bad)


def _scene():
    """A 4 x 6 image: specific labels and three open-vocabulary masks (hand-made)."""
    spec = np.array(
        [
            [N, N, VEG, VEG, CAR, CAR],
            [N, N, VEG, VEG, CAR, CAR],
            [ROAD, ROAD, ROAD, PERSON, PERSON, N],
            [ROAD, ROAD, SIDEWALK, SIDEWALK, N, N],
        ],
        np.uint8,
    )
    trunk = np.zeros((4, 6), bool)
    trunk[0:2, 1:5] = True  # over none, vegetation and car
    parking = np.zeros((4, 6), bool)
    parking[2:4, 0:3] = True  # over road and sidewalk
    bicyclist = np.zeros((4, 6), bool)
    bicyclist[1:3, 0:6] = True  # overlaps trunk on row 1, over person and road on row 2
    masks = np.stack([trunk, parking, bicyclist])
    classes = [TRUNK, PARKING, BICYCLIST]
    refines = {TRUNK: (VEG,), PARKING: (ROAD, SIDEWALK), BICYCLIST: (PERSON,)}
    return spec, masks, classes, refines


def test_alignment_rules_by_hand():
    spec, masks, classes, refines = _scene()
    out = align_pseudo_labels(spec, masks, classes, [0.9, 0.8, 0.6], refines)
    T, P, B = TRUNK, PARKING, BICYCLIST
    expected = np.array(
        [
            [N, T, T, T, CAR, CAR],  # trunk fills none and refines vegetation; never overwrites car
            [B, T, T, T, CAR, CAR],  # trunk (0.9) beats bicyclist (0.6) where both may write; B fills none
            [P, P, P, B, B, B],  # parking refines road; bicyclist refines person, fills none, not road
            [P, P, P, SIDEWALK, N, N],  # parking over road/sidewalk inside its mask only
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(out, expected)
    # scores decide overlaps, but only among masks allowed to write the pixel
    out2 = align_pseudo_labels(spec, masks, classes, [0.5, 0.8, 0.9], refines)
    assert out2[1, 1] == B  # none pixel covered by both: the higher score wins
    assert out2[1, 2] == T  # vegetation: bicyclist may not overwrite it, trunk may
    # min_score drops weak masks; no masks leaves the specific labels
    out3 = align_pseudo_labels(spec, masks, classes, [0.9, 0.8, 0.6], refines, min_score=0.7)
    assert out3[1, 0] == N and out3[2, 3] == PERSON and out3[0, 1] == TRUNK
    np.testing.assert_array_equal(align_pseudo_labels(spec, masks[:0], [], []), spec)
    # per-pixel score maps
    pix = np.zeros(masks.shape, np.float32)
    pix[0] = 0.9
    pix[2, 1, 0] = 0.95
    out4 = align_pseudo_labels(spec, masks, classes, pix, refines, min_score=0.5)
    assert out4[1, 0] == B and out4[1, 1] == T and out4[2, 0] == ROAD


def test_alignment_input_checks():
    spec, masks, classes, refines = _scene()
    with pytest.raises(ValueError, match="masks must be"):
        align_pseudo_labels(spec, masks[:, :3], classes, [1, 1, 1])
    with pytest.raises(ValueError, match="mask_classes must have 3"):
        align_pseudo_labels(spec, masks, classes[:2], [1, 1, 1])
    with pytest.raises(ValueError, match="scores must be"):
        align_pseudo_labels(spec, masks, classes, [1, 1])


def test_aligned_labeller_with_files(tmp_path):
    spec, masks, classes, _ = _scene()
    write_label_png(tmp_path / "sequences/00/pseudo_2d/000001.png", spec)
    (tmp_path / "sequences/00/open_vocab").mkdir(parents=True)
    ov = tmp_path / "sequences/00/open_vocab"
    np.savez_compressed(
        ov / "000001.npz",
        masks=masks.astype(np.uint8),
        classes=np.array(classes),
        scores=np.array([0.9, 0.8, 0.6], np.float32),
    )
    np.savez_compressed(
        ov / "000003.npz", masks=masks, classes=np.array(classes + [CAR]), scores=np.array([0.9, 0.8, 0.6], np.float32)
    )
    lm = load_label_map("cityscapes", "semantic_kitti")
    np.savez_compressed(
        tmp_path / "sequences/00/open_vocab/000002.npz",
        masks=np.concatenate([masks, masks[:1]]),
        classes=np.array(classes + [CAR]),
        scores=np.array([0.9, 0.8, 0.6, 0.99], np.float32),
    )
    aligned = AlignedLabeller(FileLabeller(tmp_path, classes=SK), FileOpenVocabSegmenter(tmp_path), lm, 0.5)
    image = np.zeros((4, 6, 3), np.uint8)
    out = aligned.label(image, "00/000001")
    # the map's refinement rules (trunk may also overwrite pole, bicyclist also bicycle) give the same answer
    expected = align_pseudo_labels(spec, masks, classes, [0.9, 0.8, 0.6], lm.refines)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 1] == TRUNK and out[2, 0] == PARKING
    # a stored mask for a class that was not prompted (car) is dropped
    seg = FileOpenVocabSegmenter(tmp_path).segment(image, lm.open_vocab, "00/000002")
    assert seg.masks.shape == (3, 4, 6) and CAR not in seg.classes
    with pytest.raises(ValueError, match=r"000003.npz: classes \(4,\) and scores \(3,\) need one entry per mask"):
        FileOpenVocabSegmenter(tmp_path).segment(image, lm.open_vocab, "00/000003")
    with pytest.raises(FileNotFoundError, match="000004.npz"):
        FileOpenVocabSegmenter(tmp_path).segment(image, lm.open_vocab, "00/000004")
