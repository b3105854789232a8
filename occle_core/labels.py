"""Class tables: names, colours and learning maps of SemanticKITTI (20 classes) and Occ3D (18).

The tables are read from ``config/<dataset>.yaml`` so that a user can inspect or adapt them without
touching code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
import yaml

from occle_core.resources import config_path

IGNORE_INDEX = 255
DATASETS = {"semantic_kitti": "semantic_kitti.yaml", "occ3d_nuscenes": "occ3d_nuscenes.yaml"}


@dataclass(frozen=True)
class ClassTable:
    """The classes of one dataset.

    Attributes:
        name: dataset key (``semantic_kitti`` or ``occ3d_nuscenes``).
        names: class names, index = learning class id.
        colors: (K, 3) uint8 RGB colour per class.
        empty_index: the class that means "free space" (0 in SemanticKITTI, 17 in Occ3D).
        ignore_index: label value ignored by losses and metrics (255).
        learning_lut: (65536,) uint8 map raw label id -> learning class (SemanticKITTI only), else None.
        learning_map_inv: (K,) raw id representing each learning class, or None.
        absent_iou_zero: mIoU rule for a class absent from both truth and prediction: True counts its IoU
            as 0 over all semantic classes (SemanticKITTI's ``evaluate_completion.py``), False leaves it out
            of the mean (Occ3D's ``nanmean``).
    """

    name: str
    names: tuple[str, ...]
    colors: np.ndarray
    empty_index: int
    ignore_index: int = IGNORE_INDEX
    learning_lut: np.ndarray | None = field(default=None, compare=False)
    learning_map_inv: np.ndarray | None = field(default=None, compare=False)
    absent_iou_zero: bool = False

    @property
    def num_classes(self) -> int:
        """Number of classes K, free/empty included."""
        return len(self.names)

    @property
    def semantic_classes(self) -> list[int]:
        """The classes that enter mIoU: every class but the empty/free one."""
        return [c for c in range(self.num_classes) if c != self.empty_index]

    def map_raw(self, raw: np.ndarray) -> np.ndarray:
        """Map raw label ids (any int array; upper 16 instance bits are dropped) to learning classes."""
        if self.learning_lut is None:
            raise ValueError(f"class table {self.name!r} has no raw learning map")
        return self.learning_lut[np.asarray(raw).astype(np.uint32) & 0xFFFF]

    def colorize(self, labels: np.ndarray, ignore_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        """(…) int labels -> (…, 3) uint8 RGB; ignored/out-of-range labels get ``ignore_color``."""
        lut = np.zeros((256, 3), np.uint8)
        lut[:] = ignore_color
        lut[: self.num_classes] = self.colors
        return lut[np.asarray(labels).astype(np.uint8)]


def _load_semantic_kitti(doc: dict) -> ClassTable:
    """The SemanticKITTI table; raw ids are mapped by the completion rule of ``evaluate_completion.py``.

    Voxel labels distinguish empty from unlabelled: only raw 0 stays empty (0); every other raw id the
    learning map sends to 0 (outlier 1, other-structure 52, other-object 99) and every id it does not list
    becomes ignored (255), like the official ``remap_lut[remap_lut == 0] = 255; remap_lut[0] = 0``.
    """
    lut = np.full(1 << 16, IGNORE_INDEX, np.uint8)
    for raw, learn in doc["learning_map"].items():
        lut[int(raw)] = int(learn)
    lut[lut == 0] = IGNORE_INDEX
    lut[0] = 0
    inv = np.asarray(doc["learning_map_inv"], np.int64)
    colors = np.asarray([doc["color_map"][int(r)] for r in inv], np.uint8)
    return ClassTable(
        name=doc["name"],
        names=tuple(doc["classes"]),
        colors=colors,
        empty_index=int(doc["empty_index"]),
        ignore_index=int(doc["ignore_index"]),
        learning_lut=lut,
        learning_map_inv=inv,
        absent_iou_zero=bool(doc["absent_iou_zero"]),
    )


def _load_occ3d(doc: dict) -> ClassTable:
    return ClassTable(
        name=doc["name"],
        names=tuple(doc["classes"]),
        colors=np.asarray(doc["colors"], np.uint8),
        empty_index=int(doc["empty_index"]),
        ignore_index=int(doc["ignore_index"]),
        absent_iou_zero=bool(doc.get("absent_iou_zero", False)),
    )


@cache
def class_table(dataset: str) -> ClassTable:
    """The class table of ``dataset`` (``semantic_kitti`` or ``occ3d_nuscenes``)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    with open(config_path(DATASETS[dataset])) as f:
        doc = yaml.safe_load(f)
    return _load_semantic_kitti(doc) if dataset == "semantic_kitti" else _load_occ3d(doc)


def raw_color_lut(dataset: str = "semantic_kitti") -> dict[int, tuple[int, int, int]]:
    """RGB colour of every raw SemanticKITTI label id."""
    with open(config_path(DATASETS[dataset])) as f:
        doc = yaml.safe_load(f)
    return {int(k): tuple(v) for k, v in doc["color_map"].items()}
