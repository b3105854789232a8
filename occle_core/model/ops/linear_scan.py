"""Radix parallel scan of the first-order linear recurrence ``h_t = a_t * h_{t-1} + x_t`` in pure torch.

The scan is a radix-``R`` generalised Blelloch scan: the sequence is cut into chunks of ``R`` steps; one pass over
the ``R`` positions of a chunk, vectorised over all chunks at once, gives each chunk's decay product and its
zero-start end state; the recurrence over the chunk ends (``L / R`` of them) is scanned the same way,
recursively; a second vectorised pass replays each chunk from its true incoming state. The Python work is
``O(R log_R L)`` small loops of whole-tensor operations, never a loop over ``L``, and the arithmetic only ever
multiplies decays ``a_t = exp(delta_t * A) in (0, 1]``: no cumulative log-decay is exponentiated, so nothing
overflows however long the sequence or strong the decay (a closed form ``exp(S_t) * cumsum(exp(-S_s) x_s)``
overflows once the decay inside a chunk passes ~88 nats in float32). :func:`linear_scan` has a hand-written
backward (a reverse scan of the same kind), so autograd keeps only the decays and the states.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SCAN_RADIX", "linear_scan", "scan_into"]

SCAN_RADIX = 32  # chunk length R of the radix scan; sequences of at most 2 R steps are scanned step by step


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


def scan_into(a: Tensor, x: Tensor, h0: Tensor | None, reverse: bool, out: Tensor, radix: int = SCAN_RADIX) -> None:
    """Radix-``radix`` parallel scan of ``h_t = a_t h_{t-1} + x_t`` along dim 1, written into ``out`` (no autograd).

    a, x, out: (P, L, M) with contiguous trailing dim and dim 1 stride M (``out`` may be ``x`` itself: the scan
    runs in place); h0: (P, M) state before the first step in scan order (None = zeros). ``reverse`` scans from
    the end: ``h_t = a_t h_{t+1} + x_t``.
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
    scan_into(prod, end, h0, reverse, chunk_end, radix)
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


class _LinearScan(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + x_t along dim 1 with h_{-1} = h0, and its adjoint (a reverse scan) as backward."""

    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor, h0: Tensor | None, radix: int) -> Tensor:
        h = torch.empty_like(x)  # (P, L, M)
        scan_into(a, x, h0, False, h, radix)
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
            scan_into(a[:, 1:], grad_h[:, :-1], grad_h[:, -1], True, g[:, :-1], ctx.radix)
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
