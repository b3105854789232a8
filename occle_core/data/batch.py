"""Batches: a list of :class:`~occle_core.data.sample.Sample` -> the tensors the network and the losses read.

Network inputs and training targets are built apart. :func:`collate_inputs` (training, evaluation, inference)
takes the configured camera set of every frame (:func:`select_views`), resizes each camera's image (and scales
its calibration) to ``cfg.data.image_size`` and keeps the LiDAR points inside the output grid (a random subset
beyond ``cfg.data.max_points``). :func:`add_targets` (training only)
adds the voxel targets: labels (invalid voxels set to 255, see :func:`voxel_truth`), the label-budget mask, the
2D and lifted 3D pseudo labels and the LiDAR free-space masks. :func:`collate` is the two in a row.

Cameras: a batch of B frames with N cameras each stacks the per-camera tensors frame-major, row ``b * N + n``
is camera ``n`` of frame ``b`` (``image`` (B*N, 3, H, W), ``lidar_to_image`` (B*N, 3, 4), ``pseudo2d``
(B*N, H, W); :meth:`Batch.per_camera` views them as (B, N, ...)). With one camera (N = 1) every tensor has
exactly its single-camera shape (B, 3, H, W), (B, 3, 4), (B, H, W).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from occle_core.config import OccleConfig
from occle_core.data.sample import CameraView, Sample, lidar_origin
from occle_core.geometry import Calib, VoxelGrid, free_space_mask
from occle_core.ground import NEITHER, ground_target
from occle_core.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Batch:
    """Network inputs and training targets of B frames (inputs from :func:`collate_inputs`, targets from
    :func:`add_targets`; the network reads the inputs, :mod:`occle_core.losses` the targets).

    Attributes:
        image: (B*N, 3, H, W) float32, ImageNet-normalised, (H, W) = ``cfg.data.image_size``; row ``b * N + n``
            is camera ``n`` of frame ``b`` (N = ``num_cameras``; one camera: (B, 3, H, W)).
        points: (M, 6) float32 ``[batch_index, x, y, z, intensity, dt]`` in the grid frame, inside the grid; ``dt``
            the point's time offset in seconds (0: the frame's own scan, < 0: a past scan merged in, see
            :func:`point_time`); the network reads it only when ``model.time_features`` is set.
        lidar_to_image: (B*N, 3, 4) float32, homogeneous grid-frame point -> homogeneous pixel of the resized
            image of that camera.
        voxel_labels: (B, X, Y, Z) int64, 255 = ignore (invalid voxels included); None when unlabelled.
        label_mask: (B, X, Y, Z) bool voxels inside the label budget; None when unlabelled.
        pseudo2d: (B*N, H, W) int64 2D pseudo labels of every camera, 255 = none; None when absent.
        pseudo3d: (B, X, Y, Z) int64 lifted 3D pseudo labels, 255 = none; None when absent.
        occupied: (B, X, Y, Z) bool voxels hit by the LiDAR scan; None when not computed.
        free: (B, X, Y, Z) bool voxels crossed by a LiDAR ray (from the sensor,
            :func:`~occle_core.data.sample.lidar_origin`) before its hit; None when not computed.
        ground: (B, X, Y, Z) uint8 ground (1) / raised (0) / neither (255) voxels of the scan
            (:func:`occle_core.ground.ground_target`); None when not computed (only ``loss.ground`` reads it).
        frame_ids: the B frame ids.
        num_cameras: N, the cameras of every frame.
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
    ground: Tensor | None = None
    frame_ids: list[str] = field(default_factory=list)
    num_cameras: int = 1

    def __post_init__(self) -> None:
        n = int(self.num_cameras)
        if n < 1 or self.image.shape[0] % n:
            raise ValueError(f"num_cameras must be >= 1 and divide the image rows {self.image.shape[0]}, got {n}")
        if self.lidar_to_image.shape[0] != self.image.shape[0]:
            raise ValueError(
                f"lidar_to_image has {self.lidar_to_image.shape[0]} rows, expected one per image "
                f"({self.image.shape[0]} = frames x num_cameras)"
            )

    @property
    def batch_size(self) -> int:
        """B (frames; the image stack holds B * N camera images)."""
        return int(self.image.shape[0]) // self.num_cameras

    def per_camera(self, t: Tensor) -> Tensor:
        """A camera-stacked tensor (B*N, ...) viewed as (B, N, ...)."""
        return t.view(self.batch_size, self.num_cameras, *t.shape[1:])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor moved to ``device``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device, non_blocking=non_blocking)
            moved[f.name] = value
        return Batch(**moved)


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


