"""Geometric branch: cross-plane (tri-plane) synergy of LiDAR and image features.

LiDAR features are pooled onto the bird's-eye plane ``xy``; lifted image features (or LiDAR features in the
LiDAR-only model) onto the two vertical planes ``xz`` and ``yz``. The planes exchange information by
axis-aligned cross-plane attention: a plane cell attends to the cells of the other two planes that share one
of its coordinates (cell ``(x, y)`` of ``xy`` attends to row ``x`` of ``xz`` and row ``y`` of ``yz``, i.e. to
the cells whose broadcast lines meet its own vertical line). The planes are then broadcast back along their
missing axis and summed with the LiDAR grid into the geometry feature grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occle_core.model.layers import PointwiseConv3d, context_block, to_cl

# For each plane: its axes (of x, y, z) and, for each of the other planes, the axis they share.
PLANES = ("xy", "xz", "yz")


def _conv2d_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CrossPlaneAttention(nn.Module):
    """Axis-aligned multi-head attention between the three planes, with residuals and a 3x3 conv per plane.

    Query cell ``(a, b)`` of plane P attends to every cell of the other planes that shares coordinate ``a`` or
    ``b`` with it (2 * extent keys); one softmax runs over the keys of both other planes.
    """

    def __init__(self, channels: int, heads: int = 1) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.ModuleDict({p: nn.Conv2d(channels, 3 * channels, 1) for p in PLANES})
        self.proj = nn.ModuleDict({p: nn.Conv2d(channels, channels, 1) for p in PLANES})
        self.ffn = nn.ModuleDict({p: _conv2d_bn_relu(channels, channels) for p in PLANES})

    def forward(self, xy: Tensor, xz: Tensor, yz: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """xy (B, C, X, Y), xz (B, C, X, Z), yz (B, C, Y, Z) -> the same shapes, after one exchange."""
        B, C = xy.shape[:2]
        h, d = self.heads, C // self.heads
        scale = 1.0 / math.sqrt(d)

        def split(p: str, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            q, k, v = self.qkv[p](t).chunk(3, 1)  # each (B, C, a, b)
            return tuple(u.reshape(B, h, d, *u.shape[2:]) for u in (q, k, v))  # (B, h, d, a, b)

        q1, k1, v1 = split("xy", xy)  # (B, h, d, X, Y)
        q2, k2, v2 = split("xz", xz)  # (B, h, d, X, Z)
        q3, k3, v3 = split("yz", yz)  # (B, h, d, Y, Z)
        n2 = q2.shape[-1]  # Z keys from xz / yz for the xy queries
        # xy query (x, y): keys xz[x, :] and yz[y, :]
        s_a = torch.einsum("bhdxy,bhdxz->bhxyz", q1, k2) * scale
        s_b = torch.einsum("bhdxy,bhdyz->bhxyz", q1, k3) * scale
        w = torch.cat([s_a, s_b], -1).softmax(-1)  # (B, h, X, Y, 2Z)
        o1 = torch.einsum("bhxyz,bhdxz->bhdxy", w[..., :n2], v2) + torch.einsum("bhxyz,bhdyz->bhdxy", w[..., n2:], v3)
        # xz query (x, z): keys xy[x, :] and yz[:, z]
        ny = q1.shape[-1]
        s_a = torch.einsum("bhdxz,bhdxy->bhxzy", q2, k1) * scale
        s_b = torch.einsum("bhdxz,bhdyz->bhxzy", q2, k3) * scale
        w = torch.cat([s_a, s_b], -1).softmax(-1)  # (B, h, X, Z, 2Y)
        o2 = torch.einsum("bhxzy,bhdxy->bhdxz", w[..., :ny], v1) + torch.einsum("bhxzy,bhdyz->bhdxz", w[..., ny:], v3)
        # yz query (y, z): keys xy[:, y] and xz[:, z]
        nx = q1.shape[-2]
        s_a = torch.einsum("bhdyz,bhdxy->bhyzx", q3, k1) * scale
        s_b = torch.einsum("bhdyz,bhdxz->bhyzx", q3, k2) * scale
        w = torch.cat([s_a, s_b], -1).softmax(-1)  # (B, h, Y, Z, 2X)
        o3 = torch.einsum("bhyzx,bhdxy->bhdyz", w[..., :nx], v1) + torch.einsum("bhyzx,bhdxz->bhdyz", w[..., nx:], v2)
        out = []
        for p, t, o in (("xy", xy, o1), ("xz", xz, o2), ("yz", yz, o3)):
            t = t + self.proj[p](o.reshape(B, C, *o.shape[-2:]))
            out.append(t + self.ffn[p](t))
        return out[0], out[1], out[2]


def masked_mean(x: Tensor, weight: Tensor, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` weighted by ``weight`` (broadcastable, >= 0); 0 where the weights sum to 0."""
    return (x * weight).sum(dim) / weight.sum(dim).clamp_min(1e-6)


class GeometricBranch(nn.Module):
    """Tri-plane geometry features from the LiDAR grid and the lifted image grid.

    Args:
        feat_dim: channels F of the input grids and of the output.
        use_image: False: the vertical planes are pooled from the LiDAR grid (LiDAR-only model).
        heads: attention heads (default: one per 16 channels).
    """

    def __init__(self, feat_dim: int, use_image: bool = True, heads: int | None = None) -> None:
        super().__init__()
        self.use_image = use_image
        self.bev = nn.Sequential(nn.Conv2d(2 * feat_dim, feat_dim, 1, bias=False), nn.BatchNorm2d(feat_dim), nn.ReLU())
        self.vertical = nn.ModuleDict(
            {
                p: nn.Sequential(nn.Conv2d(feat_dim, feat_dim, 1, bias=False), nn.BatchNorm2d(feat_dim))
                for p in PLANES[1:]
            }
        )
        self.attention = CrossPlaneAttention(feat_dim, heads or max(1, feat_dim // 16))
        self.lidar_proj = PointwiseConv3d(feat_dim, feat_dim, bias=False)
        self.expand_norm = nn.BatchNorm3d(feat_dim)
        self.context = context_block(feat_dim)

    def forward(self, lidar: Tensor, image: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """lidar (B, F, X, Y, Z), lifted image (B, F, X, Y, Z) + validity (B, 1, X, Y, Z) -> (B, F, X, Y, Z)."""
        xy = self.bev(torch.cat([lidar.mean(4), lidar.amax(4)], 1))  # (B, F, X, Y)
        if self.use_image:
            if image is None or valid is None:
                raise ValueError("GeometricBranch built with use_image=True needs the lifted image features")
            src, wgt = image, valid
        else:
            src, wgt = lidar, torch.ones_like(lidar[:, :1])
        xz = self.vertical["xz"](masked_mean(src, wgt, 3))  # (B, F, X, Z)
        yz = self.vertical["yz"](masked_mean(src, wgt, 2))  # (B, F, Y, Z)
        xy, xz, yz = self.attention(xy, xz, yz)
        grid = self.lidar_proj(lidar) + xy.unsqueeze(4) + xz.unsqueeze(3) + yz.unsqueeze(2)  # (B, F, X, Y, Z)
        grid = F.relu(self.expand_norm(to_cl(grid)))
        return grid + self.context(grid)
