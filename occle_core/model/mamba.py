"""Mamba modules: the selective-scan mixer block (Gu & Dao, 2023) and a pre-norm residual layer around it.

The kernels live in :mod:`occle_core.model.ops`; the block calls its ``selective_scan`` with the block's
``scan_backend`` (``auto`` | ``mamba_ssm`` | ``torch``, from ``model.scan_backend``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occle_core.model.ops.selective_scan import check_scan_backend, selective_scan

__all__ = ["MambaBlock", "MambaLayer"]


class MambaBlock(nn.Module):
    """Mamba mixer: in_proj -> depthwise causal conv1d -> SiLU -> x_proj (dt, B, C) -> dt_proj -> selective
    scan (with D skip and silu(z) gate) -> out_proj.

    Initialisation follows Mamba: ``A = -exp(A_log)`` with ``A_log[d] = log(1..N)``, ``D = 1``, dt_proj weight
    uniform in ``±dt_rank**-0.5``, dt_proj bias the inverse softplus of a dt drawn log-uniformly in
    [dt_min, dt_max] = [1e-3, 1e-1].

    ``d_context > 0`` adds an optional guidance input: ``forward(x, context)`` with context (B, L, d_context)
    aligned token by token with x; a linear map of the context is added to the selection parameters
    (dt, B, C), so another feature stream decides what this scan writes into and reads from its state.

    ``scan_backend`` (``auto`` | ``mamba_ssm`` | ``torch``) picks the selective-scan kernel; it is checked here
    and resolved per call by :func:`~occle_core.model.ops.selective_scan.resolve_scan_backend`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        d_context: int = 0,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if int(value) < 1:
                raise ValueError(f"MambaBlock: {name} must be >= 1, got {value}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"MambaBlock: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"MambaBlock: dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        self.dt_rank = dt_rank

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        if d_context < 0:
            raise ValueError(f"MambaBlock: d_context must be >= 0, got {d_context}")
        self.d_context = d_context
        self.scan_backend = check_scan_backend(scan_backend)
        self.context_proj = nn.Linear(d_context, dt_rank + 2 * d_state, bias=False) if d_context else None

        with torch.no_grad():
            std = dt_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # (E, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x (B, L, d_model), context (B, L, d_context) or None -> (B, L, d_model)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"MambaBlock: x must be (batch, seqlen, {self.d_model}), got {tuple(x.shape)}")
        if (context is not None) != (self.context_proj is not None):
            raise ValueError(
                f"MambaBlock: context must be given exactly when d_context > 0 (d_context={self.d_context})"
            )
        if context is not None and context.shape != (*x.shape[:2], self.d_context):
            raise ValueError(
                f"MambaBlock: context must be {(*x.shape[:2], self.d_context)}, got {tuple(context.shape)}"
            )
        seqlen = x.shape[1]
        xz = self.in_proj(x)  # (B, L, 2E)
        xs, z = xz.chunk(2, dim=-1)  # (B, L, E) each
        xs = self.conv1d(xs.transpose(1, 2))[..., :seqlen]  # (B, E, L), causal
        xs = F.silu(xs)
        x_dbl = self.x_proj(xs.transpose(1, 2))  # (B, L, R + 2N)
        if self.context_proj is not None:
            x_dbl = x_dbl + self.context_proj(context)  # guidance from the other stream
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, E); the bias goes in as delta_bias
        A = -torch.exp(self.A_log.float())  # (E, N)
        y = selective_scan(
            xs,
            dt.transpose(1, 2),
            A,
            Bm.transpose(1, 2),
            Cm.transpose(1, 2),
            self.D.float(),
            z.transpose(1, 2),
            self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )  # (B, E, L)
        return self.out_proj(y.transpose(1, 2))  # (B, L, d_model)


class MambaLayer(nn.Module):
    """Pre-norm residual Mamba layer: ``x + MambaBlock(norm(x))`` with RMSNorm (or LayerNorm)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        norm: str = "rms",
        eps: float = 1e-5,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if norm == "rms":
            self.norm: nn.Module = nn.RMSNorm(d_model, eps=eps)
        elif norm == "layer":
            self.norm = nn.LayerNorm(d_model, eps=eps)
        else:
            raise ValueError(f"MambaLayer: norm must be 'rms' or 'layer', got {norm!r}")
        self.mixer = MambaBlock(
            d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, scan_backend=scan_backend
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, d_model) -> (B, L, d_model)."""
        return x + self.mixer(self.norm(x))
