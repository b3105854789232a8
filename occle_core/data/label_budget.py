"""Reproducible label budgets: which voxels' labels may supervise training (OccLE's 10% setting).

Sampling rule:

- The candidates of a frame are its *valid labelled* voxels: ``labels != ignore_index`` and not ``invalid``.
  The empty/free class counts as labelled (semantic scene completion supervises empty voxels too).
- Exactly ``budget_count(n_valid, ratio) = floor(ratio * n_valid + 0.5)`` of them are kept, uniformly at
  random over the candidates (no class stratification: the kept share of each class matches its frequency
  in expectation; :func:`budget_stats` reports it).
- Every voxel of the grid gets a random priority from a generator seeded by ``(seed, stable hash of key)``
  (``key`` is the frame id; the hash is BLAKE2b, never Python's salted ``hash()``), and the candidates with
  the smallest priorities are kept. Consequences: the selection is identical across runs, processes and
  machines; different frames get different selections; and budgets are nested — for the same seed and key,
  the 1% selection is a subset of the 10% selection.
"""

from __future__ import annotations

import hashlib

import numpy as np

from occle_core.labels import IGNORE_INDEX, ClassTable


def stable_key_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process (BLAKE2b, not Python's ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def budget_count(n_valid: int, ratio: float) -> int:
    """Number of voxels a budget of ``ratio`` keeps out of ``n_valid``: ``floor(ratio * n_valid + 0.5)``."""
    return int(np.floor(ratio * n_valid + 0.5))


def _priorities(shape: tuple[int, ...], seed: int, key: str) -> np.ndarray:
    """(shape) float64 uniform priorities, a pure function of (seed, key, shape)."""
    h = stable_key_hash(key)
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, h & 0xFFFFFFFF, h >> 32])
    return np.random.Generator(np.random.PCG64(ss)).random(shape)


def select_labelled(
    labels: np.ndarray,
    ratio: float,
    seed: int,
    key: str,
    invalid: np.ndarray | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Choose the labelled share of a frame's voxels.

    Args:
        labels: (X, Y, Z) integer voxel labels, ``ignore_index`` = unlabelled.
        ratio: share of the valid labelled voxels to keep, in [0, 1] (0.1 for OccLE's 10% setting).
        seed: experiment seed (non-negative int).
        key: a stable identifier of the frame, e.g. ``Sample.frame_id`` ("08/000120").
        invalid: optional (X, Y, Z) bool, True for voxels that never count (never observed).
        ignore_index: label value of unlabelled voxels.

    Returns:
        (X, Y, Z) bool, True for the ``budget_count(n_valid, ratio)`` kept voxels.

    Raises:
        ValueError: ``ratio`` outside [0, 1], a negative seed, or an ``invalid`` mask of another shape.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"label budget ratio must be in [0, 1], got {ratio}")
    if int(seed) < 0:
        raise ValueError(f"label budget seed must be >= 0, got {seed}")
    labels = np.asarray(labels)
    valid = labels != ignore_index  # (X, Y, Z)
    if invalid is not None:
        invalid = np.asarray(invalid, bool)
        if invalid.shape != labels.shape:
            raise ValueError(f"invalid mask has shape {invalid.shape}, expected the labels shape {labels.shape}")
        valid &= ~invalid
    cand = np.flatnonzero(valid)  # (n_valid,)
    k = budget_count(cand.size, ratio)
    out = np.zeros(labels.size, bool)
    if k == cand.size:
        out[cand] = True
    elif k > 0:
        prio = _priorities(labels.shape, seed, key).reshape(-1)[cand]  # (n_valid,)
        out[cand[np.argpartition(prio, k - 1)[:k]]] = True
    return out.reshape(labels.shape)


def budget_stats(
    labels: np.ndarray,
    mask: np.ndarray,
    classes: ClassTable,
    invalid: np.ndarray | None = None,
) -> dict:
    """Kept share of the valid labelled voxels, overall and per class.

    Args:
        labels: (X, Y, Z) integer labels (``classes.ignore_index`` = unlabelled).
        mask: (X, Y, Z) bool label-budget mask (e.g. from :func:`select_labelled`).
        classes: class table of ``labels``.
        invalid: optional (X, Y, Z) bool voxels that never count.

    Returns:
        ``{"total": n_valid, "kept": n_kept, "share": kept/total, "per_class": {name: {"total", "kept",
        "share"}}}``; a share is NaN when the class has no valid voxel.
    """
    labels = np.asarray(labels)
    mask = np.asarray(mask, bool)
    if mask.shape != labels.shape:
        raise ValueError(f"budget mask has shape {mask.shape}, expected the labels shape {labels.shape}")
    valid = (labels != classes.ignore_index) & (labels < classes.num_classes)
    if invalid is not None:
        valid &= ~np.asarray(invalid, bool)
    K = classes.num_classes
    lab = labels[valid].astype(np.int64)
    total = np.bincount(lab, minlength=K)  # (K,)
    kept = np.bincount(lab[mask[valid]], minlength=K)  # (K,)

    def share(k: int, t: int) -> float:
        return k / t if t else float("nan")

    return {
        "total": int(total.sum()),
        "kept": int(kept.sum()),
        "share": share(int(kept.sum()), int(total.sum())),
        "per_class": {
            name: {"total": int(total[c]), "kept": int(kept[c]), "share": share(int(kept[c]), int(total[c]))}
            for c, name in enumerate(classes.names)
        },
    }


def format_budget_stats(stats: dict) -> str:
    """A printable table of :func:`budget_stats` output (classes without valid voxels are skipped)."""
    rows = [(n, v) for n, v in stats["per_class"].items() if v["total"] > 0]
    width = max([len(n) for n, _ in rows] + [5]) + 2
    lines = [f"{'class':<{width}}{'valid':>10}{'kept':>10}{'share %':>9}"]
    for name, v in rows:
        lines.append(f"{name:<{width}}{v['total']:>10d}{v['kept']:>10d}{100 * v['share']:>9.2f}")
    share = 100 * stats["share"] if stats["total"] else float("nan")
    lines.append(f"{'all':<{width}}{stats['total']:>10d}{stats['kept']:>10d}{share:>9.2f}")
    return "\n".join(lines)
