"""The node's inference worker and its diagnostics, without ROS: a fake segmenter, a
recording publish callback, messages as plain namespaces."""
from __future__ import annotations

import time
import types

import numpy as np

from msaf_ros import diagnostics
from msaf_ros.image_codec import rgb_to_image
from msaf_ros.runtime import Stats
from msaf_ros.worker import InferenceWorker


class Log:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda text: self.lines.append((level, text))


class FakeSeg:
    def __init__(self, fail=False):
        self.calls, self.observed, self.fail, self.on_reset = [], [], fail, None

    def segment(self, rgb, stream="default", stamp_ns=None, confidence=False):
        if self.fail:
            raise RuntimeError("out of memory\nsecond line")
        self.calls.append((stream, stamp_ns))
        labels = np.zeros(rgb.shape[:2], np.uint8)
        return (labels, np.full(rgb.shape[:2], 200, np.uint8)) if confidence else labels

    def observe(self, stream, stamp_ns):
        self.observed.append((stream, stamp_ns))


def header(frame_id="cam", sec=1):
    return types.SimpleNamespace(frame_id=frame_id, stamp=types.SimpleNamespace(sec=sec,
                                                                                nanosec=0))


def raw(h, w, frame_id="cam", sec=1):
    return rgb_to_image(np.full((h, w, 3), 50, np.uint8), "rgb8", header(frame_id, sec),
                        msg_type=types.SimpleNamespace)


def jpeg(rgb):
    import cv2
    return cv2.imencode(".jpg", rgb)[1].tobytes()


def make_worker(seg=None, **kw):
    published = []
    w = InferenceWorker(seg or FakeSeg(), lambda *a: published.append(a), stats=Stats(),
                        log=Log(), now_ns=lambda: 3 * 10**9, **kw)
    return w, published


def test_bad_compressed_frame_never_evicts_a_waiting_good_one():
    """The callback checks compressed frames (without decoding) before they reach the slot,
    so a corrupt frame arriving while the model is busy leaves the good one waiting."""
    observed = []
    seg = types.SimpleNamespace(observe=lambda *a: observed.append(a))
    worker = InferenceWorker(seg, lambda *a: None, stats=Stats(), compressed=True,
                             log=types.SimpleNamespace(warning=lambda *a, **k: None),
                             warn_period=5.0, input_topic="/cam/image/compressed")

    def msg(sec, data):
        return types.SimpleNamespace(header=header(sec=sec), format="jpeg", data=data)
    good = msg(1, jpeg(np.full((16, 16, 3), 90, np.uint8)))
    worker.submit(good)
    worker.submit(msg(2, b"\xff\xd8\xff\xe0 truncated"))
    worker.submit(msg(3, b"not an image at all"))
    ok, item = worker.slot.get(0)
    assert ok and item[0] is good
    assert worker.stats.dropped_stale == 0 and worker.stats.bad["compressed"] == 2
    assert observed == []


def test_a_newer_frame_replaces_the_waiting_one_and_counts_as_an_arrival():
    worker, _ = make_worker()
    worker.submit(raw(16, 16, sec=1))
    worker.submit(raw(16, 16, sec=2))
    assert worker.stats.dropped_stale == 1
    assert worker.seg.observed == [("cam", 10**9)]      # the gap rule sees the stale frame
    assert len(worker.slot) == 1


def test_process_publishes_with_the_input_header_and_counts():
    worker, published = make_worker()
    worker.stats.snapshot()                  # opens the period the figures below cover
    msg = raw(12, 20, frame_id="front", sec=2)
    worker.process(msg)
    (hdr, rgb, labels, confidence), = published
    assert hdr is msg.header and rgb.shape == (12, 20, 3) and labels.shape == (12, 20)
    assert confidence is None                # nobody asked for it: not computed
    assert worker.seg.calls == [("front", 2 * 10**9)]
    s = worker.stats.snapshot()
    assert s["processed"] == 1 and s["latency_ms_mean"] == 1000.0
    assert ("info", "new stream 'front' (20x12)") in worker.log.lines


def test_confidence_is_computed_only_for_frames_it_is_wanted_for():
    wanted = [False]
    worker, published = make_worker(want_confidence=lambda: wanted[0])
    worker.process(raw(12, 20, sec=1))
    wanted[0] = True
    worker.process(raw(12, 20, sec=2))
    assert published[0][3] is None
    assert published[1][3].shape == (12, 20) and (published[1][3] == 200).all()


def test_too_small_and_too_large_frames_are_dropped_in_the_callback():
    worker, _ = make_worker(max_pixels=400)
    worker.submit(raw(4, 40))
    worker.submit(raw(30, 30))
    assert len(worker.slot) == 0
    assert dict(worker.stats.bad) == {"too-small": 1, "too-large": 1}
    warnings = [t for level, t in worker.log.lines if level == "warning"]
    assert len(warnings) == 2 and "max_pixels" in warnings[1]


