"""2D pseudo-label sources of the experiment (issue 15): agreement with the true 2D labels, the rows' data root and
pseudo folder, the runner's folder check and ``occle-pseudo --label-dir``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from occle_core.data.label_png import write_label_png
from occle_core.labels import class_table
from occle_core.pseudo.cli import dataset_images
from occle_core.pseudo.cli import main as pseudo_main
from occle_experiments.__main__ import main as experiments_main
from occle_experiments.pseudo_agreement import agreement, label_pairs
from occle_experiments.rows import load_experiments
from occle_experiments.runner import check_pseudo_folder

REAL = Path(__file__).resolve().parent.parent / "config" / "experiments.yaml"
NAMES = {n: i for i, n in enumerate(class_table("semantic_kitti").names)}


def _write(root: Path, seq: str, folder: str, labels: np.ndarray) -> None:
    write_label_png(root / "sequences" / seq / folder / "000000.png", labels.astype(np.uint8))


def test_agreement_scores_a_hand_made_pair(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    road, car, sky = NAMES["road"], NAMES["car"], 255
    truth = np.array([[road, road, road, road], [car, car, sky, sky]])
    source = np.array([[road, road, car, 255], [car, road, road, car]])
    _write(tmp_path, "00", "truth", truth)
    _write(tmp_path, "00", "src", source)
    score = agreement(label_pairs(tmp_path, "truth", "src"))
    # 6 truth pixels: 3 right (road, road, car); one unlabelled (coverage 5/6)
    assert (score["frames"], score["pixels"], score["classes_present"]) == (1, 6, 2)
    assert score["pixel_accuracy"] == pytest.approx(3 / 6) and score["coverage"] == pytest.approx(5 / 6)
    # road: TP 2, FN 2 (car, 255), FP 1 (a car pixel called road) -> 2/5; car: TP 1, FN 1, FP 1 -> 1/3
    assert score["per_class"] == pytest.approx({"road": 2 / 5, "car": 1 / 3})
    assert score["miou_present"] == pytest.approx((2 / 5 + 1 / 3) / 2)
    assert experiments_main(["agreement", "--data", str(tmp_path), "--truth", "truth", "src"]) == 0
    assert '"source": "src"' in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="in both truth/ and other/"):
        label_pairs(tmp_path, "truth", "other")
    assert experiments_main(["agreement", "--data", str(tmp_path), "--truth", "truth", "other"]) == 2


def test_rows_pick_their_data_root_and_pseudo_folder(tmp_path: Path) -> None:
    exp = load_experiments(REAL)
    where = {r: (exp.row_data_root(r), exp.row_setting(r, "data.pseudo_dir", "pseudo_2d")) for r in exp.rows}
    assert where["occle_10"] == where["sup_10"] == (exp.data_root, "pseudo_2d")
    assert where["oracle_2d"] == (exp.data_root, "pseudo_2d_oracle")
    assert where["noise_x2"] == (exp.data_root, "pseudo_2d_x2")
    assert where["occle_10_realistic"] == ("data/synthetic_realistic", "pseudo_2d")
    assert where["occle_10_deeplab"] == ("data/synthetic_realistic", "pseudo_2d_deeplab")
    assert set(exp.protocol["pseudo_stress"]["rows"]) <= set(exp.rows)
    (tmp_path / "sequences" / "00" / "pseudo_2d_x2").mkdir(parents=True)
    check_pseudo_folder(exp, "noise_x2", str(tmp_path), ["00"])
    with pytest.raises(FileNotFoundError, match="pseudo_2d_oracle: not found .write it: make pseudo-noise"):
        check_pseudo_folder(exp, "oracle_2d", str(tmp_path), ["00"])
    with pytest.raises(FileNotFoundError, match="make pseudo-deeplab"):
        check_pseudo_folder(exp, "occle_10_deeplab", str(tmp_path), ["00"])


def test_occle_pseudo_label_dir(tmp_path: Path) -> None:
    image = tmp_path / "sequences" / "00" / "image_2" / "000000.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"")
    [(img, label)] = dataset_images("semantic_kitti", tmp_path, "pseudo_2d_deeplab")
    assert img == image and label == tmp_path / "sequences" / "00" / "pseudo_2d_deeplab" / "000000.png"
    assert dataset_images("semantic_kitti", tmp_path)[0][1].parent.name == "pseudo_2d"
    for bad in ("image_2", "a/b"):
        with pytest.raises(ValueError, match="--label-dir must be a folder name"):
            dataset_images("semantic_kitti", tmp_path, bad)
    with pytest.raises(SystemExit):
        pseudo_main(
            ["--segmenter", "deeplab-cityscapes", "--model", "m", "--image", "x", "--out", "y", "--label-dir", "p"]
        )
