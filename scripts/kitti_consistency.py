"""Label-free consistency of a checkpoint on KITTI object frames (no voxel labels needed).

    python scripts/kitti_consistency.py --data ../shared/real/kitti/training [--checkpoint C] [--json OUT]

Reads ``image_2/NNNNNN.png``, ``velodyne/NNNNNN.bin`` (float32 x y z reflectance), ``calib/NNNNNN.txt`` (KITTI
object: P2, R0_rect, Tr_velo_to_cam) and, where present, ``label_2/NNNNNN.txt`` (vehicle boxes), predicts each
frame and prints the table of :mod:`occle_core.consistency`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from occle_core.consistency import consistency_report, read_kitti_object_boxes
from occle_core.geometry import Calib
from occle_core.predictor import Predictor


def read_object_calib(path: Path, image_size: tuple[int, int]) -> Calib:
    """Camera-2 calibration of a KITTI object ``calib/NNNNNN.txt``: pixels = P2 @ R0_rect @ Tr_velo_to_cam @ X."""
    values = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if rest.strip():
            values[key.strip()] = np.array(rest.split(), np.float64)
    for key, size in (("P2", 12), ("R0_rect", 9), ("Tr_velo_to_cam", 12)):
        if values.get(key, np.empty(0)).size != size:
            raise ValueError(f"{path}: key {key!r} must hold {size} values")
    R0 = np.eye(4)
    R0[:3, :3] = values["R0_rect"].reshape(3, 3)
    Tr = np.eye(4)
    Tr[:3] = values["Tr_velo_to_cam"].reshape(3, 4)
    return Calib(values["P2"].reshape(3, 4), R0 @ Tr, image_size)


def kitti_object_frames(root: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, Calib, np.ndarray | None]]:
    """(frame_id, image, points, calib, boxes or None) of every frame under ``root``."""
    for image_path in sorted((root / "image_2").glob("*.png")):
        name = image_path.stem
        image = np.asarray(Image.open(image_path).convert("RGB"))
        points = np.fromfile(root / "velodyne" / f"{name}.bin", np.float32).reshape(-1, 4)
        calib = read_object_calib(root / "calib" / f"{name}.txt", image.shape[:2])
        label = root / "label_2" / f"{name}.txt"
        boxes = read_kitti_object_boxes(label, calib.T_cam_lidar) if label.is_file() else None
        yield name, image, points, calib, boxes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="KITTI object split folder (holding image_2, velodyne, calib)")
    p.add_argument("--checkpoint", help="occle checkpoint (default: the shipped tiny model)")
    p.add_argument("--json", help="write the report as JSON here")
    args = p.parse_args(argv)
    report = consistency_report(Predictor(args.checkpoint, device="cpu"), kitti_object_frames(Path(args.data)))
    print(report.table())
    if args.json:
        report.write_json(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
