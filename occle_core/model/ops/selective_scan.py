"""Selective scan of Mamba (Gu & Dao, 2023): pure torch, a step-by-step reference, mamba-ssm's CUDA kernel.

Per batch ``b``, channel ``d`` and state ``n``::

    delta_t = softplus(delta_t + delta_bias)            (each optional)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B[b, n, t] * u[b, d, t]
    y_t     = sum_n C[b, n, t] * h_t[n] + D[d] * u[b, d, t]
    y_t     = y_t * silu(z[b, d, t])                    (optional gate)

:func:`selective_scan` has the signature and tensor layout of mamba-ssm's ``selective_scan_fn`` and runs one of
two backends, chosen in one place, :func:`resolve_scan_backend` (``model.scan_backend``):

- ``torch``: :func:`selective_scan_torch`, parallel over the sequence (the radix scan of
  :mod:`occle_core.model.ops.linear_scan`) with a fused backward; any device.
- ``mamba_ssm``: mamba-ssm's fused CUDA kernel; CUDA tensors only, and only where the package imports.
- ``auto``: ``mamba_ssm`` for CUDA tensors when it imports, ``torch`` otherwise.

:func:`selective_scan_naive` is the step-by-step reference (a Python loop over the sequence) for tests and
benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from occle_core.model.ops.linear_scan import SCAN_RADIX, scan_into

__all__ = [
    "SCAN_BACKENDS",
    "check_scan_backend",
    "mamba_ssm_available",
    "resolve_scan_backend",
    "selective_scan",
    "selective_scan_naive",
    "selective_scan_torch",
]

SCAN_BACKENDS = ("auto", "mamba_ssm", "torch")

_MAMBA_SSM_FN: Callable[..., Tensor] | None = None
_MAMBA_SSM_CHECKED = False


def _mamba_ssm_scan_fn() -> Callable[..., Tensor] | None:
    """Return mamba-ssm's ``selective_scan_fn`` if the package imports, else None (checked once)."""
    global _MAMBA_SSM_FN, _MAMBA_SSM_CHECKED
    if not _MAMBA_SSM_CHECKED:
        _MAMBA_SSM_CHECKED = True
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except (ImportError, OSError, RuntimeError):  # not installed, or its CUDA extension fails to load
            selective_scan_fn = None
        _MAMBA_SSM_FN = selective_scan_fn
    return _MAMBA_SSM_FN


def mamba_ssm_available() -> bool:
    """True when mamba-ssm's CUDA selective-scan kernels can be imported."""
    return _mamba_ssm_scan_fn() is not None


