"""Approximate-time synchroniser of several message streams (N images, N camera_infos, a cloud), and the one-slot
:class:`Mailbox` that hands the newest matched set to the node's worker.

Pure Python and ROS-free: items are added with an integer stamp in nanoseconds, matched sets come back as
tuples. The node feeds it from its subscription callbacks; tests drive it directly.

Matching rule. The *pivot* is the stream whose oldest queued message is the newest of all streams' oldest
messages (time T). A match is one message per stream, all within ``slop`` of each other, taken from the
messages within ``slop`` of T; of the candidate sets the one with the smallest spread wins (found in
O(streams x candidates^2): for each candidate lower edge, every stream's first stamp at or above it; no
product over the streams, so 13 streams of 6 cameras + LiDAR cost what 3 do). It is emitted at
once (latency matters more than waiting for a marginally tighter set), and every queued message at or before
each emitted stamp is removed (the older ones counted as unmatched). Messages more than ``slop`` older than T
can never match any more and are dropped (unmatched); the pivot itself is dropped once every other stream has
moved past ``T + slop`` without a match.

Timing faults:
- duplicate stamp within a stream (queued or already emitted): dropped, counted ``duplicate``;
- a stamp older than the stream's last emitted stamp (out of order): dropped, counted ``late``;
- a stamp older than the newest stamp seen by more than ``reset_threshold`` (clock jumped backwards, e.g. a
  bag restarting its loop), or every stream sending a stamp at or before its last match with no match in
  between (a loop of a bag shorter than the threshold): every queue is cleared, counted ``reset``, and
  matching starts afresh.
- a queue over ``queue_size``: the oldest message is dropped, counted ``overflow``.

Every drop is also counted per stream (:meth:`ApproximateTimeSync.dropped_per_stream`), so diagnostics can name
the camera or LiDAR that does not keep up.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Generic, TypeVar


class ApproximateTimeSync:
    """Match one message from each of ``num_streams`` streams whose stamps lie within ``slop``.

    Args:
        num_streams: number of input streams (>= 1).
        slop_ns: largest allowed spread of the stamps of a matched set, nanoseconds (>= 0).
        queue_size: messages kept per stream (>= 1); older ones are dropped (counted).
        reset_threshold_ns: a backwards jump larger than this clears the state (default 1 s).
        callback: called with each matched tuple (in the thread that calls :meth:`add`), optional.

    Thread-safe: :meth:`add` may be called from several threads.
    """

    def __init__(
        self,
        num_streams: int,
        slop_ns: int,
        queue_size: int = 10,
        reset_threshold_ns: int = 1_000_000_000,
        callback: Callable[[tuple[Any, ...]], None] | None = None,
    ) -> None:
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if slop_ns < 0:
            raise ValueError(f"slop must be >= 0, got {slop_ns} ns")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if reset_threshold_ns <= 0:
            raise ValueError(f"reset_threshold must be > 0, got {reset_threshold_ns} ns")
        self.num_streams = num_streams
        self.slop_ns = int(slop_ns)
        self.queue_size = int(queue_size)
        self.reset_threshold_ns = int(reset_threshold_ns)
        self.callback = callback
        self._lock = threading.Lock()
        self._queues: list[list[tuple[int, Any]]] = [[] for _ in range(num_streams)]  # sorted by stamp
        self._last_emitted: list[int | None] = [None] * num_streams
        self._newest: int | None = None
        self._went_back: set[int] = set()  # streams that sent a stamp <= their last match since that match
        self.counters: Counter[str] = Counter()
        self._stream_dropped = [0] * num_streams

    # -- public API -------------------------------------------------------------------------------------------

    def add(self, stream: int, stamp_ns: int, item: Any) -> list[tuple[Any, ...]]:
        """Add ``item`` with ``stamp_ns`` to ``stream``; return the sets matched because of it (usually 0 or 1)."""
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream must be in 0..{self.num_streams - 1}, got {stream}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            self.counters["received"] += 1
            if self._newest is not None and stamp_ns < self._newest - self.reset_threshold_ns:
                self._reset_locked()
                self.counters["reset"] += 1
            last = self._last_emitted[stream]
            if last is not None and stamp_ns <= last:
                self._went_back.add(stream)
                if len(self._went_back) < self.num_streams:
                    self._drop(stream, "duplicate" if stamp_ns == last else "late")
                    return []
                # every stream went back since the last match: a short bag looping, not stray late messages
                self._reset_locked()
                self.counters["reset"] += 1
            queue = self._queues[stream]
            stamps = [s for s, _ in queue]
            if stamp_ns in stamps:
                self._drop(stream, "duplicate")
                return []
            pos = next((i for i, s in enumerate(stamps) if s > stamp_ns), len(stamps))
            queue.insert(pos, (stamp_ns, item))
            if len(queue) > self.queue_size:
                queue.pop(0)
                self._drop(stream, "overflow")
            self._newest = stamp_ns if self._newest is None else max(self._newest, stamp_ns)
            matched = self._match_locked()
        if self.callback is not None:
            for m in matched:
                self.callback(m)
        return matched

    def reset(self) -> None:
        """Forget every queued message and the last emitted stamps (counters are kept)."""
        with self._lock:
            self._reset_locked()

    def pending(self) -> list[int]:
        """Number of queued messages per stream."""
        with self._lock:
            return [len(q) for q in self._queues]

    @property
    def dropped(self) -> int:
        """Messages dropped for any reason (unmatched, overflow, late, duplicate; resets clear queues silently)."""
        c = self.counters
        return c["unmatched"] + c["overflow"] + c["late"] + c["duplicate"] + c["cleared"]

    def dropped_per_stream(self) -> list[int]:
        """Messages of each stream dropped for any reason (the per-stream split of :attr:`dropped`)."""
        with self._lock:
            return list(self._stream_dropped)

    # -- internals --------------------------------------------------------------------------------------------

    def _drop(self, stream: int, reason: str, n: int = 1) -> None:
        self.counters[reason] += n
        self._stream_dropped[stream] += n

    def _reset_locked(self) -> None:
        for s, q in enumerate(self._queues):
            self._drop(s, "cleared", len(q))
        self._queues = [[] for _ in range(self.num_streams)]
        self._last_emitted = [None] * self.num_streams
        self._newest = None
        self._went_back = set()

    def _match_locked(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        while all(self._queues):
            heads = [q[0][0] for q in self._queues]
            pivot_stream = max(range(self.num_streams), key=lambda s: heads[s])
            T = heads[pivot_stream]
            # messages that can never be in a set any more (every future set contains a pivot-stream
            # message at or after T)
            expired = False
            for s, q in enumerate(self._queues):
                while q and q[0][0] < T - self.slop_ns:
                    q.pop(0)
                    self._drop(s, "unmatched")
                    expired = True
            if expired:
                continue  # a queue may be empty now, or the pivot changed
            best = self._best_set(T, pivot_stream)
            if best is not None:
                stamps = [self._queues[s][i][0] for s, i in enumerate(best)]
                items = tuple(self._queues[s][i][1] for s, i in enumerate(best))
                for s, i in enumerate(best):
                    self._drop(s, "unmatched", i)  # older messages of this stream are now useless
                    del self._queues[s][: i + 1]
                    self._last_emitted[s] = stamps[s]
                self.counters["matched"] += 1
                self._went_back.clear()
                out.append(items)
                continue
            # no set for the pivot now: drop it once no future message of the other streams can help
            if all(q[-1][0] > T + self.slop_ns for s, q in enumerate(self._queues) if s != pivot_stream):
                self._queues[pivot_stream].pop(0)
                self._drop(pivot_stream, "unmatched")
                continue
            break
        return out

    def _best_set(self, T: int, pivot_stream: int) -> tuple[int, ...] | None:
        """Indices (one per stream) of the tightest set containing the pivot head, or None.

        The tightest set with its smallest stamp >= m takes from every stream the first stamp >= m; the best
        set's smallest stamp is one of the candidates, so trying each candidate <= T as m finds it."""
        stamps: list[list[int]] = []  # per stream, the ascending candidate stamps
        first: list[int] = []  # per stream, queue index of its first candidate
        for s, q in enumerate(self._queues):
            if s == pivot_stream:
                stamps.append([T])
                first.append(0)
                continue
            idx = [i for i, (st, _) in enumerate(q) if abs(st - T) <= self.slop_ns]
            if not idx:
                return None
            stamps.append([q[i][0] for i in idx])
            first.append(idx[0])
        edges = sorted({st for cand in stamps for st in cand if st <= T})
        best, best_spread = None, None
        for m in edges:
            picks = [bisect.bisect_left(cand, m) for cand in stamps]
            if any(p == len(cand) for p, cand in zip(picks, stamps)):
                continue
            chosen = [cand[p] for p, cand in zip(picks, stamps)]
            spread = max(chosen) - min(chosen)
            if spread <= self.slop_ns and (best_spread is None or spread < best_spread):
                best, best_spread = tuple(f + p for f, p in zip(first, picks)), spread
        return best


T = TypeVar("T")


class Mailbox(Generic[T]):
    """A one-slot queue between the executor thread and the worker: :meth:`put` replaces an unconsumed item (so
    the worker always gets the newest set and a slow model never builds a backlog)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Store ``item``; returns True when it replaced one that was never taken."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The stored item (removed), waiting up to ``timeout`` s for one; None when none came or closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake a waiting :meth:`take`; :attr:`closed` becomes True."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
