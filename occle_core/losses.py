"""OccLE training losses: labelled-voxel CE and Lovasz, pseudo-label losses, geometry and projection terms.

Every term works on a :class:`~occle_core.model.occle.OccleOutput` and a :class:`~occle_core.data.batch.Batch`
and is computed in float32 (AMP-safe). :func:`compute_losses` weighs them with :class:`~occle_core.config.LossConfig`;
a weight of 0 skips a term entirely (no compute, no entry in the result).

Supervision sources and where they act:

- ``voxel_ce`` / ``lovasz``: final logits on the labelled share only (``label_mask & target != 255``). Labels
  outside the budget are never read.
- ``pseudo_2d``: image-head logits ``sem2d`` against the 2D pseudo labels (255 = none), every camera's image
  (the camera-stacked (B*N, ...) rows of :class:`~occle_core.data.batch.Batch`).
- ``pseudo_3d``: semantic-branch logits ``sem3d`` against the lifted 3D pseudo labels (255 = none).
- ``geometry``: the geometric occupancy logit ``geo``, class-balanced BCE: LiDAR hits are occupied, voxels a
  ray crosses before its hit are free, and labelled voxels give occupied = (label != empty).
- ``teacher``: self-training on unlabelled voxels. The teacher is the model's own detached prediction of the
  same forward pass (default) or the logits of an EMA copy passed as ``teacher_logits``. Voxels whose
  teacher confidence reaches ``teacher_threshold`` supervise the final logits (CE on the teacher's class)
  and the occupancy logit (BCE on "teacher class != empty"). The own-prediction teacher costs nothing extra;
  the EMA teacher (``train.teacher: ema``) costs one extra forward pass without gradients and is the more
  stable choice for long runs.
- ``projection``: NLL of the scatter-accumulated maps (``proj / proj_weight``, one per camera) against that
  camera's 2D pseudo labels downsampled (majority) to the projection stride, only where ``proj_weight > eps``;
  the mean runs over the selected pixels of every camera.
- ``free_space``: the LiDAR hits / ray-crossed voxels on the final logits (occupied = "not the empty class"),
  class-balanced; ``geometry`` supervises the geometric branch only, so without voxel labels (adaptation) this is
  what holds the class decision to the scan.
- ``ground``: ground vs not ground on the final logits, from the scan alone (:func:`ground_loss`): voxels of
  ground returns (within 0.2 m of the plane fitted to the scan, not outnumbered by returns above it) toward the
  ground classes (:data:`occle_core.ground.GROUND_CLASSES`, whichever of them: the 2D pseudo labels pick it),
  voxels of returns mostly more than 0.5 m above the plane away from them (:func:`occle_core.ground.ground_target`).
  Label-free like ``free_space``.
- ``unobserved_prior``: every term above ignores never-observed space (no LiDAR ray reaches it, no valid label),
  so nothing stops the network from filling it. This light prior pulls the occupied probability of the final
  logits there toward the scene's own statistics: the share of the frame's LiDAR-observed voxels that hold
  returns (soft-target BCE, see :func:`unobserved_prior_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from occle_core.ground import GROUND
from occle_core.ground import NEITHER as NEITHER_GROUND
from occle_core.labels import IGNORE_INDEX

if TYPE_CHECKING:
    from occle_core.config import LossConfig
    from occle_core.data.batch import Batch
    from occle_core.model.occle import OccleOutput

LOG_EPS = 1e-3  # the epsilon of the SSC weighting 1 / ln(n + eps) (MonoScene, SSC-RS ...)
PROJ_EPS = 1e-4  # proj_weight below this: no voxel projects there, the pixel is left out


def class_weights_from_counts(counts: Sequence[float] | np.ndarray | Tensor, eps: float = LOG_EPS) -> Tensor:
    """Class weights ``1 / ln(n_k + eps)`` from per-class voxel counts ``n_k`` (the SSC practice).

    The logarithm of the raw counts keeps the dynamic range mild: with ~6e5 labelled empty voxels and ~1e3 of a
    rare class the rare class weighs ~2x more (inverse frequency would give 600x, which over-completes the
    scene). Counts below ``e`` are raised to ``e`` (so ``ln >= 1``): a class never seen gets the largest
    weight, and it only enters the loss once it is seen. The weights are scaled to mean 1 over the classes.

    Args:
        counts: (K,) non-negative voxel counts per class (e.g. the labelled voxels of the training frames).

    Returns:
        (K,) float32 weights.
    """
    counts_t = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    if counts_t.ndim != 1 or bool((counts_t < 0).any()):
        raise ValueError(f"counts must be a 1-D array of non-negative numbers, got {counts_t.tolist()}")
    w = 1.0 / torch.log(counts_t.clamp(min=math.e) + eps)
    return (w / w.mean()).float()


def label_counts(labels: Tensor, mask: Tensor | None, num_classes: int) -> Tensor:
    """(K,) int64 count of each class among ``labels`` where ``mask`` (and label != 255)."""
    valid = labels != IGNORE_INDEX
    if mask is not None:
        valid = valid & mask
    return torch.bincount(labels[valid].reshape(-1), minlength=num_classes)[:num_classes]


def _select(x: Tensor, sel: Tensor) -> Tensor:
    """(B, C, *S) values at the True entries of the (B, *S) mask ``sel`` -> (N, C), in C order of ``sel``.

    Advanced indexing on the (B, C, V) view: same result as ``x.movedim(1, -1)[sel]`` with a backward pass
    about three times faster (no masked scatter through a permuted copy).
    """
    b = x.shape[0]
    bi, vi = sel.reshape(b, -1).nonzero(as_tuple=True)
    return x.reshape(b, x.shape[1], -1)[bi, :, vi]


def _zero(*like: Tensor | None) -> Tensor:
    """A zero that keeps the autograd graph of ``like`` (so DDP sees every parameter used)."""
    for t in like:
        if t is not None:
            return t.float().sum() * 0.0 + 0.0  # + 0.0 turns -0.0 into 0.0
    return torch.zeros(())


def voxel_cross_entropy(
    logits: Tensor, target: Tensor, mask: Tensor | None = None, class_weights: Tensor | None = None
) -> Tensor:
    """Class-weighted cross-entropy over the voxels where ``mask`` holds and ``target != 255``.

    Args:
        logits: (B, K, X, Y, Z).
        target: (B, X, Y, Z) int64 classes, 255 = ignore.
        mask: (B, X, Y, Z) bool, the labelled share; None = every valid voxel.
        class_weights: (K,) or None.

    Returns:
        scalar: sum_i w_{y_i} ce_i / sum_i w_{y_i} (torch's weighted mean); 0 when no voxel qualifies.
    """
    sel = target != IGNORE_INDEX
    if mask is not None:
        sel = sel & mask
    if not bool(sel.any()):
        return _zero(logits)
    x = _select(logits, sel).float()  # (N, K)
    y = target[sel]  # (N,)
    w = None if class_weights is None else class_weights.to(device=x.device, dtype=torch.float32)
    return F.cross_entropy(x, y, weight=w)


def lovasz_softmax_flat(probs: Tensor, labels: Tensor, only_present: bool = True) -> Tensor:
    """Lovasz-softmax loss (Berman et al., CVPR 2018) of flat probabilities, averaged over classes.

    For each class c the errors ``|[y_i = c] - p_i(c)|`` are sorted in decreasing order and dotted with the
    gradient of the Lovasz extension of the Jaccard loss, ``J(k) - J(k - 1)`` where ``J(k)`` is the Jaccard
    loss of predicting the ``k`` largest-error voxels as class c. All classes are handled at once.

    Args:
        probs: (N, K) class probabilities.
        labels: (N,) int64 classes in [0, K).
        only_present: average over the classes present in ``labels`` (else over all K).

    Returns:
        scalar loss; 0 for empty input.
    """
    n, k = probs.shape
    if n == 0:
        return _zero(probs)
    fg = F.one_hot(labels, k).to(probs.dtype)  # (N, K)
    errors = (fg - probs).abs()  # (N, K)
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)  # (N, K)
    fg_sorted = torch.gather(fg, 0, order)  # (N, K)
    gts = fg_sorted.sum(0, keepdim=True)  # (1, K)
    intersection = gts - fg_sorted.cumsum(0)  # (N, K)
    union = gts + (1.0 - fg_sorted).cumsum(0)  # (N, K) >= 1 from the first row on
    jaccard = 1.0 - intersection / union  # (N, K)
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)  # (N, K)
    per_class = (errors_sorted * grad).sum(0)  # (K,)
    if only_present:
        present = gts[0] > 0
        if not bool(present.any()):
            return _zero(probs)
        return per_class[present].mean()
    return per_class.mean()


def lovasz_softmax(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Lovasz-softmax over the voxels where ``mask`` holds and ``target != 255`` (present classes only).

    Args:
        logits: (B, K, X, Y, Z); target: (B, X, Y, Z) int64; mask: (B, X, Y, Z) bool or None.
    """
    sel = target != IGNORE_INDEX
    if mask is not None:
        sel = sel & mask
    probs = torch.softmax(_select(logits, sel).float(), dim=-1)  # (N, K)
    return lovasz_softmax_flat(probs, target[sel])


def pseudo_label_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of (B, K, *S) logits against (B, *S) pseudo labels, 255 = none; 0 when none is set."""
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"pseudo labels have shape {tuple(target.shape)}, expected {tuple(logits.shape[:1] + logits.shape[2:])}"
        )
    if not bool((target != IGNORE_INDEX).any()):
        return _zero(logits)
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)


def balanced_bce(logit: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """BCE averaged separately over positives and negatives, then the two means averaged.

    Free voxels outnumber occupied ones by orders of magnitude; the balance keeps hits from being drowned.

    Args:
        logit: (N...) occupancy logits; target: same shape, {0, 1}; mask: same shape bool (voxels used).
    """
    if not bool(mask.any()):
        return _zero(logit)
    x = logit[mask].float()
    t = target[mask].float()
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")  # (N,)
    pos = t > 0.5
    parts = [bce[pos].mean()] if bool(pos.any()) else []
    if bool((~pos).any()):
        parts.append(bce[~pos].mean())
    return torch.stack(parts).mean()


def geometry_loss(
    geo: Tensor,
    occupied: Tensor | None,
    free: Tensor | None,
    voxel_labels: Tensor | None = None,
    label_mask: Tensor | None = None,
    empty_index: int = 0,
) -> Tensor:
    """Occupancy BCE: LiDAR hits occupied, ray-crossed voxels free, labelled voxels by their label.

    Args:
        geo: (B, 1, X, Y, Z) occupancy logit.
        occupied / free: (B, X, Y, Z) bool from :func:`occle_core.geometry.free_space_mask` (None: unused).
        voxel_labels / label_mask: (B, X, Y, Z); labelled voxels (mask & label != 255) override the LiDAR
            targets with ``label != empty_index``.
    """
    logit = geo[:, 0]  # (B, X, Y, Z)
    target = torch.zeros_like(logit, dtype=torch.bool)
    used = torch.zeros_like(target)
    if free is not None:
        used |= free
    if occupied is not None:
        used |= occupied
        target |= occupied
    if voxel_labels is not None:
        lab = voxel_labels != IGNORE_INDEX
        if label_mask is not None:
            lab &= label_mask
        target = torch.where(lab, voxel_labels != empty_index, target)
        used |= lab
    return balanced_bce(logit, target, used)


def teacher_targets(
    teacher_logits: Tensor,
    threshold: float,
    label_mask: Tensor | None,
    voxel_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Confident teacher classes on unlabelled voxels.

    Args:
        teacher_logits: (B, K, X, Y, Z) (detached inside).
        threshold: minimum softmax confidence.
        label_mask: (B, X, Y, Z) the labelled share (excluded: those have real labels); None = every valid
            voxel of ``voxel_labels`` is labelled (or none is, when ``voxel_labels`` is None too).
        voxel_labels: only its 255 entries are read (invalid voxels, never observed, are excluded).

    Returns:
        target: (B, X, Y, Z) int64 teacher class; keep: (B, X, Y, Z) bool confident unlabelled voxels.
    """
    with torch.no_grad():
        conf, target = torch.softmax(teacher_logits.detach().float(), dim=1).max(dim=1)  # (B, X, Y, Z)
        keep = conf >= threshold
        if label_mask is not None:
            keep &= ~label_mask
        elif voxel_labels is not None:  # no budget mask: every valid voxel is labelled, nothing is left
            keep &= voxel_labels == IGNORE_INDEX
        if voxel_labels is not None:
            keep &= voxel_labels != IGNORE_INDEX
    return target, keep


def teacher_loss(
    logits: Tensor,
    geo: Tensor | None,
    teacher_logits: Tensor,
    threshold: float,
    label_mask: Tensor | None,
    voxel_labels: Tensor | None = None,
    empty_index: int = 0,
) -> Tensor:
    """Self-training on confident unlabelled voxels: CE on ``logits`` plus BCE of ``geo`` on "not empty".

    Both parts average over the confident voxels; 0 when none is confident.
    """
    target, keep = teacher_targets(teacher_logits, threshold, label_mask, voxel_labels)
    if not bool(keep.any()):
        return _zero(logits, geo)
    ce = F.cross_entropy(_select(logits, keep).float(), target[keep])
    if geo is None:
        return ce
    occ = (target != empty_index).float()
    bce = F.binary_cross_entropy_with_logits(_select(geo, keep)[:, 0].float(), occ[keep])
    return ce + bce


def downsample_labels(labels: Tensor, stride: int, num_classes: int) -> Tensor:
    """Majority-pool (B, H, W) labels by ``stride`` -> (B, H // stride, W // stride); 255 wins its own votes.

    Rows/columns beyond the last full ``stride`` block are dropped (as ``H // stride`` does).
    """
    if stride == 1:
        return labels
    b, h, w = labels.shape
    hp, wp = h // stride, w // stride
    lab = labels[:, : hp * stride, : wp * stride]
    ignore_bin = num_classes
    lab = torch.where((lab >= 0) & (lab < num_classes), lab, torch.full_like(lab, ignore_bin))
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()  # (B, K+1, H', W')
    votes = F.avg_pool2d(onehot, stride)  # (B, K+1, Hp, Wp)
    out = votes.argmax(1)  # (B, Hp, Wp); ties go to the lower class index
    return torch.where(out == ignore_bin, torch.full_like(out, IGNORE_INDEX), out)


def projection_loss(proj: Tensor, proj_weight: Tensor, pseudo2d: Tensor, stride: int) -> Tensor:
    """NLL of the normalised scatter-accumulated maps against 2D pseudo labels at the projection stride.

    Args:
        proj: (B*N, K, Hp, Wp) accumulated class probabilities of every camera (N = 1: (B, K, Hp, Wp));
            proj_weight: (B*N, 1, Hp, Wp) accumulated weight.
        pseudo2d: (B*N, H, W) int64, the same cameras' labels, 255 = none; downsampled by majority to Hp x Wp.
        stride: projection stride (H // stride == Hp).

    Returns:
        mean over pixels with a pseudo label and ``proj_weight > 1e-4`` of ``-log(p_label)``; 0 if none.
    """
    b, k, hp, wp = proj.shape
    target = downsample_labels(pseudo2d, stride, k)  # (B, H // s, W // s)
    if target.shape[1:] != (hp, wp):
        raise ValueError(
            f"pseudo labels downsampled by proj_stride={stride} give {tuple(target.shape[1:])}, "
            f"but the projection maps are {(hp, wp)}"
        )
    weight = proj_weight[:, 0].float()  # (B, Hp, Wp)
    sel = (weight > PROJ_EPS) & (target != IGNORE_INDEX)
    if not bool(sel.any()):
        return _zero(proj)
    p = _select(proj, sel).float() / weight[sel].unsqueeze(-1)  # (N, K)
    p_true = p.gather(1, target[sel].unsqueeze(1)).squeeze(1)  # (N,)
    return -torch.log(p_true.clamp(min=1e-6, max=1.0)).mean()


def occupancy_logit(logits: Tensor, empty_index: int = 0) -> Tensor:
    """(B, K, ...) class logits -> (B, ...) float32 logit of "not empty": ``sigmoid`` of it is ``1 - p_empty``."""
    x = logits.float()
    others = torch.cat([x[:, :empty_index], x[:, empty_index + 1 :]], dim=1)
    return torch.logsumexp(others, dim=1) - x[:, empty_index]


def free_space_loss(logits: Tensor, occupied: Tensor, free: Tensor, empty_index: int = 0) -> Tensor:
    """LiDAR geometry on the final logits: hit voxels not empty, ray-crossed voxels empty (class-balanced BCE of
    :func:`occupancy_logit`). Without voxel labels the only direct occupancy signal the class decision gets.

    Args:
        logits: (B, K, X, Y, Z); occupied / free: (B, X, Y, Z) bool LiDAR masks.
    """
    return balanced_bce(occupancy_logit(logits, empty_index), occupied, occupied | free)


def ground_loss(logits: Tensor, ground: Tensor, ground_ids: Tensor) -> Tensor:
    """Ground vs not ground on the final logits: class-balanced BCE of ``p_ground = sum_{c in ground_ids} p_c``
    (a logit: ``logsumexp`` of the ground classes minus ``logsumexp`` of the others, empty included), 1 on the
    ground voxels, 0 on the raised ones.

    Args:
        logits: (B, K, X, Y, Z) final logits; ground: (B, X, Y, Z) uint8 1 ground / 0 raised / 255 neither
            (:func:`occle_core.ground.ground_target`); ground_ids: (G,) int64 class ids.

    Returns:
        scalar; 0 when no voxel is ground or raised.
    """
    used = ground != NEITHER_GROUND
    if not bool(used.any()):
        return _zero(logits)
    x = _select(logits, used).float()  # (N, K)
    is_ground = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
    is_ground[ground_ids.to(x.device)] = True
    z = torch.logsumexp(x[:, is_ground], dim=1) - torch.logsumexp(x[:, ~is_ground], dim=1)  # (N,)
    target = ground[used] == GROUND
    return balanced_bce(z, target, torch.ones_like(target))


def unobserved_prior_loss(
    logits: Tensor,
    occupied: Tensor,
    free: Tensor,
    voxel_labels: Tensor | None = None,
    empty_index: int = 0,
) -> Tensor:
    """Soft-target BCE of the occupied probability in never-observed voxels toward the frame's observed share.

    For frame b, ``prior_b = |occupied_b| / |occupied_b or free_b|`` (the LiDAR-observed voxels holding returns);
    a voxel is unobserved when no ray hits or crosses it and it has no valid label (``voxel_labels == 255``, or no
    labels at all). With ``p = 1 - softmax(logits)[empty]`` the loss averages, over the unobserved voxels of the
    batch, ``-(prior_b log p + (1 - prior_b) log(1 - p))`` (computed from :func:`occupancy_logit`).

    Args:
        logits: (B, K, X, Y, Z) final logits; occupied / free: (B, X, Y, Z) bool LiDAR masks.
        voxel_labels: (B, X, Y, Z) int64 (255 = none) or None.

    Returns:
        scalar; 0 when no voxel is unobserved or a frame has no observed voxel (its prior is undefined).
    """
    observed = occupied | free  # (B, X, Y, Z)
    b = logits.shape[0]
    n_obs = observed.reshape(b, -1).sum(1)  # (B,)
    prior = occupied.reshape(b, -1).sum(1).float() / n_obs.clamp(min=1).float()  # (B,)
    unobserved = ~observed & (n_obs > 0).view(b, 1, 1, 1)
    if voxel_labels is not None:
        unobserved &= voxel_labels == IGNORE_INDEX
    if not bool(unobserved.any()):
        return _zero(logits)
    z = occupancy_logit(_select(logits, unobserved)[..., None], empty_index)[:, 0]  # (N,)
    target = prior[unobserved.reshape(b, -1).nonzero(as_tuple=True)[0]]  # (N,) the voxel's frame prior
    return F.binary_cross_entropy_with_logits(z, target)


def compute_losses(
    out: OccleOutput,
    batch: Batch,
    cfg: LossConfig,
    class_weights: Tensor | None = None,
    empty_index: int = 0,
    teacher_logits: Tensor | None = None,
    ground_ids: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the enabled loss terms.

    Args:
        out: network output. batch: the batch it was computed from.
        cfg: loss weights; a term with weight 0 is skipped. A term whose input is absent (e.g. ``sem3d`` with the
            semantic branch off, ``pseudo2d`` missing) is skipped as well.
        class_weights: (K,) for ``voxel_ce`` (see :func:`class_weights_from_counts`); None with
            ``cfg.class_weighted`` computes them from this batch's labelled voxels, else unweighted.
        empty_index: the free-space class.
        teacher_logits: (B, K, X, Y, Z) from an EMA teacher; None = the model's own detached logits.
        ground_ids: (G,) int64 ground class ids for ``ground`` (the term is skipped without them).

    Returns:
        total: scalar with gradient. terms: {name: detached unweighted scalar} of each computed term.
    """
    terms: dict[str, Tensor] = {}
    total = _zero(out.logits)
    k = out.logits.shape[1]

    def add(name: str, weight: float, value: Tensor) -> None:
        nonlocal total
        terms[name] = value.detach()
        total = total + weight * value

    labels = batch.voxel_labels
    if labels is not None and (cfg.voxel_ce > 0 or cfg.lovasz > 0):
        mask = batch.label_mask
        if cfg.voxel_ce > 0:
            w = class_weights
            if w is None and cfg.class_weighted:
                w = class_weights_from_counts(label_counts(labels, mask, k).cpu())
            add("voxel_ce", cfg.voxel_ce, voxel_cross_entropy(out.logits, labels, mask, w))
        if cfg.lovasz > 0:
            add("lovasz", cfg.lovasz, lovasz_softmax(out.logits, labels, mask))
    if cfg.pseudo_2d > 0 and out.sem2d is not None and batch.pseudo2d is not None:
        add("pseudo_2d", cfg.pseudo_2d, pseudo_label_ce(out.sem2d, batch.pseudo2d))
    if cfg.pseudo_3d > 0 and out.sem3d is not None and batch.pseudo3d is not None:
        add("pseudo_3d", cfg.pseudo_3d, pseudo_label_ce(out.sem3d, batch.pseudo3d))
    if cfg.geometry > 0 and (batch.occupied is not None or batch.free is not None or labels is not None):
        geo = geometry_loss(out.geo, batch.occupied, batch.free, labels, batch.label_mask, empty_index)
        add("geometry", cfg.geometry, geo)
    if cfg.teacher > 0:
        t_logits = out.logits if teacher_logits is None else teacher_logits
        value = teacher_loss(
            out.logits, out.geo, t_logits, cfg.teacher_threshold, batch.label_mask, labels, empty_index
        )
        add("teacher", cfg.teacher, value)
    if cfg.projection > 0 and out.proj is not None and out.proj_weight is not None and batch.pseudo2d is not None:
        add("projection", cfg.projection, projection_loss(out.proj, out.proj_weight, batch.pseudo2d, out.proj_stride))
    if cfg.free_space > 0 and batch.occupied is not None and batch.free is not None:
        add("free_space", cfg.free_space, free_space_loss(out.logits, batch.occupied, batch.free, empty_index))
    if cfg.ground > 0 and batch.ground is not None and ground_ids is not None:
        add("ground", cfg.ground, ground_loss(out.logits, batch.ground, ground_ids))
    if cfg.pseudo_voxel > 0 and batch.pseudo3d is not None:
        add("pseudo_voxel", cfg.pseudo_voxel, pseudo_label_ce(out.logits, batch.pseudo3d))
    if cfg.unobserved_prior > 0 and batch.occupied is not None and batch.free is not None:
        prior = unobserved_prior_loss(out.logits, batch.occupied, batch.free, labels, empty_index)
        add("unobserved_prior", cfg.unobserved_prior, prior)
    return total, terms
