"""Selective scan (pure torch vs step-by-step reference vs mamba-ssm) and the Mamba block."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from occle_core.model.mamba import MambaBlock, MambaLayer
from occle_core.model.ops import selective_scan as ops_scan
from occle_core.model.ops.linear_scan import linear_scan, scan_into
from occle_core.model.ops.selective_scan import selective_scan, selective_scan_naive, selective_scan_torch


def _inputs(batch=2, dim=6, d_state=4, seqlen=100, dtype=torch.float64, seed=0, a_scale=3.0, delta_scale=1.0):
    """Random scan inputs in mamba-ssm's layout: u, delta, A, B, C, D, z, delta_bias."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    A = -torch.rand(dim, d_state, generator=g, dtype=dtype) * a_scale  # (D, N), decaying
    return {
        "u": r(batch, dim, seqlen),
        "delta": r(batch, dim, seqlen) * delta_scale,
        "A": A,
        "B": r(batch, d_state, seqlen),
        "C": r(batch, d_state, seqlen),
        "D": r(dim),
        "z": r(batch, dim, seqlen),
        "delta_bias": r(dim),
    }


VARIANTS = {
    "plain": dict(D=False, z=False, delta_bias=False, delta_softplus=False),
    "D": dict(D=True, z=False, delta_bias=False, delta_softplus=False),
    "z": dict(D=False, z=True, delta_bias=False, delta_softplus=False),
    "bias_softplus": dict(D=False, z=False, delta_bias=True, delta_softplus=True),
    "all": dict(D=True, z=True, delta_bias=True, delta_softplus=True),
}


def _call(fn, inp, variant, **kw):
    v = VARIANTS[variant]
    delta = inp["delta"] if v["delta_softplus"] else inp["delta"].abs()  # positive steps without softplus
    return fn(
        inp["u"],
        delta,
        inp["A"],
        inp["B"],
        inp["C"],
        D=inp["D"] if v["D"] else None,
        z=inp["z"] if v["z"] else None,
        delta_bias=inp["delta_bias"] if v["delta_bias"] else None,
        delta_softplus=v["delta_softplus"],
        **kw,
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("seqlen", [1, 7, 64, 100, 1000])
def test_scan_matches_naive_float64(variant, seqlen):
    inp = _inputs(seqlen=seqlen)
    y, last = _call(selective_scan, inp, variant, return_last_state=True)
    y_ref, last_ref = _call(selective_scan_naive, inp, variant, return_last_state=True)
    assert y.shape == (2, 6, seqlen) and y.dtype == torch.float64
    assert last.shape == (2, 6, 4)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)


ROUNDINGS_PER_STEP = 32  # k of the forward-error bound in _rounding_bound (derivation there)


def _rounding_bound(inp: dict, variant: str, eps: float) -> torch.Tensor:
    """Forward-error bound (B, D, L) of ``variant`` of the scan on ``inp`` in a precision of unit roundoff ``eps``,
    from float64 magnitudes of the same inputs.

    Each step of the state recurrence ``h_t = a_t h_{t-1} + x_t`` rounds at most 8 times (bias and softplus of
    delta, delta * A and its exp, the two products of the drive ``x_t``, the product and the sum of the update),
    each time a quantity of at most ``2 H_t`` (``H_t = max_{s<=t} |h_s|``, the running state magnitude: ``a_t <= 1``
    and ``|x_t| <= |h_t| + |h_{t-1}|``; an error of the decay scales with ``a_t |delta_t A| <= 1 / e``), and the
    parallel scan passes over every step twice: ``k = 8 * 2 * 2 = 32`` roundings of size ``eps H_t``. An error made
    at step ``s`` reaches ``h_t`` multiplied by ``prod_{s<r<=t} a_r <= 1``, so ``|e_t| <= k eps H_t M_t`` with the
    effective memory ``M_t = a_t M_{t-1} + 1 = sum_s prod a``: at most ``t`` (the sequence length once decays are
    near 1), about ``1 / (1 - a)`` for a constant decay. The output ``silu(z) (sum_n C_n h_n + D u)`` adds
    ``N + 3`` roundings of its own terms.
    """
    inp = {k: v.double() for k, v in inp.items()}
    v = VARIANTS[variant]
    delta = inp["delta"] if v["delta_softplus"] else inp["delta"].abs()  # as _call
    if v["delta_bias"]:
        delta = delta + inp["delta_bias"][:, None]
    if v["delta_softplus"]:
        delta = F.softplus(delta)  # (B, D, L)
    decay = torch.exp(delta[..., None] * inp["A"][:, None])  # (B, D, L, N)
    drive = (delta * inp["u"])[..., None] * inp["B"].transpose(1, 2)[:, None]  # (B, D, L, N)
    flat = (-1, *decay.shape[2:])
    h = linear_scan(decay.reshape(flat), drive.reshape(flat)).reshape(decay.shape)
    memory = linear_scan(decay.reshape(flat), torch.ones_like(drive).reshape(flat)).reshape(decay.shape)
    running = torch.cummax(h.abs(), 2).values
    c_abs = inp["C"].transpose(1, 2)[:, None].abs()  # (B, 1, L, N)
    gate = F.silu(inp["z"]).abs() if v["z"] else 1.0  # (B, D, L)
    state_err = ROUNDINGS_PER_STEP * (c_abs * running * memory).sum(-1)
    terms = (c_abs * h.abs()).sum(-1) + ((inp["D"][:, None] * inp["u"]).abs() if v["D"] else 0.0)
    return eps * gate * (state_err + (decay.shape[-1] + 3) * terms)