def check_scan_backend(backend: str) -> str:
    """Validate a ``model.scan_backend`` value (at construction); return it.

    Raises:
        ValueError: an unknown name, or ``mamba_ssm`` when mamba-ssm's kernels do not import.
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"model.scan_backend must be one of {SCAN_BACKENDS}, got {backend!r}")
    if backend == "mamba_ssm" and not mamba_ssm_available():
        raise ValueError(
            "model.scan_backend 'mamba_ssm' requested but mamba_ssm.ops.selective_scan_interface is not importable; "
            "set model.scan_backend to 'auto' or 'torch'"
        )
    return backend


def resolve_scan_backend(backend: str, device: torch.device) -> str:
    """The backend that scans tensors on ``device``: ``auto`` -> ``mamba_ssm`` on CUDA when importable, else
    ``torch``. The only place the choice is made.

    Raises:
        ValueError: as :func:`check_scan_backend`, or ``mamba_ssm`` asked for tensors that are not on CUDA.
    """
    check_scan_backend(backend)
    if backend == "auto":
        return "mamba_ssm" if device.type == "cuda" and mamba_ssm_available() else "torch"
    if backend == "mamba_ssm" and device.type != "cuda":
        raise ValueError(
            f"model.scan_backend 'mamba_ssm' runs on CUDA only, got tensors on {device}; "
            "set model.scan_backend to 'auto' or 'torch'"
        )
    return backend


def _check_scan_args(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None, bias: Tensor | None
) -> None:
    """Validate the mamba-ssm layout; raise ValueError naming the offending argument."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, seqlen), got shape {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    if seqlen < 1:
        raise ValueError(f"selective_scan: u must have seqlen >= 1, got shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must match u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"selective_scan: A must be real (dim={dim}, d_state), got {tuple(A.shape)} {A.dtype}")
    d_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, d_state, seqlen):
            raise ValueError(
                f"selective_scan: {name} must be (batch, d_state, seqlen) = {(batch, d_state, seqlen)}, "
                f"got {tuple(t.shape)}"
            )
    for name, t in (("D", D), ("delta_bias", bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must match u {tuple(u.shape)}, got {tuple(z.shape)}")


def _compute_dtype(u: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (as mamba-ssm does)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    """delta (B, D, L) -> softplus(delta + bias) in ``dtype``."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """Skip term and gate: y (B, D, L) + D * u, times silu(z)."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


class _SelectiveScanCore(torch.autograd.Function):
    """Core of the selective scan in time-major layout, with a fused backward.

    Forward: decay = exp(delta (x) A), drive = (delta * u) (x) B, h = linear scan, y = sum_n C h.
    Only decay and h (B, L, D, N) are kept for backward; the reductions over D and N in backward are
    contractions, so no further (B, L, D, N) product is kept.
    """

    @staticmethod
    def forward(ctx, delta: Tensor, u: Tensor, A: Tensor, B: Tensor, C: Tensor, radix: int) -> tuple[Tensor, Tensor]:
        # delta, u: (B, L, D); A: (D, N); B, C: (B, L, N); all contiguous, same dtype.
        # Autocast is off inside: the scan and its contractions stay in the inputs' dtype (float32/float64), so
        # y and the saved tensors share one dtype and backward never mixes bf16/fp16 with float32.
        with torch.autocast(device_type=u.device.type, enabled=False):
            batch, seqlen, dim = u.shape
            d_state = A.shape[1]
            decay = torch.mul(delta.unsqueeze(-1), A).exp_()  # (B, L, D, N), in (0, 1] for A <= 0
            h = torch.mul((delta * u).unsqueeze(-1), B.unsqueeze(2))  # (B, L, D, N) drive, scanned in place
            flat = (batch, seqlen, dim * d_state)
            scan_into(decay.view(flat), h.view(flat), None, False, h.view(flat), radix)
            y = torch.matmul(h, C.unsqueeze(-1)).squeeze(-1)  # (B, L, D)
        ctx.radix = radix
        ctx.save_for_backward(delta, u, A, B, C, decay, h)
        return y, h[:, -1].clone()  # (B, L, D), (B, D, N)

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_last: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, None]:
        delta, u, A, B, C, decay, h = ctx.saved_tensors
        with torch.autocast(device_type=h.device.type, enabled=False):
            return _SelectiveScanCore._backward(ctx, grad_y, grad_last, delta, u, A, B, C, decay, h)

    @staticmethod
    def _backward(
        ctx,
        grad_y: Tensor,
        grad_last: Tensor | None,
        delta: Tensor,
        u: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        decay: Tensor,
        h: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, None]:
        """Backward body, in the saved tensors' dtype (incoming grads may be bf16/fp16 under autocast)."""
        batch, seqlen, dim, d_state = h.shape
        grad_y = grad_y.to(h.dtype).contiguous()  # (B, L, D)
        if grad_last is not None:
            grad_last = grad_last.to(h.dtype)  # (B, D, N)
        grad_C = torch.matmul(grad_y.unsqueeze(-2), h).squeeze(-2)  # (B, L, N)
        g = torch.mul(grad_y.unsqueeze(-1), C.unsqueeze(2))  # (B, L, D, N) dL/dh
        if grad_last is not None:
            g[:, -1] += grad_last
        # Adjoint recurrence g_t = dL/dh_t + decay_{t+1} g_{t+1}: a reverse scan, in place.
        flat = (batch, seqlen, dim * d_state)
        if seqlen > 1:
            gf, af = g.view(flat), decay.view(flat)
            scan_into(af[:, 1:], gf[:, :-1], gf[:, -1], True, gf[:, :-1], ctx.radix)
        du = delta * u  # (B, L, D)
        grad_du = torch.matmul(g, B.unsqueeze(-1)).squeeze(-1)  # (B, L, D)
        grad_B = torch.matmul(du.unsqueeze(-2), g).squeeze(-2)  # (B, L, N)
        # dL/d(delta*A)_t = g_t * h_{t-1} * decay_t  (zero at t = 0, where the state before is zero).
        w = torch.empty_like(h)  # (B, L, D, N)
        w[:, 0] = 0
        torch.mul(g[:, 1:], h[:, :-1], out=w[:, 1:])
        w.mul_(decay)
        grad_A = (w * delta.unsqueeze(-1)).sum((0, 1))  # (D, N)
        grad_delta = w.mul_(A).sum(-1)  # (B, L, D)
        grad_delta += grad_du * u
        grad_u = grad_du * delta
        return grad_delta, grad_u, grad_A, grad_B, grad_C, None


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    radix: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Pure-PyTorch selective scan (any device), parallel over the sequence; same contract as
    :func:`selective_scan`. ``radix`` is the chunk length of the parallel scan (default SCAN_RADIX)."""
    _check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    radix = SCAN_RADIX if radix is None else radix
    if radix < 2:
        raise ValueError(f"selective_scan_torch: radix must be >= 2, got {radix}")
    dtype = _compute_dtype(u)
    uc = u.to(dtype)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)  # (B, D, L)
    # Time-major per batch element, (B, L, ...): each scan step is one contiguous (D * N) block.
    y, last = _SelectiveScanCore.apply(
        delta.transpose(1, 2).contiguous(),  # (B, L, D)
        uc.transpose(1, 2).contiguous(),  # (B, L, D)
        A.to(dtype).contiguous(),  # (D, N)
        B.to(dtype).transpose(1, 2).contiguous(),  # (B, L, N)
        C.to(dtype).transpose(1, 2).contiguous(),  # (B, L, N)
        radix,
    )
    y = _finish(y.transpose(1, 2), uc, D, z).to(u.dtype)  # (B, D, L)
    if return_last_state:
        return y, last.to(u.dtype)  # (B, D, L), (B, D, N)
    return y


def selective_scan_naive(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Step-by-step reference of the selective scan (a Python loop over the sequence; tests, benchmarks).

    Same contract as :func:`selective_scan`; float64 inputs are computed in float64, others in float32.
    """
    _check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u)
    uc = u.to(dtype)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)  # (B, D, L)
    decay = torch.exp(delta.unsqueeze(-1) * A.to(dtype).unsqueeze(1))  # (B, D, L, N)
    drive = (delta * uc).unsqueeze(-1) * B.to(dtype).transpose(1, 2).unsqueeze(1)  # (B, D, L, N)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=dtype)  # (B, D, N)
    states = []
    for decay_t, drive_t in zip(decay.unbind(2), drive.unbind(2)):  # unbind: a linear-time backward
        state = torch.addcmul(drive_t, decay_t, state)
        states.append(state)
    y = torch.einsum("bdln,bnl->bdl", torch.stack(states, dim=2), C.to(dtype))  # (B, D, L)
    y = _finish(y, uc, D, z).to(u.dtype)
    if return_last_state:
        return y, state
    return y


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics and layout.

    Args:
        u: (B, D, L) input.
        delta: (B, D, L) step sizes (before ``delta_bias`` / softplus).
        A: (D, N) real state matrix (diagonal per channel; negative for a decaying state).
        B: (B, N, L) input-dependent input matrix.
        C: (B, N, L) input-dependent output matrix.
        D: (D,) skip connection, or None.
        z: (B, D, L) gate: the output is multiplied by silu(z), or None.
        delta_bias: (D,) added to delta, or None.
        delta_softplus: apply softplus to delta (after the bias).
        return_last_state: also return the final state (B, D, N).
        backend: ``auto`` | ``mamba_ssm`` | ``torch`` (see :func:`resolve_scan_backend`).

    Returns:
        y (B, D, L) in u's dtype (computed in float32, float64 for float64 inputs), and the last state if asked.
    """
    if resolve_scan_backend(backend, u.device) == "mamba_ssm":
        _check_scan_args(u, delta, A, B, C, D, z, delta_bias)
        return _mamba_ssm_scan_fn()(u, delta, A.float(), B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
