"""Selective-scan state space model (Mamba) with a pure-PyTorch parallel scan.

The selective scan of Mamba (Gu & Dao, 2023) is, per batch ``b``, channel ``d`` and state ``n``::

    delta_t = softplus(delta_t + delta_bias)            (each optional)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B[b, n, t] * u[b, d, t]
    y_t     = sum_n C[b, n, t] * h_t[n] + D[d] * u[b, d, t]
    y_t     = y_t * silu(z[b, d, t])                    (optional gate)

:func:`selective_scan` has the signature and tensor layout of mamba-ssm's ``selective_scan_fn``. When
``mamba_ssm`` is importable and the inputs live on CUDA it calls the fused CUDA kernel; otherwise it runs a
pure-PyTorch scan that is parallel over the sequence.

The pure-PyTorch scan is a radix-``R`` parallel scan of the first-order linear recurrence
``h_t = a_t * h_{t-1} + x_t`` (a generalised Blelloch scan): the sequence is cut into chunks of ``R`` steps;
one pass over the ``R`` positions of a chunk, vectorised over all chunks at once, gives each chunk's decay
product and its zero-start end state; the recurrence over the chunk ends (``L / R`` of them) is scanned the
same way, recursively; a second vectorised pass replays each chunk from its true incoming state. The Python
work is ``O(R log_R L)`` small loops of whole-tensor operations, never a loop over ``L``, and the arithmetic
only ever multiplies decays ``a_t = exp(delta_t * A) in (0, 1]``: no cumulative log-decay is exponentiated, so
nothing overflows however long the sequence or strong the decay (a closed form ``exp(S_t) * cumsum(exp(-S_s)
x_s)`` overflows once the decay inside a chunk passes ~88 nats in float32). The recurrence has a hand-written
backward (a reverse scan of the same kind), so autograd keeps only the decays and the states.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MambaBlock",
    "MambaLayer",
    "linear_scan",
    "mamba_ssm_available",
    "selective_scan",
    "selective_scan_naive",
    "selective_scan_torch",
]

SCAN_RADIX = 32  # chunk length R of the radix scan; sequences of at most R steps are scanned step by step

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


# ----------------------------------------------------------------------------------------------------------
# First-order linear recurrence h_t = a_t * h_{t-1} + x_t
# ----------------------------------------------------------------------------------------------------------


def _sequential(a: Tensor, x: Tensor, h0: Tensor | None, reverse: bool, out: Tensor) -> None:
    """Step-by-step recurrence along dim 1 of (P, L, M) tensors, written into ``out`` (short sequences)."""
    L = x.shape[1]
    state = h0
    for t in range(L - 1, -1, -1) if reverse else range(L):
        if state is None:
            out[:, t].copy_(x[:, t])
        else:
            torch.addcmul(x[:, t], a[:, t], state, out=out[:, t])
        state = out[:, t]


def _scan_into(a: Tensor, x: Tensor, h0: Tensor | None, reverse: bool, out: Tensor, radix: int) -> None:
    """Radix-``radix`` parallel scan of ``h_t = a_t h_{t-1} + x_t`` along dim 1, written into ``out``.

    a, x, out: (P, L, M) with contiguous trailing dim and dim 1 stride M; h0: (P, M) state before the first
    step in scan order (None = zeros). ``reverse`` scans from the end: ``h_t = a_t h_{t+1} + x_t``.
    """
    seqlen = x.shape[1]
    if seqlen <= 2 * radix:
        _sequential(a, x, h0, reverse, out)
        return
    n_chunks = seqlen // radix
    main = n_chunks * radix
    # Forward: chunks cover [0, main) and the tail [main, seqlen) follows; reverse: the tail [0, seqlen - main) is
    # scanned last, so the chunks cover [seqlen - main, seqlen). Either way the tail continues from the chunks' state.
    lo = seqlen - main if reverse else 0
    a_c = a[:, lo : lo + main].unflatten(1, (n_chunks, radix))  # (P, C, R, M)
    x_c = x[:, lo : lo + main].unflatten(1, (n_chunks, radix))
    o_c = out[:, lo : lo + main].unflatten(1, (n_chunks, radix))
    order = range(radix - 1, -1, -1) if reverse else range(radix)
    first = radix - 1 if reverse else 0

    # Pass 1: per chunk, the decay product and the end state from a zero start, vectorised over chunks.
    end = x_c[:, :, first].clone()  # (P, C, M)
    prod = a_c[:, :, first].clone()  # (P, C, M)
    for j in order:
        if j == first:
            continue
        torch.addcmul(x_c[:, :, j], a_c[:, :, j], end, out=end)
        prod.mul_(a_c[:, :, j])

    # Chunk-level recurrence (C steps), scanned recursively: the true state at each chunk's end.
    chunk_end = torch.empty_like(end)
    _scan_into(prod, end, h0, reverse, chunk_end, radix)
    carry = torch.zeros_like(end) if h0 is None else h0.unsqueeze(1).expand_as(end).clone()  # (P, C, M)
    if reverse:
        carry[:, :-1] = chunk_end[:, 1:]
    else:
        carry[:, 1:] = chunk_end[:, :-1]

    # Pass 2: replay each chunk from its incoming state, writing every step.
    state = carry
    for j in order:
        torch.addcmul(x_c[:, :, j], a_c[:, :, j], state, out=o_c[:, :, j])
        state = o_c[:, :, j]

    if main < seqlen:
        last = chunk_end[:, 0] if reverse else chunk_end[:, -1]
        t0, t1 = (0, seqlen - main) if reverse else (main, seqlen)
        _sequential(a[:, t0:t1], x[:, t0:t1], last, reverse, out[:, t0:t1])


def _scan(a: Tensor, x: Tensor, h0: Tensor | None = None, reverse: bool = False, radix: int = SCAN_RADIX) -> Tensor:
    """Linear recurrence along dim 1 of (P, L, M) tensors (no autograd); returns h (P, L, M)."""
    out = torch.empty_like(x)
    _scan_into(a, x, h0, reverse, out, radix)
    return out


class _LinearScan(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + x_t along dim 1 with h_{-1} = h0, and its adjoint (a reverse scan) as backward."""

    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor, h0: Tensor | None, radix: int) -> Tensor:
        h = _scan(a, x, h0, reverse=False, radix=radix)  # (P, L, M)
        ctx.radix = radix
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        a, h, h0 = ctx.saved_tensors
        grad_h = grad_h.to(h.dtype).contiguous()
        # Adjoint: g_t = grad_h_t + a_{t+1} g_{t+1}, g_{L-1} = grad_h_{L-1}  (a reverse scan).
        g = torch.empty_like(grad_h)  # (P, L, M)
        g[:, -1] = grad_h[:, -1]
        if grad_h.shape[1] > 1:
            _scan_into(a[:, 1:], grad_h[:, :-1], grad_h[:, -1], True, g[:, :-1], ctx.radix)
        grad_a = torch.empty_like(a)
        torch.mul(g[:, 1:], h[:, :-1], out=grad_a[:, 1:])
        if ctx.has_h0:
            torch.mul(g[:, 0], h0, out=grad_a[:, 0])
            grad_h0 = a[:, 0] * g[:, 0]
        else:
            grad_a[:, 0] = 0
            grad_h0 = None
        return grad_a, g, grad_h0, None


