"""Reader (and writer) of Occ3D-nuScenes frames: occupancy labels, LiDAR sweep, front camera, calibration.

On-disk layout (one folder per frame; ``<token>`` may contain ``/``, e.g. ``scene-0061/<sample_token>``)::

    <root>/frames/<token>/
        labels.npz        Occ3D ground truth, as released: "semantics" (200, 200, 16) uint8 class ids 0..17
                          (17 = free), "mask_lidar" and "mask_camera" (200, 200, 16) uint8/bool
        lidar.pcd.bin     nuScenes LIDAR_TOP sweep: float32 records of 5 values (x, y, z, intensity, ring)
        cam_front.png     front camera image (or cam_front.jpg), RGB
        calib.json        calibration (or calib.yaml with the same keys), see below
        pseudo_2d.png     optional 2D pseudo labels: uint8 Occ3D classes, 255 = none, image size

``calib.json`` keys::

    {
      "image_size": [900, 1600],            # H, W of the image in pixels
      "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],   # camera intrinsics (3x3)
      "T_cam_lidar": [[...4 values...] x 4],        # LiDAR sensor frame -> camera frame (4x4, metres)
      "T_ego_lidar": [[...] x 4],           # optional: LiDAR sensor frame -> ego frame (the Occ3D grid frame);
                                            #   identity when absent
      "pose": [[...] x 4]                   # optional: ego frame -> world (4x4)
    }

The Occ3D grid lives in the ego frame (x forward, y left, z up; range [-40, 40] x [-40, 40] x [-1, 5.4] m at
0.4 m). The reader therefore returns the points in the ego frame (``T_ego_lidar`` applied) and a :class:`Calib`
whose ``T_cam_lidar`` maps that ego frame to the camera (``T_cam_lidar @ inv(T_ego_lidar)``), so that
``Sample.points``, ``Sample.calib`` and ``Sample.voxel_labels`` share one frame, as every other reader's do.

Masks: ``Sample.camera_mask = mask_camera`` (the official mIoU is computed under it) and, by default,
``Sample.invalid = ~mask_lidar`` (voxels no LiDAR ray observed; losses skip them, as SemanticKITTI's
``invalid``). ``invalid_from="camera"`` uses ``~mask_camera`` instead, ``"none"`` leaves ``invalid`` None.
``voxel_labels`` keep the released ``semantics`` unchanged (the masks are not burnt into them).
Intensities are multiplied by ``intensity_scale`` (default 1/255: nuScenes stores 0..255, SemanticKITTI 0..1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from torch.utils.data import Dataset

from occle_core.data.sample import Sample
from occle_core.geometry import OCC3D_GRID, Calib, VoxelGrid
from occle_core.labels import IGNORE_INDEX

OCC3D_NUM_CLASSES = 18
OCC3D_FREE = 17
LABELS_FILE = "labels.npz"
LIDAR_FILE = "lidar.pcd.bin"
IMAGE_STEM = "cam_front"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CALIB_FILES = ("calib.json", "calib.yaml", "calib.yml")
PSEUDO_FILE = "pseudo_2d.png"
PCD_FIELDS = 5  # x, y, z, intensity, ring


def read_occ3d_labels(
    path: str | Path, shape: tuple[int, int, int] = OCC3D_GRID.shape
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read an Occ3D ``labels.npz``.

    Returns:
        semantics (X, Y, Z) uint8 in 0..17 (255 tolerated as ignore), mask_lidar (X, Y, Z) bool,
        mask_camera (X, Y, Z) bool.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file and the key that is missing, mis-shaped or out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Occ3D labels file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zip / npy format errors of a damaged file
        raise ValueError(f"{path}: not a readable .npz archive ({exc})") from exc
    out = []
    for key in ("semantics", "mask_lidar", "mask_camera"):
        if key not in arrays:
            raise ValueError(
                f"{path}: missing array {key!r} (found {sorted(arrays)}; expected semantics, mask_lidar, mask_camera)"
            )
        a = arrays[key]
        if a.shape != tuple(shape):
            raise ValueError(f"{path}: array {key!r} has shape {a.shape}, expected {tuple(shape)}")
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{path}: array {key!r} has dtype {a.dtype}, expected an integer or bool type")
        out.append(a)
    sem = out[0]
    bad = (sem >= OCC3D_NUM_CLASSES) & (sem != IGNORE_INDEX) | (sem < 0)
    if bad.any():
        raise ValueError(
            f"{path}: 'semantics' holds {int(bad.sum())} values outside 0..{OCC3D_NUM_CLASSES - 1}"
            f" (e.g. {int(sem[bad].flat[0])})"
        )
    return sem.astype(np.uint8), out[1].astype(bool), out[2].astype(bool)


def read_pcd_bin(path: str | Path, fields: int = PCD_FIELDS) -> np.ndarray:
    """Read a nuScenes ``.pcd.bin`` sweep: (N, fields) float32 (x, y, z, intensity, ring).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the size is not a multiple of ``fields * 4`` bytes (a truncated file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LiDAR file not found: {path}")
    size = path.stat().st_size
    if size % (fields * 4):
        raise ValueError(
            f"{path}: {size} bytes is not a multiple of {fields * 4} ({fields} float32 per point); "
            f"the file is truncated or has another record layout"
        )
    return np.fromfile(path, np.float32).reshape(-1, fields)


def _matrix(doc: dict, key: str, shape: tuple[int, int], path: Path, required: bool = True) -> np.ndarray | None:
    if key not in doc:
        if required:
            raise ValueError(f"{path}: missing key {key!r} (a {shape[0]}x{shape[1]} matrix)")
        return None
    try:
        m = np.asarray(doc[key], np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: key {key!r} is not a numeric {shape[0]}x{shape[1]} matrix") from exc
    if m.size == shape[0] * shape[1] and m.ndim == 1:
        m = m.reshape(shape)
    if m.shape != shape:
        raise ValueError(f"{path}: key {key!r} has shape {m.shape}, expected {shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{path}: key {key!r} holds non-finite values")
    return m


def read_occ3d_calib(path: str | Path) -> dict:
    """Read a frame's ``calib.json`` / ``calib.yaml``.

    Returns:
        ``{"K": (3, 3), "T_cam_lidar": (4, 4), "T_ego_lidar": (4, 4), "image_size": (H, W),
        "pose": (4, 4) or None}`` (float64 arrays; ``T_ego_lidar`` is the identity when absent).

    Raises:
        FileNotFoundError / ValueError naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file not found: {path}")
    try:
        text = path.read_text()
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse calibration ({exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: calibration must be a mapping with keys image_size, K, T_cam_lidar")
    if "image_size" not in doc:
        raise ValueError(f"{path}: missing key 'image_size' ([H, W] in pixels)")
    size = doc["image_size"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{path}: key 'image_size' must be [H, W] positive integers, got {size!r}")
    T_ego = _matrix(doc, "T_ego_lidar", (4, 4), path, required=False)
    return {
        "K": _matrix(doc, "K", (3, 3), path),
        "T_cam_lidar": _matrix(doc, "T_cam_lidar", (4, 4), path),
        "T_ego_lidar": np.eye(4) if T_ego is None else T_ego,
        "image_size": (int(size[0]), int(size[1])),
        "pose": _matrix(doc, "pose", (4, 4), path, required=False),
    }


def _find_one(frame_dir: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (frame_dir / name).is_file():
            return frame_dir / name
    raise FileNotFoundError(f"{what} not found in {frame_dir} (looked for {', '.join(names)})")


def read_split_file(path: str | Path) -> list[str]:
    """Frame tokens listed one per line in ``path`` (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    tokens = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [t for t in tokens if t]


def discover_tokens(root: str | Path) -> list[str]:
    """Every frame token under ``<root>/frames`` (folders holding a ``calib.json``/``calib.yaml``), sorted."""
    frames = Path(root) / "frames"
    if not frames.is_dir():
        raise FileNotFoundError(f"Occ3D frames folder not found: {frames}")
    found = {p.parent for name in CALIB_FILES for p in frames.rglob(name)}
    return sorted(p.relative_to(frames).as_posix() for p in found)


class Occ3DDataset(Dataset):
    """Occ3D-nuScenes frames as :class:`Sample` objects (see the module docstring for the layout).

    Args:
        root: dataset root holding ``frames/``.
        split: a split file (one token per line), an explicit token list, or None for every frame found.
        grid: the label grid (Occ3D: 200 x 200 x 16 at 0.4 m).
        with_labels: read ``labels.npz`` (False for unlabelled inference data).
        invalid_from: ``"lidar"`` (``invalid = ~mask_lidar``), ``"camera"`` or ``"none"``.
        intensity_scale: factor applied to the LiDAR intensity column.
        with_pseudo: read ``pseudo_2d.png`` when present.

    Raises:
        FileNotFoundError: naming the tokens of the split that have no frame folder.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Path | Sequence[str] | None = None,
        grid: VoxelGrid = OCC3D_GRID,
        with_labels: bool = True,
        invalid_from: str = "lidar",
        intensity_scale: float = 1.0 / 255.0,
        with_pseudo: bool = True,
    ) -> None:
        self.root = Path(root)
        if invalid_from not in ("lidar", "camera", "none"):
            raise ValueError(f"invalid_from must be 'lidar', 'camera' or 'none', got {invalid_from!r}")
        if split is None:
            tokens = discover_tokens(self.root)
        elif isinstance(split, str | Path):
            tokens = read_split_file(split)
        else:
            tokens = [str(t) for t in split]
        if not tokens:
            raise ValueError(f"no Occ3D frames selected under {self.root} (split {split!r} is empty)")
        missing = [t for t in tokens if not (self.root / "frames" / t).is_dir()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"{len(missing)} of {len(tokens)} split tokens have no frame folder under {self.root / 'frames'}: "
                f"{shown}"
            )
        self.tokens = tokens
        self.grid = grid
        self.with_labels = with_labels
        self.invalid_from = invalid_from
        self.intensity_scale = float(intensity_scale)
        self.with_pseudo = with_pseudo

    def __len__(self) -> int:
        return len(self.tokens)

    def frame_dir(self, index: int) -> Path:
        """Folder of frame ``index``."""
        return self.root / "frames" / self.tokens[index]

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame index {index} out of range for {len(self)} frames")
        token = self.tokens[index]
        d = self.frame_dir(index)
        cal = read_occ3d_calib(_find_one(d, CALIB_FILES, "calibration file"))
        image_path = _find_one(d, [IMAGE_STEM + s for s in IMAGE_SUFFIXES], "camera image")
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
        if image.shape[:2] != cal["image_size"]:
            raise ValueError(
                f"{image_path}: image is {image.shape[:2]} (H, W) but the calibration says "
                f"image_size {cal['image_size']}"
            )
        raw = read_pcd_bin(d / LIDAR_FILE)  # (N, 5) sensor frame
        T_ego = cal["T_ego_lidar"]
        xyz = raw[:, :3].astype(np.float64) @ T_ego[:3, :3].T + T_ego[:3, 3]  # (N, 3) ego frame
        points = np.empty((len(raw), 4), np.float32)
        points[:, :3] = xyz
        points[:, 3] = raw[:, 3] * self.intensity_scale
        P = np.hstack([cal["K"], np.zeros((3, 1))])
        calib = Calib(P, cal["T_cam_lidar"] @ np.linalg.inv(T_ego), cal["image_size"])

        sample = Sample.single(token, image, points, calib, name="CAM_FRONT", grid_frame="ego", pose=cal["pose"])
        if self.with_labels:
            sem, mask_lidar, mask_camera = read_occ3d_labels(d / LABELS_FILE, self.grid.shape)
            sample.voxel_labels = sem
            sample.camera_mask = mask_camera
            if self.invalid_from == "lidar":
                sample.invalid = ~mask_lidar
            elif self.invalid_from == "camera":
                sample.invalid = ~mask_camera
        if self.with_pseudo and (d / PSEUDO_FILE).is_file():
            with Image.open(d / PSEUDO_FILE) as im:
                if im.mode not in ("L", "P"):
                    raise ValueError(
                        f"{d / PSEUDO_FILE}: pseudo labels must be a single-channel 8-bit PNG, got mode {im.mode}"
                    )
                pseudo = np.asarray(im, np.uint8)
            if pseudo.shape != image.shape[:2]:
                raise ValueError(f"{d / PSEUDO_FILE}: shape {pseudo.shape} differs from the image {image.shape[:2]}")
            sample.cameras[0].pseudo2d = pseudo
        return sample


def write_occ3d_frame(
    root: str | Path,
    token: str,
    image: np.ndarray,
    points: np.ndarray,
    K: np.ndarray,
    T_cam_lidar: np.ndarray,
    semantics: np.ndarray | None = None,
    mask_lidar: np.ndarray | None = None,
    mask_camera: np.ndarray | None = None,
    T_ego_lidar: np.ndarray | None = None,
    pose: np.ndarray | None = None,
    pseudo2d: np.ndarray | None = None,
    image_format: str = "png",
) -> Path:
    """Write one frame in the layout :class:`Occ3DDataset` reads; returns the frame folder.

    Args:
        image: (H, W, 3) uint8 RGB.
        points: (N, 5) float32 (x, y, z, intensity, ring) in the LiDAR sensor frame, or (N, 4) (ring = 0).
        K: (3, 3) intrinsics; T_cam_lidar, T_ego_lidar, pose: (4, 4).
        semantics, mask_lidar, mask_camera: (200, 200, 16) arrays (labels.npz is skipped if semantics is None;
            missing masks are written as all ones).
        pseudo2d: optional (H, W) uint8 pseudo labels.
        image_format: ``"png"`` or ``"jpg"``.
    """
    d = Path(root) / "frames" / token
    d.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    save_kw = {"quality": 95} if image_format == "jpg" else {}
    Image.fromarray(image).save(d / f"{IMAGE_STEM}.{image_format}", **save_kw)
    pts = np.asarray(points, np.float32)
    if pts.ndim != 2 or pts.shape[1] not in (4, PCD_FIELDS):
        raise ValueError(f"points must be (N, 4) or (N, 5), got {pts.shape}")
    if pts.shape[1] == 4:
        pts = np.hstack([pts, np.zeros((len(pts), 1), np.float32)])
    np.ascontiguousarray(pts).tofile(d / LIDAR_FILE)
    doc = {
        "image_size": [int(image.shape[0]), int(image.shape[1])],
        "K": np.asarray(K, np.float64).tolist(),
        "T_cam_lidar": np.asarray(T_cam_lidar, np.float64).tolist(),
    }
    if T_ego_lidar is not None:
        doc["T_ego_lidar"] = np.asarray(T_ego_lidar, np.float64).tolist()
    if pose is not None:
        doc["pose"] = np.asarray(pose, np.float64).tolist()
    (d / "calib.json").write_text(json.dumps(doc, indent=1))
    if semantics is not None:
        sem = np.asarray(semantics, np.uint8)
        ones = np.ones(sem.shape, np.uint8)
        np.savez_compressed(
            d / LABELS_FILE,
            semantics=sem,
            mask_lidar=ones if mask_lidar is None else np.asarray(mask_lidar, np.uint8),
            mask_camera=ones if mask_camera is None else np.asarray(mask_camera, np.uint8),
        )
    if pseudo2d is not None:
        p = np.asarray(pseudo2d, np.uint8)
        if p.shape != image.shape[:2]:
            raise ValueError(f"pseudo2d shape {p.shape} differs from the image {image.shape[:2]}")
        Image.fromarray(p).save(d / PSEUDO_FILE)  # 2D uint8 -> mode "L"
    return d
