"""occle_ros.sync.ApproximateTimeSync: pairing within slop, drops, timing faults (pure Python, no ROS)."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from occle_ros.sync import ApproximateTimeSync, Mailbox

MS = 1_000_000


def test_identical_stamps_match_immediately():
    sync = ApproximateTimeSync(3, slop_ns=10 * MS)
    assert sync.add(0, 100 * MS, "img") == []
    assert sync.add(1, 100 * MS, "info") == []
    assert sync.add(2, 100 * MS, "cloud") == [("img", "info", "cloud")]
    assert sync.counters["matched"] == 1 and sync.pending() == [0, 0, 0]


def test_pairs_within_slop_and_drops_unmatched():
    sync = ApproximateTimeSync(3, slop_ns=20 * MS)
    out = []
    # camera at 10 Hz, lidar 30 ms later; one camera frame (t=200) has no cloud
    for t in (0, 100, 200, 300):
        out += sync.add(0, t * MS, f"img{t}")
        out += sync.add(1, t * MS, f"info{t}")
    for t in (15, 115, 315, 415):
        out += sync.add(2, t * MS, f"cloud{t}")
    assert out == [("img0", "info0", "cloud15"), ("img100", "info100", "cloud115"), ("img300", "info300", "cloud315")]
    assert sync.counters["unmatched"] == 2  # img200 and info200
    assert sync.pending() == [0, 0, 1]  # cloud415 waits for its image


def test_outside_slop_never_matches():
    sync = ApproximateTimeSync(2, slop_ns=5 * MS)
    out = []
    for t in range(0, 1000, 100):
        out += sync.add(0, t * MS, t)
        out += sync.add(1, (t + 50) * MS, t)
    assert out == []
    assert sync.counters["unmatched"] >= 17 and max(sync.pending()) <= 2


def test_picks_the_closest_candidate():
    sync = ApproximateTimeSync(2, slop_ns=30 * MS)
    sync.add(1, 95 * MS, "b95")
    sync.add(1, 102 * MS, "b102")
    assert sync.add(0, 101 * MS, "a101") == [("a101", "b102")]
    assert sync.counters["unmatched"] == 1  # b95 is older than the emitted b102


def test_duplicates_late_and_overflow_are_counted():
    sync = ApproximateTimeSync(2, slop_ns=1 * MS, queue_size=3)
    assert sync.add(0, 10 * MS, "a") == []
    assert sync.add(0, 10 * MS, "a-dup") == []  # duplicate of a queued stamp
    assert sync.add(1, 10 * MS, "b") == [("a", "b")]
    assert sync.add(0, 10 * MS, "a-again") == []  # duplicate of the emitted stamp
    assert sync.add(0, 5 * MS, "a-late") == []  # out of order, older than the last match
    for t in range(20, 70, 10):  # 5 messages into a queue of 3
        sync.add(0, t * MS, t)
    c = sync.counters
    assert (c["duplicate"], c["late"], c["overflow"]) == (2, 1, 2)
    assert sync.pending() == [3, 0]
    assert sync.dropped == 5


def test_out_of_order_arrival_within_the_queue_is_sorted():
    sync = ApproximateTimeSync(2, slop_ns=2 * MS)
    sync.add(0, 30 * MS, "a30")
    sync.add(0, 10 * MS, "a10")  # arrives late but before anything was emitted: kept, sorted
    assert sync.add(1, 10 * MS, "b10") == [("a10", "b10")]
    assert sync.add(1, 30 * MS, "b30") == [("a30", "b30")]


def test_clock_jump_backwards_resets():
    sync = ApproximateTimeSync(2, slop_ns=5 * MS, reset_threshold_ns=500 * MS)
    for t in (1000, 1100, 1200):
        sync.add(0, t * MS, t)
        sync.add(1, t * MS, t)
    sync.add(0, 1300 * MS, "pending")
    assert sync.add(0, 0, "loop0") == []  # bag loop: time jumps back by 1.3 s
    assert sync.counters["reset"] == 1 and sync.counters["cleared"] == 1
    assert sync.add(1, 0, "loop0b") == [("loop0", "loop0b")]  # matching works again after the jump


def test_short_bag_loop_resets_once_every_stream_went_back():
    sync = ApproximateTimeSync(2, slop_ns=5 * MS, reset_threshold_ns=1000 * MS)
    for t in (0, 100):  # a 0.1 s bag: the loop jump is far below the threshold
        sync.add(0, t * MS, ("a", t))
        sync.add(1, t * MS, ("b", t))
    assert sync.add(0, 0, ("a", "loop")) == []  # one stream back in time: a stray late message
    assert sync.counters["late"] == 1 and sync.counters["reset"] == 0
    assert sync.add(1, 0, ("b", "loop")) == []  # the other stream too: the bag looped -> reset
    assert sync.counters["reset"] == 1
    assert sync.add(0, 0, ("a", "loop2")) == [(("a", "loop2"), ("b", "loop"))]


def test_callback_and_validation():
    got = []
    sync = ApproximateTimeSync(2, slop_ns=0, callback=got.append)
    sync.add(0, 1, "a")
    sync.add(1, 1, "b")
    assert got == [("a", "b")]
    with pytest.raises(ValueError, match="stream must be in 0..1"):
        sync.add(2, 0, "x")
    for kwargs, msg in [
        ({"num_streams": 0, "slop_ns": 1}, "num_streams"),
        ({"num_streams": 2, "slop_ns": -1}, "slop"),
        ({"num_streams": 2, "slop_ns": 1, "queue_size": 0}, "queue_size"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ApproximateTimeSync(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    period=st.integers(20, 200),
    offsets=st.lists(st.integers(-40, 40), min_size=3, max_size=3),
    slop=st.integers(0, 60),
    drop=st.sets(st.integers(0, 29), max_size=10),
    seed=st.integers(0, 1000),
)
def test_property_every_match_is_within_slop_and_consistent(period, offsets, slop, drop, seed):
    """Random 3-stream traffic with jitter, missing messages and shuffled arrival within a small window."""
    sync = ApproximateTimeSync(3, slop_ns=slop * MS, queue_size=5)
    events = []
    for k in range(30):
        for s in range(3):
            if s == 2 and k in drop:
                continue
            events.append((k * period + offsets[s], s))
    rng = random.Random(seed)
    events.sort(key=lambda e: e[0] + rng.randint(0, 5))  # small arrival jitter
    matched = []
    for t, s in events:
        matched += sync.add(s, t * MS, (s, t))
    last = [-(10**9)] * 3
    for m in matched:
        stamps = [t for _, t in m]
        assert [s for s, _ in m] == [0, 1, 2]
        assert max(stamps) - min(stamps) <= slop
        assert all(a > b for a, b in zip(stamps, last))  # strictly increasing per stream, no reuse
        last = stamps
    c = sync.counters
    received = len(events)
    assert c["received"] == received
    used = 3 * len(matched)
    assert used + sync.dropped + sum(sync.pending()) == received  # every message is accounted for
    spread = max(offsets) - min(offsets)
    if spread + 5 <= slop and period > 2 * slop + 10:
        assert len(matched) >= 30 - len(drop) - 1  # clean traffic: nearly every complete frame matches


def test_mailbox_keeps_only_the_newest_item_and_wakes_on_close():
    box: Mailbox[int] = Mailbox()
    assert box.put(1) is False and box.put(2) is True  # 1 was never taken: replaced
    assert box.take(timeout=0) == 2 and box.take(timeout=0) is None
    got: list[int | None] = []
    waiter = threading.Thread(target=lambda: got.append(box.take(timeout=60.0)))
    waiter.start()
    box.close()  # wakes the waiting take long before its timeout
    waiter.join(timeout=30.0)
    assert not waiter.is_alive() and got == [None] and box.closed


@settings(max_examples=80, deadline=None)
@given(
    queues=st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=4, unique=True), min_size=2, max_size=5),
    slop=st.integers(0, 30),
)
def test_best_set_has_the_smallest_spread_of_all_sets(queues, slop):
    """The candidate-edge search finds a set as tight as the brute-force product over the streams."""
    import itertools

    sync = ApproximateTimeSync(len(queues), slop_ns=slop)
    sync._queues = [[(t, t) for t in sorted(q)] for q in queues]
    heads = [min(q) for q in queues]
    pivot = max(range(len(queues)), key=lambda s: heads[s])
    T = heads[pivot]
    choices = [[T] if s == pivot else [t for t in sorted(q) if abs(t - T) <= slop] for s, q in enumerate(queues)]
    spreads = [max(c) - min(c) for c in itertools.product(*choices) if max(c) - min(c) <= slop]
    best = sync._best_set(T, pivot)
    if not spreads:
        assert best is None
        return
    stamps = [sync._queues[s][i][0] for s, i in enumerate(best)]
    assert stamps[pivot] == T and max(stamps) - min(stamps) == min(spreads)


def test_thirteen_streams_match_and_count_drops_per_stream():
    """Six cameras (image + camera_info) and a LiDAR: one set per stamp; a lone message is dropped on its stream."""
    sync = ApproximateTimeSync(13, slop_ns=20 * MS)
    sync.add(4, 0, "lone")  # camera 2's image, never completed
    out = []
    for frame in range(1, 4):
        for s in range(13):
            out += sync.add(s, (frame * 100 + s) * MS, (s, frame))  # stamps spread 12 ms within a set
    assert [m[0][1] for m in out] == [1, 2, 3] and all(len(m) == 13 for m in out)
    dropped = sync.dropped_per_stream()
    assert dropped[4] == 1 and sum(dropped) == 1 == sync.dropped
