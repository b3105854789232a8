"""Reader of Occ3D-nuScenes as released: voxel ground truth beside a nuScenes v1.0 root.

Layout (the Occ3D root usually is the nuScenes root itself, ``gts/`` linked into it)::

    <occ3d root>/gts/<scene name>/<sample token>/labels.npz
        "semantics"    (200, 200, 16) uint8 class ids 0..16, 17 = free
        "mask_lidar"   (200, 200, 16) uint8 0/1: voxels observed by the accumulated LiDAR
        "mask_camera"  (200, 200, 16) uint8 0/1: voxels visible from the cameras (the official mIoU uses it)
    <occ3d root>/annotations.json   (optional) {"train_split": [scene names], "val_split": [...],
        "scene_infos": {scene: {sample token: {"timestamp", "camera_sensor", "ego_pose", "gt_path", "prev",
        "next"}}}}
    <occ3d root>/pseudo_2d/<scene name>/<sample token>/<CHANNEL>.png   (occle, optional) 2D pseudo labels,
        uint8 Occ3D classes, 255 = none, one per camera
    <nuscenes root>/v1.0-*/, samples/, sweeps/    read by :mod:`occle_core.data.nuscenes`

The grid is the ego frame of the LIDAR_TOP key frame (x forward, y left, z up; [-40, 40] x [-40, 40] x [-1, 5.4] m
at 0.4 m), the frame in which :class:`~occle_core.data.nuscenes.NuScenesTables` returns points and cameras; the
LiDAR rays start at the LIDAR_TOP mount in it, ``Sample.extras["lidar_origin"]`` (about (0.94, 0, 1.84) m).

Masks: ``Sample.camera_mask = mask_camera`` and, by default, ``Sample.invalid = ~mask_lidar`` (voxels no LiDAR ray
observed; losses skip them). ``invalid_from="camera"`` uses ``~mask_camera``, ``"none"`` leaves ``invalid`` None.
``voxel_labels`` keep the released ``semantics`` unchanged.

Splits: ``"train"`` / ``"val"`` come from ``annotations.json`` when present, else from the official nuScenes scene
split of the version (v1.0-mini: mini_train / mini_val); frames are ``<scene name>/<sample token>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from occle_core.data.label_png import read_label_png
from occle_core.data.nuscenes import CAMERAS, NuScenesTables, read_json, split_scenes
from occle_core.data.sample import Sample
from occle_core.geometry import OCC3D_GRID, VoxelGrid
from occle_core.labels import IGNORE_INDEX

OCC3D_NUM_CLASSES = 18
OCC3D_FREE = 17
LABELS_FILE = "labels.npz"
ANNOTATIONS_FILE = "annotations.json"
PSEUDO_DIR = "pseudo_2d"


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


def read_split_file(path: str | Path) -> list[str]:
    """Frame tokens listed one per line in ``path`` (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    tokens = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [t for t in tokens if t]


def discover_tokens(root: str | Path) -> list[str]:
    """Every ``<scene name>/<sample token>`` with a ``labels.npz`` under ``<root>/gts``, sorted."""
    gts = Path(root) / "gts"
    if not gts.is_dir():
        raise FileNotFoundError(f"Occ3D gts folder not found: {gts}")
    return sorted(p.parent.relative_to(gts).as_posix() for p in gts.glob(f"*/*/{LABELS_FILE}"))


def read_annotations(path: str | Path) -> dict:
    """Occ3D ``annotations.json``: checked for ``train_split``, ``val_split`` (scene-name lists), ``scene_infos``.

    Raises:
        FileNotFoundError / ValueError: naming the file and the key.
    """
    path = Path(path)
    doc = read_json(path, "Occ3D annotations file")
    for key, kind in (("train_split", list), ("val_split", list), ("scene_infos", dict)):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), kind):
            raise ValueError(f"{path}: key {key!r} must be a JSON {'list' if kind is list else 'object'}")
    return doc


