"""Small building blocks shared by the 3D parts of the network.

The dense 3D feature grids are kept in ``torch.channels_last_3d`` memory format (B, C, X, Y, Z) with C
fastest in memory): oneDNN's 3D convolutions run about twice as fast on it on CPU, and pointwise layers
become plain matrix products over the last axis.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occle_core.model.class_decision import non_empty_mask

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


def space_to_depth3d(x: Tensor, s: int) -> Tensor:
    """(B, C, sX, sY, sZ) -> (B, C * s^3, X, Y, Z), the inverse of :func:`depth_to_space3d` (same channel order)."""
    if s == 1:
        return x
    B, C, Xf, Yf, Zf = x.shape
    x = x.reshape(B, C, Xf // s, s, Yf // s, s, Zf // s, s)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(B, C * s**3, Xf // s, Yf // s, Zf // s)


class UpsampleHead(nn.Module):
    """Pointwise prediction of ``out`` channels at every voxel of a grid ``s`` times finer than the input.

    A linear map to ``out * s^3`` channels followed by depth-to-space, i.e. a transposed convolution with
    kernel = stride = ``s``, computed as one GEMM on the standard-layout input so that the output comes out in
    the standard (B, out, X, Y, Z) layout with only the spatial axes interleaved. :meth:`coarse` gives the head
    averaged over the ``s^3`` children (equal to ``avg_pool3d(forward(x), s)``) without the fine grid;
    :meth:`labels` the class decision ``forward(x).argmax(1)`` without it.
    """

    #: input voxels per GEMM block of :meth:`blocks`: a (out * s^3, 8192) float32 block (5 MB for 20 classes)
    #: stays in a server CPU's L3 until it is decided
    LABEL_BLOCK = 8192

    def __init__(self, in_channels: int, out_channels: int, stride: int, extra_inputs: int = 0) -> None:
        """``extra_inputs``: channels appended to the ``in_channels`` features (the input then has both). Their
        weights are a parameter of their own, ``extra_weight`` (out * s^3, extra_inputs), zero at the start and
        zero when a state dict lacks it (a checkpoint of the head without them): such a head predicts what the
        features alone did until training moves them."""
        super().__init__()
        self.stride, self.out_channels = stride, out_channels
        self.proj = PointwiseConv3d(in_channels, out_channels * stride**3)
        self.extra_weight = nn.Parameter(torch.zeros(out_channels * stride**3, extra_inputs)) if extra_inputs else None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        if self.extra_weight is not None and prefix + "proj.weight" in state_dict:
            state_dict.setdefault(prefix + "extra_weight", torch.zeros_like(self.extra_weight))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def weight(self) -> Tensor:
        """(out * s^3, C) weight over the whole input, the features' columns then the extra inputs'."""
        w = self.proj.weight
        return w if self.extra_weight is None else torch.cat([w, self.extra_weight], 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, X, Y, Z) -> (B, out, sX, sY, sZ), standard contiguous layout."""
        B, C = x.shape[:2]
        flat = x.contiguous().view(B, C, -1)  # (B, C, V)
        w, b = self.weight, self.proj.bias
        if B == 1:
            y = torch.addmm(b[:, None], w, flat[0])[None]  # (1, out * s^3, V)
        else:
            y = torch.baddbmm(b.view(1, -1, 1).expand(B, -1, 1), w.expand(B, -1, -1), flat)
        return depth_to_space3d(y.view(B, -1, *x.shape[2:]), self.stride)

    def blocks(self, x: Tensor) -> Iterator[tuple[int, slice, Tensor]]:
        """The head's output block by block: ``(b, voxels, y)`` with y (out * s^3, n) the logits of the ``n``
        input voxels ``voxels`` (a slice of the flattened X * Y * Z) of batch item ``b``, channel order as
        :func:`depth_to_space3d`. One buffer is reused: use each block before asking for the next one."""
        B, C = x.shape[:2]
        flat = x.movedim(1, -1).reshape(B, -1, C)  # (B, V, C); a view for channels-last input
        V = flat.shape[1]
        # in the features' dtype (half under autocast: out= is not autocast)
        w, b = self.weight.to(x.dtype), self.proj.bias.to(x.dtype)[:, None]  # (out * s^3, C), (out * s^3, 1)
        buf = torch.empty(w.shape[0], min(V, self.LABEL_BLOCK), dtype=x.dtype, device=x.device)
        for i in range(B):
            for lo in range(0, V, self.LABEL_BLOCK):
                hi = min(lo + self.LABEL_BLOCK, V)
                yield i, slice(lo, hi), torch.addmm(b, w, flat[i, lo:hi].t(), out=buf[:, : hi - lo])

    def labels(self, x: Tensor, empty_index: int, forbid: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """(B, C, X, Y, Z) -> (B, sX, sY, sZ) uint8, ``forward(x).argmax(1)``.

        The fine float grid is never built. Each block of :meth:`blocks` (:attr:`LABEL_BLOCK` input voxels) only
        decides "empty or not" (:func:`non_empty_mask`, vectorised) while it is in cache; then, per child offset,
        the logits of the few non-empty output voxels are recomputed from their features (one small GEMM) and
        their first maximum taken. Only uint8 labels are rearranged to the fine grid. At 256 x 256 x 32 with 20
        classes this skips writing and reading two 168 MB float grids per frame. The non-empty voxels' logits come
        from a GEMM of another shape, so a tie within float rounding between two classes may resolve either way.

        Args:
            forbid: optional ``(where, classes)``: (B, sX, sY, sZ) bool output voxels and (k,) int64 class ids
                they may not take (the argmax over the other classes there; the empty class cannot be one of them,
                so a voxel whose maximum is empty stays empty and the "empty or not" pass is unchanged).
        """
        B, C, X, Y, Z = x.shape
        s, K = self.stride, self.out_channels
        n, V = s**3, X * Y * Z
        barred = None
        if forbid is not None:
            where, classes = forbid
            if tuple(where.shape) != (B, s * X, s * Y, s * Z):
                raise ValueError(
                    f"forbid mask must be (B, sX, sY, sZ) = {(B, s * X, s * Y, s * Z)}, got {tuple(where.shape)}"
                )
            if bool((classes == empty_index).any()):
                raise ValueError(f"forbid classes must not include the empty class {empty_index}")
            barred = space_to_depth3d(where[:, None], s).reshape(-1)  # flat (B, s^3, V), the order of ``out``
        non_empty = torch.empty(B, n, V, dtype=torch.bool, device=x.device)  # (B, s^3, V)
        for i, voxels, y in self.blocks(x):
            non_empty_mask(y.view(K, n, -1), empty_index, out=non_empty[i, :, voxels])
        out = torch.full((B * n * V,), empty_index, dtype=torch.uint8, device=x.device)  # flat (B, s^3, V)
        flat = x.movedim(1, -1).reshape(B * V, C)  # (B V, C) features, a view for channels-last input
        w = self.weight.to(x.dtype).view(K, n, C)
        b = self.proj.bias.to(x.dtype).view(K, n)
        for child in range(n):
            rows = non_empty[:, child].reshape(-1).nonzero().squeeze(1)  # (M,) flat (b, v) with a non-empty child
            if rows.numel():
                logits = torch.addmm(b[:, child], flat.index_select(0, rows), w[:, child].t())  # (M, K)
                target = rows + (rows // V) * ((n - 1) * V) + child * V  # flat index into (B, s^3, V)
                if barred is not None:
                    logits[:, classes] = logits[:, classes].masked_fill(barred[target, None], float("-inf"))
                out[target] = logits.max(1).indices.to(torch.uint8)  # first maximum, as argmax
        return depth_to_space3d(out.view(B, n, X, Y, Z), s)[:, 0]  # (B, sX, sY, sZ)

    def coarse(self, x: Tensor) -> Tensor:
        """(B, C, X, Y, Z) -> (B, out, X, Y, Z): the mean of the ``s^3`` children's predictions."""
        n = self.stride**3
        w = self.weight.view(self.out_channels, n, -1).mean(1)  # (out, C)
        b = self.proj.bias.view(self.out_channels, n).mean(1)  # (out,)
        return F.linear(x.movedim(1, -1), w, b).movedim(-1, 1)
