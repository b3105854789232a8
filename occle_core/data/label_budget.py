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

Three budget modes (``data.label_budget``), all with exact shares, all deterministic from the seed:

- ``voxel`` (:func:`select_labelled`): the random voxels above, every training frame partly labelled. This is
  the reading of OccLE's "10% of voxel annotations" (arXiv 2505.20617): the paper's losses supervise the
  *unannotated* voxels of each frame (projection, teacher), which presumes sparse labels inside every frame.
- ``frame`` (:func:`select_labelled_frames`): ``budget_count(n_frames, ratio)`` training frames fully labelled,
  the others unlabelled (the usual semi-supervised protocol: whole scans are annotated or not). Nested too.
- ``block`` (:func:`select_labelled_blocks`): random axis-aligned blocks of :data:`BLOCK_SHAPE` voxels (a
  seeded lattice offset per frame) in random order until the share is reached, the last block cut to the
  exact count (an annotator labelling compact regions). Nested for the same seed and key.

:func:`select_budget` dispatches on the mode.
"""

from __future__ import annotations

import hashlib

import numpy as np

from occle_core.labels import IGNORE_INDEX, ClassTable

LABEL_BUDGETS = ("voxel", "frame", "block")
BLOCK_SHAPE = (8, 8, 4)  # voxels per block of the ``block`` budget (3.2 x 3.2 x 1.6 m at 0.4 m voxels)


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


def _check(ratio: float, seed: int) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"label budget ratio must be in [0, 1], got {ratio}")
    if int(seed) < 0:
        raise ValueError(f"label budget seed must be >= 0, got {seed}")


def _candidates(labels: np.ndarray, invalid: np.ndarray | None, ignore_index: int) -> np.ndarray:
    """Flat indices of the valid labelled voxels (``labels != ignore_index`` and not ``invalid``)."""
    valid = labels != ignore_index  # (X, Y, Z)
    if invalid is not None:
        invalid = np.asarray(invalid, bool)
        if invalid.shape != labels.shape:
            raise ValueError(f"invalid mask has shape {invalid.shape}, expected the labels shape {labels.shape}")
        valid &= ~invalid
    return np.flatnonzero(valid)


def _keep_first(cand: np.ndarray, order: np.ndarray | None, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """(shape) bool mask of the first ``k`` candidates in ``order`` (all when ``k`` covers them)."""
    out = np.zeros(int(np.prod(shape)), bool)
    out[cand if order is None else cand[order[:k]]] = True
    return out.reshape(shape)


def select_labelled(
    labels: np.ndarray,
    ratio: float,
    seed: int,
    key: str,
    invalid: np.ndarray | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Choose the labelled share of a frame's voxels (the ``voxel`` budget).

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
    _check(ratio, seed)
    labels = np.asarray(labels)
    cand = _candidates(labels, invalid, ignore_index)  # (n_valid,)
    k = budget_count(cand.size, ratio)
    if k == cand.size:
        return _keep_first(cand, None, k, labels.shape)
    prio = _priorities(labels.shape, seed, key).reshape(-1)[cand]  # (n_valid,)
    order = np.argpartition(prio, k - 1) if k > 0 else np.zeros(0, np.int64)
    return _keep_first(cand, order, k, labels.shape)


def select_labelled_blocks(
    labels: np.ndarray,
    ratio: float,
    seed: int,
    key: str,
    invalid: np.ndarray | None = None,
    ignore_index: int = IGNORE_INDEX,
    block: tuple[int, int, int] = BLOCK_SHAPE,
) -> np.ndarray:
    """The ``block`` budget: whole random blocks of valid labelled voxels, exactly ``budget_count`` of them.

    The grid is cut into ``block``-sized cells on a lattice shifted by a seeded offset; cells are taken in a
    seeded random order and, inside a cell, voxels in a seeded random order, so the kept set is all candidates
    of the first cells plus the first voxels of the last one (nested across ratios).

    Args:
        labels / ratio / seed / key / invalid / ignore_index: as :func:`select_labelled`.
        block: (bx, by, bz) cell size in voxels.

    Returns:
        (X, Y, Z) bool, True for the ``budget_count(n_valid, ratio)`` kept voxels.
    """
    _check(ratio, seed)
    if len(block) != 3 or min(block) < 1:
        raise ValueError(f"label block must be 3 positive voxel counts, got {block}")
    labels = np.asarray(labels)
    cand = _candidates(labels, invalid, ignore_index)  # (n_valid,)
    k = budget_count(cand.size, ratio)
    if k == cand.size:
        return _keep_first(cand, None, k, labels.shape)
    h = stable_key_hash(key + "#blocks")
    rng = np.random.Generator(np.random.PCG64([int(seed), h & 0xFFFFFFFF, h >> 32]))
    bs = np.asarray(block, np.int64)
    offset = rng.integers(0, bs)  # (3,) lattice shift
    xyz = np.stack(np.unravel_index(cand, labels.shape), 1)  # (n_valid, 3)
    cell = (xyz + offset) // bs  # (n_valid, 3)
    cells = (np.asarray(labels.shape) + offset) // bs + 1  # (3,) cells per axis
    cell_prio = rng.random(int(np.prod(cells)))  # one priority per cell
    voxel_prio = _priorities(labels.shape, seed, key).reshape(-1)[cand]  # (n_valid,)
    order = np.lexsort((voxel_prio, cell_prio[np.ravel_multi_index(cell.T, cells)]))
    return _keep_first(cand, order, k, labels.shape)


def select_labelled_frames(n_frames: int, ratio: float, seed: int) -> np.ndarray:
    """The ``frame`` budget: which of a split's ``n_frames`` frames (in reader order) are fully labelled.

    Returns:
        (n_frames,) bool with exactly ``budget_count(n_frames, ratio)`` True: the frames with the smallest
        seeded priorities, so that a smaller ratio selects a subset of a larger one.
    """
    _check(ratio, seed)
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    k = budget_count(n_frames, ratio)
    prio = _priorities((n_frames,), seed, "#frames")  # (n_frames,)
    out = np.zeros(n_frames, bool)
    out[np.argsort(prio, kind="stable")[:k]] = True
    return out


def check_labelled_share(budget: str, share: float | None) -> None:
    """Raise ``ValueError`` unless ``share`` (``data.labelled_frame_share``) is None, or in (0, 1] with the
    ``frame`` budget."""
    if share is None:
        return
    if budget != "frame":
        raise ValueError(f"data.labelled_frame_share needs data.label_budget frame, got {budget!r}")
    if not 0 < share <= 1:
        raise ValueError(f"data.labelled_frame_share must be in (0, 1] or null, got {share!r}")


def select_budget(
    mode: str,
    labels: np.ndarray,
    ratio: float,
    seed: int,
    key: str,
    invalid: np.ndarray | None = None,
    frame: tuple[int, int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """The label mask of one frame under budget ``mode`` (one of :data:`LABEL_BUDGETS`).

    Args:
        mode: ``voxel``, ``frame`` or ``block``.
        labels / ratio / seed / key / invalid / ignore_index: as :func:`select_labelled`.
        frame: (index, n_frames) of this frame in its split; required by the ``frame`` budget.

    Returns:
        (X, Y, Z) bool label mask.

    Raises:
        ValueError: an unknown mode, or ``frame`` missing for the ``frame`` budget.
    """
    if mode == "voxel":
        return select_labelled(labels, ratio, seed, key, invalid, ignore_index)
    if mode == "block":
        return select_labelled_blocks(labels, ratio, seed, key, invalid, ignore_index)
    if mode != "frame":
        raise ValueError(f"data.label_budget must be one of {LABEL_BUDGETS}, got {mode!r}")
    if frame is None:
        raise ValueError("the frame label budget needs the frame's (index, n_frames) in its split")
    index, n_frames = frame
    labelled = bool(select_labelled_frames(n_frames, ratio, seed)[index])
    return select_labelled(labels, 1.0 if labelled else 0.0, seed, key, invalid, ignore_index)


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