class Occ3DDataset(Dataset):
    """Occ3D-nuScenes frames: the nuScenes sample (six cameras, LiDAR in the ego frame) plus voxel labels and masks.

    Args:
        root: the Occ3D root holding ``gts/`` (and ``annotations.json`` when released with it).
        split: ``"train"`` / ``"val"`` (see the module docstring), a split file (one frame per line), a list of
            frames (``<scene>/<sample token>`` or bare sample tokens), or None for every frame under ``gts/``.
        grid: the label grid (Occ3D: 200 x 200 x 16 at 0.4 m).
        with_labels: read ``labels.npz`` (False for unlabelled frames, e.g. v1.0-test).
        invalid_from: ``"lidar"`` (``invalid = ~mask_lidar``), ``"camera"`` or ``"none"``.
        intensity_scale: factor applied to the LiDAR intensity (nuScenes stores 0..255).
        with_pseudo: read ``pseudo_2d/<scene>/<token>/<CHANNEL>.png`` when present.
        nuscenes_root: the nuScenes data root (default: ``root``); version: its table folder (default: found).
        sweeps: LiDAR sweeps per frame, the key frame included (points gain a time-lag column either way; the
            free-space rays of every sweep start at the key-frame mount, see ``NuScenesTables.sample``).

    Raises:
        FileNotFoundError: naming the frames of the split that have no ``labels.npz``.
        ValueError: an empty selection or a bad option.
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
        nuscenes_root: str | Path | None = None,
        version: str | None = None,
        sweeps: int = 1,
    ) -> None:
        self.root = Path(root)
        if invalid_from not in ("lidar", "camera", "none"):
            raise ValueError(f"invalid_from must be 'lidar', 'camera' or 'none', got {invalid_from!r}")
        self.tables = NuScenesTables(self.root if nuscenes_root is None else nuscenes_root, version)
        self.tokens = self._select(split)
        if not self.tokens:
            raise ValueError(f"no Occ3D frames selected under {self.root} (split {split!r} is empty)")
        if with_labels:
            missing = [t for t in self.tokens if not self.labels_path(t).is_file()]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise FileNotFoundError(
                    f"{len(missing)} of {len(self.tokens)} split frames have no {LABELS_FILE} under "
                    f"{self.root / 'gts'}: {shown}"
                )
        self.grid = grid
        self.with_labels = with_labels
        self.invalid_from = invalid_from
        self.intensity_scale = float(intensity_scale)
        self.with_pseudo = with_pseudo
        self.sweeps = int(sweeps)

    def _select(self, split: str | Path | Sequence[str] | None) -> list[str]:
        if split is None:
            return discover_tokens(self.root)
        if isinstance(split, str) and split in ("train", "val", "test") and not (self.root / split).is_file():
            ann = self.root / ANNOTATIONS_FILE
            if ann.is_file() and split != "test":
                scenes = read_annotations(ann)[f"{split}_split"]
            else:
                scenes = split_scenes(self.tables.version, split)
            scenes = [s for s in scenes if s in self.tables.scene_by_name]
            return [f"{s}/{t}" for s in scenes for t in self.tables.scene_samples(s)]
        entries = read_split_file(split) if isinstance(split, str | Path) else [str(t) for t in split]
        return [e if "/" in e else f"{self.tables.scene_name(e)}/{e}" for e in entries]

    def labels_path(self, frame: str) -> Path:
        """``gts/<scene>/<sample token>/labels.npz`` of a frame."""
        return self.root / "gts" / frame / LABELS_FILE

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame index {index} out of range for {len(self)} frames")
        frame = self.tokens[index]
        sample = self.tables.sample(frame.rpartition("/")[2], self.sweeps, CAMERAS, self.intensity_scale)
        if sample.frame_id != frame:
            raise ValueError(f"frame {frame}: its sample belongs to {sample.frame_id.partition('/')[0]} in the tables")
        if self.with_labels:
            sem, mask_lidar, mask_camera = read_occ3d_labels(self.labels_path(frame), self.grid.shape)
            sample.voxel_labels = sem
            sample.camera_mask = mask_camera
            if self.invalid_from == "lidar":
                sample.invalid = ~mask_lidar
            elif self.invalid_from == "camera":
                sample.invalid = ~mask_camera
        if self.with_pseudo:
            for view in sample.cameras:
                path = self.root / PSEUDO_DIR / frame / f"{view.name}.png"
                if path.is_file():
                    pseudo = read_label_png(path)
                    if pseudo.shape != view.image.shape[:2]:
                        raise ValueError(f"{path}: shape {pseudo.shape} differs from the image {view.image.shape[:2]}")
                    view.pseudo2d = pseudo
        return sample
