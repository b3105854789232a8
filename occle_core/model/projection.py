"""Scatter-accumulated projection of voxel class probabilities onto the image plane.

Every voxel centre in front of the camera that lands inside the image is assigned to the pixel it projects
to. Along each pixel's ray the voxels are ordered by depth and composited front to back: voxel ``i`` gets the
weight ``w_i = occ_i * T_i`` with the transmittance ``T_i = prod_{j nearer than i on the same pixel}
(1 - occ_j)``. The image-plane maps are ``sum_i w_i * probs_i`` and ``sum_i w_i`` per pixel.

What is composited matters for the loss built on it (``losses.projection_loss``, the NLL of the normalised map
``sum_i w_i probs_i / sum_i w_i`` against a 2D pseudo label, which never says "empty"). The network's class
probabilities include "empty", and a voxel's probability of any non-empty class is at most its occupancy; composited
as they are, the normalised map of a pixel can only reach the label by raising the occupancy of every voxel that
carries weight, so the loss fills the air in front of surfaces. :func:`occupied_class_probs` splits the logits into
the occupancy (the visibility ``occ_i``) and the class distribution *given occupied* (``probs_i``, zero on "empty");
the normalised map is then invariant to a common scale of the weights and the loss supervises what is seen, not how
much is occupied. Measured on the label-efficiency protocol (docs/results.md, row ``occle_10``).

Everything is vectorised: one sort by (pixel, depth), a segmented exclusive cumulative sum of
``log(1 - occ)`` (float64) for the transmittance, and ``index_add_`` for the accumulation. The ray layout
(which voxels land where, in which order) depends only on the grid and the calibration, so it is cached per
calibration matrix.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from occle_core.model.semantic_branch import MIN_DEPTH, project_points

OCC_MAX = 1.0 - 1e-6  # keeps log(1 - occ) finite


@dataclass
class RayLayout:
    """Voxels that project into the image, sorted by (batch, pixel, depth).

    Attributes:
        voxel: (N,) int64 flat index into (B * V) of each sorted entry.
        pixel: (N,) int64 flat index into (B * Hp * Wp).
        seg_start: (N,) int64 position (in the sorted order) of the first entry of the same pixel.
    """

    voxel: Tensor
    pixel: Tensor
    seg_start: Tensor


def ray_layout(voxel_centers: Tensor, lidar_to_image: Tensor, image_hw: tuple[int, int]) -> RayLayout:
    """Assign voxel centres (V, 3) to pixels of an (Hp, Wp) image per frame (lidar_to_image (B, 3, 4))."""
    Hp, Wp = image_hw
    V = voxel_centers.shape[0]
    uv, depth = project_points(voxel_centers, lidar_to_image)  # (B, V, 2), (B, V)
    u, v = torch.floor(uv[..., 0]), torch.floor(uv[..., 1])
    inside = (depth > MIN_DEPTH) & (u >= 0) & (u < Wp) & (v >= 0) & (v < Hp)  # (B, V)
    b_idx, vox = inside.nonzero(as_tuple=True)
    pixel = b_idx * (Hp * Wp) + v[b_idx, vox].long() * Wp + u[b_idx, vox].long()
    d = depth[b_idx, vox]
    order = torch.argsort(d, stable=True)
    order = order[torch.argsort(pixel[order], stable=True)]  # by pixel, then by depth
    pixel = pixel[order]
    n = pixel.numel()
    pos = torch.arange(n, device=pixel.device)
    is_start = torch.ones(n, dtype=torch.bool, device=pixel.device)
    if n > 1:
        is_start[1:] = pixel[1:] != pixel[:-1]
    seg_start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), 0).values if n else pos
    return RayLayout(voxel=(b_idx * V + vox)[order], pixel=pixel, seg_start=seg_start)


def composite(
    probs: Tensor, occ: Tensor | None, layout: RayLayout, batch: int, image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing along the rays of ``layout`` (see the module docstring).

    Args:
        probs: (N, K) class probabilities of the entries of ``layout`` (in its sorted order).
        occ: (N,) their occupancy probabilities; None: every voxel counts as fully occupied, so each pixel
            takes the probabilities of its nearest voxel.
        batch: B.

    Returns:
        maps (B, K, Hp, Wp) and weight (B, 1, Hp, Wp).
    """
    K = probs.shape[1]
    Hp, Wp = image_hw
    if occ is None:
        first = layout.seg_start == torch.arange(layout.seg_start.numel(), device=probs.device)
        weight = first.to(probs.dtype)  # (N,) 1 for the nearest voxel of each pixel
    else:
        occ = occ.clamp(0.0, OCC_MAX)
        log_free = torch.log1p(-occ.double())  # (N,)
        incl = torch.cumsum(log_free, 0)
        excl = incl - log_free  # sum over all earlier entries of the sorted order
        trans = torch.exp(excl - excl.index_select(0, layout.seg_start)).to(probs.dtype)  # (N,) same pixel only
        weight = occ * trans
    maps = probs.new_zeros(batch * Hp * Wp, K).index_add_(0, layout.pixel, probs * weight[:, None])
    wmap = probs.new_zeros(batch * Hp * Wp).index_add_(0, layout.pixel, weight)
    maps = maps.view(batch, Hp, Wp, K).permute(0, 3, 1, 2)
    return maps, wmap.view(batch, 1, Hp, Wp)


