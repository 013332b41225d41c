"""ROS-free parts of the node: the newest-frame slot, statistics and warning throttling.

Also the reasons the node counts: why a frame was dropped as bad (``BAD_TEXT``) and why a
stream's feature cache was reset (``RESET_TEXT``), each with the words its log lines use.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

#: Why a frame was dropped as bad (ImageDecodeError.reason) -> words for the log.
BAD_TEXT = {
    "encoding": "unknown encoding", "empty": "empty image", "step": "step too small",
    "length": "data length is not height*step", "fields": "malformed message",
    "data": "unreadable data", "compressed": "undecodable compressed image",
    "too-small": "too small for the model", "too-large": "larger than max_pixels allows",
}

#: Why a stream's feature cache was reset (Segmenter.on_reset) -> words for the log.
RESET_TEXT = {
    "time-backwards": "the stamp went backwards (a bag looped or time jumped back)",
    "duplicate-stamp": "the stamp repeated",
    "gap": "the gap since the previous frame exceeds max_gap",
    "resolution": "the resolution changed",
}


class LatestSlot:
    """Newest-frame mailboxes, one per stream (camera), between the subscription callback
    and the inference worker.

    :meth:`put` replaces only the item waiting for the same ``key``; the replaced item is
    returned, so the caller can count it as a dropped stale frame. :meth:`get` blocks until
    an item or :meth:`close` and hands out the item of the stream that has waited longest
    (a replaced item keeps its stream's place), so cameras that fire together are served in
    turn instead of the last one to arrive always winning. Frames are never queued within a
    stream: the worker always gets a stream's newest one. At most ``max_keys`` streams wait;
    a new one beyond that evicts the longest-waiting item (returned as replaced).
    """

    def __init__(self, max_keys: int = 16) -> None:
        self.max_keys = max(1, int(max_keys))
        self._items: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: Any, key: Any = "") -> Tuple[bool, Any]:
        """Store ``item`` for ``key``; returns (replaced, replaced item or None)."""
        with self._cond:
            if key in self._items:
                old, replaced = self._items[key], True
            elif len(self._items) >= self.max_keys:
                (_, old), replaced = self._items.popitem(last=False), True
            else:
                old, replaced = None, False
            self._items[key] = item                     # a waiting stream keeps its place
            self._cond.notify()
        return replaced, old

    def get(self, timeout: Optional[float] = None) -> Tuple[bool, Any]:
        """(True, item) when one came, (False, None) on close or timeout."""
        with self._cond:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self._closed:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False, None
                self._cond.wait(left)
            if self._closed:
                return False, None
            return True, self._items.popitem(last=False)[1]

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


#: frame_ids up to this length are used as they are; longer ones by :func:`stream_key`.
MAX_ID_CHARS = 256


def stream_key(frame_id: Any) -> str:
    """The name the node keeps a camera's state under: its frame_id, or for a frame_id
    longer than :data:`MAX_ID_CHARS` its first 64 characters and a 64-bit hash of the rest,
    so no per-camera table holds a huge id (a 10 MB frame_id costs 100 bytes)."""
    fid = frame_id if isinstance(frame_id, str) else str(frame_id)
    if len(fid) <= MAX_ID_CHARS:
        return fid
    digest = hashlib.blake2b(fid.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{fid[:64]}...<{len(fid)} chars #{digest}>"


def shorten(text: Any, limit: int = 80) -> str:
    """``text`` for a log line: control characters escaped (no forged log lines), at most
    ``limit`` characters, a cut one marked with its length and a hash that tells ids
    apart."""
    t = str(text)
    if len(t) > 4 * limit:
        t = stream_key(t) if len(t) > MAX_ID_CHARS else t
    t = t.encode("unicode_escape").decode("ascii") if not t.isprintable() else t
    if len(t) <= limit:
        return t
    digest = hashlib.blake2b(t.encode(), digest_size=4).hexdigest()
    return f"{t[:limit - 24]}...<{len(t)} chars #{digest}>"


class Throttle:
    """Lets one message per key through every ``period`` seconds; counts the rest.

    At most ``max_keys`` keys are remembered, and within one period at most
    ``group_budget`` keys of one ``group`` (e.g. the kind of bad frame) may log for the first
    time. Beyond either, a new key shares one slot with every other overflowing key of its
    group: thousands of cameras sending bad frames give one line per group and period, not
    one each, and the table never grows past ``max_keys`` + the groups."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 64, group_budget: Optional[int] = None) -> None:
        self.period = float(period)
        self.max_keys = max(1, int(max_keys))
        self.group_budget = self.max_keys if group_budget is None else max(1, int(group_budget))
        self._clock = clock
        self._last: "collections.OrderedDict[Any, float]" = collections.OrderedDict()
        self._suppressed: Dict[Any, int] = collections.Counter()
        self._new: Dict[str, Tuple[float, int]] = {}    # group -> (window start, new keys)
        self._lock = threading.Lock()

    def __call__(self, key: str, group: str = "") -> Optional[int]:
        """None: stay quiet. Otherwise log now; the value is how many were suppressed."""
        r = self.check(key, group)
        return None if r is None else r[0]

    def check(self, key: str, group: str = "") -> Optional[Tuple[int, bool]]:
        """Like calling it; when it logs: (suppressed, shared), ``shared`` True when the
        line stands for ``key``'s group (the key table or the group's budget was full)."""
        now = self._clock()
        with self._lock:
            shared = False
            if key not in self._last:
                if len(self._last) >= self.max_keys:
                    self._expire(now)
                start, n = self._new.get(group, (now, 0))
                if now - start >= self.period:
                    start, n = now, 0
                if len(self._last) >= self.max_keys or n >= self.group_budget:
                    key, shared = (group, "*"), True
                else:
                    self._new[group] = (start, n + 1)
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                self._suppressed[key] += 1
                return None
            self._last[key] = now
            self._last.move_to_end(key)
            return self._suppressed.pop(key, 0), shared

    def _expire(self, now: float) -> None:
        """Forget keys whose period is over (they log at once when they come back; what
        they had suppressed is still in the node's counters)."""
        while self._last:
            key, t = next(iter(self._last.items()))
            if now - t < self.period:
                return
            self._last.popitem(last=False)
            self._suppressed.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._last)


