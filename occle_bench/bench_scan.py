"""Selective-scan benchmark: the pure-torch parallel scan against a step-by-step loop, and a two-layer Mamba
(occle's MambaLayer) forward + backward against the ``mambapy`` package's pure-torch Mamba when it is installed.

Usage: ``python -m occle_bench.bench_scan [--quick] [--json]``. Every timing is the median over repeats after
one warm-up, measured side by side in the same process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from occle_core.model.mamba import MambaLayer
from occle_core.model.ops.selective_scan import selective_scan, selective_scan_naive

__all__ = ["main", "run"]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _scan_inputs(batch: int, dim: int, d_state: int, seqlen: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mamba-like scan inputs (A = -(1..N), softplus steps around 0.01..0.1), mamba-ssm layout."""
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, dim, seqlen, generator=g),
        "delta": torch.randn(batch, dim, seqlen, generator=g) - 3.0,
        "A": -torch.arange(1.0, d_state + 1).repeat(dim, 1),
        "B": torch.randn(batch, d_state, seqlen, generator=g),
        "C": torch.randn(batch, d_state, seqlen, generator=g),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, seqlen, generator=g),
        "delta_bias": torch.zeros(dim),
    }


def _scan_rows(lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    batch, dim, d_state = 1, 64, 16
    for seqlen in lengths:
        inp = _scan_inputs(batch, dim, d_state, seqlen)
        with torch.no_grad():
            ours = _median_ms(lambda inp=inp: selective_scan(**inp, delta_softplus=True), repeats)
            naive = _median_ms(lambda inp=inp: selective_scan_naive(**inp, delta_softplus=True), repeats)
        rows.append(
            {
                "bench": "selective_scan forward",
                "shape": f"B={batch} D={dim} N={d_state} L={seqlen}",
                "ms": round(ours, 2),
                "baseline": "naive loop",
                "baseline_ms": round(naive, 2),
                "speedup": round(naive / ours, 2),
            }
        )
    seqlen = lengths[0]
    inp = {k: v.requires_grad_(True) for k, v in _scan_inputs(batch, dim, d_state, seqlen).items()}

    def fwd_bwd(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        return lambda: fn(**inp, delta_softplus=True).square().mean().backward()

    ours, naive = _median_ms(fwd_bwd(selective_scan), repeats), _median_ms(fwd_bwd(selective_scan_naive), repeats)
    rows.append(
        {
            "bench": "selective_scan fwd+bwd",
            "shape": f"B={batch} D={dim} N={d_state} L={seqlen}",
            "ms": round(ours, 2),
            "baseline": "naive loop",
            "baseline_ms": round(naive, 2),
            "speedup": round(naive / ours, 2),
        }
    )
    return rows


def _mamba_rows(batch: int, seqlen: int, d_model: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(batch, seqlen, d_model)
    ours = nn.Sequential(MambaLayer(d_model, d_state=16, expand=2), MambaLayer(d_model, d_state=16, expand=2))

    def fwd_bwd(model: nn.Module) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()

        return step

    ours_ms = _median_ms(fwd_bwd(ours), repeats)
    try:
        from mambapy.mamba import Mamba, MambaConfig
    except ImportError:
        ref_ms, baseline = None, "mambapy (not installed)"
    else:
        ref = Mamba(MambaConfig(d_model=d_model, n_layers=2, d_state=16, expand_factor=2))
        ref_ms, baseline = _median_ms(fwd_bwd(ref), repeats), "mambapy 2 layers"
    return [
        {
            "bench": "2x MambaLayer fwd+bwd",
            "shape": f"({batch}, {seqlen}, {d_model}) N=16 E=2",
            "ms": round(ours_ms, 1),
            "baseline": baseline,
            "baseline_ms": None if ref_ms is None else round(ref_ms, 1),
            "speedup": None if ref_ms is None else round(ref_ms / ours_ms, 2),
        }
    ]


def run(quick: bool) -> list[dict]:
    """Run the scan benchmarks; ``quick`` keeps it to a few seconds (short sequences, fewer repeats).

    Returns one dict per row: bench, shape, ms (ours), baseline, baseline_ms, speedup (baseline / ours),
    threads.
    """
    if quick:
        rows = _scan_rows([256, 1024], repeats=3) + _mamba_rows(2, 512, 64, repeats=2)
    else:
        rows = _scan_rows([1024, 4096, 16384], repeats=5) + _mamba_rows(2, 4096, 64, repeats=3)
    for row in rows:
        row["threads"] = torch.get_num_threads()
    return rows


def _table(rows: list[dict]) -> str:
    cols = ["bench", "shape", "ms", "baseline", "baseline_ms", "speedup", "threads"]
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the scan benchmark table (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="bench_scan", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, a few seconds")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
