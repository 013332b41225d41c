"""The ROS-free parts of the node: the newest-frame slot and the warning throttle."""
from __future__ import annotations

import collections
import threading
import time

from msaf_ros.runtime import LatestSlot, Throttle


def test_latest_slot_keeps_only_the_newest():
    slot = LatestSlot()
    assert slot.put(1) == (False, None)
    assert slot.put(2) == (True, 1)           # 1 was stale: replaced, reported
    assert slot.get(0.1) == (True, 2)
    assert slot.get(0.05) == (False, None)    # nothing queued behind
    slot.close()
    assert slot.get() == (False, None)


def test_latest_slot_serves_streams_in_turn():
    """Cameras that fire together each get the model in turn: the stream waiting longest is
    served first, and a replaced frame keeps its stream's place."""
    slot = LatestSlot(max_keys=3)
    assert slot.put("L1", key="left") == (False, None)
    assert slot.put("R1", key="right") == (False, None)
    assert slot.put("L2", key="left") == (True, "L1")     # newest of left, still first
    assert slot.get(0) == (True, "L2")
    assert slot.put("L3", key="left") == (False, None)
    assert slot.get(0) == (True, "R1")                    # right waited longer than L3
    assert slot.get(0) == (True, "L3")
    for k in "abc":
        slot.put(k.upper(), key=k)
    assert slot.put("D", key="d") == (True, "A")          # bounded: the oldest is evicted
    assert len(slot) == 3 and [slot.get(0)[1] for _ in range(3)] == ["B", "C", "D"]


def test_latest_slot_two_synchronised_cameras_share_a_slow_worker():
    """A stereo pair at 10 Hz, 3 ms apart, and a worker that needs 120 ms per frame: both
    cameras get about half of the outputs (one shared slot gave the later camera nearly all)."""
    slot, done, stop = LatestSlot(), collections.Counter(), threading.Event()

    def worker():
        while not stop.is_set():
            ok, item = slot.get(timeout=0.2)
            if ok:
                time.sleep(0.12)
                done[item] += 1
    t = threading.Thread(target=worker)
    t.start()
    for _ in range(25):
        slot.put("left", key="left")
        time.sleep(0.003)
        slot.put("right", key="right")
        time.sleep(0.097)
    stop.set()
    t.join()
    assert min(done["left"], done["right"]) >= 0.3 * sum(done.values()), dict(done)


def test_throttle_per_key():
    now = [0.0]
    th = Throttle(5.0, clock=lambda: now[0])
    assert th("a") == 0 and th("a") is None and th("b") == 0
    now[0] = 6.0
    assert th("a") == 1                        # one suppressed since the last one


def test_throttle_table_is_bounded_and_overflow_shares_one_line_per_group():
    """More keys than it remembers: the first max_keys log, the rest share one line per group
    and period, and keys whose period is over make room again."""
    now = [0.0]
    th = Throttle(5.0, clock=lambda: now[0], max_keys=3)
    assert [th.check(f"k{i}", "g") for i in range(3)] == [(0, False)] * 3
    assert th.check("k3", "g") == (0, True)            # table full: the group's shared line
    assert th.check("k4", "g") is None and th.check("k5", "h") == (0, True)
    assert len(th) <= 3 + 2
    now[0] = 6.0
    assert th.check("k6", "g") == (0, False)           # expired keys made room
    assert len(th) <= 3 + 2


def test_throttle_group_budget_per_period():
    """Within one period at most group_budget new keys of a group log on their own."""
    now = [0.0]
    th = Throttle(5.0, clock=lambda: now[0], max_keys=100, group_budget=2)
    assert [th.check(f"k{i}", "g") for i in range(4)] == [(0, False), (0, False), (0, True),
                                                          None]
    assert th.check("x", "other") == (0, False)        # another group has its own budget
    now[0] = 5.5
    assert th.check("k9", "g") == (0, False)           # a new period, a new budget


def test_stream_key_and_shorten_bound_huge_ids():
    from msaf_ros.runtime import shorten, stream_key
    a, b = "cam" + "x" * 10_000_000, "cam" + "x" * 9_999_999 + "y"
    assert len(stream_key(a)) < 120 and stream_key(a) != stream_key(b)
    assert stream_key("front") == "front" and shorten("front") == "front"
    assert len(shorten(a)) <= 80 and shorten(a) != shorten(b)
    assert "\n" not in shorten("cam\nERROR forged line")