@pytest.mark.parametrize("variant", ["plain", "all"])
def test_scan_matches_naive_float32(variant):
    inp = {k: v.float() for k, v in _inputs(seqlen=777, dtype=torch.float64).items()}
    y = _call(selective_scan, inp, variant)
    y_ref = _call(selective_scan_naive, {k: v.double() for k, v in inp.items()}, variant)
    assert y.dtype == torch.float32
    assert ((y.double() - y_ref).abs() <= _rounding_bound(inp, variant, torch.finfo(torch.float32).eps)).all()


@pytest.mark.parametrize("variant", ["plain", "all"])
def test_scan_gradients_match_naive(variant):
    inp = _inputs(batch=2, dim=3, d_state=4, seqlen=75)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    out = {}
    for name, fn in (("torch", selective_scan), ("naive", selective_scan_naive)):
        y, last = _call(fn, leaves, variant, return_last_state=True)
        gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        loss = (y * gy).sum() + last.sin().sum()
        params = [t for t in leaves.values()]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out[name] = grads
    used = 0
    for g_torch, g_naive in zip(out["torch"], out["naive"]):
        assert (g_torch is None) == (g_naive is None)
        if g_torch is not None:
            used += 1
            torch.testing.assert_close(g_torch, g_naive, rtol=1e-9, atol=1e-9)
    assert used == (8 if variant == "all" else 5)


def test_linear_scan_gradcheck_and_reference():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 15, 2, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 15, 2, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    # radix 2 and 3 exercise several recursion levels and a ragged tail on 15 steps
    for radix in (2, 3):
        assert torch.autograd.gradcheck(lambda a, x, h0, r=radix: linear_scan(a, x, h0, radix=r), (a, x, h0))
    ref, state = [], h0
    for t in range(15):
        state = a[:, t] * state + x[:, t]
        ref.append(state)
    torch.testing.assert_close(linear_scan(a, x, h0, radix=2), torch.stack(ref, 1))


@pytest.mark.parametrize("reverse", [False, True])
def test_internal_scan_reverse_and_ragged(reverse):
    g = torch.Generator().manual_seed(4)
    a = torch.rand(1, 531, 5, generator=g, dtype=torch.float64)
    x = torch.randn(1, 531, 5, generator=g, dtype=torch.float64)
    h0 = torch.randn(1, 5, generator=g, dtype=torch.float64)
    ref = torch.empty_like(x)
    state = h0
    for t in range(530, -1, -1) if reverse else range(531):
        state = a[:, t] * state + x[:, t]
        ref[:, t] = state
    for radix in (2, 4, 32):
        out = torch.empty_like(x)
        scan_into(a, x, h0, reverse, out, radix)
        torch.testing.assert_close(out, ref)


def test_radix_does_not_change_result():
    inp = _inputs(seqlen=1000)
    ys = [_call(selective_scan_torch, inp, "all", radix=r) for r in (2, 5, 32, 600)]
    for y in ys[1:]:
        torch.testing.assert_close(y, ys[0], rtol=1e-12, atol=1e-12)


