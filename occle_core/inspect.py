"""``occle-inspect``: read one frame of a real dataset the way training does, and show what was read.

Prints (and with ``--json`` writes) a summary: the point count and extent (every point the reader returns,
nothing cropped), each camera's image size, projection ``P``, grid -> camera transform ``T_cam_grid`` and
the number of points that land in its image (depth > 0.1 m, inside the image), and the frame's labels.
``--points-out`` saves the points exactly as read (``.npy``); ``--render`` draws every camera image with the
LiDAR points coloured by depth, and a bird's-eye view of the points with the voxel grid's box.

Frame ids: SemanticKITTI ``SS/NNNNNN``; KITTI object ``NNNNNN``; KITTI raw ``<date>_drive_DDDD_sync/<index>``
(``--data`` holds the date folders); nuScenes a sample token (``--data`` holds ``<version>/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from occle_core.data.sample import Sample
from occle_core.geometry import OCC3D_GRID, SEMANTIC_KITTI_GRID, VoxelGrid
from occle_core.labels import class_table
from occle_core.render import save_png

DATASETS = ("semantic_kitti", "kitti_raw", "kitti_object", "nuscenes")
MIN_DEPTH_M = 0.1  # Calib.project's visibility threshold
BEV_PX_PER_M = 8
BEV_MARGIN_M = 10.0
PANEL_WIDTH = 1242  # camera images are drawn at most this wide
DEPTH_RANGE_M = (2.0, 60.0)  # colour ramp of the drawn points


def load_sample(dataset: str, data: str | Path, frame: str, version: str | None = None) -> Sample:
    """Read one frame with the project's reader of ``dataset``.

    Raises:
        FileNotFoundError / ValueError / KeyError: a missing file or table, a wrong size, an unknown frame.
    """
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data folder not found: {root}")
    if dataset == "semantic_kitti":
        from occle_core.data.semantic_kitti import SemanticKittiDataset, sequence_dir

        seq, _, name = frame.partition("/")
        if not (seq and name.isdigit()):
            raise ValueError(f"a SemanticKITTI frame is SS/NNNNNN, got {frame!r}")
        seq_dir, name = sequence_dir(root, seq), f"{int(name):06d}"
        ds = SemanticKittiDataset(root, [seq], with_labels=(seq_dir / "voxels" / f"{name}.label").is_file())
        if (seq_dir.name, name) not in ds.frames:
            raise FileNotFoundError(f"file not found: {seq_dir / 'velodyne' / f'{name}.bin'}")
        return ds[ds.frames.index((seq_dir.name, name))]
    if dataset == "kitti_raw":
        from occle_core.data.kitti import KittiRawDataset

        drive, _, index = frame.partition("/")
        if not index:
            raise ValueError(f"a KITTI raw frame is <date>_drive_DDDD_sync/<index>, got {frame!r}")
        return KittiRawDataset(root, [drive]).sample(drive, index)
    if dataset == "kitti_object":
        from occle_core.data.kitti import KittiObjectDataset

        if not frame.isdigit():
            raise ValueError(f"a KITTI object frame is NNNNNN, got {frame!r}")
        name = f"{int(frame):06d}"
        found = [s for s in ("training", "testing") if (root / s / "velodyne" / f"{name}.bin").is_file()]
        return KittiObjectDataset(root, (found or ["training"])[0]).sample(name)
    if dataset == "nuscenes":
        try:
            from occle_core.data.nuscenes import NuScenesTables
        except ModuleNotFoundError as exc:
            raise FileNotFoundError(f"the nuScenes reader occle_core.data.nuscenes is not installed ({exc})") from exc
        return NuScenesTables(root, version).sample(frame)
    raise ValueError(f"--dataset must be one of {DATASETS}, got {dataset!r}")


def _labels(dataset: str, sample: Sample) -> dict:
    """A JSON summary of the frame's labels (voxel classes, objects with their point counts, or nothing)."""
    if sample.voxel_labels is not None:
        classes = class_table("semantic_kitti" if dataset == "semantic_kitti" else "occ3d_nuscenes")
        lab = sample.voxel_labels
        counts = np.bincount(lab.reshape(-1), minlength=256)
        return {
            "voxel_shape": list(lab.shape),
            "voxels": {classes.names[c]: int(counts[c]) for c in range(classes.num_classes) if counts[c]},
            "ignored": int(counts[classes.ignore_index]),
            "invalid": None if sample.invalid is None else int(sample.invalid.sum()),
        }
    objects = sample.extras.get("objects")
    if objects is not None:
        inside = objects.points_in_boxes(sample.points, sample.calib.T_cam_lidar).sum(0)  # (M,) points per box
        return {
            "objects": len(objects),
            "types": dict(Counter(objects.type)),
            "boxes": [
                {
                    "type": t,
                    "location": objects.location[i].round(3).tolist(),
                    "hwl": objects.dimensions[i].round(3).tolist(),
                    "rotation_y": round(float(objects.rotation_y[i]), 4),
                    "points": int(inside[i]),
                }
                for i, t in enumerate(objects.type)
            ],
        }
    return {}


