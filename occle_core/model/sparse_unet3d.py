"""Sparse 3D UNet of the semantic branch: the LiDAR encoder's levels, then a decoder back to level 0.

The encoder is :class:`~occle_core.model.lidar_encoder.SparseLevels` (level 0 at the feature resolution, every
further level a strided sparse convolution down by 2). The decoder climbs back one level at a time: a sparse
inverse convolution (the transpose of that level's strided convolution, back to exactly the sites it came
from), its output concatenated with the encoder's features of the same level (skip connection) and merged by a
submanifold convolution. The level-0 result is mapped to ``out_channels`` (1x1), as the LiDAR encoder's output.

Both backends of :mod:`occle_core.model.lidar_encoder` run it from one state dict:

- ``spconv``: ``SparseInverseConv3d`` with the strided convolution's ``indice_key`` (its index pairs reversed).
- ``dense``: ``conv_transpose3d`` of the zero-filled grid multiplied by the mask of the finer level. At an active
  fine site this is the same sum over the coarse sites whose receptive field holds it, so both agree there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occle_core.geometry import VoxelGrid
from occle_core.model.layers import PointwiseConv3d, cat_cl
from occle_core.model.lidar_encoder import (
    SparseBlock,
    SparseConv3d,
    SparseLevels,
    check_spconv_layout,
    densify,
    single_thread_on_cpu,
)


class SparseInverseConv3d(nn.Module):
    """The transpose of the strided :class:`SparseConv3d` with the same ``indice_key``: coarse sites -> the fine
    sites that convolution read.

    Parameters in spconv's layout, ``weight`` (out, k, k, k, in), ``bias`` (out,). ``forward_dense(x, mask)``
    takes the coarse grid and the *fine* level's mask (the output sites).
    """

    def __init__(self, in_channels: int, out_channels: int, indice_key: str, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, kernel_size // 2
        self.indice_key = indice_key
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (in_channels * k**3)))

    def forward_dense(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, x, y, z) zero at inactive coarse sites, mask (B, 1, X, Y, Z) of the fine level -> (y, mask)."""
        k, s, p = self.kernel_size, self.stride, self.padding
        # the output size of a transposed conv is ambiguous by up to s - 1: pick the fine level's size
        pad = [n - ((m - 1) * s - 2 * p + k) for n, m in zip(mask.shape[2:], x.shape[2:])]
        w = self.weight.permute(4, 0, 1, 2, 3)  # (in, out, k, k, k): conv_transpose3d's layout
        y = F.conv_transpose3d(x, w, self.bias, s, p, output_padding=tuple(pad))
        return y * mask, mask

    def spconv_module(self) -> nn.Module:
        """The ``spconv`` ``SparseInverseConv3d`` sharing this layer's parameters (built once, not a child)."""
        mod = self.__dict__.get("_spconv")
        if mod is None:
            import spconv.pytorch as spc

            mod = spc.SparseInverseConv3d(
                self.in_channels, self.out_channels, self.kernel_size, indice_key=self.indice_key, bias=True
            )
            self.__dict__["_spconv"] = check_spconv_layout(mod, self.weight)
        mod.weight = self.weight
        mod.bias = self.bias
        return mod

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, inverse of {self.indice_key}"


class SparseUNet3D(SparseLevels):
    """Sparse 3D encoder-decoder of the LiDAR scan, densified at the feature resolution.

    Decoder step ``l = L-1 .. 1``: inverse convolution ``channels[l] -> channels[l-1]`` to level ``l-1``'s sites
    (batch norm, ReLU), concatenation with level ``l-1``'s encoder features, submanifold convolution
    ``2 * channels[l-1] -> channels[l-1]`` (batch norm, ReLU). Then 1x1 to ``out_channels``, batch norm, ReLU.

    Args:
        grid, channels, stride, backend, time_features: as :class:`~occle_core.model.lidar_encoder.SparseLevels`.
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
        ups = range(1, len(channels))  # decoder step lv: level lv -> level lv - 1
        self.up = nn.ModuleList(
            SparseBlock(SparseInverseConv3d(channels[lv], channels[lv - 1], f"down{lv}")) for lv in ups
        )
        self.merge = nn.ModuleList(
            SparseBlock(SparseConv3d(2 * channels[lv - 1], channels[lv - 1], 3, 1, True, f"subm{lv - 1}")) for lv in ups
        )
        self.out = PointwiseConv3d(channels[0], out_channels)
        self.out_norm = nn.BatchNorm3d(out_channels)

    def decode(self, points: Tensor, batch_size: int, backend: str) -> tuple[Tensor, Tensor]:
        """The decoder's level-0 features (B, channels[0], Xs, Ys, Zs), zero at inactive sites, and the level-0
        mask (B, 1, Xs, Ys, Zs) float, with ``backend`` (``spconv`` | ``dense``)."""
        vox = self.voxelize(points, batch_size)
        if backend == "spconv" and vox.coords.shape[0] > 0:
            return self._decode_spconv(vox)
        x, mask = vox.dense()
        skips = []
        for level in self.levels:
            for block in level:
                x, mask = block.forward_dense(x, mask)
            skips.append((x, mask))
        for lv in range(len(self.levels) - 1, 0, -1):
            skip, mask = skips[lv - 1]
            x, mask = self.up[lv - 1].forward_dense(x, mask)
            x, mask = self.merge[lv - 1].forward_dense(cat_cl([x, skip]), mask)
        return x, mask

    def _decode_spconv(self, vox) -> tuple[Tensor, Tensor]:
        x = self.sparse_input(vox)
        with single_thread_on_cpu(vox.feats.device):
            skips = []
            for level in self.levels:
                for block in level:
                    x = block.forward_spconv(x)
                skips.append(x)
            for lv in range(len(self.levels) - 1, 0, -1):
                skip = skips[lv - 1]
                x = self.up[lv - 1].forward_spconv(x)  # on skip's sites, in skip's order (the conv's input indices)
                x = self.merge[lv - 1].forward_spconv(x.replace_feature(torch.cat([x.features, skip.features], 1)))
            return densify(x)

    def forward(self, points: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """points (M, 5) ``[batch_index, x, y, z, intensity]`` or (M, 6) with ``dt`` -> features
        (B, out_channels, Xs, Ys, Zs) and the level-0 occupancy mask (B, 1, Xs, Ys, Zs) float (the
        :class:`LidarEncoder` signature)."""
        x, mask = self.decode(points, batch_size, self.resolve_backend(points.device))
        return F.relu(self.out_norm(self.out(x))), mask
