"""Batches: a list of :class:`~occle_core.data.sample.Sample` -> the tensors the network and the losses read.

Network inputs and training targets are built apart. :func:`collate_inputs` (training, evaluation, inference)
resizes the front camera's image (and its calibration) to ``cfg.data.image_size`` and keeps the LiDAR points
inside the output grid (a random subset beyond ``cfg.data.max_points``). :func:`add_targets` (training only)
adds the voxel targets: labels (invalid voxels set to 255, see :func:`voxel_truth`), the label-budget mask, the
2D and lifted 3D pseudo labels and the LiDAR free-space masks. :func:`collate` is the two in a row.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from occle_core.config import OccleConfig
from occle_core.data.sample import Sample
from occle_core.geometry import Calib, VoxelGrid
from occle_core.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Batch:
    """Network inputs and training targets of B frames (inputs from :func:`collate_inputs`, targets from
    :func:`add_targets`; the network reads the inputs, :mod:`occle_core.losses` the targets).

    Attributes:
        image: (B, 3, H, W) float32, ImageNet-normalised, (H, W) = ``cfg.data.image_size``.
        points: (M, 5) float32 ``[batch_index, x, y, z, intensity]`` in the LiDAR frame, inside the grid.
        lidar_to_image: (B, 3, 4) float32, homogeneous LiDAR point -> homogeneous pixel of the resized image.
        voxel_labels: (B, X, Y, Z) int64, 255 = ignore (invalid voxels included); None when unlabelled.
        label_mask: (B, X, Y, Z) bool voxels inside the label budget; None when unlabelled.
        pseudo2d: (B, H, W) int64 2D pseudo labels, 255 = none; None when absent.
        pseudo3d: (B, X, Y, Z) int64 lifted 3D pseudo labels, 255 = none; None when absent.
        occupied: (B, X, Y, Z) bool voxels hit by the LiDAR scan; None when not computed.
        free: (B, X, Y, Z) bool voxels crossed by a LiDAR ray before its hit; None when not computed.
        frame_ids: the B frame ids.
    """

    image: Tensor
    points: Tensor
    lidar_to_image: Tensor
    voxel_labels: Tensor | None = None
    label_mask: Tensor | None = None
    pseudo2d: Tensor | None = None
    pseudo3d: Tensor | None = None
    occupied: Tensor | None = None
    free: Tensor | None = None
    frame_ids: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.image.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor moved to ``device``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device, non_blocking=non_blocking)
            moved[f.name] = value
        return Batch(**moved)


def _free_space_fn():
    """``occle_core.geometry.free_space_mask`` when the installed geometry module provides it, else None."""
    from occle_core import geometry

    return getattr(geometry, "free_space_mask", None)


_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD]).view(3, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1)


def image_to_tensor(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32 ImageNet-normalised, bilinearly resized to ``size`` = (h, w).

    The antialiased bilinear resize runs on the uint8 pixels in channels-last layout (torch's vectorised uint8
    path, about 3x faster than resizing floats; the result is rounded to whole grey levels), then converts and
    normalises only the small image.
    """
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
    if tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)  # (1, 3, h, w) uint8
    return torch.addcmul(_SHIFT, x[0].float(), _SCALE).contiguous()  # (x / 255 - mean) / std


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label image to ``size`` = (h, w) (pixel-centre sampling)."""
    H, W = labels.shape
    h, w = size
    if (h, w) == (H, W):
        return labels
    rows = np.minimum(((np.arange(h) + 0.5) * (H / h)).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (W / w)).astype(np.int64), W - 1)
    return labels[rows[:, None], cols[None, :]]


def validate_sample(sample: Sample, grid: VoxelGrid) -> None:
    """Raise ``ValueError`` naming the field when ``sample`` does not match the documented shapes/dtypes."""
    img = sample.image
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) array, got shape {getattr(img, 'shape', None)}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {img.dtype}")
    if tuple(img.shape[:2]) != tuple(sample.calib.image_size):
        raise ValueError(
            f"calib image_size {sample.calib.image_size} does not match the image size {tuple(img.shape[:2])}"
        )
    pts = sample.points
    if not isinstance(pts, np.ndarray) or pts.ndim != 2 or pts.shape[1] < 4:
        raise ValueError(f"points must be an (N, >=4) array (x, y, z, intensity), got {getattr(pts, 'shape', None)}")
    for name in ("voxel_labels", "invalid", "label_mask"):
        value = getattr(sample, name)
        if value is not None and tuple(value.shape) != tuple(grid.shape):
            raise ValueError(f"{name} has shape {tuple(value.shape)}, expected the grid shape {grid.shape}")
    if sample.pseudo2d is not None and tuple(sample.pseudo2d.shape) != tuple(img.shape[:2]):
        raise ValueError(f"pseudo2d has shape {sample.pseudo2d.shape}, expected the image size {img.shape[:2]}")


def _finite(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points[:, :4], np.float32)
    return pts[np.all(np.isfinite(pts), axis=1)]


def _own_scan(s: Sample) -> np.ndarray:
    """Finite points of the frame's own scan: the first ``extras["current_points"]`` rows of a multi-frame
    sample (``data/multiframe.py``), else all."""
    return _finite(s.points[: s.extras.get("current_points")])


def select_points(points: np.ndarray, grid: VoxelGrid, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """(N, >=4) -> (M, 4) float32 finite points inside ``grid``, a random subset of ``max_points`` beyond it.

    Column-wise tests and a single gather: NaN/Inf coordinates fall outside the grid by themselves, rows with a
    non-finite intensity are dropped too. ``points`` is only read (it may be a read-only view of a message).
    """
    pts = np.asarray(points[:, :4], np.float32)  # a view when already float32
    keep = grid.inside_mask(pts)
    keep &= np.isfinite(pts[:, 3])
    rows = np.flatnonzero(keep)  # (M,)
    if max_points > 0 and len(rows) > max_points:
        rows = rows[np.sort(rng.choice(len(rows), max_points, replace=False))]
    return pts[rows]


def _frame_rng(frame_id: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(frame_id.encode())])


def collate_inputs(samples: list[Sample], cfg: OccleConfig, rng: np.random.Generator | None = None) -> Batch:
    """The network inputs of ``samples`` (front camera): image, points, LiDAR-to-image matrices, frame ids.

    Args:
        samples: B frames; images may differ in size (each is resized to ``cfg.data.image_size``).
        cfg: the configuration (grid, image size, ``max_points``).
        rng: generator of the random point subset; None draws it reproducibly from each frame id.

    Returns:
        a :class:`Batch` whose targets are all None.

    Raises:
        ValueError: empty list, or a sample whose arrays do not match the documented shapes.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    grid = cfg.data.voxel_grid()
    size = tuple(int(v) for v in cfg.data.image_size)
    images, l2i, point_rows = [], [], []
    for b, s in enumerate(samples):
        validate_sample(s, grid)
        images.append(image_to_tensor(s.image, size))
        calib: Calib = s.calib.resized(*size)
        l2i.append(torch.from_numpy(calib.lidar_to_image.astype(np.float32)))
        gen = rng if rng is not None else _frame_rng(s.frame_id, cfg.data.label_seed)
        pts = select_points(s.points, grid, cfg.data.max_points, gen)  # (M_b, 4)
        point_rows.append(np.concatenate([np.full((len(pts), 1), b, np.float32), pts], axis=1))
    points = torch.from_numpy(np.concatenate(point_rows, axis=0))
    return Batch(
        image=torch.stack(images),
        points=points.reshape(-1, 5),
        lidar_to_image=torch.stack(l2i),
        frame_ids=[s.frame_id for s in samples],
    )


