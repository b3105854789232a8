"""Small building blocks shared by the 3D parts of the network.

The dense 3D feature grids are kept in ``torch.channels_last_3d`` memory format (B, C, X, Y, Z) with C
fastest in memory): oneDNN's 3D convolutions run about twice as fast on it on CPU, and pointwise layers
become plain matrix products over the last axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CL = torch.channels_last_3d


def to_cl(x: Tensor) -> Tensor:
    """(B, C, X, Y, Z) in channels-last-3d memory format (no copy when it already is)."""
    return x.contiguous(memory_format=CL)


def cat_cl(tensors: list[Tensor]) -> Tensor:
    """Concatenate (B, C_i, X, Y, Z) grids along channels into a channels-last-3d result."""
    return torch.cat([t.movedim(1, -1) for t in tensors], -1).movedim(-1, 1)


class PointwiseConv3d(nn.Linear):
    """A 1x1x1 Conv3d computed as ``F.linear`` over the channel axis: (B, Cin, X, Y, Z) -> (B, Cout, X, Y, Z).

    Weight (out, in) as ``nn.Linear``. On a channels-last input the channel axis is contiguous, so this is one
    GEMM and the output is channels-last too.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.movedim(1, -1), self.weight, self.bias).movedim(-1, 1)


def conv3d_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """Conv3d (no bias, 'same' padding) -> BatchNorm3d -> ReLU; a 1x1x1 kernel uses :class:`PointwiseConv3d`."""
    conv = PointwiseConv3d(cin, cout, bias=False) if k == 1 else nn.Conv3d(cin, cout, k, 1, k // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def context_block(channels: int) -> nn.Sequential:
    """3x3x3 spatial context at a third of the cost: Conv3d (3, 3, 1) then (1, 1, 3) (a rank-restricted 3x3x3
    kernel, same receptive field), BatchNorm3d, ReLU. Used as a residual branch: ``x + context_block(x)``."""
    return nn.Sequential(
        nn.Conv3d(channels, channels, (3, 3, 1), 1, (1, 1, 0), bias=False),
        nn.Conv3d(channels, channels, (1, 1, 3), 1, (0, 0, 1), bias=False),
        nn.BatchNorm3d(channels),
        nn.ReLU(inplace=True),
    )


def depth_to_space3d(x: Tensor, s: int) -> Tensor:
    """(B, C * s^3, X, Y, Z) -> (B, C, sX, sY, sZ) contiguous; channel ``c * s^3 + (a * s + b) * s + d`` goes to
    offset (a, b, d) of voxel (x, y, z). Fastest on a standard-contiguous input (only spatial axes interleave)."""
    if s == 1:
        return x.contiguous()
    B, Cs, X, Y, Z = x.shape
    C = Cs // s**3
    x = x.reshape(B, C, s, s, s, X, Y, Z)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(B, C, X * s, Y * s, Z * s)


class UpsampleHead(nn.Module):
    """Pointwise prediction of ``out`` channels at every voxel of a grid ``s`` times finer than the input.

    A linear map to ``out * s^3`` channels followed by depth-to-space, i.e. a transposed convolution with
    kernel = stride = ``s``, computed as one GEMM on the standard-layout input so that the output comes out in
    the standard (B, out, X, Y, Z) layout with only the spatial axes interleaved. :meth:`coarse` gives the head
    averaged over the ``s^3`` children (equal to ``avg_pool3d(forward(x), s)``) without the fine grid.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride, self.out_channels = stride, out_channels
        self.proj = PointwiseConv3d(in_channels, out_channels * stride**3)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, X, Y, Z) -> (B, out, sX, sY, sZ), standard contiguous layout."""
        B, C = x.shape[:2]
        flat = x.contiguous().view(B, C, -1)  # (B, C, V)
        w, b = self.proj.weight, self.proj.bias
        if B == 1:
            y = torch.addmm(b[:, None], w, flat[0])[None]  # (1, out * s^3, V)
        else:
            y = torch.baddbmm(b.view(1, -1, 1).expand(B, -1, 1), w.expand(B, -1, -1), flat)
        return depth_to_space3d(y.view(B, -1, *x.shape[2:]), self.stride)

    def coarse(self, x: Tensor) -> Tensor:
        """(B, C, X, Y, Z) -> (B, out, X, Y, Z): the mean of the ``s^3`` children's predictions."""
        n = self.stride**3
        w = self.proj.weight.view(self.out_channels, n, -1).mean(1)  # (out, C)
        b = self.proj.bias.view(self.out_channels, n).mean(1)  # (out,)
        return F.linear(x.movedim(1, -1), w, b).movedim(-1, 1)
