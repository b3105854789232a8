"""Timing, memory and table helpers shared by the occle benchmarks.

Every benchmark section returns a :class:`Section`: tables of rows (plain dicts, JSON friendly) plus the
:class:`Check` results of the targets it measures (PASS / FAIL / SKIP with the measured value). Timings are
wall-clock (``time.perf_counter``) medians and 95th percentiles over repeats after warm-up runs; CUDA work is
synchronised before each clock read.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Check",
    "RssSampler",
    "Section",
    "Table",
    "Timing",
    "cuda_peak_mb",
    "format_checks",
    "format_table",
    "growth_fit",
    "growth_per_doubling",
    "machine_info",
    "peak_rss_mb",
    "rss_mb",
    "summarize",
    "sync_cuda",
    "time_fn",
]


@dataclass
class Timing:
    """Summary of repeated wall-clock measurements in milliseconds."""

    median: float
    p95: float
    mean: float
    min: float
    n: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``{prefix+"median_ms": ..., prefix+"p95_ms": ..., prefix+"n": ...}`` rounded for tables."""
        return {f"{prefix}median_ms": _round(self.median), f"{prefix}p95_ms": _round(self.p95), f"{prefix}n": self.n}


def _round(v: float) -> float:
    """Three significant decimals for small values, two for large ones (table friendly)."""
    if not math.isfinite(v):
        return v
    return round(v, 3) if abs(v) < 10 else round(v, 2) if abs(v) < 1000 else round(v, 1)


def summarize(samples_ms: Sequence[float]) -> Timing:
    """Median, 95th percentile (linear interpolation), mean and minimum of ``samples_ms``.

    Raises:
        ValueError: when ``samples_ms`` is empty.
    """
    if len(samples_ms) == 0:
        raise ValueError("summarize needs at least one sample")
    arr = np.asarray(samples_ms, np.float64)
    return Timing(
        median=float(np.median(arr)),
        p95=float(np.percentile(arr, 95)),
        mean=float(arr.mean()),
        min=float(arr.min()),
        n=int(arr.size),
    )


def sync_cuda() -> None:
    """Wait for queued CUDA work when torch with CUDA is loaded (no-op otherwise, never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], repeats: int, warmup: int = 1, cuda: bool = False) -> Timing:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs; CUDA is synchronised around each run when
    ``cuda`` is True.

    Raises:
        ValueError: ``repeats`` < 1 or ``warmup`` < 0.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_fn needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    if cuda:
        sync_cuda()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            sync_cuda()
        samples.append((time.perf_counter() - start) * 1e3)
    return summarize(samples)


def growth_per_doubling(xs: Sequence[float], ys: Sequence[float]) -> list[float | None]:
    """Growth factor of ``ys`` per doubling of ``xs`` between consecutive entries: ``(y1/y0)**(1/log2(x1/x0))``.

    The first entry is None (no predecessor); so is any entry whose predecessor time is not positive. A linear
    cost gives 2.0, a constant one 1.0, a quadratic one 4.0.
    """
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys must have the same length, got {len(xs)} and {len(ys)}")
    out: list[float | None] = [None]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 <= 0 or x1 <= x0 or x0 <= 0:
            out.append(None)
            continue
        out.append(round(float((y1 / y0) ** (1.0 / math.log2(x1 / x0))), 2))
    return out


def growth_fit(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Growth factor per doubling over the whole range: ``2 ** slope`` of the least-squares line through
    (log2 x, log2 y). Less sensitive to the noise of one sub-millisecond point than the local factors of
    :func:`growth_per_doubling`; None with fewer than two positive points."""
    pts = [(math.log2(x), math.log2(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.asarray(pts).T
    slope = float(np.polyfit(lx, ly, 1)[0])
    return round(2.0**slope, 2)


def rss_mb() -> float:
    """Current resident set size of this process in MiB (psutil; /proc fallback)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil is an install requirement
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB (``getrusage``; ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class RssSampler:
    """Context manager sampling this process's RSS in a background thread (every ``interval`` s); ``peak_mb`` is
    the highest RSS seen inside the block (including the start and end), ``delta_mb`` its rise over the start.

    ``getrusage`` only knows the peak of the whole process life; this gives the peak of one measurement.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> RssSampler:
        self.start_mb = self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

    @property
    def delta_mb(self) -> float:
        """Peak minus the RSS at the start of the block, MiB."""
        return self.peak_mb - self.start_mb


def cuda_peak_mb(reset: bool = False) -> float | None:
    """Peak CUDA memory allocated by torch in MiB since the last reset (None without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    peak = torch.cuda.max_memory_allocated() / 2**20
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _caches() -> str:
    """``"L1d 32K, L2 512K, L3 8192K"`` from sysfs (per core / shared as the kernel reports them), or ""."""
    out = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            if not entry.startswith("index"):
                continue
            with open(f"{base}/{entry}/level") as f:
                level = f.read().strip()
            with open(f"{base}/{entry}/type") as f:
                kind = f.read().strip()
            with open(f"{base}/{entry}/size") as f:
                size = f.read().strip()
            if kind != "Instruction":
                out.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    except OSError:
        return ""
    return ", ".join(out)


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU model, cores, memory, load, python / torch / numpy versions, threads,
    GPU (when CUDA is available) and the RMW implementation."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "caches": _caches(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    info["rmw"] = os.environ.get("RMW_IMPLEMENTATION", "default")
    return info


@dataclass
class Table:
    """One printed table: ``columns`` pick (and order) the keys of ``rows``; ``notes`` print underneath."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Check:
    """A target: ``passed`` True / False, or None when it could not be measured here (``SKIP``)."""

    name: str
    target: str
    measured: str
    passed: bool | None

    @property
    def verdict(self) -> str:
        """PASS, FAIL or SKIP."""
        return "SKIP" if self.passed is None else "PASS" if self.passed else "FAIL"


@dataclass
class Section:
    """The result of one benchmark section."""

    name: str
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (checks carry their verdict)."""
        d = asdict(self)
        for c, check in zip(d["checks"], self.checks):
            c["verdict"] = check.verdict
        return d

    def table(self, title: str) -> Table:
        """The table whose title starts with ``title``.

        Raises:
            KeyError: naming the titles present when none matches.
        """
        for t in self.tables:
            if t.title.startswith(title):
                return t
        raise KeyError(f"section {self.name!r} has no table {title!r}; tables: {[t.title for t in self.tables]}")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def format_table(table: Table, markdown: bool = False) -> str:
    """Render ``table`` as aligned plain text (or a GitHub markdown table), title first, notes after."""
    cells = [[_cell(r.get(c)) for c in table.columns] for r in table.rows]
    if markdown:
        lines = [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in table.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        lines += [""] + [f"- {n}" for n in table.notes] if table.notes else []
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(table.columns)]
    numeric = [all(_is_number(r.get(c)) for r in table.rows) and bool(table.rows) for c in table.columns]
    out = [table.title, "=" * len(table.title)]
    out.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(table.columns, widths, numeric)))
    out.append("  ".join("-" * w for w in widths))
    for row in cells:
        out.append("  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric)))
    out += [f"  note: {n}" for n in table.notes]
    return "\n".join(out)


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def format_checks(checks: Sequence[Check], markdown: bool = False) -> str:
    """The PASS / FAIL / SKIP lines of ``checks``."""
    if markdown:
        lines = ["| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {c.name}: {c.target} | {c.measured} | **{c.verdict}** |" for c in checks]
        return "\n".join(lines)
    return "\n".join(f"[{c.verdict}] {c.name}: {c.target} -- measured {c.measured}" for c in checks)


def median_of(samples: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(samples))
