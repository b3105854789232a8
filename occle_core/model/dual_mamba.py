"""Dual Mamba fusion of the semantic and geometric feature grids (OccLE), and its convolutional ablation.

OccLE's two branches see the scene differently: the semantic branch knows *what* a voxel is (from the 2D
foundation-model pseudo labels), the geometric branch knows *whether* it is occupied (from LiDAR and the
cross-plane image features). The Dual Mamba lets each guide the other over the whole scene at linear cost:

1. Tokens. Both grids (already downsampled by the caller) are flattened in x-y-z order (z fastest) into
   sequences of L = X * Y * Z tokens, projected to ``d_model``, and given the same learned embedding of the
   normalised voxel coordinates, so the two token sequences are aligned position by position.
2. Coupled streams. Each layer runs a semantic stream and a geometric stream, coupled twice:
   - feature exchange: each stream's input is its own tokens plus a gated projection of the other stream's
     output of the previous layer (the gate ``sigmoid(W [own, other])`` is per token and channel, so a
     stream takes only what helps it);
   - selection guidance: inside each stream's selective scan, the input-dependent parameters (dt, B, C)
     are also driven by the other stream's tokens (``MambaBlock(d_context=...)``): geometry decides what the
     semantic scan writes into / reads from its state (occupied voxels carry semantics, free space does not),
     and semantics decide it for the geometric scan (a class implies a shape and an extent).
3. Both directions. Each stream is scanned forward and on the flipped sequence by two Mamba blocks and the
   two are summed in a pre-norm residual, so every token sees context from both sides of the scan order.
4. Fusion. The normalised stream outputs are concatenated and projected to ``out_channels``, then reshaped
   back to the grid; the caller upsamples to the output resolution.

:class:`ConvFusion` has the same constructor and forward contract with plain 3D convolutions on the
concatenated grids: the "without Dual Mamba" ablation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .mamba import MambaBlock

__all__ = ["ConvFusion", "DualMamba"]


def _check_grids(name: str, sem: Tensor, geo: Tensor, sem_channels: int, geo_channels: int) -> None:
    """Validate (B, C, X, Y, Z) inputs; raise ValueError naming the offending field."""
    if sem.dim() != 5 or sem.shape[1] != sem_channels:
        raise ValueError(f"{name}: sem must be (batch, {sem_channels}, x, y, z), got {tuple(sem.shape)}")
    if geo.dim() != 5 or geo.shape[1] != geo_channels:
        raise ValueError(f"{name}: geo must be (batch, {geo_channels}, x, y, z), got {tuple(geo.shape)}")
    if sem.shape[0] != geo.shape[0] or sem.shape[2:] != geo.shape[2:]:
        raise ValueError(
            f"{name}: sem and geo must share batch and grid size, got sem {tuple(sem.shape)} and geo {tuple(geo.shape)}"
        )


def _grid_coordinates(shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Voxel coordinates normalised to [-1, 1] in flattening order (z fastest): (L, 3)."""
    axes = [
        torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)
        if n > 1
        else torch.zeros(1, device=device, dtype=dtype)
        for n in shape
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (L, 3)