def voxel_truth(samples: list[Sample], grid: VoxelGrid) -> np.ndarray | None:
    """(B, X, Y, Z) uint8 voxel labels with invalid voxels set to 255 (255-filled for unlabelled samples);
    None when no sample is labelled. What the losses and the metrics score against."""
    if all(s.voxel_labels is None for s in samples):
        return None
    labels = np.full((len(samples), *grid.shape), IGNORE_INDEX, np.uint8)
    for b, s in enumerate(samples):
        if s.voxel_labels is not None:
            labels[b] = s.voxel_labels
            if s.invalid is not None:
                labels[b][np.asarray(s.invalid, bool)] = IGNORE_INDEX
    return labels


def add_targets(batch: Batch, samples: list[Sample], cfg: OccleConfig) -> Batch:
    """``batch`` (from :func:`collate_inputs` of the same ``samples``) with the training targets added.

    Returns:
        a copy of ``batch`` with ``voxel_labels`` / ``label_mask`` (labels under the budget), ``pseudo2d`` /
        ``pseudo3d`` (2D pseudo labels resized to the network image, lifted to voxels) and ``occupied`` /
        ``free`` (LiDAR free space); a target is None when no sample carries it, and 255-filled for samples
        without it when others have it.
    """
    from occle_core.pseudo.lift import lift_to_voxels

    grid = cfg.data.voxel_grid()
    size = tuple(int(v) for v in cfg.data.image_size)
    num_classes = cfg.data.classes().num_classes
    free_space = _free_space_fn()
    B = len(samples)
    labels = voxel_truth(samples, grid)  # (B, X, Y, Z) uint8 or None
    masks = None if labels is None else labels != IGNORE_INDEX  # (B, X, Y, Z) valid labelled voxels
    has_p2d = any(s.pseudo2d is not None for s in samples)
    pseudo2d = np.full((B, *size), IGNORE_INDEX, np.uint8) if has_p2d else None
    pseudo3d = np.full((B, *grid.shape), IGNORE_INDEX, np.uint8) if has_p2d else None
    occupied = np.zeros((B, *grid.shape), bool) if free_space is not None else None
    free = np.zeros((B, *grid.shape), bool) if free_space is not None else None
    for b, s in enumerate(samples):
        if masks is not None and s.label_mask is not None:
            masks[b] &= np.asarray(s.label_mask, bool)
        if s.pseudo2d is not None:
            pseudo2d[b] = resize_nearest(np.asarray(s.pseudo2d, np.uint8), size)
            pseudo3d[b] = lift_to_voxels(_own_scan(s), np.asarray(s.pseudo2d, np.uint8), s.calib, grid, num_classes)
        if free_space is not None:
            # every finite return: rays of points beyond the grid still cross (and free) voxels inside it
            occupied[b], free[b] = free_space(grid, _own_scan(s)[:, :3])

    def tensor(a: np.ndarray | None, long: bool = False) -> Tensor | None:
        return None if a is None else (torch.from_numpy(a).long() if long else torch.from_numpy(a))

    return replace(
        batch,
        voxel_labels=tensor(labels, long=True),
        label_mask=tensor(masks),
        pseudo2d=tensor(pseudo2d, long=True),
        pseudo3d=tensor(pseudo3d, long=True),
        occupied=tensor(occupied),
        free=tensor(free),
    )


def collate(
    samples: list[Sample],
    cfg: OccleConfig,
    rng: np.random.Generator | None = None,
    with_targets: bool = True,
) -> Batch:
    """:func:`collate_inputs`, then (``with_targets``) :func:`add_targets`: a training batch of ``samples``."""
    batch = collate_inputs(samples, cfg, rng)
    return add_targets(batch, samples, cfg) if with_targets else batch