def test_long_sequence_strong_decay_is_stable():
    """L = 16384, decays down to exp(-400) per step: a closed form exp(S_t) * cumsum(exp(-S_s) x_s) overflows
    here (cumulative log-decay ~ -1e6); the scan stays finite, with finite gradients, and agrees with the float64
    step-by-step loop on the same inputs within the rounding-error growth of its precision (float64 and float32)."""
    inp = _inputs(batch=1, dim=4, d_state=4, seqlen=16384, seed=5, a_scale=100.0, delta_scale=2.0)
    inp["A"][0] = -torch.logspace(-3, 2, 4, dtype=torch.float64)  # one channel from nearly-constant to fast decay
    inp = {k: v.float().double() for k, v in inp.items()}  # float32-representable: both runs see the same inputs
    cum = (F.softplus(inp["delta"] + inp["delta_bias"][:, None])[..., None] * inp["A"][:, None]).sum(2)
    assert cum.min() < -1e5  # exp(-cum) would overflow any float type
    y_ref = _call(selective_scan_naive, inp, "all")
    for dtype in (torch.float64, torch.float32):
        leaves = {k: v.to(dtype, copy=True).requires_grad_(True) for k, v in inp.items()}
        y = _call(selective_scan, leaves, "all")
        y.square().mean().backward()
        assert torch.isfinite(y).all()
        assert all(torch.isfinite(t.grad).all() for t in leaves.values())
        err = (y.detach().double() - y_ref).abs()
        bound = _rounding_bound(inp, "all", torch.finfo(dtype).eps)
        worst = int((err / bound).argmax())
        assert (err <= bound).all(), (dtype, worst, float(err.flatten()[worst]), float(bound.flatten()[worst]))


def test_low_precision_inputs_are_computed_in_float32():
    inp = _inputs(seqlen=50)
    half = {k: v.to(torch.bfloat16) for k, v in inp.items()}
    y = _call(selective_scan, half, "all")
    assert y.dtype == torch.bfloat16
    y_ref = _call(selective_scan_naive, {k: v.double() for k, v in half.items()}, "all")
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-2, atol=2e-2)


def test_bad_shapes_name_the_argument():
    inp = _inputs(seqlen=10)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"][:, :, :5], inp["C"])
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(inp["u"], inp["delta"], inp["A"][:3], inp["B"], inp["C"])
    with pytest.raises(ValueError, match="delta_bias must be"):
        selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], delta_bias=inp["D"][:2])
    with pytest.raises(ValueError, match="u must be"):
        selective_scan(inp["u"][0], inp["delta"][0], inp["A"], inp["B"], inp["C"])
    with pytest.raises(ValueError, match="seqlen >= 1"):
        selective_scan(inp["u"][..., :0], inp["delta"][..., :0], inp["A"], inp["B"][..., :0], inp["C"][..., :0])


def test_cpu_tensors_never_reach_the_cuda_kernel(monkeypatch):
    def kernel(*args, **kwargs):
        raise AssertionError("the CUDA kernel must not be called for CPU tensors")

    monkeypatch.setattr(ops_scan, "_MAMBA_SSM_FN", kernel)
    monkeypatch.setattr(ops_scan, "_MAMBA_SSM_CHECKED", True)
    assert ops_scan.mamba_ssm_available()
    inp = _inputs(seqlen=20)
    torch.testing.assert_close(_call(selective_scan, inp, "all"), _call(selective_scan_naive, inp, "all"))


