"""Semantic scene completion metrics: completion IoU, per-class IoU and mIoU from a confusion matrix.

Conventions (SemanticKITTI SSC and Occ3D rules):

- The confusion matrix ``C`` is (K, K) int64 with ``C[target, pred]`` voxel counts, K = classes.num_classes
  (the empty/free class included).
- Voxels whose target is ``classes.ignore_index`` (255) or where ``mask`` is False are not counted.
  SemanticKITTI: pass ``mask = ~invalid`` (or set invalid voxels to 255 in the target). Occ3D-nuScenes:
  pass ``mask = camera_mask`` (the official mIoU is computed under the camera mask).
- Completion IoU treats every non-empty class as "occupied": ``TP = occupied in both``,
  ``IoU = TP / (TP + FP + FN)``, precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``.
- Per-class IoU ``C[c, c] / (row_c + col_c - C[c, c])`` for every class id (index = class id, the empty
  class included). A class that appears neither in the targets nor in the predictions (on counted voxels)
  is *absent*: its per-class IoU is undefined, NaN.
- ``miou`` follows the dataset's official rule (``ClassTable.absent_iou_zero``). SemanticKITTI
  (``evaluate_completion.py``: ``tp / (tp + fp + fn + 1e-15)``): the mean over all 19 semantic classes,
  an absent class counting 0. Occ3D (``np.nanmean``): the mean over the present semantic classes (0..16).
- ``miou_present`` is always the mean over the present semantic classes and ``classes_present`` their
  number, so a score on a subset of the classes can be read beside the official one.
- All values are fractions in [0, 1] (NaN where undefined); :meth:`SSCMetrics.table` prints percentages.

Accumulation is over the whole evaluation set (one confusion matrix), not a mean of per-frame scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from occle_core.labels import ClassTable

ArrayLike = np.ndarray | torch.Tensor


def _flat_int64(x: ArrayLike, name: str) -> np.ndarray | torch.Tensor:
    """Flatten ``x`` keeping its library (torch stays on its device); checks the dtype is integer or bool."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"{name} must hold integer class ids, got dtype {x.dtype}")
        return x.reshape(-1).to(torch.int64)
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int64, copy=False)


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with NaN where den == 0 (no warnings)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