def test_an_inference_error_is_counted_logged_once_and_the_worker_goes_on():
    worker, published = make_worker(seg=FakeSeg(fail=True))
    worker.start()
    try:
        for sec in (1, 2):
            worker.submit(raw(16, 16, sec=sec))
            deadline = time.monotonic() + 10
            while worker.stats.errors < sec and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        assert worker.stop(2.0)
    assert worker.stats.errors == 2 and published == []
    assert worker.stats.last_error == "RuntimeError: out of memory"
    errors = [t for level, t in worker.log.lines if level == "error"]
    assert errors == ["inference failed on a frame from 'cam': RuntimeError: out of memory"]


def test_diagnostics_status_levels_and_values():
    stats = Stats()
    s = diagnostics.status(stats.snapshot(), "/cam/image", "cpu")
    assert (s.level, s.message) == ("OK", "waiting for images on /cam/image")
    stats.on_received()
    stats.on_bad("length", "data is 3 bytes")
    s = diagnostics.status(stats.snapshot(), "/cam/image", "cpu")
    assert s.level == "WARN" and "length: data is 3 bytes" in s.message
    assert s.values["bad_length"] == "1" and s.values["frames_bad"] == "1"
    assert s.values["device"] == "cpu" and "resets_gap" in s.values
    stats.on_error("RuntimeError: x")
    assert diagnostics.status(stats.snapshot(), "/cam/image", "cpu").level == "ERROR"
    line = diagnostics.summary_line(stats.snapshot("log"))
    assert "totals: 0/1 frames" in line and "bad length 1" in line


def test_diagnostics_values_read_back():
    kv = types.SimpleNamespace
    arr = kv(status=[kv(name="other", values=[], level=0, message=""),
                     kv(name="ns/segment_node: MSAF segmentation", level=1, message="m",
                        values=[kv(key="frames_received", value="3")])])
    d = diagnostics.values_of(arr)
    assert d == {"frames_received": "3", "_level": 1, "_message": "m"}
    assert diagnostics.values_of(kv(status=[])) is None


# -- hostile input (issue 16) -------------------------------------------------------------------
def test_compressed_bombs_are_dropped_in_the_callback(monkeypatch):
    """Both bombs are dropped as too-large from their headers, in the subscription callback:
    nothing is decoded and a good frame waiting for the model stays."""
    from msaf_ros import image_codec as ic
    from msaf_ros.tools.hostile import jpeg_bomb, png_bomb
    worker, _ = make_worker(compressed=True, max_pixels=8_388_608)
    good = types.SimpleNamespace(header=header(sec=1), format="jpeg",
                                 data=jpeg(np.full((16, 16, 3), 90, np.uint8)))
    worker.submit(good)
    monkeypatch.setattr(ic, "_cv2", lambda: (_ for _ in ()).throw(AssertionError("decoded")))
    for data, fmt in ((png_bomb(), "png"), (jpeg_bomb(), "jpeg")):
        worker.submit(types.SimpleNamespace(header=header(fmt, sec=2), format=fmt, data=data))
    assert dict(worker.stats.bad) == {"too-large": 2} and worker.stats.dropped_stale == 0
    assert worker.slot.get(0)[1][0] is good
    warnings = [t for level, t in worker.log.lines if level == "warning"]
    assert len(warnings) == 2 and all("30000x30000" in w and "max_pixels" in w
                                      for w in warnings)


def test_a_message_above_the_byte_limit_is_dropped_in_the_callback():
    """A 64x64 rgb8 frame whose step makes its data far larger than any frame of max_pixels
    could be (the limit is max_pixels x 8 bytes + 1 MiB) is dropped as too-large."""
    worker, _ = make_worker(max_pixels=64 * 64)
    step = 64 * 3 + 40_000                               # 2.5 MB of data for 12 KB of pixels
    m = types.SimpleNamespace(header=header(), height=64, width=64, encoding="rgb8",
                              is_bigendian=0, step=step, data=bytes(64 * step))
    worker.submit(m)
    assert dict(worker.stats.bad) == {"too-large": 1} and len(worker.slot) == 0
    (level, text), = worker.log.lines
    assert "2572288 bytes, above 1081344" in text and "max_pixels" in text
    worker.submit(raw(64, 64))                           # a plain 64x64 frame still passes
    assert len(worker.slot) == 1


def test_thousands_of_cameras_with_huge_ids_keep_state_and_log_bounded():
    """5,000 distinct 10 KB frame_ids sending bad frames: the warnings stop after the
    throttle's table is full (one shared line per kind and period after that), every log
    line is short, and no table keeps the ids."""
    from msaf_ros.tools.hostile import long_frame_id
    worker, _ = make_worker(compressed=True, max_streams=16)
    for i in range(5000):
        worker.submit(types.SimpleNamespace(header=header(long_frame_id(i, 10_000)),
                                            format="jpeg", data=b"\xff\xd8\xff garbage"))
    assert worker.stats.bad["compressed"] == 5000
    lines = [t for _, t in worker.log.lines]
    assert len(lines) <= 16 + 1, len(lines)        # max_streams cameras, then one shared line
    assert max(map(len, lines)) < 700 and sum(map(len, lines)) < 50_000
    assert "more of this kind from other cameras" in lines[-1] or \
        "one line per warn_period for the rest" in lines[-1]
    assert len(worker._throttle) <= 4 * 16 + 1
    assert len(worker.stats.last_bad) < 700


