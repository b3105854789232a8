"""The 2D pseudo-label noise knob (issue 15): oracle = the rendered truth, x2 noisier than default, and the
``occle-synth --pseudo-noise / --pseudo-only`` flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from occle_core.data.label_png import read_label_png
from occle_core.labels import IGNORE_INDEX
from occle_core.synth.cli import main
from occle_core.synth.pseudo_noise import pseudo_labels
from occle_core.synth.sensors import LidarModel
from occle_core.synth.sequence import SyntheticSequence
from occle_core.synth.writer import write_pseudo_folder

TINY = ["--image-scale", "0.25", "--azimuth-steps", "200", "--window", "1", "--quiet"]


@pytest.fixture(scope="module")
def frame() -> tuple[SyntheticSequence, object]:
    seq = SyntheticSequence(3, 1, image_scale=0.25, lidar=LidarModel(azimuth_steps=200), window=1)
    return seq, seq.render(0)


def _disagreement(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of the truth's labelled pixels whose pseudo label differs."""
    valid = truth != IGNORE_INDEX
    return float(np.mean(labels[valid] != truth[valid]))


def test_oracle_is_the_truth_and_x2_is_noisier(frame) -> None:
    seq, cam = frame
    oracle = seq.pseudo_labels(0, cam, "oracle")
    np.testing.assert_array_equal(oracle, cam.truth)
    assert oracle.dtype == np.uint8 and oracle is not cam.truth
    default = seq.pseudo_labels(0, cam)
    np.testing.assert_array_equal(default, pseudo_labels(seq.seed, 0, cam, seq.image_scale, "default"))
    x2 = seq.pseudo_labels(0, cam, "x2")
    d_default, d_x2 = _disagreement(default, cam.truth), _disagreement(x2, cam.truth)
    assert 0.02 < d_default < d_x2
    assert d_x2 > 1.4 * d_default
    with pytest.raises(ValueError, match="pseudo-label noise must be one of"):
        seq.pseudo_labels(0, cam, "x3")


def test_cli_noise_levels_and_pseudo_only_folders(tmp_path: Path, frame) -> None:
    root = tmp_path / "root"
    args = ["--out", str(root), "--seed", "3", "--frames", "1", *TINY]
    assert main([*args, "--pseudo-noise", "oracle"]) == 0
    seq_dir = root / "sequences" / "00"
    meta = json.loads((seq_dir / "synthetic.json").read_text())
    assert meta["pseudo_folders"] == {"pseudo_2d": "oracle"}
    oracle = read_label_png(seq_dir / "pseudo_2d" / "000000.png")
    assert main([*args, "--pseudo-noise", "x2", "--pseudo-only"]) == 0
    x2 = read_label_png(seq_dir / "pseudo_2d_x2" / "000000.png")
    assert x2.shape == oracle.shape and _disagreement(x2, oracle) > 0.02
    # the same sequence (seed 3, one frame, same image size) written again as an oracle folder: the same labels
    seq, _ = frame
    write_pseudo_folder(root, seq, "00", "oracle", "truth", progress=False)
    np.testing.assert_array_equal(read_label_png(seq_dir / "truth" / "000000.png"), oracle)
    meta = json.loads((seq_dir / "synthetic.json").read_text())
    assert meta["pseudo_folders"] == {"pseudo_2d": "oracle", "pseudo_2d_x2": "x2", "truth": "oracle"}
    with pytest.raises(FileNotFoundError, match="synthetic.json not found"):
        write_pseudo_folder(tmp_path / "none", seq, "00", "x2", "p")
    with pytest.raises(ValueError, match="plain folder name"):
        write_pseudo_folder(root, seq, "00", "x2", "voxels")
    bad = [
        ["--out", str(root), "--seed", "4", "--frames", "1", *TINY, "--pseudo-only"],  # written with another seed
        [*args, "--pseudo-dir", "x"],  # --pseudo-dir without --pseudo-only
        [*args, "--pseudo-noise", "x3"],
    ]
    for argv in bad:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
