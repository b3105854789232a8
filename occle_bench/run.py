"""``occle-bench``: run the benchmark sections and print their tables and target checks.

Sections (in this order; ``--only`` picks some):

- ``pipeline``: the node path per frame, stage by stage (median / p95), tiny model on CPU (+ CUDA AMP).
- ``node``: end-to-end latency of ``occle_node`` over real DDS against its model time.
- ``scaling``: growth with point count, grid size and occupied voxel count.
- ``messages``: PointCloud2 decoding and MarkerArray building against per-element baselines.
- ``scan``: the pure-torch selective scan against a step-by-step loop (``occle_bench.bench_scan``).
- ``cameras``: ``Predictor.predict`` at 1, 2 and 6 cameras on the Occ3D grid (``occle_bench.bench_cameras``).
- ``variants``: shared vs decoupled encoders at the tiny widths, size and CPU cost (``occle_bench.bench_variants``).

``--quick`` runs every section at a small size in a few seconds each (CI smoke); its numbers are not the
targets' sizes. Full mode takes a few minutes on 2 CPU cores. Exit status: 0, or 1 when a section raised
(or, with ``--strict``, when a target FAILs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SECTIONS: tuple[str, ...] = ("pipeline", "node", "scaling", "messages", "scan", "cameras", "variants")
LOAD_WARNING = 1.5  # 1-minute load average above which timings are flagged as disturbed


def _scan_section(quick: bool) -> Any:
    from occle_bench.bench_scan import run as run_scan
    from occle_bench.common import Check, Section, Table

    start = time.perf_counter()
    rows = run_scan(quick)
    cols = ["bench", "shape", "ms", "baseline", "baseline_ms", "speedup", "threads"]
    table = Table(
        "Selective scan: pure torch vs naive loop (same run)",
        cols,
        rows,
        ["speedup = baseline_ms / ms (medians)"],
    )
    fwd = [r for r in rows if r["bench"].startswith("selective_scan") and r.get("speedup") is not None]
    worst = min((r["speedup"] for r in fwd), default=None)
    checks = [
        Check(
            "pure-torch selective scan vs naive loop",
            "faster than the loop (speedup > 1)",
            "not measured" if worst is None else f"lowest speedup {worst:.1f}x",
            None if worst is None else worst > 1.0,
        )
    ]
    return Section("scan", [table], checks, seconds=time.perf_counter() - start)


def _runners(workdir: Path) -> dict[str, Callable[[bool], Any]]:
    shared: dict[str, Any] = {}

    def pipeline(quick: bool) -> Any:
        from occle_bench.bench_pipeline import run

        section = run(quick, workdir=workdir / "pipeline")
        shared["forward_ms"] = section.info.get("node_model", {}).get("model_median_ms")
        return section

    def node(quick: bool) -> Any:
        from occle_bench.bench_node import run_node

        return run_node(quick, workdir=workdir / "node", forward_ms=shared.get("forward_ms"))

    def scaling(quick: bool) -> Any:
        from occle_bench.bench_scaling import run

        return run(quick)

    def messages(quick: bool) -> Any:
        from occle_bench.bench_messages import run

        return run(quick)

    def cameras(quick: bool) -> Any:
        from occle_bench.bench_cameras import run

        return run(quick)

    def variants(quick: bool) -> Any:
        from occle_bench.bench_variants import run

        return run(quick)

    return {
        "pipeline": pipeline,
        "node": node,
        "scaling": scaling,
        "messages": messages,
        "scan": _scan_section,
        "cameras": cameras,
        "variants": variants,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="occle-bench", description="occle latency, throughput and scaling benchmarks")
    p.add_argument("--quick", action="store_true", help="small sizes, a few seconds per section (CI smoke)")
    p.add_argument("--json", metavar="PATH", help="also write every table, check and the machine info as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the tables as markdown (docs/performance.md)")
    p.add_argument("--only", nargs="+", metavar="SECTION", choices=SECTIONS, help=f"run only these: {SECTIONS}")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target FAILs")
    p.add_argument("--workdir", metavar="DIR", help="where temporary checkpoints and the node log go")
    p.add_argument(
        "--dds-defaults",
        action="store_true",
        help="keep Fast DDS's default transports (large best-effort images are then lost between processes)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections, print their tables and PASS / FAIL / SKIP lines; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    # DDS traffic of the benchmark stays on this host (set before rclpy is imported)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    import tempfile

    from occle_bench.common import format_checks, format_table, machine_info

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="occle-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.dds_defaults:
        from occle_bench.bench_node import large_data_profile

        profile = large_data_profile()  # before the first DDS participant of this process
        if profile:
            print(f"Fast DDS profile: {profile} (FASTDDS_DEFAULT_PROFILES_FILE; --dds-defaults to run without)")
    names = [s for s in SECTIONS if not args.only or s in args.only]
    machine = machine_info()
    machine["fastdds_profile"] = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "")
    mode = "quick" if args.quick else "full"
    print(f"occle-bench ({mode}): sections {', '.join(names)}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    if machine["load_average"][0] > LOAD_WARNING:
        print(f"WARNING: load average {machine['load_average'][0]} > {LOAD_WARNING}: timings are disturbed")
    runners = _runners(workdir)
    sections, errors = [], {}
    start = time.perf_counter()
    for name in names:
        print(f"\n### {name}", flush=True)
        try:
            section = runners[name](args.quick)
        except Exception as exc:  # report and go on with the other sections
            errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            print(f"[ERROR] section {name}: {errors[name]}", flush=True)
            continue
        sections.append(section)
        for table in section.tables:
            print("\n" + format_table(table))
        if section.checks:
            print("\n" + format_checks(section.checks))
        print(f"({name}: {section.seconds:.1f} s)", flush=True)
    total = time.perf_counter() - start
    checks = [c for s in sections for c in s.checks]
    machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(f"\n### targets ({mode}, {total:.0f} s, load average at the end {machine['load_average_end']})")
    print(format_checks(checks) if checks else "(none)")
    for name, err in errors.items():
        print(f"[ERROR] {name}: {err}")
    if args.json:
        doc = {
            "mode": mode,
            "argv": list(argv) if argv is not None else sys.argv[1:],
            "machine": machine,
            "seconds": round(total, 1),
            "sections": [s.as_dict() for s in sections],
            "errors": errors,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if args.markdown:
        parts = []
        for s in sections:
            parts += [f"### {s.name}", ""] + [format_table(t, markdown=True) + "\n" for t in s.tables]
        parts += ["### targets", "", format_checks(checks, markdown=True), ""]
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(parts))
    if errors:
        return 1
    if args.strict and any(c.passed is False for c in checks):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