def test_scan_backend_is_resolved_in_one_place(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(ops_scan, "_MAMBA_SSM_CHECKED", True)
    monkeypatch.setattr(ops_scan, "_MAMBA_SSM_FN", None)  # mamba-ssm not importable
    assert [ops_scan.resolve_scan_backend("auto", d) for d in (cpu, cuda)] == ["torch", "torch"]
    assert ops_scan.resolve_scan_backend("torch", cuda) == "torch"
    with pytest.raises(ValueError, match="model.scan_backend 'mamba_ssm' requested but .* not importable"):
        ops_scan.check_scan_backend("mamba_ssm")
    with pytest.raises(ValueError, match="model.scan_backend 'mamba_ssm' requested"):
        MambaBlock(8, scan_backend="mamba_ssm")
    with pytest.raises(ValueError, match=r"model.scan_backend must be one of \('auto', 'mamba_ssm', 'torch'\)"):
        MambaLayer(8, scan_backend="cuda")
    monkeypatch.setattr(ops_scan, "_MAMBA_SSM_FN", lambda *args: None)  # importable
    assert ops_scan.resolve_scan_backend("auto", cuda) == "mamba_ssm"
    assert ops_scan.resolve_scan_backend("auto", cpu) == "torch"
    with pytest.raises(ValueError, match="'mamba_ssm' runs on CUDA only, got tensors on cpu"):
        _call(selective_scan, _inputs(seqlen=5), "all", backend="mamba_ssm")


def test_matches_mamba_ssm_reference():
    ssi = pytest.importorskip("mamba_ssm.ops.selective_scan_interface")
    inp = {k: v.float() for k, v in _inputs(seqlen=300).items()}
    for variant in VARIANTS:
        y_ref = _call(ssi.selective_scan_ref, inp, variant)
        torch.testing.assert_close(_call(selective_scan_torch, inp, variant), y_ref, rtol=1e-5, atol=1e-5)
        if torch.cuda.is_available():  # the fused kernel through the dispatcher
            cuda = {k: v.cuda() for k, v in inp.items()}
            torch.testing.assert_close(_call(selective_scan, cuda, variant).cpu(), y_ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------- block


def test_mamba_block_shape_grads_and_init():
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=8, d_conv=4, expand=2)
    assert block.dt_rank == 1 and block.d_inner == 32
    torch.testing.assert_close(-torch.exp(block.A_log[3]), -torch.arange(1.0, 9.0))
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    x = torch.randn(2, 50, 16, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 50, 16)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("backward_inside", [False, True])
@pytest.mark.parametrize("seqlen", [20, 150])
def test_mamba_block_bf16_autocast_forward_backward(backward_inside, seqlen):
    """Under CPU bf16 autocast the block trains: forward, then backward outside (the usual AMP pattern) or inside
    the autocast region, with finite float32 parameter grads close to the float32 run's."""
    torch.manual_seed(4)
    block = MambaBlock(16, d_state=8)
    x = torch.randn(2, seqlen, 16, requires_grad=True)
    ref = block(x).float().square().mean()
    ref_grads = torch.autograd.grad(ref, [x, *block.parameters()])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
        loss = y.float().square().mean()
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    assert y.shape == (2, seqlen, 16)
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    for (name, p), g_ref in zip(block.named_parameters(), ref_grads[1:]):
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
        rel = (p.grad - g_ref).norm() / g_ref.norm().clamp_min(1e-12)
        assert rel < 0.1, (name, float(rel))


def test_mamba_block_is_causal():
    torch.manual_seed(1)
    block = MambaBlock(8, d_state=4)
    x = torch.randn(1, 40, 8)
    x2 = x.clone()
    x2[:, 25:] += torch.randn(1, 15, 8)
    y, y2 = block(x), block(x2)
    torch.testing.assert_close(y[:, :25], y2[:, :25])
    assert not torch.allclose(y[:, 25:], y2[:, 25:])


def test_mamba_block_context_guides_selection():
    torch.manual_seed(2)
    block = MambaBlock(8, d_state=4, d_context=6)
    x, ctx = torch.randn(2, 30, 8), torch.randn(2, 30, 6)
    assert not torch.allclose(block(x, ctx), block(x, ctx.flip(0)))
    with pytest.raises(ValueError, match="context"):
        block(x)
    with pytest.raises(ValueError, match="context must be"):
        block(x, ctx[:, :10])
    with pytest.raises(ValueError, match="x must be"):
        block(torch.randn(2, 30, 7), ctx)


def test_mamba_layer_residual_and_norms():
    torch.manual_seed(3)
    for norm in ("rms", "layer"):
        layer = MambaLayer(8, d_state=4, norm=norm)
        x = torch.randn(2, 20, 8)
        y = layer(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="norm"):
        MambaLayer(8, norm="batch")
    assert MambaBlock(40).dt_rank == math.ceil(40 / 16)


def test_benchmark_rows_smoke():
    from occle_bench.bench_scan import _scan_rows, _table

    rows = _scan_rows([80], repeats=1)
    assert [r["bench"] for r in rows] == ["selective_scan forward", "selective_scan fwd+bwd"]
    assert all(r["ms"] > 0 and r["baseline_ms"] > 0 and r["speedup"] > 0 for r in rows)
    assert "naive loop" in _table(rows)
