"""The node's counters and timing windows, and its ``/diagnostics`` in the ``diagnostic_updater`` layout.

Statuses (names prefixed ``<node name>: `` like diagnostic_updater's ``Updater``, hardware_id ``occle``):

- ``occupancy``: OK while frames are published (one within ``diagnostics.stale_after`` s); WARN when no complete
  input set arrived for that long (inputs stopped, a camera missing, stamps out of sync; also while waiting for
  the first one); ERROR when complete sets arrive but nothing was published for that long (every frame rejected
  or failing). Its values hold every counter and timing of :meth:`FrameStats.summary`.
- ``<topic> topic status``, one per input (like ``HeaderlessTopicDiagnostic``): the frequency of its messages
  with ``FrequencyStatus``'s keys and levels (ERROR "No events recorded." when none arrived in the window,
  WARN "Frequency too low." under ``diagnostics.min_rate``), plus the messages the synchroniser dropped.

Where ``diagnostic_updater`` is importable its ``Updater`` and ``FrequencyStatus`` run these tasks; elsewhere
:class:`Updater` and :class:`FrequencyStatus` here do the same with the same names, keys and levels.

Memory stays flat however long the node runs: latencies and model times are kept for the last
:data:`TIMING_FRAMES` frames, and arrival times only for the last :data:`RATE_WINDOW_S` seconds (older ones are
dropped on every new arrival and when the rate is read), which is all the input rate needs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

TIMING_FRAMES = 500  # frames whose latency / model time the percentiles cover
RATE_WINDOW_S = 5.0  # seconds of arrivals the input rate covers


class FrameStats:
    """Thread-safe counters (``processed``, ``rejected``, ``rejected.<reason>``, ...), per-frame timings and the
    arrival times of matched sets (monotonic seconds)."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.received: Counter[str] = Counter()  # messages per input topic
        self._latency_ms: deque[float] = deque(maxlen=TIMING_FRAMES)  # set complete -> published
        self._model_ms: deque[float] = deque(maxlen=TIMING_FRAMES)
        self._arrivals: deque[float] = deque()  # only the last RATE_WINDOW_S seconds
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.last_complete: float | None = None  # monotonic time of the newest complete set
        self.last_published: float | None = None  # monotonic time of the newest published frame

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def arrival(self, now: float) -> None:
        """A matched set completed at monotonic time ``now``."""
        with self._lock:
            self._arrivals.append(now)
            self.last_complete = now
            self._prune(now)

    def _prune(self, now: float) -> None:
        while self._arrivals and now - self._arrivals[0] > RATE_WINDOW_S:
            self._arrivals.popleft()

    def arrival_times(self) -> list[float]:
        """The arrival times currently kept (all within :data:`RATE_WINDOW_S` of the newest one)."""
        with self._lock:
            return list(self._arrivals)

    def frame_done(self, latency_s: float, model_ms: float) -> None:
        with self._lock:
            self.counters["processed"] += 1
            self.last_published = time.monotonic()
            self._latency_ms.append(latency_s * 1e3)
            self._model_ms.append(model_ms)

    def summary(self, sync_counters: Mapping[str, int], sync_dropped: int) -> dict[str, float]:
        """Counters, latency / model-time percentiles, input rate and the synchroniser's counters."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            lat = np.asarray(self._latency_ms, np.float64)
            model = np.asarray(self._model_ms, np.float64)
            recent = len(self._arrivals)
            stats: dict[str, float] = dict(self.counters)
        nan = float("nan")
        stats.update(
            {
                "latency_mean_ms": float(lat.mean()) if lat.size else nan,
                "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else nan,
                "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else nan,
                "model_p50_ms": float(np.percentile(model, 50)) if model.size else nan,
                "input_rate_hz": recent / min(RATE_WINDOW_S, max(now - self.started, 1e-3)),
                "sync_matched": sync_counters["matched"],
                "sync_dropped": sync_dropped,
                **{f"sync_{k}": v for k, v in sync_counters.items() if k not in ("matched", "received")},
                **{f"received_{k}": v for k, v in self.received.items()},
            }
        )
        for key in ("processed", "rejected", "dropped_superseded"):
            stats.setdefault(key, 0)
        return stats


class StatusWrapper(DiagnosticStatus):
    """``DiagnosticStatus`` with ``summary`` and ``add``, like diagnostic_updater's ``DiagnosticStatusWrapper``."""

    def summary(self, level: bytes, message: str) -> None:
        self.level, self.message = level, message

    def add(self, key: str, value: object) -> None:
        self.values.append(KeyValue(key=key, value=str(value)))


