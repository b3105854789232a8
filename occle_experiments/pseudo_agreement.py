"""How well a 2D pseudo-label source agrees with the true 2D labels of the synthetic scenes.

The truth is a folder written by ``occle-synth --pseudo-noise oracle --pseudo-only`` (the rendered per-pixel
learning classes); a source is any other label folder of the same sequences (``pseudo_2d`` = the noise model,
``pseudo_2d_x2``, ``pseudo_2d_deeplab`` = the real segmenter). Scored on the pixels the truth labels (sky and
misses, 255, left out), confusion summed over every frame:

- pixel accuracy: share of those pixels whose source label equals the truth (a source's 255 = "no label" counts
  as wrong);
- coverage: share of them the source labels at all (not 255);
- mIoU over the present classes: mean IoU over the classes with truth pixels, IoU = TP / (TP + FP + FN).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from occle_core.data.label_png import read_label_png
from occle_core.labels import IGNORE_INDEX, class_table


def label_pairs(root: str | Path, truth: str, source: str, sequences: Sequence[str] | None = None) -> list[tuple]:
    """(truth PNG, source PNG) of every frame of ``sequences`` (default: all) that has both, sorted.

    Raises:
        FileNotFoundError: no frame has both folders' labels.
    """
    seq_root = Path(root) / "sequences"
    seqs = [seq_root / f"{int(s):02d}" for s in sequences] if sequences else sorted(seq_root.glob("*"))
    pairs = [
        (t, d / source / t.name)
        for d in seqs
        for t in sorted((d / truth).glob("*.png"))
        if (d / source / t.name).is_file()
    ]
    if not pairs:
        raise FileNotFoundError(f"no frame under {seq_root} has labels in both {truth}/ and {source}/")
    return pairs


def agreement(pairs: Sequence[tuple], dataset: str = "semantic_kitti") -> dict[str, Any]:
    """Pixel accuracy, coverage and present-class mIoU (fractions) of the source labels of ``pairs``.

    Returns:
        ``{"frames", "pixels", "pixel_accuracy", "coverage", "miou_present", "classes_present", "per_class"}``,
        ``per_class`` = class name -> IoU for the present classes.
    """
    classes = class_table(dataset)
    confusion = np.zeros((256, 256), np.int64)  # [truth, source]
    for truth_path, source_path in pairs:
        truth, source = read_label_png(truth_path), read_label_png(source_path)
        if truth.shape != source.shape:
            raise ValueError(f"{source_path}: shape {source.shape}, expected the truth's {truth.shape}")
        keep = truth != IGNORE_INDEX
        idx = truth[keep].astype(np.int64) * 256 + source[keep]
        confusion += np.bincount(idx, minlength=256 * 256).reshape(256, 256)
    n = classes.num_classes
    tp = np.diag(confusion)[:n].astype(np.float64)
    truth_px = confusion[:n].sum(axis=1)
    source_px = confusion[:, :n].sum(axis=0)
    present = [c for c in range(n) if truth_px[c] > 0 and c != classes.empty_index]
    iou = {classes.names[c]: float(tp[c] / (truth_px[c] + source_px[c] - tp[c])) for c in present}
    pixels = int(confusion.sum())
    return {
        "frames": len(pairs),
        "pixels": pixels,
        "pixel_accuracy": float(tp.sum() / max(pixels, 1)),
        "coverage": float(1.0 - confusion[:, IGNORE_INDEX].sum() / max(pixels, 1)),
        "miou_present": float(np.mean(list(iou.values()))) if iou else float("nan"),
        "classes_present": len(present),
        "per_class": iou,
    }
