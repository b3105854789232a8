"""LiDAR encoder: points -> voxel features -> submanifold + strided sparse 3D convolutions.

The points are voxelised at the feature resolution (the output grid coarsened by ``stride``); each active
voxel holds the mean of its points' features (offset from the voxel centre, intensity), its point count,
its height, and which of its ``stride**3`` output-resolution children are hit (space-to-depth occupancy, so
no output-resolution detail is lost while the 3D convolutions run on a grid ``stride**3`` times smaller).
A multi-frame model (``model.time_features``) adds two channels per voxel, the share of its points from the current
scan and their mean age (:func:`voxelize_points`); a single-frame model's input width is unchanged. The same
in-grid indexing (:func:`in_grid`) gives the maps of the scan read beside the encoder: :func:`hit_bits` (the logits
head's hit skip) and the class decision's ground gate (:mod:`occle_core.model.ground_gate`).

Two interchangeable backends run the sparse convolutions:

- ``spconv``: ``spconv.pytorch`` ``SubMConv3d`` / ``SparseConv3d`` on the active voxels. The CPU wheel only
  runs the forward pass (its backward asserts CUDA), so it is the CUDA training / inference path.
- ``dense``: ``Conv3d`` on the dense grid multiplied by the occupancy mask. At active sites a submanifold
  convolution is exactly a dense convolution of the zero-filled grid; a strided convolution's output sites
  are those whose receptive field holds an active input (a max-pool of the mask). This is the CPU path.

spconv 2.3.8's CPU convolutions race when torch runs more than one intra-op thread (wrong, non-deterministic
sums), so the spconv path runs single-threaded on CPU.

Both read the same parameters, stored in spconv's layout (weight ``(out, k, k, k, in)``), so one state dict
loads into either; ``lidar_backend="auto"`` picks spconv on CUDA when it is importable, dense otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occle_core.geometry import VoxelGrid
from occle_core.model.layers import PointwiseConv3d, space_to_depth3d, to_cl

BACKENDS = ("auto", "spconv", "dense")
POINT_FEATURES = 6  # offset xyz (voxel units), mean intensity, log1p(count), height in the grid
TIME_FEATURES = 2  # multi-frame input only: share of current-scan points, mean age in seconds


def spconv_available() -> bool:
    """True when ``spconv.pytorch`` imports."""
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def in_channels_for(stride: int, time_features: bool = False) -> int:
    """Per-voxel input channels of the encoder at feature ``stride``: point features + stride**3 occupancy bits
    (+ the two time features of a multi-frame model)."""
    return POINT_FEATURES + stride**3 + (TIME_FEATURES if time_features else 0)


@dataclass
class VoxelFeatures:
    """Active voxels of a batch at the feature resolution.

    Attributes:
        coords: (N, 4) int64 ``[batch, i, j, k]`` unique active voxel indices.
        feats: (N, C_in) float32 input features.
        spatial_shape: (Xs, Ys, Zs) of the feature grid.
        batch_size: B.
    """

    coords: Tensor
    feats: Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int

    def dense(self) -> tuple[Tensor, Tensor]:
        """Zero-filled dense grid (B, C, Xs, Ys, Zs) (channels-last memory) and its mask (B, 1, Xs, Ys, Zs) float."""
        B, C = self.batch_size, self.feats.shape[1]
        Xs, Ys, Zs = self.spatial_shape
        flat = flat_index(*self.coords.unbind(1), self.spatial_shape)  # (N,)
        grid = self.feats.new_zeros(B * Xs * Ys * Zs, C)
        grid.index_copy_(0, flat, self.feats)
        mask = self.feats.new_zeros(B * Xs * Ys * Zs)
        mask[flat] = 1.0
        grid = grid.view(B, Xs, Ys, Zs, C).permute(0, 4, 1, 2, 3)  # (B, C, Xs, Ys, Zs), channels-last
        return grid, mask.view(B, 1, Xs, Ys, Zs)


def flat_index(b: Tensor, i: Tensor, j: Tensor, k: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """(N,) flat index of voxel (i, j, k) of batch item b in a (B, X, Y, Z) grid."""
    X, Y, Z = shape
    return ((b * X + i) * Y + j) * Z + k


def in_grid(points: Tensor, grid: VoxelGrid, batch_size: int) -> tuple[Tensor, Tensor]:
    """The rows of ``points`` (M, 5 or 6) inside the grid and the batch, as float32, and their (M', 3) int64
    output-resolution voxel indices; rows with a non-finite coordinate or intensity are dropped."""
    origin = torch.tensor(grid.origin, dtype=torch.float32, device=points.device)
    pts = points.float()
    fine_f = torch.floor((pts[:, 1:4] - origin) / grid.voxel_size)  # (M, 3) output-resolution index, as float
    frame = pts[:, 0]
    keep = torch.isfinite(pts[:, 4]) & (frame >= 0) & (frame < batch_size)  # NaN compares False: dropped too
    for axis, n in enumerate(grid.shape):  # column by column: row-wise .all(1) over (M, 3) is slower
        keep &= (fine_f[:, axis] >= 0) & (fine_f[:, axis] < n)
    if not bool(keep.all()):  # the Predictor crops to the grid already: usually nothing to drop
        pts, fine_f = pts[keep], fine_f[keep]
    return pts, fine_f.long()


def hit_bits(points: Tensor, grid: VoxelGrid, stride: int, batch_size: int, current_only: bool = False) -> Tensor:
    """Which output voxels hold a return, space-to-depth at the feature resolution.

    Args:
        points: (M, 5) or (M, 6) as :func:`voxelize_points`.
        grid, stride, batch_size: as :func:`voxelize_points`.
        current_only: leave out the rows with ``dt != 0`` (past scans merged in, a multi-frame model), so that a
            moving object's trail is not marked; False ignores ``dt`` as a single-frame model does.

    Returns:
        (B, s^3, X/s, Y/s, Z/s) float 0 / 1, channel ``(a * s + b) * s + d`` = child (a, b, d) of each feature
        voxel, the order of :func:`~occle_core.model.layers.depth_to_space3d` and of the encoder's occupancy
        input; channels-last memory.
    """
    if current_only and points.shape[1] == 6:
        points = points[points[:, 5] == 0]
    pts, fine = in_grid(points, grid, batch_size)  # (M, 3)
    b = pts[:, 0].long()
    occ = torch.zeros(batch_size * grid.num_voxels, dtype=torch.float32, device=points.device)
    occ[flat_index(b, *fine.unbind(1), grid.shape)] = 1.0
    return to_cl(space_to_depth3d(occ.view(batch_size, 1, *grid.shape), stride))


def voxelize_points(
    points: Tensor, grid: VoxelGrid, stride: int, batch_size: int, time_features: bool = False
) -> VoxelFeatures:
    """Mean point features per active voxel of ``grid`` coarsened by ``stride`` (vectorised scatter).

    Args:
        points: (M, 5) ``[batch_index, x, y, z, intensity]`` or (M, 6) with ``dt`` last (seconds, 0 for the
            current scan, < 0 for the past scans merged in, ``data/multiframe.py``); (M, 5) reads as dt = 0.
            Points outside the grid (or the batch) are dropped.
        grid: the output grid; the feature grid is ``grid.scaled(stride)``.
        stride: coarsening factor (1, 2, 4...).
        batch_size: B (frames without points simply have no active voxel).
        time_features: append the two time channels (a multi-frame model); False ignores ``dt`` entirely, so a
            single-frame model computes exactly what it did before the time column existed.

    Returns:
        the active voxels with features ``[dx, dy, dz, intensity, log1p(count), height, occ_0..occ_{s^3-1}]``:
        mean offset from the voxel centre in voxel units, mean intensity, point count, the voxel's normalised
        height in the grid (-1 bottom .. 1 top), and which output-resolution children hold a point; with
        ``time_features`` then ``[current, age]``:

        - ``current``: the share of the voxel's points with ``dt == 0`` (the current scan). 1 = seen now, 0 = seen
          only in past scans: a moving object's trail (and space it has left) is past-only, so this is what
          separates it from where the object is now; a static surface seen in every scan sits in between.
        - ``age``: the mean ``|dt|`` of the voxel's points in seconds, unnormalised. An age in seconds means the
          same for any window length K and any scan rate (a model trained with K = 4 reads a shorter window at
          the start of a sequence correctly, where normalising by the window would stretch it), and with a few
          scans at 10-20 Hz it is already O(0.1..1), the scale of the other inputs.
    """
    if points.ndim != 2 or points.shape[1] not in (5, 6):
        raise ValueError(
            f"points must be (M, 5) [batch, x, y, z, intensity] or (M, 6) with dt, got {tuple(points.shape)}"
        )
    coarse_shape = tuple(s // stride for s in grid.shape)
    if any(s % stride for s in grid.shape):
        raise ValueError(f"grid shape {grid.shape} is not divisible by the feature stride {stride}")
    pts, fine = in_grid(points, grid, batch_size)  # (M, 5 or 6), (M, 3)
    origin = torch.tensor(grid.origin, dtype=torch.float32, device=points.device)
    b = pts[:, 0].long()
    coarse = torch.div(fine, stride, rounding_mode="floor")  # (M, 3)
    Xs, Ys, Zs = coarse_shape
    key = flat_index(b, *coarse.unbind(1), coarse_shape)  # (M,) flat (b, x, y, z)
    uniq, inverse = torch.unique(key, return_inverse=True)  # (N,), (M,)
    n = uniq.numel()
    coords = torch.stack([uniq // (Xs * Ys * Zs), (uniq // (Ys * Zs)) % Xs, (uniq // Zs) % Ys, uniq % Zs], 1)  # (N, 4)
    cell = grid.voxel_size * stride
    centre = origin + (coarse.float() + 0.5) * cell  # (M, 3)
    per_point = torch.cat([(pts[:, 1:4] - centre) / cell, pts[:, 4:5], torch.ones_like(pts[:, :1])], 1)  # (M, 5)
    sums = pts.new_zeros(n, 5).index_add_(0, inverse, per_point)
    count = sums[:, 4:5].clamp_min(1.0)
    height = (coords[:, 3:4].float() + 0.5) / Zs * 2.0 - 1.0
    rem = fine - coarse * stride  # (M, 3) position inside the coarse voxel
    child = (rem[:, 0] * stride + rem[:, 1]) * stride + rem[:, 2]  # (M,) child offset
    occ = pts.new_zeros(n, stride**3)
    occ[inverse, child] = 1.0
    parts = [sums[:, :4] / count, torch.log1p(sums[:, 4:5]), height, occ]
    if time_features:
        dt = pts[:, 5:6] if pts.shape[1] == 6 else pts.new_zeros(len(pts), 1)  # (M, 1)
        per_time = torch.cat([(dt == 0).float(), dt.abs()], 1)  # (M, 2) current scan?, age
        parts.append(pts.new_zeros(n, TIME_FEATURES).index_add_(0, inverse, per_time) / count)
    feats = torch.cat(parts, 1)  # (N, 6 + s^3 [+ 2])
    return VoxelFeatures(coords, feats, coarse_shape, batch_size)


@contextmanager
def single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run spconv's CPU kernels with one intra-op thread: spconv 2.3.8's CPU convolutions race with more than one
    (non-deterministic, wrong sums; checked against a float64 dense reference), so they run single-threaded."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the active voxels only (same state dict as ``nn.BatchNorm1d``).

    ``forward`` takes (N, C) features (spconv path); :meth:`dense` takes a zero-filled dense grid and its mask
    and computes the statistics over the active sites only, so both paths agree. With fewer than two active
    voxels in training the running statistics are used (and not updated).
    """

    def forward(self, x: Tensor) -> Tensor:  # (N, C)
        if self.training and x.shape[0] >= 2:
            return super().forward(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def dense(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, C, X, Y, Z) zero at inactive sites, mask (B, 1, X, Y, Z) -> normalised x, zero where inactive."""
        n = mask.sum()
        shape = (1, -1, 1, 1, 1)
        if self.training and float(n) >= 2:
            dims = (0, 2, 3, 4)
            xf = x.float()  # statistics in float32 (sums of squares overflow float16 under autocast)
            mean = (xf * mask).sum(dims) / n  # (C,)
            var = (((xf - mean.view(shape)) * mask) ** 2).sum(dims) / n  # (C,) biased
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight / torch.sqrt(var + self.eps)  # (C,)
        shift = self.bias - mean * scale
        return ((x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)) * mask).to(x.dtype)


class SparseConv3d(nn.Module):
    """A submanifold (``subm=True``, stride 1) or strided sparse 3D convolution with both backends.

    Parameters are stored in spconv's layout: ``weight`` (out, k, k, k, in), ``bias`` (out,).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        subm: bool = True,
        indice_key: str | None = None,
    ) -> None:
        super().__init__()
        if subm and stride != 1:
            raise ValueError("a submanifold convolution has stride 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.subm = kernel_size, stride, subm
        self.padding = kernel_size // 2
        self.indice_key = indice_key
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        fan_in = in_channels * k**3
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_in))

    def dense_weight(self) -> Tensor:
        """The weight in ``Conv3d`` layout (out, in, k, k, k)."""
        return self.weight.permute(0, 4, 1, 2, 3)

    def forward_dense(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, X, Y, Z) zero at inactive sites, mask (B, 1, X, Y, Z) -> (output grid, output mask)."""
        if not self.subm:
            mask = F.max_pool3d(mask, self.kernel_size, self.stride, self.padding)
        y = F.conv3d(x, self.dense_weight(), self.bias, self.stride, self.padding)
        return y * mask, mask

    def spconv_module(self) -> nn.Module:
        """The spconv module running this layer, sharing this layer's parameters (built once, not a child)."""
        mod = self.__dict__.get("_spconv")
        if mod is None:
            import spconv.pytorch as spc

            cls = spc.SubMConv3d if self.subm else spc.SparseConv3d
            mod = cls(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                stride=self.stride,
                padding=self.padding,
                bias=True,
                indice_key=self.indice_key,  # a strided conv's key lets a SparseInverseConv3d undo it
            )
            self.__dict__["_spconv"] = check_spconv_layout(mod, self.weight)
        mod.weight = self.weight
        mod.bias = self.bias
        return mod

    def extra_repr(self) -> str:
        kind = "subm" if self.subm else f"stride={self.stride}"
        return f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, {kind}"


