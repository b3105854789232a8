"""The node's counters and timing windows, and the ``/diagnostics`` message built from them.

Memory stays flat however long the node runs: latencies and model times are kept for the last
:data:`TIMING_FRAMES` frames, and arrival times only for the last :data:`RATE_WINDOW_S` seconds (older ones are
dropped on every new arrival and when the rate is read), which is all the input rate needs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping

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

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def arrival(self, now: float) -> None:
        """A matched set completed at monotonic time ``now``."""
        with self._lock:
            self._arrivals.append(now)
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


def diagnostic_array(name: str, stats: Mapping[str, float], waiting_for_camera_info: bool, new_rejects: bool,
                     stamp: object) -> DiagnosticArray:  # fmt: skip
    """One ``DiagnosticStatus`` named ``name`` holding every statistic: OK, or WARN while camera_info is missing
    or when frames were rejected since the previous message."""
    level, message = DiagnosticStatus.OK, "running"
    if waiting_for_camera_info:
        level, message = DiagnosticStatus.WARN, "waiting for camera_info"
    elif new_rejects:
        level, message = DiagnosticStatus.WARN, f"{int(stats['rejected'])} frames rejected so far"
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id="occle")
    status.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v))
                     for k, v in sorted(stats.items())]  # fmt: skip
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
