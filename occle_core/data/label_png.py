"""The one reader / writer of 2D label images (pseudo labels ``pseudo_2d/*.png``, ``pseudo_2d.png``).

A label image is an 8-bit single-channel PNG whose pixel values are class ids (255 = none). Two PNG modes hold
that: ``"L"`` (grayscale: the values are the ids) and ``"P"`` (palette: the stored *indices* are the ids, the
palette only colours them for viewers). A palette PNG is therefore read as its indices, never converted to
grey levels. Anything else (RGB, RGBA, 16-bit, 1-bit) is refused with an error naming the file and the mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LABEL_MODES = ("L", "P")


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG -> (H, W) uint8 class ids (the indices of a palette PNG, the values of a grey one).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the image is not 8-bit single channel (mode ``L`` or ``P``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label image not found: {path}")
    with Image.open(path) as im:
        if im.mode not in LABEL_MODES:
            raise ValueError(
                f"{path}: label image mode {im.mode!r}, expected an 8-bit single-channel PNG "
                f"(mode 'L' or palette 'P') whose values are class ids"
            )
        return np.array(im, np.uint8)  # (H, W); for 'P' the palette indices


def write_label_png(path: str | Path, labels: np.ndarray) -> Path:
    """Write (H, W) uint8 class ids as a grayscale (mode ``L``) PNG, parent folders created; returns the path."""
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.dtype != np.uint8:
        raise ValueError(f"label image must be (H, W) uint8, got shape {lab.shape} dtype {lab.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(lab, "L").save(path, format="PNG", compress_level=1)
    return path