def select_views(sample: Sample, names: list[str]) -> list[CameraView]:
    """The cameras of ``sample`` the network takes: with one camera in ``names`` the front camera (the first,
    whatever its name: KITTI ``image_2`` / ``image_02``, a user's camera); with several, those named, in the
    order of ``names``.

    Raises:
        ValueError: a named camera is missing from the sample.
    """
    if len(names) == 1:
        return sample.cameras[:1]
    by_name = {v.name: v for v in sample.cameras}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"sample {sample.frame_id}: cameras {missing} of the camera set {names} are missing "
            f"(the sample has {list(by_name)})"
        )
    return [by_name[n] for n in names]


def _validate_view(view: CameraView, prefix: str) -> None:
    img = view.image
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{prefix}image must be an (H, W, 3) array, got shape {getattr(img, 'shape', None)}")
    if img.dtype != np.uint8:
        raise ValueError(f"{prefix}image must be uint8 RGB, got dtype {img.dtype}")
    if tuple(img.shape[:2]) != tuple(view.calib.image_size):
        raise ValueError(
            f"{prefix}calib image_size {view.calib.image_size} does not match the image size {tuple(img.shape[:2])}"
        )
    if view.pseudo2d is not None and tuple(view.pseudo2d.shape) != tuple(img.shape[:2]):
        raise ValueError(f"{prefix}pseudo2d has shape {view.pseudo2d.shape}, expected the image size {img.shape[:2]}")


def validate_sample(sample: Sample, grid: VoxelGrid, views: list[CameraView] | None = None) -> None:
    """Raise ``ValueError`` naming the field when ``sample`` does not match the documented shapes/dtypes.

    ``views``: the cameras to check (default: the front camera); errors of camera ``i > 0`` name it
    (``cameras[i] (CAM_BACK): image ...``).
    """
    for i, view in enumerate(views if views is not None else sample.cameras[:1]):
        _validate_view(view, f"cameras[{i}] ({view.name}): " if i else "")
    pts = sample.points
    if not isinstance(pts, np.ndarray) or pts.ndim != 2 or pts.shape[1] < 4:
        raise ValueError(f"points must be an (N, >=4) array (x, y, z, intensity), got {getattr(pts, 'shape', None)}")
    for name in ("voxel_labels", "invalid", "label_mask"):
        value = getattr(sample, name)
        if value is not None and tuple(value.shape) != tuple(grid.shape):
            raise ValueError(f"{name} has shape {tuple(value.shape)}, expected the grid shape {grid.shape}")


def _finite(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points[:, :4], np.float32)
    return pts[np.all(np.isfinite(pts), axis=1)]


def _own_scan(s: Sample) -> np.ndarray:
    """Finite points of the frame's own scan: the first ``extras["current_points"]`` rows of a multi-frame
    sample (``data/multiframe.py``), else all."""
    return _finite(s.points[: s.extras.get("current_points")])