class _Window:
    """Values of the current reporting period (mean and max)."""

    def __init__(self) -> None:
        self.n, self.total, self.max = 0, 0.0, 0.0

    def add(self, v: float) -> None:
        self.n += 1
        self.total += v
        self.max = max(self.max, v)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0


class Stats:
    """Counters of the node, safe to update from the callback and the worker thread.

    Every frame received ends as exactly one of processed, dropped stale, bad or failed
    (an inference error), or is still waiting in a slot or on the model (``in_flight``):
    ``received = processed + dropped_stale + bad + errors + in_flight``. Per-stream state
    is bounded: the ``max_streams`` streams processed most recently are remembered;
    ``streams`` in a snapshot counts those seen within ``live_s`` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_streams: int = 1024,
                 live_s: float = 10.0) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped_stale = 0
        self.bad: Dict[str, int] = collections.Counter()
        self.resets: Dict[str, int] = collections.Counter()
        self.errors = 0
        self.last_error = ""
        self.last_bad = ""
        self.max_streams = max(1, int(max_streams))
        self.live_s = float(live_s)
        #: stream -> when it was last processed (the most recent max_streams streams)
        self.streams: "collections.OrderedDict[str, float]" = collections.OrderedDict()
        self.streams_started = 0        # streams new to the table (again after eviction)
        self.published: Dict[str, int] = collections.Counter()  # per output topic
        self._proc_total = _Window()
        self._start = clock()
        # Each consumer of snapshots (diagnostics, log summary) has its own period.
        self._marks: Dict[str, Tuple[float, int, int, int, int]] = {}
        self._windows: Dict[str, Tuple[_Window, _Window]] = {}
        self.last_input: Optional[float] = None

    def on_received(self) -> None:
        with self._lock:
            self.received += 1
            self.last_input = self._clock()

    def on_dropped_stale(self, n: int = 1) -> None:
        with self._lock:
            self.dropped_stale += n

    def on_bad(self, reason: str, message: str = "") -> None:
        with self._lock:
            self.bad[reason] += 1
            self.last_bad = f"{reason}: {message}" if message else reason

    def on_error(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = message

    def on_reset(self, reason: str) -> None:
        with self._lock:
            self.resets[reason] += 1

    def on_processed(self, stream: str, proc_s: float, latency_s: Optional[float]) -> None:
        with self._lock:
            self.processed += 1
            if stream not in self.streams:
                self.streams_started += 1
            self.streams[stream] = self._clock()
            self.streams.move_to_end(stream)
            while len(self.streams) > self.max_streams:
                self.streams.popitem(last=False)
            self._proc_total.add(proc_s)
            for proc, lat in self._windows.values():
                proc.add(proc_s)
                if latency_s is not None:
                    lat.add(latency_s)

    def on_published(self, output: str) -> None:
        with self._lock:
            self.published[output] += 1

    def snapshot(self, key: str = "default") -> Dict[str, Any]:
        """Totals, plus rates and timings of the period since ``key``'s previous snapshot."""
        with self._lock:
            now = self._clock()
            t0, r0, p0, b0, e0 = self._marks.get(key, (self._start, 0, 0, 0, 0))
            proc, lat = self._windows.get(key, (_Window(), _Window()))
            dt = max(now - t0, 1e-9)
            bad_total = sum(self.bad.values())
            snap = dict(
                received=self.received, processed=self.processed,
                dropped_stale=self.dropped_stale, bad=bad_total, bad_by_reason=dict(self.bad),
                resets=sum(self.resets.values()), resets_by_reason=dict(self.resets),
                errors=self.errors, last_error=self.last_error, last_bad=self.last_bad,
                streams=sum(1 for t in self.streams.values() if now - t <= self.live_s),
                streams_started=self.streams_started, published=dict(self.published),
                in_flight=self.received - self.processed - self.dropped_stale - bad_total
                - self.errors,
                input_rate_hz=(self.received - r0) / dt, output_rate_hz=(self.processed - p0) / dt,
                period_bad=bad_total - b0, period_errors=self.errors - e0,
                period_processed=self.processed - p0,
                proc_ms_mean=proc.mean * 1e3, proc_ms_max=proc.max * 1e3,
                latency_ms_mean=lat.mean * 1e3, latency_ms_max=lat.max * 1e3,
                latency_samples=lat.n,
                proc_ms_mean_total=self._proc_total.mean * 1e3,
                since_input_s=None if self.last_input is None else now - self.last_input,
                uptime_s=now - self._start,
            )
            self._marks[key] = (now, self.received, self.processed, bad_total, self.errors)
            self._windows[key] = (_Window(), _Window())
            return snap