class FrequencyStatus:
    """diagnostic_updater's ``FrequencyStatus`` (same keys, levels and window of ``window_size`` updates) on the
    monotonic clock: :meth:`tick` per event, :meth:`run` per diagnostics update."""

    def __init__(self, min_hz: float, window_size: int = 5, tolerance: float = 0.1) -> None:
        self.min_hz, self.tolerance = min_hz, tolerance
        self._lock = threading.Lock()
        self.count = 0
        now = time.monotonic()
        self._times = [now] * window_size
        self._counts = [0] * window_size
        self._i = 0

    def tick(self) -> None:
        with self._lock:
            self.count += 1

    def run(self, stat: Any) -> Any:
        with self._lock:
            now = time.monotonic()
            events = self.count - self._counts[self._i]
            window = max(now - self._times[self._i], 1e-9)
            self._counts[self._i], self._times[self._i] = self.count, now
            self._i = (self._i + 1) % len(self._times)
            freq = events / window
            if events == 0:
                stat.summary(DiagnosticStatus.ERROR, "No events recorded.")
            elif freq < self.min_hz * (1 - self.tolerance):
                stat.summary(DiagnosticStatus.WARN, "Frequency too low.")
            else:
                stat.summary(DiagnosticStatus.OK, "Desired frequency met")
            stat.add("Events in window", f"{events:d}")
            stat.add("Events since startup", f"{self.count:d}")
            stat.add("Duration of window (s)", f"{window:f}")
            stat.add("Actual frequency (Hz)", f"{freq:f}")
            if self.min_hz > 0:
                stat.add("Minimum acceptable frequency (Hz)", f"{self.min_hz * (1 - self.tolerance):f}")
        return stat


class Updater:
    """diagnostic_updater's ``Updater`` where that package is missing: tasks added with :meth:`add` run every
    ``period`` seconds; their statuses go out in one DiagnosticArray on ``/diagnostics``, each named
    ``<node name>: <task name>``."""

    def __init__(self, node: Any, period: float = 1.0) -> None:
        self.node = node
        self.hwid = ""
        self.tasks: list[tuple[str, Callable[[Any], Any]]] = []
        self.publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 1)
        self.timer = node.create_timer(period, self.update)

    def setHardwareID(self, hwid: str) -> None:  # noqa: N802 - diagnostic_updater's name
        self.hwid = hwid

    def add(self, name: str, fn: Callable[[Any], Any]) -> None:
        self.tasks.append((name, fn))

    def update(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.node.get_clock().now().to_msg()
        for name, fn in self.tasks:
            stat = StatusWrapper(level=DiagnosticStatus.ERROR, name=name, message="No message was set",
                                 hardware_id=self.hwid)  # fmt: skip
            stat = fn(stat)
            array.status.append(DiagnosticStatus(level=stat.level, name=f"{self.node.get_name()}: {name}",
                                                 message=stat.message, hardware_id=stat.hardware_id,
                                                 values=list(stat.values)))  # fmt: skip
        self.publisher.publish(array)


def make_updater(node: Any, period: float) -> tuple[Any, Callable[[float], Any]]:
    """(updater, frequency task factory ``min_hz -> task with tick() / run(stat)``): diagnostic_updater's where
    importable, else this module's equivalents."""
    try:
        import diagnostic_updater as du

        updater = du.Updater(node, period=period)
    except (ImportError, TypeError):  # missing, or a release whose Updater has no period (its own timing)
        return Updater(node, period), FrequencyStatus

    def frequency(min_hz: float) -> Any:
        return du.FrequencyStatus(du.FrequencyStatusParam({"min": min_hz}, 0.1, 5))

    return updater, frequency


def occupancy_status(stat: Any, stats: Mapping[str, float], frames: FrameStats, stale_after: float,
                     waiting_for: str) -> Any:  # fmt: skip
    """Fill ``stat`` (``summary`` / ``add``) with the ``occupancy`` status (see the module docstring);
    ``waiting_for``: inputs that never sent a message ("" when all did)."""
    now = time.monotonic()
    published, complete = frames.last_published, frames.last_complete
    if published is not None and now - published <= stale_after:
        stat.summary(DiagnosticStatus.OK, "publishing")
    elif complete is None or now - complete > stale_after:
        since = "since start" if complete is None else f"for {now - complete:.1f} s"
        hint = f" (never received: {waiting_for})" if waiting_for else ""
        stat.summary(DiagnosticStatus.WARN, f"no complete input set {since}{hint}")
    else:
        rejected = {k[len("rejected.") :]: int(v) for k, v in stats.items() if k.startswith("rejected.")}
        stat.summary(DiagnosticStatus.ERROR, f"input sets arrive but nothing was published for {stale_after} s "
                                             f"(rejected: {rejected or 'none'})")  # fmt: skip
    for k, v in sorted(stats.items()):
        stat.add(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    return stat
