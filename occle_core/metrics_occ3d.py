"""Occ3D-nuScenes mIoU by the official rule.

One 18 x 18 confusion matrix (classes 0..16 and free = 17) is accumulated over every frame on the voxels of one
visibility mask: ``mask_camera`` (the benchmark's default: "only ``mask_camera`` is used for evaluation") or
``mask_lidar`` when asked, or none; never their intersection. Ground-truth values outside 0..17 (255) are skipped.
IoU_c = TP / (TP + FP + FN) from the accumulated matrix, NaN for a class never seen nor predicted; mIoU is the
NaN-mean over classes 0..16 (free excluded).
"""

from __future__ import annotations

import numpy as np

OCC3D_CLASSES = 18
OCC3D_FREE = 17
MASKS = ("camera", "lidar", "none")


class Occ3DMIoU:
    """Accumulates the Occ3D confusion matrix.

    Example::

        m = Occ3DMIoU()                       # under mask_camera
        m.update(pred, semantics, mask_camera=mask_camera)   # (200, 200, 16) each
        m.compute()["miou"]

    Args:
        mask: ``"camera"`` (official), ``"lidar"`` or ``"none"``.
    """

    def __init__(self, mask: str = "camera") -> None:
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        self.mask = mask
        self.confusion = np.zeros((OCC3D_CLASSES, OCC3D_CLASSES), np.int64)  # rows: ground truth, cols: prediction

    def update(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        mask_camera: np.ndarray | None = None,
        mask_lidar: np.ndarray | None = None,
    ) -> None:
        """Add one frame (or a batch): ``pred`` and ``gt`` class ids 0..17 of one shape; the chosen mask likewise.

        Raises:
            ValueError: shapes differ, the chosen mask is not given, or a prediction is outside 0..17.
        """
        pred, gt = np.asarray(pred), np.asarray(gt)
        chosen = {"camera": mask_camera, "lidar": mask_lidar, "none": None}[self.mask]
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
        keep = (gt >= 0) & (gt < OCC3D_CLASSES)
        if self.mask != "none":
            if chosen is None:
                raise ValueError(f"mask_{self.mask} is required (Occ3DMIoU(mask={self.mask!r}))")
            chosen = np.asarray(chosen)
            if chosen.shape != gt.shape:
                raise ValueError(f"mask_{self.mask} shape {chosen.shape} differs from gt shape {gt.shape}")
            keep &= chosen.astype(bool)
        p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
        if p.size and (p.min() < 0 or p.max() >= OCC3D_CLASSES):
            raise ValueError(f"pred holds values outside 0..{OCC3D_CLASSES - 1} under the mask")
        self.confusion += np.bincount(g * OCC3D_CLASSES + p, minlength=OCC3D_CLASSES**2).reshape(
            OCC3D_CLASSES, OCC3D_CLASSES
        )

    def compute(self) -> dict:
        """``{"per_class_iou": (18,) float (NaN where never seen nor predicted), "miou": NaN-mean over 0..16,
        "num_voxels": int}``."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / union
        semantic = iou[:OCC3D_FREE]
        miou = float(np.nanmean(semantic)) if np.isfinite(semantic).any() else float("nan")
        return {"per_class_iou": iou, "miou": miou, "num_voxels": int(self.confusion.sum())}