def summarize(dataset: str, sample: Sample) -> dict:
    """The JSON document of one frame (see the module docstring)."""
    xyz = np.asarray(sample.points[:, :3], np.float64)
    finite = xyz[np.all(np.isfinite(xyz), axis=1)]
    cameras = []
    for cam in sample.cameras:
        _, _, visible = cam.calib.project(sample.points)
        cameras.append(
            {
                "name": cam.name,
                "image_size": list(cam.calib.image_size),
                "P": cam.calib.P.tolist(),
                "T_cam_grid": cam.calib.T_cam_lidar.tolist(),
                "points_in_view": int(visible.sum()),
            }
        )
    return {
        "dataset": dataset,
        "frame": sample.frame_id,
        "grid_frame": sample.grid_frame,
        "points": {
            "count": len(sample.points),
            "columns": int(sample.points.shape[1]),
            "xyz_min": finite.min(0).round(3).tolist() if len(finite) else None,
            "xyz_max": finite.max(0).round(3).tolist() if len(finite) else None,
        },
        "cameras": cameras,
        "pose": None if sample.pose is None else np.asarray(sample.pose).tolist(),
        "labels": _labels(dataset, sample),
    }


# --------------------------------------------------------------------------------------------------- drawing


def depth_colors(value: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(N,) values -> (N, 3) uint8 colours on a red (lo) - yellow - green - cyan - blue (hi) ramp."""
    t = np.clip((np.asarray(value, np.float64) - lo) / (hi - lo), 0.0, 1.0)
    hue = t * 4.0  # 0 red, 1 yellow, 2 green, 3 cyan, 4 blue
    r = np.clip(2.0 - hue, 0, 1)
    g = np.clip(np.minimum(hue, 4.0 - hue), 0, 1)
    b = np.clip(hue - 2.0, 0, 1)
    return (np.stack([r, g, b], -1) * 255 + 0.5).astype(np.uint8)


def _splat(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, key: np.ndarray, rgb: np.ndarray, r: int) -> None:
    """Draw (2r+1)^2 pixel dots in place; where dots overlap, the one with the smallest ``key`` wins."""
    h, w = img.shape[:2]
    d = np.arange(-r, r + 1)
    rr = (rows[:, None, None] + d[None, :, None]).repeat(len(d), 2).reshape(len(rows), -1)  # (N, D)
    cc = (cols[:, None, None] + d[None, None, :]).repeat(len(d), 1).reshape(len(rows), -1)
    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    pix = (rr * w + cc)[ok]
    k = np.broadcast_to(key[:, None], ok.shape)[ok]
    color = np.broadcast_to(np.arange(len(rows))[:, None], ok.shape)[ok]
    order = np.argsort(k, kind="stable")  # nearest first
    first_pix, first = np.unique(pix[order], return_index=True)  # each pixel's nearest dot
    img.reshape(-1, 3)[first_pix] = rgb[color[order][first]]


def draw_points_on_image(image: np.ndarray, uv: np.ndarray, depth: np.ndarray, radius: int = 1) -> np.ndarray:
    """The image with the points (uv (N, 2) pixels, depth (N,)) drawn as dots coloured by log depth."""
    img = np.array(image, np.uint8, copy=True)
    rows, cols = np.floor(uv[:, 1]).astype(np.int64), np.floor(uv[:, 0]).astype(np.int64)
    colors = depth_colors(np.log(np.maximum(depth, MIN_DEPTH_M)), *np.log(DEPTH_RANGE_M))
    _splat(img, rows, cols, depth, colors, radius)
    return img


def draw_bev(points: np.ndarray, grid: VoxelGrid, boxes: np.ndarray | None = None) -> np.ndarray:
    """Bird's-eye view (forward up, left on the left) of the points coloured by height, the grid box outlined.

    Args:
        points: (N, >=3) in the grid frame.
        boxes: optional (M, 4, 2) x, y footprints of labelled objects, drawn as outlines.
    """
    lo = np.asarray(grid.origin[:2]) - BEV_MARGIN_M
    hi = grid.upper[:2] + BEV_MARGIN_M
    h, w = np.ceil((hi - lo) * BEV_PX_PER_M).astype(int)  # image rows along -x, columns along -y
    img = np.full((h, w, 3), (22, 24, 30), np.uint8)

    def pixel(xy: np.ndarray) -> np.ndarray:  # (..., 2) metres -> (..., 2) int (row, column)
        return np.floor((hi - xy) * BEV_PX_PER_M).astype(np.int64)

    xyz = points[np.all(np.isfinite(points[:, :3]), axis=1), :3]
    rc = pixel(xyz[:, :2])
    z0, z1 = grid.origin[2], grid.upper[2]
    _splat(img, rc[:, 0], rc[:, 1], -xyz[:, 2], depth_colors(z1 - xyz[:, 2], 0.0, z1 - z0), 0)  # top point wins
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    (r0, c0), (r1, c1) = pixel(grid.upper[:2]), pixel(np.asarray(grid.origin[:2]))
    draw.rectangle((int(c0), int(r0), int(c1), int(r1)), outline=(255, 255, 255), width=2)
    er, ec = (int(v) for v in pixel(np.zeros(2)))
    draw.polygon([(ec, er - 8), (ec - 5, er + 6), (ec + 5, er + 6)], fill=(255, 255, 255))  # sensor, facing +x
    for box in [] if boxes is None else pixel(boxes):  # (4, 2) rows, columns
        draw.polygon([(int(c), int(r)) for r, c in box], outline=(255, 60, 200), width=2)
    return np.asarray(canvas)


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    canvas = Image.fromarray(np.pad(img, ((26, 0), (0, 0), (0, 0))))
    ImageDraw.Draw(canvas).text((6, 5), text, fill=(235, 235, 235), font=ImageFont.load_default())
    return np.asarray(canvas)


def _stack(panels: list[np.ndarray], axis: int) -> np.ndarray:
    """Panels side by side (axis 1) or one above the other (axis 0), centred, 4 pixels apart."""
    other = 1 - axis
    size = max(p.shape[other] for p in panels)
    padded = []
    for p in panels:
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[axis] = (0, 4)
        pad[other] = ((size - p.shape[other]) // 2, (size - p.shape[other] + 1) // 2)
        padded.append(np.pad(p, pad))
    out = np.concatenate(padded, axis=axis)
    return out[:-4] if axis == 0 else out[:, :-4]  # no gap after the last panel


def render_frame(sample: Sample, grid: VoxelGrid, path: str | Path) -> Path:
    """Every camera with the LiDAR points drawn on it (depth colours), then the bird's-eye view, as one PNG.

    One camera is drawn ``PANEL_WIDTH`` pixels wide at most; several cameras are tiled three to a row.
    """
    cols = 1 if len(sample.cameras) == 1 else 3
    tile_w = PANEL_WIDTH // cols
    tiles = []
    for cam in sample.cameras:
        uv, depth, visible = cam.calib.project(sample.points)
        img = draw_points_on_image(cam.image, uv[visible], depth[visible])
        if img.shape[1] > tile_w or cols > 1:
            size = (tile_w, round(img.shape[0] * tile_w / img.shape[1]))
            img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
        tiles.append(_caption(img, f"{cam.name}: {int(visible.sum())} points in view"))
    rows = [_stack(tiles[i : i + cols], axis=1) for i in range(0, len(tiles), cols)]
    lo, hi = DEPTH_RANGE_M
    cameras = _caption(
        _stack(rows, axis=0), f"{sample.frame_id}: LiDAR points by log depth, {lo:g} m red .. {hi:g} m blue"
    )
    objects = sample.extras.get("objects")
    boxes = None
    if objects is not None:
        keep = np.array([t != "DontCare" for t in objects.type], bool)
        boxes = objects.corners_lidar(sample.calib.T_cam_lidar)[keep, :4, :2]  # (M, 4, 2) bottom face
    title = f"bird's-eye view ({sample.grid_frame} frame): height top red .. bottom blue, voxel grid box white" + (
        ", labelled boxes magenta" if boxes is not None else ""
    )
    bev = _caption(draw_bev(sample.points, grid, boxes), title)
    return save_png(_stack([cameras, bev], axis=0), path)


# ------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="occle-inspect", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data", required=True, help="dataset root (see the frame ids above)")
    p.add_argument("--version", default=None, help="nuScenes version folder, e.g. v1.0-mini (default: the one found)")
    p.add_argument("--frame", required=True, help="SS/NNNNNN, NNNNNN, <drive>_sync/<index> or a sample token")
    p.add_argument("--json", default=None, help="write the summary here")
    p.add_argument("--points-out", default=None, help="save the (N, >=4) float32 points as read (.npy)")
    p.add_argument("--render", default=None, help="write a PNG: cameras with points, bird's-eye view")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``occle-inspect``: 0 on success, 2 with one line naming a missing file / table, a wrong size, a bad id."""
    args = build_parser().parse_args(argv)
    try:
        sample = load_sample(args.dataset, args.data, args.frame, args.version)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"occle-inspect: error: {message}", file=sys.stderr)
        return 2
    doc = summarize(args.dataset, sample)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    if args.points_out:
        Path(args.points_out).parent.mkdir(parents=True, exist_ok=True)
        np.save(args.points_out, sample.points)
    if args.render:
        grid = SEMANTIC_KITTI_GRID if sample.grid_frame == "lidar" else OCC3D_GRID
        render_frame(sample, grid, args.render)
        print(f"wrote {args.render}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