def occupied_class_probs(logits: Tensor, empty_index: int) -> tuple[Tensor, Tensor]:
    """(M, K) class logits -> the class distribution given occupied (M, K; 0 on ``empty_index``) and the
    occupancy ``1 - p(empty)`` (M,), the two inputs of :func:`composite`."""
    occ = 1.0 - logits.softmax(1)[:, empty_index]
    empty = torch.tensor([empty_index], device=logits.device)
    return logits.index_fill(1, empty, float("-inf")).softmax(1), occ


def gather_voxels(grid: Tensor, layout: RayLayout) -> Tensor:
    """(B, C, X, Y, Z) -> (N, C) values of the layout's entries (rows; cheapest on a channels-last grid)."""
    C = grid.shape[1]
    return grid.movedim(1, -1).reshape(-1, C).index_select(0, layout.voxel)


def scatter_project(
    probs: Tensor,
    occ_prob: Tensor | None,
    voxel_centers: Tensor,
    lidar_to_image: Tensor,
    image_hw: tuple[int, int],
    layout: RayLayout | None = None,
) -> tuple[Tensor, Tensor]:
    """Scatter-accumulate voxel class probabilities onto the image plane with visibility weights.

    Args:
        probs: (B, K, X, Y, Z) class probabilities.
        occ_prob: (B, 1, X, Y, Z) occupancy probability (None: nearest voxel per pixel wins).
        voxel_centers: (X*Y*Z, 3) LiDAR-frame voxel centres in C order.
        lidar_to_image: (B, 3, 4) mapping to pixels of an image of size ``image_hw`` (scale it for strides).
        image_hw: (Hp, Wp).
        layout: a precomputed :func:`ray_layout` for these centres/matrices (optional).

    Returns:
        maps (B, K, Hp, Wp) = sum_i w_i probs_i, weight (B, 1, Hp, Wp) = sum_i w_i (0 where nothing projects).
    """
    if probs.shape[2:].numel() != voxel_centers.shape[0]:
        raise ValueError(f"voxel_centers has {voxel_centers.shape[0]} rows, expected X*Y*Z = {probs.shape[2:].numel()}")
    if layout is None:
        layout = ray_layout(voxel_centers, lidar_to_image, image_hw)
    occ = None if occ_prob is None else gather_voxels(occ_prob, layout)[:, 0]  # (N,)
    return composite(gather_voxels(probs, layout), occ, layout, probs.shape[0], image_hw)


class LayoutCache:
    """Small LRU cache of :class:`RayLayout` keyed by the calibration matrices (they rarely change)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[tuple, RayLayout] = OrderedDict()

    def get(self, voxel_centers: Tensor, lidar_to_image: Tensor, image_hw: tuple[int, int]) -> RayLayout:
        """The layout of these matrices, computed on a miss."""
        key = (
            str(lidar_to_image.device),
            tuple(image_hw),
            voxel_centers.data_ptr(),
            lidar_to_image.detach().cpu().double().numpy().tobytes(),
        )
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        with torch.no_grad():
            layout = ray_layout(voxel_centers, lidar_to_image.detach(), image_hw)
        self._items[key] = layout
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return layout