def check_spconv_layout(mod: nn.Module, weight: Tensor) -> nn.Module:
    """``mod`` (an spconv layer) when it stores its weight in the (out, k, k, k, in) layout of ``weight``."""
    if tuple(mod.weight.shape) != tuple(weight.shape):
        raise RuntimeError(
            f"installed spconv stores conv weights as {tuple(mod.weight.shape)}, expected the "
            f"(out, k, k, k, in) layout {tuple(weight.shape)} of spconv 2.x"
        )
    return mod


class SparseBlock(nn.Module):
    """A sparse convolution (:class:`SparseConv3d` or any layer with ``forward_dense`` and ``spconv_module``)
    -> SparseBatchNorm -> ReLU."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bn = SparseBatchNorm(conv.out_channels)

    def forward_dense(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        y, mask = self.conv.forward_dense(x, mask)
        return F.relu(self.bn.dense(y, mask)), mask

    def forward_spconv(self, x):  # spconv.SparseConvTensor -> SparseConvTensor
        y = self.conv.spconv_module()(x)
        return y.replace_feature(F.relu(self.bn(y.features)))


class SparseLevels(nn.Module):
    """The encoder levels of a sparse 3D network on the voxelised scan, with the backend choice.

    Levels ``l = 0..L-1`` have ``channels[l]`` channels at ``stride * 2**l`` of the output grid: level 0 is two
    submanifold convolutions (indice key ``subm0``), every further level a strided sparse convolution (key
    ``down{l}``) and a submanifold one (key ``subm{l}``).

    Args:
        grid: the output voxel grid.
        channels: channels per level, e.g. ``[8, 16, 32]``.
        stride: feature stride relative to the output grid (2: a 256x256x32 grid gives 128x128x16 features).
        backend: ``auto`` | ``spconv`` | ``dense``.
        time_features: voxel features carry the two time channels of multi-frame input (:func:`voxelize_points`).
    """

    def __init__(
        self,
        grid: VoxelGrid,
        channels: list[int],
        stride: int = 2,
        backend: str = "auto",
        time_features: bool = False,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"model.lidar_backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "spconv" and not spconv_available():
            raise ValueError("model.lidar_backend 'spconv' requested but spconv.pytorch is not importable")
        self.grid, self.stride, self.backend, self.time_features = grid, stride, backend, time_features
        self.in_channels = in_channels_for(stride, time_features)
        self.feature_shape = tuple(s // stride for s in grid.shape)
        self.levels = nn.ModuleList()
        prev = self.in_channels
        for level, ch in enumerate(channels):
            key = f"subm{level}"
            first = (
                SparseConv3d(prev, ch, 3, 1, True, key)
                if level == 0
                else SparseConv3d(prev, ch, 3, 2, False, f"down{level}")
            )
            self.levels.append(nn.Sequential(SparseBlock(first), SparseBlock(SparseConv3d(ch, ch, 3, 1, True, key))))
            prev = ch

    def resolve_backend(self, device: torch.device) -> str:
        """The backend that runs on ``device``: ``auto`` -> spconv on CUDA when importable, else dense."""
        if self.backend == "auto":
            return "spconv" if device.type == "cuda" and spconv_available() else "dense"
        return self.backend

    def sparse_input(self, vox: VoxelFeatures):
        """The voxels as an ``spconv.SparseConvTensor``; refuses training on CPU (the CPU wheel has no backward)."""
        import spconv.pytorch as spc

        if self.training and torch.is_grad_enabled() and vox.feats.device.type != "cuda":
            raise RuntimeError(
                "the spconv backend cannot train on CPU (the CPU wheel has no backward); "
                "set model.lidar_backend to 'dense' or 'auto'"
            )
        return spc.SparseConvTensor(vox.feats, vox.coords.int(), list(vox.spatial_shape), vox.batch_size)

    def voxelize(self, points: Tensor, batch_size: int) -> VoxelFeatures:
        """:func:`voxelize_points` at this network's grid, stride and time features."""
        return voxelize_points(points, self.grid, self.stride, batch_size, self.time_features)