class SSCMetrics:
    """Accumulates a (K, K) confusion matrix and derives SSC scores from it.

    Example::

        m = SSCMetrics(class_table("semantic_kitti"))
        for pred, target, invalid in frames:
            m.update(pred, target, mask=~invalid)   # (X, Y, Z) each
        scores = m.compute()                         # {"iou": ..., "miou": ..., ...}
        print(m.table())
    """

    def __init__(self, classes: ClassTable) -> None:
        self.classes = classes
        self.num_classes = classes.num_classes
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)  # (K target, K pred)

    def reset(self) -> None:
        """Forget every accumulated voxel."""
        self.confusion[:] = 0

    def update(self, pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add one batch/frame of voxels.

        Args:
            pred: (...) integer predicted classes in [0, K) (numpy array or torch tensor, any device).
            target: (...) integer target classes in [0, K) or ``ignore_index``; same shape as ``pred``.
            mask: optional (...) bool, False for voxels that must not count (invalid voxels, outside the
                camera mask); same shape as ``pred``.

        Raises:
            ValueError: shapes differ, or a prediction / target is outside [0, K) (targets may be 255).
            TypeError: a non-integer label array.
        """
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(target.shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from target shape {tuple(target.shape)}")
        K = self.num_classes
        use_torch = any(isinstance(a, torch.Tensor) for a in (pred, target, mask) if a is not None)
        if use_torch:
            device = next(a.device for a in (pred, target, mask) if isinstance(a, torch.Tensor))
            p = _flat_int64(torch.as_tensor(pred, device=device), "pred")
            t = _flat_int64(torch.as_tensor(target, device=device), "target")
            keep = t != self.classes.ignore_index
            if mask is not None:
                keep &= torch.as_tensor(mask, device=device).reshape(-1).to(torch.bool)
            p, t = p[keep], t[keep]
            if p.numel() == 0:
                return
            bad_p = bool(((p < 0) | (p >= K)).any())
            bad_t = bool(((t < 0) | (t >= K)).any())
            if not (bad_p or bad_t):
                counts = torch.bincount(t * K + p, minlength=K * K).cpu().numpy()
        else:
            p = _flat_int64(pred, "pred")
            t = _flat_int64(target, "target")
            keep = t != self.classes.ignore_index
            if mask is not None:
                keep &= np.asarray(mask).reshape(-1).astype(bool, copy=False)
            p, t = p[keep], t[keep]
            if p.size == 0:
                return
            bad_p = bool(((p < 0) | (p >= K)).any())
            bad_t = bool(((t < 0) | (t >= K)).any())
            if not (bad_p or bad_t):
                counts = np.bincount(t * K + p, minlength=K * K)
        if bad_p:
            raise ValueError(f"pred holds class ids outside [0, {K}) on counted voxels ({self.classes.name})")
        if bad_t:
            raise ValueError(
                f"target holds class ids outside [0, {K}) that are not the ignore index "
                f"{self.classes.ignore_index} ({self.classes.name})"
            )
        self.confusion += counts.reshape(K, K)

    def merge(self, other: SSCMetrics) -> SSCMetrics:
        """Add another accumulator's counts into this one (e.g. from another process); returns self."""
        if other.classes.names != self.classes.names:
            raise ValueError(f"cannot merge metrics of class table {other.classes.name!r} into {self.classes.name!r}")
        self.confusion += other.confusion
        return self

    def all_reduce(self, group: Any = None) -> SSCMetrics:
        """Sum the confusion matrices of every rank of an initialised ``torch.distributed`` group; returns self.

        A no-op when torch.distributed is not initialised (single process).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        backend = dist.get_backend(group)
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        t = torch.from_numpy(self.confusion).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        self.confusion = t.cpu().numpy().astype(np.int64)
        return self

    @property
    def num_voxels(self) -> int:
        """Number of voxels counted so far."""
        return int(self.confusion.sum())

    def compute(self) -> dict[str, Any]:
        """Scores of everything accumulated so far.

        Returns:
            dict with ``iou``, ``precision``, ``recall`` (scene completion, occupied vs empty), ``miou``
            (the dataset's official mean over ``classes.semantic_classes``), ``miou_present`` and
            ``classes_present`` (mean over, and number of, the present semantic classes), ``per_class_iou``
            (list of K floats, index = class id, NaN when absent),
            ``names`` (K class names), ``miou_classes`` (ids averaged), ``confusion`` ((K, K) int64 copy,
            rows = target, columns = prediction) and ``num_voxels``. Fractions in [0, 1], NaN if undefined.
        """
        C = self.confusion.astype(np.float64)
        e = self.classes.empty_index
        tp_c = np.diag(C)
        per_class = _safe_div(tp_c, C.sum(0) + C.sum(1) - tp_c)  # (K,)
        occ = np.ones(self.num_classes, bool)
        occ[e] = False
        tp = C[np.ix_(occ, occ)].sum()  # occupied predicted as any occupied class
        fp = C[e, occ].sum()  # empty predicted occupied
        fn = C[occ, e].sum()  # occupied predicted empty
        sem = self.classes.semantic_classes
        sem_iou = per_class[sem]
        present = ~np.isnan(sem_iou)
        miou_present = float(sem_iou[present].mean()) if present.any() else float("nan")
        if self.classes.absent_iou_zero and present.any():
            miou = float(np.nan_to_num(sem_iou, nan=0.0).mean())
        else:
            miou = miou_present
        return {
            "iou": float(_safe_div(tp, tp + fp + fn)),
            "precision": float(_safe_div(tp, tp + fp)),
            "recall": float(_safe_div(tp, tp + fn)),
            "miou": miou,
            "miou_present": miou_present,
            "classes_present": int(present.sum()),
            "per_class_iou": [float(v) for v in per_class],
            "names": list(self.classes.names),
            "miou_classes": list(sem),
            "confusion": self.confusion.copy(),
            "num_voxels": self.num_voxels,
        }

    def table(self, scores: dict[str, Any] | None = None) -> str:
        """A printable table: one row per class (IoU %, target voxel count), then IoU / precision / recall / mIoU."""
        s = self.compute() if scores is None else scores
        counts = self.confusion.sum(1)
        width = max(len(n) for n in (*self.classes.names, "IoU (completion)", "mIoU (99 present)")) + 2
        lines = [f"{'class':<{width}}{'IoU %':>8}{'voxels':>12}", "-" * (width + 20)]
        for c in self.classes.semantic_classes:
            v = s["per_class_iou"][c]
            iou = "     n/a" if np.isnan(v) else f"{100 * v:8.2f}"
            lines.append(f"{self.classes.names[c]:<{width}}{iou}{int(counts[c]):>12d}")
        lines.append("-" * (width + 20))
        for key, label in (("iou", "IoU (completion)"), ("precision", "precision"), ("recall", "recall")):
            lines.append(f"{label:<{width}}{100 * s[key]:8.2f}")
        lines.append(f"{'mIoU':<{width}}{100 * s['miou']:8.2f}")
        present = f"mIoU ({s['classes_present']} present)"
        lines.append(f"{present:<{width}}{100 * s['miou_present']:8.2f}")
        return "\n".join(lines)
