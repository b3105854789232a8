"""``occle-pseudo``: write 2D pseudo labels with a dataset-specific segmenter (optionally aligned with
open-vocabulary masks).

One image::

    occle-pseudo --segmenter deeplab-cityscapes --model deeplab.tflite --image IMG.png --out LABELS.png

A whole dataset, next to its images in the layout the readers use::

    occle-pseudo --segmenter deeplab-cityscapes --model deeplab.tflite --dataset semantic_kitti --data ROOT
        ROOT/sequences/SS/image_2/NNNNNN.png -> ROOT/sequences/SS/pseudo_2d/NNNNNN.png
        (``--label-dir pseudo_2d_deeplab``: into that folder instead, next to other pseudo-label sources)
    occle-pseudo ... --dataset kitti_object --data ROOT
        ROOT/{training,testing}/image_2/NNNNNN.png -> ROOT/{training,testing}/pseudo_2d/NNNNNN.png

Labels are 8-bit single-channel PNGs of the target classes (``--target``, 255 = none), or with ``--native`` the
segmenter's own class ids (Cityscapes trainIds 0..18).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from occle_core.data.label_png import write_label_png
from occle_core.labels import DATASETS, class_table
from occle_core.pseudo.align import AlignedLabeller, FileOpenVocabSegmenter, load_label_map
from occle_core.pseudo.labeller import PseudoLabeller
from occle_core.pseudo.tflite_segmenter import TFLiteSegmenter, class_shares

#: segmenter name -> the source label space of its classes in ``config/pseudo_label_map.yaml``
SEGMENTERS = {"deeplab-cityscapes": "cityscapes"}
#: dataset layout -> (glob of images under the root, image folder name, label folder name)
LAYOUTS = {
    "semantic_kitti": ("sequences/*/image_2/*.png", "image_2", "pseudo_2d"),
    "kitti_object": ("*/image_2/*.png", "image_2", "pseudo_2d"),
}


def label_path(image_path: Path, image_dir: str, label_dir: str) -> Path:
    """``.../<image_dir>/NAME.ext`` -> ``.../<label_dir>/NAME.png``."""
    if image_path.parent.name != image_dir:
        raise ValueError(f"{image_path}: expected the image inside a folder named {image_dir!r}")
    return image_path.parent.parent / label_dir / f"{image_path.stem}.png"


def dataset_images(dataset: str, root: str | Path, label_dir: str | None = None) -> list[tuple[Path, Path]]:
    """(image, label) paths of every image of a dataset root, sorted; labels in ``label_dir`` (default: the
    layout's ``pseudo_2d``) next to the image folder.

    Raises:
        FileNotFoundError: the root is missing or holds no images in the layout.
        ValueError: ``label_dir`` is not a plain folder name or is the image folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    pattern, image_dir, default_dir = LAYOUTS[dataset]
    label_dir = label_dir or default_dir
    if Path(label_dir).name != label_dir or label_dir == image_dir:
        raise ValueError(f"--label-dir must be a folder name other than {image_dir!r}, got {label_dir!r}")
    images = sorted(root.glob(pattern))
    if not images:
        raise FileNotFoundError(f"no images {root / pattern} ({dataset} layout)")
    return [(p, label_path(p, image_dir, label_dir)) for p in images]


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def build_labeller(args: argparse.Namespace) -> PseudoLabeller:
    """The labeller the arguments ask for: the segmenter, aligned with open-vocabulary masks when given."""
    label_map = load_label_map(SEGMENTERS[args.segmenter], args.target)
    segmenter = TFLiteSegmenter(
        args.model, None if args.native else label_map, scale=args.scale, num_threads=args.threads
    )
    if args.native or not (args.open_vocab_masks or args.clipseg):
        return segmenter
    if args.clipseg:
        from occle_core.pseudo.hf_adapter import HFCLIPSegSegmenter

        open_vocab = HFCLIPSegSegmenter(args.clipseg, device=args.device)
    else:
        open_vocab = FileOpenVocabSegmenter(args.open_vocab_masks)
    return AlignedLabeller(segmenter, open_vocab, label_map, min_score=args.min_score)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``occle-pseudo``."""
    p = argparse.ArgumentParser(prog="occle-pseudo", description=__doc__.split("\n\n")[0])
    p.add_argument("--segmenter", required=True, choices=sorted(SEGMENTERS), help="which segmenter --model is")
    p.add_argument("--model", required=True, help="the segmenter's model file (.tflite)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="label one image (needs --out)")
    src.add_argument("--dataset", choices=sorted(LAYOUTS), help="label every image of a dataset (needs --data)")
    p.add_argument("--out", help="output PNG for --image")
    p.add_argument("--data", help="dataset root for --dataset")
    p.add_argument("--label-dir", help="label folder name next to the image folder for --dataset (default pseudo_2d)")
    p.add_argument("--target", default="semantic_kitti", choices=sorted(DATASETS), help="target class table")
    p.add_argument("--native", action="store_true", help="write the segmenter's own class ids, not target classes")
    p.add_argument("--scale", type=float, help="image resize factor before tiling (default: smallest covering one)")
    p.add_argument("--threads", type=int, help="interpreter threads")
    p.add_argument("--skip-existing", action="store_true", help="keep label files that already exist")
    ov = p.add_mutually_exclusive_group()
    ov.add_argument("--open-vocab-masks", help="root of stored open-vocabulary masks (sequences/SS/open_vocab/)")
    ov.add_argument("--clipseg", help="local CLIPSeg model folder for open-vocabulary masks")
    p.add_argument("--min-score", type=float, default=0.5, help="open-vocabulary score threshold")
    p.add_argument("--device", default="auto", help="device of the CLIPSeg model")
    return p


def frame_id(image: Path) -> str:
    """``ROOT/sequences/08/image_2/000120.png`` -> ``"08/000120"`` (the id the file-backed labellers read)."""
    return f"{image.parent.parent.name}/{image.stem}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``occle-pseudo``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image and not args.out:
        parser.error("--image needs --out")
    if args.dataset and not args.data:
        parser.error("--dataset needs --data")
    if args.label_dir and not args.dataset:
        parser.error("--label-dir needs --dataset")
    try:
        if args.image:
            jobs = [(Path(args.image), Path(args.out))]
            read_rgb(jobs[0][0])  # a missing image fails before the model loads
        else:
            jobs = dataset_images(args.dataset, args.data, args.label_dir)
        labeller = build_labeller(args)
    except (FileNotFoundError, ImportError, ValueError) as exc:
        print(f"occle-pseudo: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    start, done, counts = time.perf_counter(), 0, np.zeros(256, np.int64)
    for image_path, out_path in tqdm(jobs, desc="pseudo labels", unit="img", disable=len(jobs) == 1):
        if args.skip_existing and out_path.is_file():
            continue
        labels = labeller(read_rgb(image_path), frame_id(image_path))
        write_label_png(out_path, labels)
        counts += np.bincount(labels.ravel(), minlength=256)
        done += 1
    took = time.perf_counter() - start
    print(f"occle-pseudo: {done} label map(s) written, {took / max(done, 1):.2f} s per image")
    names = load_label_map(SEGMENTERS[args.segmenter], args.target).source_names if args.native else None
    shares = class_shares(counts, names or class_table(args.target).names)
    print("pixel shares: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()))
    return 0