def densify(x) -> tuple[Tensor, Tensor]:
    """An ``spconv.SparseConvTensor`` -> dense grid (B, C, ...) (channels-last memory), zero at inactive sites, and
    its mask (B, 1, ...) float."""
    dense = to_cl(x.dense())
    idx = x.indices.long()
    mask = dense.new_zeros(dense.shape[0], 1, *dense.shape[2:])
    mask[idx[:, 0], 0, idx[:, 1], idx[:, 2], idx[:, 3]] = 1.0
    return dense, mask


class LidarEncoder(SparseLevels):
    """Sparse 3D encoder of the LiDAR scan, densified into a feature grid: the :class:`SparseLevels` densified,
    mapped to ``out_channels`` (1x1) and summed at level 0's resolution (no decoder; the semantic branch's
    encoder-decoder is :class:`~occle_core.model.sparse_unet3d.SparseUNet3D`).

    Args:
        grid, channels, stride, backend, time_features: as :class:`SparseLevels`.
        out_channels: channels of the output grid.
    """

    def __init__(
        self,
        grid: VoxelGrid,
        channels: list[int],
        out_channels: int,
        stride: int = 2,
        backend: str = "auto",
        time_features: bool = False,
    ) -> None:
        super().__init__(grid, channels, stride, backend, time_features)
        self.lateral = nn.ModuleList(PointwiseConv3d(ch, out_channels) for ch in channels)
        self.out_norm = nn.BatchNorm3d(out_channels)

    def encode_levels(self, vox: VoxelFeatures, backend: str) -> list[tuple[Tensor, Tensor]]:
        """Per level the dense features (B, C_l, ...) zero at inactive sites and the mask (B, 1, ...)."""
        if backend == "spconv" and vox.coords.shape[0] > 0:
            return self._levels_spconv(vox)
        x, mask = vox.dense()
        out = []
        for level in self.levels:
            for block in level:
                x, mask = block.forward_dense(x, mask)
            out.append((x, mask))
        return out

    def _levels_spconv(self, vox: VoxelFeatures) -> list[tuple[Tensor, Tensor]]:
        x = self.sparse_input(vox)
        out = []
        with single_thread_on_cpu(vox.feats.device):
            for level in self.levels:
                for block in level:
                    x = block.forward_spconv(x)
                out.append(densify(x))  # (B, C, ...), (B, 1, ...)
        return out

    def forward(self, points: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """Encode a batch of scans.

        Args:
            points: (M, 5) ``[batch_index, x, y, z, intensity]`` or (M, 6) with ``dt`` (M may be 0).
            batch_size: B.

        Returns:
            features (B, out_channels, Xs, Ys, Zs) and the level-0 occupancy mask (B, 1, Xs, Ys, Zs) float.
        """
        vox = self.voxelize(points, batch_size)
        levels = self.encode_levels(vox, self.resolve_backend(points.device))
        size = levels[0][0].shape[2:]
        out = None
        for (feat, _), lateral in zip(levels, self.lateral):
            y = lateral(feat)
            if tuple(y.shape[2:]) != tuple(size):
                y = to_cl(F.interpolate(y, size=size, mode="nearest"))
            out = y if out is None else out + y
        return F.relu(self.out_norm(out)), levels[0][1]
