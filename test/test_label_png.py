"""The one label-PNG reader / writer: grey and palette PNGs read as their class ids, other modes refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from occle_core.data.label_png import read_label_png, write_label_png

LABELS = np.array([[0, 5, 255], [19, 9, 1]], np.uint8)


def test_grey_png_round_trip(tmp_path):
    path = write_label_png(tmp_path / "deep" / "l.png", LABELS)  # parent folders are created
    with Image.open(path) as im:
        assert im.mode == "L"
    out = read_label_png(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, LABELS)


def test_palette_png_reads_as_its_indices_not_grey_levels(tmp_path):
    im = Image.fromarray(LABELS, "P")
    im.putpalette(list(range(255, -1, -1)) * 3)  # a palette whose grey levels differ from the indices
    im.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P" and not np.array_equal(np.asarray(check.convert("L")), LABELS)
    np.testing.assert_array_equal(read_label_png(tmp_path / "p.png"), LABELS)


def test_rgb_and_missing_files_are_refused(tmp_path):
    Image.fromarray(np.zeros((2, 3, 3), np.uint8), "RGB").save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: label image mode 'RGB'"):
        read_label_png(tmp_path / "rgb.png")
    with pytest.raises(FileNotFoundError, match="label image not found"):
        read_label_png(tmp_path / "none.png")
    with pytest.raises(ValueError, match=r"\(H, W\) uint8"):
        write_label_png(tmp_path / "x.png", LABELS.astype(np.int32))