def select_rows(points: np.ndarray, grid: VoxelGrid, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """(N, >=4) -> (M,) int64 sorted rows of the finite points inside ``grid``, a random subset of ``max_points``
    beyond it.

    Column-wise tests: NaN/Inf coordinates fall outside the grid by themselves, rows with a non-finite intensity
    are dropped too. ``points`` is only read (it may be a read-only view of a message).
    """
    pts = np.asarray(points[:, :4], np.float32)  # a view when already float32
    keep = grid.inside_mask(pts)
    keep &= np.isfinite(pts[:, 3])
    rows = np.flatnonzero(keep)  # (M,)
    if max_points > 0 and len(rows) > max_points:
        rows = rows[np.sort(rng.choice(len(rows), max_points, replace=False))]
    return rows


def select_points(points: np.ndarray, grid: VoxelGrid, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """(N, >=4) -> (M, 4) float32 x, y, z, intensity of the rows :func:`select_rows` keeps (a single gather)."""
    return np.asarray(points[:, :4], np.float32)[select_rows(points, grid, max_points, rng)]


def point_time(sample: Sample) -> np.ndarray:
    """(N,) float32 time offset ``dt`` (seconds) of each point: the column ``extras["dt_column"]`` of a multi-frame
    sample (``data/multiframe.py``: 0 for the frame's own scan, < 0 for the past scans), zeros otherwise."""
    col = sample.extras.get("dt_column")
    if col is None:
        return np.zeros(len(sample.points), np.float32)
    return np.asarray(sample.points[:, col], np.float32)


def _frame_rng(frame_id: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(frame_id.encode())])


def collate_inputs(samples: list[Sample], cfg: OccleConfig, rng: np.random.Generator | None = None) -> Batch:
    """The network inputs of ``samples``: camera images, points (with their time offsets, :func:`point_time`),
    grid-to-image matrices, frame ids.

    Args:
        samples: B frames; images may differ in size (each is resized to ``cfg.data.image_size``, its
            calibration scaled accordingly).
        cfg: the configuration (grid, image size, ``max_points``, the camera set ``cfg.data.camera_names()``:
            N cameras per frame, see :func:`select_views`).
        rng: generator of the random point subset; None draws it reproducibly from each frame id.

    Returns:
        a :class:`Batch` whose targets are all None.

    Raises:
        ValueError: empty list, a sample without a camera of the set, or arrays that do not match the documented
            shapes.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    grid = cfg.data.voxel_grid()
    size = tuple(int(v) for v in cfg.data.image_size)
    names = cfg.data.camera_names()
    images, l2i, point_rows = [], [], []
    for b, s in enumerate(samples):
        views = select_views(s, names)
        validate_sample(s, grid, views)
        for view in views:
            images.append(image_to_tensor(view.image, size))
            calib: Calib = view.calib.resized(*size)
            l2i.append(torch.from_numpy(calib.lidar_to_image.astype(np.float32)))
        gen = rng if rng is not None else _frame_rng(s.frame_id, cfg.data.label_seed)
        rows = select_rows(s.points, grid, cfg.data.max_points, gen)  # (M_b,)
        pts = np.asarray(s.points[:, :4], np.float32)[rows]  # (M_b, 4)
        dt = point_time(s)[rows, None]  # (M_b, 1)
        point_rows.append(np.concatenate([np.full((len(pts), 1), b, np.float32), pts, dt], axis=1))
    points = torch.from_numpy(np.concatenate(point_rows, axis=0))
    return Batch(
        image=torch.stack(images),
        points=points.reshape(-1, 6),
        lidar_to_image=torch.stack(l2i),
        frame_ids=[s.frame_id for s in samples],
        num_cameras=len(names),
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
        a copy of ``batch`` with ``voxel_labels`` / ``label_mask`` (labels under the budget), ``pseudo2d``
        (B*N, H, W) (each camera's 2D pseudo labels resized to the network image) / ``pseudo3d`` (lifted to
        voxels through every camera, see :func:`~occle_core.pseudo.lift.lift_views_to_voxels`) and ``occupied``
        / ``free`` (LiDAR free space, rays from :func:`~occle_core.data.sample.lidar_origin`), ``ground`` (ground /
        raised voxels of the scan, only with ``loss.ground`` > 0: it fits a plane per frame); a target is None
        when no camera of any sample carries it, and 255-filled for cameras / samples without it when others have
        it.
    """
    from occle_core.pseudo.lift import lift_views_to_voxels

    grid = cfg.data.voxel_grid()
    size = tuple(int(v) for v in cfg.data.image_size)
    num_classes = cfg.data.classes().num_classes
    names = cfg.data.camera_names()
    B, N = len(samples), len(names)
    views = [select_views(s, names) for s in samples]
    labels = voxel_truth(samples, grid)  # (B, X, Y, Z) uint8 or None
    masks = None if labels is None else labels != IGNORE_INDEX  # (B, X, Y, Z) valid labelled voxels
    has_p2d = any(v.pseudo2d is not None for vs in views for v in vs)
    pseudo2d = np.full((B * N, *size), IGNORE_INDEX, np.uint8) if has_p2d else None
    pseudo3d = np.full((B, *grid.shape), IGNORE_INDEX, np.uint8) if has_p2d else None
    occupied = np.zeros((B, *grid.shape), bool)
    free = np.zeros((B, *grid.shape), bool)
    ground = np.full((B, *grid.shape), NEITHER, np.uint8) if cfg.loss.ground > 0 else None
    for b, s in enumerate(samples):
        if masks is not None and s.label_mask is not None:
            masks[b] &= np.asarray(s.label_mask, bool)
        labelled = [(np.asarray(v.pseudo2d, np.uint8), v.calib) for v in views[b] if v.pseudo2d is not None]
        for n, v in enumerate(views[b]):
            if v.pseudo2d is not None:
                pseudo2d[b * N + n] = resize_nearest(np.asarray(v.pseudo2d, np.uint8), size)
        if labelled:
            pseudo3d[b] = lift_views_to_voxels(_own_scan(s), labelled, grid, num_classes)
        # every finite return: rays of points beyond the grid still cross (and free) voxels inside it; they start
        # at the LiDAR mount (nuScenes / Occ3D: ~(0.94, 0, 1.84) m in the ego grid frame), not at the grid origin
        occupied[b], free[b] = free_space_mask(grid, _own_scan(s)[:, :3], lidar_origin(s))
        if ground is not None:
            ground[b] = ground_target(_own_scan(s), grid, block=cfg.model.feature_stride)

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
        ground=tensor(ground),
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
