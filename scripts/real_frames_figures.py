"""Figures and tables of ``docs/real_frames.md``: each real frame's camera image, the real segmenter's pseudo
labels, and the prediction (perspective + bird's-eye view) before adaptation and after it, by the adapted model of
the fold that held the frame out.

    python scripts/real_frames_figures.py --data ../shared/real/kitti/training --segmenter-model deeplab.tflite
        --folds runs/adapt/fold0 runs/adapt/fold1 runs/adapt/fold2 --out docs/img/real_frames

Each fold folder is an ``occle-adapt`` run (``adapt.json``, ``model.pt``, ``consistency_{before,after}.json``).
Prints the per-frame consistency table before / after (markdown) and the pooled row of each fold.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from occle_core.consistency import ConsistencyReport, consistency_frame
from occle_core.data.factory import build_label_free
from occle_core.predictor import Predictor, default_checkpoint
from occle_core.pseudo.align import load_label_map
from occle_core.pseudo.tflite_segmenter import TFLiteSegmenter
from occle_core.render import render_bev, render_perspective

WIDTH = 720  # figure width in pixels
COLUMNS = ("hit_recall", "free_false_occupancy", "ground_consistency", "observed_occupied_share", "vehicle_recall",
           "false_vehicle_rate", "false_vehicle_share")  # fmt: skip


def _fit(img: np.ndarray, width: int) -> Image.Image:
    im = Image.fromarray(img)
    return im.resize((width, max(1, round(im.height * width / im.width))), Image.BILINEAR)


def _row(left: np.ndarray, right: np.ndarray, caption: str) -> Image.Image:
    """Two panels side by side at the figure width (heights matched), a caption strip on top."""
    h = 200
    a = Image.fromarray(left).resize((round(left.shape[1] * h / left.shape[0]), h), Image.BILINEAR)
    b = Image.fromarray(right).resize((round(right.shape[1] * h / right.shape[0]), h), Image.NEAREST)
    scale = WIDTH / (a.width + b.width)
    a = a.resize((round(a.width * scale), round(h * scale)))
    b = b.resize((WIDTH - a.width, round(h * scale)), Image.NEAREST)
    out = Image.new("RGB", (WIDTH, a.height + 18), (22, 24, 30))
    ImageDraw.Draw(out).text((6, 3), caption, fill=(235, 235, 235))
    out.paste(a, (0, 18))
    out.paste(b, (a.width, 18))
    return out


def figure(frame, pseudo: np.ndarray, before: np.ndarray, after: np.ndarray, classes, caption: str) -> Image.Image:
    """The frame's figure: image | pseudo labels, then before and after (perspective | BEV)."""
    half = WIDTH // 2
    img, lab = _fit(frame.image, half), _fit(classes.colorize(pseudo), WIDTH - half)
    top = Image.new("RGB", (WIDTH, img.height + 18), (22, 24, 30))
    ImageDraw.Draw(top).text((6, 3), f"{caption}: camera | real DeepLab pseudo labels (training only)", fill="white")
    top.paste(img, (0, 18))
    top.paste(lab, (half, 18))
    rows = [top]
    for name, labels in (("before (shipped synthetic model)", before), ("after adaptation (held-out fold)", after)):
        rows.append(_row(render_perspective(labels, classes), render_bev(labels, classes, scale=2), name))
    out = Image.new("RGB", (WIDTH, sum(r.height for r in rows)))
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--segmenter-model", required=True)
    p.add_argument("--folds", nargs="+", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    reader = build_label_free("kitti_object", args.data)
    shipped = Predictor(default_checkpoint(), device="cpu")
    classes = shipped.classes
    segmenter = TFLiteSegmenter(args.segmenter_model, load_label_map("cityscapes", classes.name))
    fold_of, reports = {}, []
    for fold in map(Path, args.folds):
        summary = json.loads((fold / "adapt.json").read_text())
        adapted = Predictor(fold / "model.pt", device="cpu")
        for fid in summary["frames_reported"]:
            fold_of[fid] = adapted
        before = ConsistencyReport.from_json(json.loads((fold / "consistency_before.json").read_text()))
        after = ConsistencyReport.from_json(json.loads((fold / "consistency_after.json").read_text()))
        reports.append((fold.name, summary["step"], before, after))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(len(reader)):
        fr = consistency_frame(reader[i])
        if fr.frame_id not in fold_of:
            continue  # held out by no fold
        before = shipped.predict(fr.image, fr.points, fr.calib)
        after = fold_of[fr.frame_id].predict(fr.image, fr.points, fr.calib)
        fig = figure(fr, segmenter(fr.image, fr.frame_id), before, after, classes, fr.frame_id)
        fig.quantize(colors=96).save(out / f"{fr.frame_id}.png", optimize=True)
    print("| fold | frame | steps | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for name, step, before, after in reports:
        for b, a in zip([*before.frames, before.total], [*after.frames, after.total]):
            cells = []
            for c in COLUMNS:
                vb, va = b.metrics()[c], a.metrics()[c]
                cells.append("-" if vb is None or np.isnan(vb) else f"{100 * vb:.1f} -> {100 * va:.1f}")
            print(f"| {name} | {b.frame_id} | {step} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
