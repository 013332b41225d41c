"""The inference worker of segment_node: newest-frame slots, a thread, decode → segment →
publish.

The way of a frame::

    subscription callback ── submit(msg) ── cheap checks ── LatestSlot (one per camera)
                                                                  │
    worker thread ── decode ── Segmenter.segment ── publish(header, rgb, labels, conf) ── stats

:meth:`InferenceWorker.submit` runs in the executor's thread and stays cheap: it checks the
message's layout (raw) or its payload's framing (compressed) without decoding, so a bad
frame is dropped (counted, warned about, throttled) before it can replace a good frame
waiting for the model. The worker thread decodes, segments and hands the result to the
``publish`` callback; an exception there is counted and logged and the worker goes on.
Imports no rclpy: the node passes its logger, its clock and its publish function.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from . import image_codec as ic
from .errors import ImageDecodeError, first_line
from .msgs import stamp_ns
from .params import MIN_SIDE
from .runtime import BAD_TEXT, RESET_TEXT, LatestSlot, Stats, Throttle, shorten, stream_key

#: publish(header, rgb, labels, confidence): send the results of one frame (called on the
#: worker thread); confidence is None unless ``want_confidence()`` said yes for this frame.
Publish = Callable[[Any, np.ndarray, np.ndarray, Optional[np.ndarray]], None]

#: The drop rate is judged over windows of this many seconds ...
DROP_WINDOW_S = 30.0
#: ... and called high when at least this share of the frames received in one was dropped
#: as stale (and at least DROP_MIN_FRAMES came); the warning repeats at most every
#: DROP_WARN_EVERY_S seconds while it stays high.
DROP_SHARE = 0.5
DROP_MIN_FRAMES = 30
DROP_WARN_EVERY_S = 600.0
#: Frame size of the warm-up pass when the segmenter has no inference size (height, width).
WARM_UP_SIZE = (360, 480)


class InferenceWorker:
    """Runs ``segmenter`` on the newest frame of each camera, on a thread of its own.

    ``log`` has ``info``/``warning``/``error`` (an rclpy logger); ``now_ns`` is the clock
    latency is measured against (the node's, so ``use_sim_time`` applies). Each frame_id is
    a stream of the segmenter (under :func:`~msaf_ros.runtime.stream_key`, so a huge
    frame_id is kept as a short name); ``max_streams`` bounds the slots, the names
    remembered, the warning throttle's table and the streams counted. Log lines show ids
    shortened. Messages above ``max_message_bytes`` (default: from ``max_pixels``, see
    :func:`~msaf_ros.image_codec.max_message_bytes`; 0 = no limit) and compressed frames
    whose header declares more than ``max_pixels`` are dropped before decoding.
    ``want_confidence()`` is asked once per frame (the node: is anyone subscribed to
    ``confidence``?); only then does the segmenter compute the confidence map.
    """

    def __init__(self, segmenter: Any, publish: Publish, *, stats: Stats, log: Any,
                 compressed: bool = False, max_pixels: int = 0, max_streams: int = 16,
                 warn_period: float = 5.0, now_ns: Callable[[], int] = time.time_ns,
                 input_topic: str = "", max_message_bytes: Optional[int] = None,
                 warm_up: bool = True, clock: Callable[[], float] = time.monotonic,
                 want_confidence: Callable[[], bool] = lambda: False) -> None:
        self.seg = segmenter
        self.publish = publish
        self.want_confidence = want_confidence
        self.stats = stats
        self.log = log
        self.compressed = compressed
        self.max_pixels = int(max_pixels)
        self.max_streams = int(max_streams)
        self.max_message_bytes = (ic.max_message_bytes(self.max_pixels)
                                  if max_message_bytes is None else int(max_message_bytes))
        self.now_ns = now_ns
        self.input_topic = input_topic          # for log lines; set once subscribed
        self.slot = LatestSlot(max_keys=max_streams)   # one newest-frame slot per camera
        # per kind, at most max_streams cameras get warnings of their own per warn_period
        self._throttle = Throttle(warn_period, max_keys=4 * self.max_streams,
                                  group_budget=self.max_streams)
        stats.max_streams = max(1, self.max_streams)
        self._known: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.warm_up_pending = warm_up
        self._clock = clock
        self._drop_mark = (clock(), 0, 0, 0)       # window start: time, received, stale, done
        self._drop_warned: Optional[float] = None
        segmenter.on_reset = self._on_reset

    # -- the subscription callback (executor thread; keep it cheap) -------------------------
    def submit(self, msg: Any) -> None:
        """Check ``msg`` without decoding it and put it in its camera's slot."""
        self.stats.on_received()
        try:
            self.check_bytes(msg)
            if self.compressed:
                # framing and the header's size, no decoding: a bomb is dropped here
                _, h, w = ic.check_compressed(msg, self.max_pixels)
            else:
                _, h, w = ic.check_image(msg)   # layout only, no pixel copied
            self.check_size(h, w)
        except ImageDecodeError as e:
            self._bad(e, msg)                   # a bad frame never evicts a waiting good one
            return
        replaced, old = self.slot.put((msg, time.monotonic()),
                                      key=stream_key(msg.header.frame_id))
        if replaced:
            self.stats.on_dropped_stale()
            # the skipped frame still shows the stream is alive: the gap rule measures
            # between frames that arrived, not between frames the (slower) model segmented
            old_header = old[0].header
            old_stamp = stamp_ns(old_header.stamp)
            if old_stamp:
                self.seg.observe(stream_key(old_header.frame_id), old_stamp)

    def check_bytes(self, msg: Any) -> None:
        """ImageDecodeError ('too-large') for a message above ``max_message_bytes``."""
        if not self.max_message_bytes:
            return
        try:
            n = len(msg.data)
        except Exception:  # noqa: BLE001 - no or odd data: the layout checks say why
            return
        if n > self.max_message_bytes:
            raise ImageDecodeError(f"message data is {n} bytes, above {self.max_message_bytes}"
                                   f" (max_pixels x {ic.MAX_BYTES_PER_PIXEL} bytes + 1 MiB; "
                                   f"raise max_pixels, 0 = no limit)", "too-large")

    def check_size(self, h: int, w: int) -> None:
        """ImageDecodeError ('too-small', 'too-large') for frames the node does not take."""
        if min(h, w) < MIN_SIDE:
            raise ImageDecodeError(f"image is {w}x{h}, the model needs both sides >= "
                                   f"{MIN_SIDE} pixels", "too-small")
        if self.max_pixels and h * w > self.max_pixels:
            raise ImageDecodeError(f"image is {w}x{h} = {h * w} pixels, above max_pixels "
                                   f"= {self.max_pixels} (raise max_pixels, 0 = no limit)",
                                   "too-large")

    # -- the worker thread --------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="msaf-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the thread; True when it ended within ``timeout`` seconds."""
        self._stop.set()
        self.slot.close()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def warm_up(self) -> None:
        """One throw-away pass (a first and a cached frame) before the first camera frame, so
        that the first frame does not pay the one-off set-up of the model's kernels (about
        0.3 s on a CPU). Its stream is removed afterwards; it counts nowhere."""
        self.warm_up_pending = False
        h, w = getattr(self.seg, "size", None) or WARM_UP_SIZE
        rgb = np.full((h, w, 3), 127, np.uint8)
        t0 = time.perf_counter()
        try:
            for i in (1, 2):
                self.seg.segment(rgb, stream="\0warm-up", stamp_ns=i)
        except Exception as e:  # noqa: BLE001 - the real frames will say what is wrong
            self.log.warning(f"warm-up pass failed: {shorten(first_line(e), 300)}")
            return
        finally:
            reset = getattr(self.seg, "reset", None)
            if reset is not None:
                reset("\0warm-up")
        self.log.info(f"warm-up pass at {w}x{h}: {(time.perf_counter() - t0) * 1e3:.0f} ms")

    def check_drop_rate(self) -> None:
        """Warn when most frames are dropped as stale over a window (the model is slower than
        the cameras): say so with the rates and name what makes the model faster."""
        now = self._clock()
        t0, r0, s0, p0 = self._drop_mark
        if now - t0 < DROP_WINDOW_S:
            return
        st = self.stats
        r, s, p = st.received - r0, st.dropped_stale - s0, st.processed - p0
        self._drop_mark = (now, st.received, st.dropped_stale, st.processed)
        if r < DROP_MIN_FRAMES or s < DROP_SHARE * r:
            return
        if self._drop_warned is not None and now - self._drop_warned < DROP_WARN_EVERY_S:
            return
        self._drop_warned = now
        dt = now - t0
        self.log.warning(
            f"{100 * s / r:.0f}% of the frames of the last {dt:.0f} s were dropped as stale: "
            f"{r / dt:.1f} frames/s came in, the model segmented {p / dt:.1f}/s (by design only "
            f"each camera's newest frame is kept, never a queue). To segment more of them: "
            f"output_stride:=16 (about 3x cheaper), a smaller "
            f"inference_height/inference_width, bf16:=true on a CPU with AMX or "
            f"AVX-512 BF16, a faster backend, or a GPU (device:=cuda, half:=true)")

    def _run(self) -> None:
        if self.warm_up_pending:
            self.warm_up()
        while not self._stop.is_set():
            ok, item = self.slot.get(timeout=0.5)
            self.check_drop_rate()
            if not ok:
                continue
            msg, _ = item
            try:
                self.process(msg)
            except Exception as e:  # noqa: BLE001 - the node must stay up
                if self._stop.is_set():   # shutting down: publishers may be gone already
                    return
                self.stats.on_error(first_line(e))
                if self._throttle("error") is not None:
                    self.log.error(f"inference failed on a frame from "
                                   f"'{shorten(msg.header.frame_id)}': "
                                   f"{shorten(first_line(e), 300)}")

    def process(self, msg: Any) -> None:
        """Decode, segment and publish one frame (the worker thread's work)."""
        t0 = time.perf_counter()
        try:
            if self.compressed:
                rgb = ic.compressed_to_rgb(msg, max_pixels=self.max_pixels)
                self.check_size(*rgb.shape[:2])
            else:
                rgb = ic.image_to_rgb(msg)
        except ImageDecodeError as e:
            self._bad(e, msg)
            return
        if self._stop.is_set():
            return
        header = msg.header
        stream, stamp = stream_key(header.frame_id), stamp_ns(header.stamp)
        self._note_stream(stream, rgb)
        # A zero stamp means "unset": no time-based cache resets for such publishers.
        confidence = None
        if self.want_confidence():
            labels, confidence = self.seg.segment(rgb, stream=stream, stamp_ns=stamp or None,
                                                  confidence=True)
        else:
            labels = self.seg.segment(rgb, stream=stream, stamp_ns=stamp or None)
        if self._stop.is_set():
            return
        self.publish(header, rgb, labels, confidence)
        latency = (self.now_ns() - stamp) / 1e9 if stamp else None
        self.stats.on_processed(stream, time.perf_counter() - t0, latency)

    # -- logging --------------------------------------------------------------------------------
    def _note_stream(self, stream: str, rgb: np.ndarray) -> None:
        """Log a camera's first frame (the remembered names are bounded)."""
        if stream in self._known:
            self._known.move_to_end(stream)
            return
        self._known[stream] = None
        if len(self._known) > 4 * self.max_streams:
            self._known.popitem(last=False)
        if self._throttle.check(f"new:{stream}", "new-stream") is not None:
            self.log.info(f"new stream '{shorten(stream)}' ({rgb.shape[1]}x{rgb.shape[0]})")

    def _bad(self, e: ImageDecodeError, msg: Any) -> None:
        text = shorten(e, 300)
        self.stats.on_bad(e.reason, text)
        try:
            fid = stream_key(msg.header.frame_id)
        except Exception:  # noqa: BLE001 - a message without a usable header
            fid = "?"
        r = self._throttle.check(f"bad:{e.reason}:{fid}", e.reason)   # per kind and camera
        if r is None:
            return
        n, shared = r
        if shared:     # more cameras than the throttle remembers: one line for all of them
            more = (f" (and {n} more of this kind from other cameras since the last such line)"
                    if n else " (more cameras send bad frames than are warned about one by "
                              "one: one line per warn_period for the rest)")
        else:
            more = f" ({n} more of this kind since the last warning)" if n else ""
        self.log.warning(f"dropped a bad frame from '{shorten(fid)}' on {self.input_topic} "
                         f"({BAD_TEXT.get(e.reason, e.reason)}): {text}{more}")

    def _on_reset(self, stream: str, reason: str) -> None:
        self.stats.on_reset(reason)
        self.log.info(f"stream '{shorten(stream)}': feature cache reset, "
                      f"{RESET_TEXT.get(reason, reason)}")