def linear_scan(a: Tensor, x: Tensor, h0: Tensor | None = None, radix: int | None = None) -> Tensor:
    """Differentiable first-order linear recurrence ``h_t = a_t * h_{t-1} + x_t`` along dim 1.

    Args:
        a: (P, L, M) decays (any real values; the scan is stable for |a| <= 1).
        x: (P, L, M) inputs.
        h0: (P, M) initial state, or None for zeros.
        radix: chunk length of the parallel scan (>= 2; default SCAN_RADIX).

    Returns:
        h: (P, L, M).
    """
    if a.dim() != 3 or a.shape != x.shape:
        raise ValueError(f"linear_scan: a and x must both be (P, L, M), got {tuple(a.shape)} and {tuple(x.shape)}")
    if h0 is not None and h0.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"linear_scan: h0 must be (P, M) = {(x.shape[0], x.shape[2])}, got {tuple(h0.shape)}")
    radix = SCAN_RADIX if radix is None else radix
    if radix < 2:
        raise ValueError(f"linear_scan: radix must be >= 2, got {radix}")
    a, x = a.contiguous(), x.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    return _LinearScan.apply(a, x, h0, radix)


# ----------------------------------------------------------------------------------------------------------
# Selective scan
# ----------------------------------------------------------------------------------------------------------


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
            _scan_into(decay.view(flat), h.view(flat), None, False, h.view(flat), radix)
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
            _scan_into(af[:, 1:], gf[:, :-1], gf[:, -1], True, gf[:, :-1], ctx.radix)
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

    Returns:
        y (B, D, L) in u's dtype (computed in float32, float64 for float64 inputs), and the last state if asked.

    Uses mamba-ssm's CUDA kernel when ``mamba_ssm`` imports and ``u`` is on CUDA, else
    :func:`selective_scan_torch`.
    """
    fn = _mamba_ssm_scan_fn() if u.is_cuda else None
    if fn is not None:
        _check_scan_args(u, delta, A, B, C, D, z, delta_bias)
        return fn(u, delta, A.float(), B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


# ----------------------------------------------------------------------------------------------------------
# Mamba block
# ----------------------------------------------------------------------------------------------------------


class MambaBlock(nn.Module):
    """Mamba mixer: in_proj -> depthwise causal conv1d -> SiLU -> x_proj (dt, B, C) -> dt_proj -> selective
    scan (with D skip and silu(z) gate) -> out_proj.

    Initialisation follows Mamba: ``A = -exp(A_log)`` with ``A_log[d] = log(1..N)``, ``D = 1``, dt_proj weight
    uniform in ``±dt_rank**-0.5``, dt_proj bias the inverse softplus of a dt drawn log-uniformly in
    [dt_min, dt_max] = [1e-3, 1e-1].

    ``d_context > 0`` adds an optional guidance input: ``forward(x, context)`` with context (B, L, d_context)
    aligned token by token with x; a linear map of the context is added to the selection parameters
    (dt, B, C), so another feature stream decides what this scan writes into and reads from its state.
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
    ) -> None:
        super().__init__()
        if norm == "rms":
            self.norm: nn.Module = nn.RMSNorm(d_model, eps=eps)
        elif norm == "layer":
            self.norm = nn.LayerNorm(d_model, eps=eps)
        else:
            raise ValueError(f"MambaLayer: norm must be 'rms' or 'layer', got {norm!r}")
        self.mixer = MambaBlock(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, d_model) -> (B, L, d_model)."""
        return x + self.mixer(self.norm(x))