class _BiMamba(nn.Module):
    """Pre-norm residual bidirectional Mamba guided by a context stream: x + fwd(n, c) + flip(bwd(flip(n, c)))."""

    def __init__(self, d_model: int, d_state: int, scan_backend: str) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model)
        self.ctx_norm = nn.RMSNorm(d_model)
        self.forward_scan = MambaBlock(d_model, d_state=d_state, d_context=d_model, scan_backend=scan_backend)
        self.backward_scan = MambaBlock(d_model, d_state=d_state, d_context=d_model, scan_backend=scan_backend)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x, context (B, L, d) -> (B, L, d)."""
        n, c = self.norm(x), self.ctx_norm(context)
        y_fwd = self.forward_scan(n, c)  # (B, L, d)
        y_bwd = self.backward_scan(n.flip(1), c.flip(1)).flip(1)  # (B, L, d)
        return x + y_fwd + y_bwd


class _DualLayer(nn.Module):
    """One layer of the two coupled streams: gated feature exchange, then guided bidirectional scans."""

    def __init__(self, d_model: int, d_state: int, scan_backend: str) -> None:
        super().__init__()
        self.geo_to_sem = nn.Linear(d_model, d_model)
        self.sem_to_geo = nn.Linear(d_model, d_model)
        self.sem_gate = nn.Linear(2 * d_model, d_model)
        self.geo_gate = nn.Linear(2 * d_model, d_model)
        self.sem_stream = _BiMamba(d_model, d_state, scan_backend)
        self.geo_stream = _BiMamba(d_model, d_state, scan_backend)

    def forward(self, sem: Tensor, geo: Tensor) -> tuple[Tensor, Tensor]:
        """sem, geo (B, L, d) -> (B, L, d) each."""
        both = torch.cat([sem, geo], dim=-1)  # (B, L, 2d)
        sem_in = sem + torch.sigmoid(self.sem_gate(both)) * self.geo_to_sem(geo)
        geo_in = geo + torch.sigmoid(self.geo_gate(both)) * self.sem_to_geo(sem)
        return self.sem_stream(sem_in, geo_in), self.geo_stream(geo_in, sem_in)


def _check_sizes(owner: str, **sizes: int) -> None:
    """Raise ValueError naming the first size argument that is below 1."""
    for name, value in sizes.items():
        if int(value) < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {value}")


class DualMamba(nn.Module):
    """Dual Mamba fusion: semantic and geometric grids -> fused feature grid of the same spatial size.

    Args:
        sem_channels: channels Cs of the semantic grid.
        geo_channels: channels Cg of the geometric grid.
        out_channels: channels of the fused output grid.
        d_model: token width of both streams.
        n_layers: number of coupled layers.
        d_state: SSM state size N of every selective scan.
        scan_backend: selective-scan kernel, ``auto`` | ``mamba_ssm`` | ``torch`` (``model.scan_backend``).
    """

    def __init__(
        self,
        sem_channels: int,
        geo_channels: int,
        out_channels: int,
        d_model: int,
        n_layers: int = 1,
        d_state: int = 16,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_sizes(
            "DualMamba",
            sem_channels=sem_channels,
            geo_channels=geo_channels,
            out_channels=out_channels,
            d_model=d_model,
            n_layers=n_layers,
            d_state=d_state,
        )
        self.sem_channels, self.geo_channels, self.out_channels = sem_channels, geo_channels, out_channels
        self.sem_embed = nn.Linear(sem_channels, d_model)
        self.geo_embed = nn.Linear(geo_channels, d_model)
        self.pos_embed = nn.Linear(3, d_model)
        self.layers = nn.ModuleList(_DualLayer(d_model, d_state, scan_backend) for _ in range(n_layers))
        self.sem_norm = nn.LayerNorm(d_model)
        self.geo_norm = nn.LayerNorm(d_model)
        self.out_proj = nn.Linear(2 * d_model, out_channels)

    def streams(self, sem: Tensor, geo: Tensor) -> tuple[Tensor, Tensor]:
        """Token outputs of the two streams after the last layer: sem, geo grids -> (B, L, d_model) each."""
        _check_grids("DualMamba", sem, geo, self.sem_channels, self.geo_channels)
        pos = self.pos_embed(_grid_coordinates(tuple(sem.shape[2:]), sem.device, sem.dtype))  # (L, d)
        s = self.sem_embed(sem.flatten(2).transpose(1, 2)) + pos  # (B, L, d)
        g = self.geo_embed(geo.flatten(2).transpose(1, 2)) + pos  # (B, L, d)
        for layer in self.layers:
            s, g = layer(s, g)
        return s, g

    def forward(self, sem: Tensor, geo: Tensor) -> Tensor:
        """sem (B, Cs, X, Y, Z), geo (B, Cg, X, Y, Z) -> (B, out_channels, X, Y, Z)."""
        s, g = self.streams(sem, geo)  # (B, L, d) each
        fused = self.out_proj(torch.cat([self.sem_norm(s), self.geo_norm(g)], dim=-1))  # (B, L, out)
        return fused.transpose(1, 2).reshape(sem.shape[0], self.out_channels, *sem.shape[2:])


class ConvFusion(nn.Module):
    """Plain 3D-convolution fusion with DualMamba's contract (the "without Dual Mamba" ablation).

    Both grids are projected to ``d_model`` channels (1x1x1), concatenated, mixed by ``n_layers`` residual
    3x3x3 convolution blocks (GroupNorm, SiLU) and projected to ``out_channels``. ``d_state`` is accepted for
    a drop-in swap with :class:`DualMamba` and unused.
    """

    def __init__(
        self,
        sem_channels: int,
        geo_channels: int,
        out_channels: int,
        d_model: int,
        n_layers: int = 1,
        d_state: int = 16,
    ) -> None:
        super().__init__()
        _check_sizes(
            "ConvFusion",
            sem_channels=sem_channels,
            geo_channels=geo_channels,
            out_channels=out_channels,
            d_model=d_model,
            n_layers=n_layers,
        )
        self.sem_channels, self.geo_channels = sem_channels, geo_channels
        self.sem_proj = nn.Conv3d(sem_channels, d_model, 1)
        self.geo_proj = nn.Conv3d(geo_channels, d_model, 1)
        width = 2 * d_model
        groups = next(g for g in (8, 4, 2, 1) if width % g == 0)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv3d(width, width, 3, padding=1, bias=False), nn.GroupNorm(groups, width), nn.SiLU())
            for _ in range(n_layers)
        )
        self.out_proj = nn.Conv3d(width, out_channels, 1)

    def forward(self, sem: Tensor, geo: Tensor) -> Tensor:
        """sem (B, Cs, X, Y, Z), geo (B, Cg, X, Y, Z) -> (B, out_channels, X, Y, Z)."""
        _check_grids("ConvFusion", sem, geo, self.sem_channels, self.geo_channels)
        x = torch.cat([self.sem_proj(sem), self.geo_proj(geo)], dim=1)  # (B, 2d, X, Y, Z)
        for block in self.blocks:
            x = x + block(x)
        return self.out_proj(x)