def test_streams_are_bounded_and_counted_live():
    """Frames from 100 cameras (10 KB ids) with max_streams 4: the per-stream tables keep
    at most 4 short names; diagnostics count the live streams and the streams started."""
    from msaf_ros.tools.hostile import long_frame_id
    worker, published = make_worker(max_streams=4)
    for i in range(100):
        worker.process(raw(16, 16, frame_id=long_frame_id(i, 10_000), sec=i + 1))
    assert len(published) == 100
    s = worker.stats.snapshot()
    assert s["streams"] == 4 and s["streams_started"] == 100
    assert len(worker.stats.streams) == 4 and len(worker._known) <= 16
    assert max(len(k) for k in worker.stats.streams) < 200
    assert {c[0] for c in worker.seg.calls} == set(worker._known) | \
        {c[0] for c in worker.seg.calls}                  # the segmenter got the short names
    assert max(len(c[0]) for c in worker.seg.calls) < 200
    assert max(len(t) for _, t in worker.log.lines) < 300


# -- frames dropped by design, said clearly (issue 16, item 6) ---------------------------------
def test_a_sustained_high_drop_rate_is_logged_once_with_the_levers():
    now = [0.0]
    worker, _ = make_worker(clock=lambda: now[0])
    for sec in range(1, 61):                     # 60 frames, the model never gets to them
        worker.submit(raw(16, 16, sec=sec))
        worker.check_drop_rate()
    assert not [t for lv, t in worker.log.lines if lv == "warning"]   # window not over yet
    now[0] = 31.0
    worker.check_drop_rate()
    (text,) = [t for lv, t in worker.log.lines if lv == "warning"]
    assert text.startswith("98% of the frames of the last 31 s were dropped as stale")
    for lever in ("inference_height/inference_width", "bf16:=true", "backend", "device:=cuda"):
        assert lever in text
    for sec in range(61, 121):                   # still high: not repeated within 10 minutes
        worker.submit(raw(16, 16, sec=sec))
    now[0] = 62.0
    worker.check_drop_rate()
    assert len([t for lv, t in worker.log.lines if lv == "warning"]) == 1


def test_a_low_drop_rate_is_not_logged():
    now = [0.0]
    worker, _ = make_worker(clock=lambda: now[0])
    for sec in range(1, 61):
        worker.submit(raw(16, 16, sec=sec))
        worker.process(worker.slot.get(0)[1][0])
    now[0] = 31.0
    worker.check_drop_rate()
    assert not [t for lv, t in worker.log.lines if lv == "warning"]


def test_the_warm_up_pass_runs_before_the_first_frame_and_leaves_no_trace():
    class Seg(FakeSeg):
        size = (24, 32)

        def reset(self, stream=None):
            self.calls = [c for c in self.calls if c[0] != stream]
            self.was_reset = stream
    worker, published = make_worker(seg=Seg())
    worker.start()
    try:
        worker.submit(raw(16, 16, sec=1))
        deadline = time.monotonic() + 10
        while not published and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        assert worker.stop(2.0)
    assert worker.seg.was_reset == "\0warm-up" and worker.seg.calls == [("cam", 10**9)]
    assert any(t.startswith("warm-up pass at 32x24:") for _, t in worker.log.lines)
    s = worker.stats.snapshot()
    assert s["received"] == s["processed"] == 1 and s["streams_started"] == 1


def test_diagnostics_counters_add_up():
    """received = processed + dropped stale + bad + inference errors + in flight, at any time,
    for a mix of good, bad, stale and failing frames from several cameras."""
    class Seg(FakeSeg):
        n = 0

        def segment(self, rgb, stream="default", stamp_ns=None):
            time.sleep(0.002)
            self.n += 1
            if self.n % 3 == 0:
                raise RuntimeError("boom")
            return super().segment(rgb, stream, stamp_ns)
    worker, _ = make_worker(seg=Seg(), max_streams=2, warm_up=False)
    worker.start()

    def check():
        v = diagnostics.status(worker.stats.snapshot(), "/cam", "cpu").values
        parts = ("frames_processed", "frames_dropped_stale", "frames_bad", "inference_errors",
                 "frames_in_flight")
        assert int(v["frames_received"]) == sum(int(v[k]) for k in parts), v
        return v
    try:
        for sec in range(1, 200):
            cam = f"cam{sec % 3}"                       # 3 cameras, 2 slots: evictions too
            worker.submit(raw(16, 16, cam, sec) if sec % 5 else raw(4, 4, cam, sec))
            if sec % 20 == 0:
                check()
            if sec % 10 == 0:                           # let the worker drain: it segments
                drain = time.monotonic() + 10           # (and fails) however loaded the CPU
                while len(worker.slot) and time.monotonic() < drain:
                    time.sleep(0.005)
        deadline = time.monotonic() + 10
        while len(worker.slot) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        assert worker.stop(2.0)
    v = check()
    assert v["frames_in_flight"] == "0" and int(v["frames_dropped_stale"]) > 0
    assert int(v["inference_errors"]) > 0 and int(v["frames_bad"]) > 0
