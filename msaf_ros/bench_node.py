"""End-to-end benchmark of segment_node over real DDS: rate in, labels out, latency.

::

    python -m msaf_ros.bench_node [--checkpoint CKPT] [--device cpu] [--threads N]
        [--rates 5 10 30] [--duration 30] [--warmup 5] [--size 480x360]
        [--frames-dir DIR] [--subscribe-all] [--reliable] [--node-arg NAME:=VALUE ...]
        [--domain-id 91] [--json FILE]

Starts the real node (``python -m msaf_ros.segment_node``, parameters as ``--ros-args``) as
a child process and, in this process, publishes ``sensor_msgs/Image`` ``rgb8`` frames on
``/camera/image_raw`` (the CamVid val frames in name order, resized to ``--size``, cycling,
one fixed ``frame_id``) at each rate of ``--rates`` for ``--warmup`` + ``--duration``
seconds. Each frame's header stamp is the wall-clock time just before it is published; the
node copies the input header to its outputs, so ``arrival - stamp`` of a ``labels``
message is the end-to-end latency: DDS in, queueing in the newest-frame slot, decoding,
inference, publishing, DDS out. Per rate it reports frames sent, labels received for them,
the share dropped (``1 - received/sent``), latency percentiles, the output rate, the node's
own ``/diagnostics`` over the measured window (processing time, frames it received,
processed and dropped as stale) and the node's CPU use and resident memory.

Only frames published in the measured window count; outputs are matched to inputs by
(stamp, frame_id). Between rates the publisher stops until the node's last outputs have
come. Exit codes: 0 done; 1 an output matched no sent frame, came twice or had the wrong
size; 2 the run could not be made (node did not start or died, no frames, bad option).

The machinery (:class:`Harness`) is shared with :mod:`msaf_ros.soak`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .testing import SOURCE_ROOT, NodeProcess, node_env

INPUT_TOPIC = "/camera/image_raw"
LABELS = "/labels"
EXTRA_OUTPUTS = ("/color_mask", "/overlay")
DIAGNOSTICS = "/diagnostics"
FRAME_ID = "camera"
DEFAULT_DOMAIN = 91
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
MB = 1024 * 1024


class BenchError(Exception):
    """The run cannot go on; the message is one line for the user (exit code 2)."""


class Interrupted(Exception):
    """SIGINT/SIGTERM reached the benchmark program itself."""


# -- small helpers ---------------------------------------------------------------------------
def parse_size(text: str) -> Tuple[int, int]:
    """'1024x512' -> (1024, 512) = (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (both >= 8), "
                                         f"e.g. 480x360")
    return int(m.group(1)), int(m.group(2))


def node_param(text: str) -> Tuple[str, str]:
    """'name:=value' -> (name, value)."""
    name, sep, value = str(text).partition(":=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", name.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:=VALUE, e.g. "
                                         f"inference_height:=360")
    return name.strip(), value


def positive(kind: type) -> Callable[[str], Any]:
    def conv(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return v
    return conv


def stats_ms(values: Iterable[float]) -> Optional[Dict[str, float]]:
    """Count, mean, median, p90, p99 and max of millisecond values (None when empty)."""
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        return None
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "mean": round(float(a.mean()), 2), "median": round(float(p50), 2),
            "p90": round(float(p90), 2), "p99": round(float(p99), 2),
            "max": round(float(a.max()), 2), "min": round(float(a.min()), 2)}


def slope_per_min(t_s: Sequence[float], v: Sequence[float]) -> Optional[float]:
    """Least-squares slope of v over t (t in seconds), per minute."""
    if len(t_s) < 3 or max(t_s) - min(t_s) <= 0:
        return None
    k = np.polyfit(np.asarray(t_s, float), np.asarray(v, float), 1)[0]
    return float(k * 60.0)


def default_frames_dir() -> Optional[Path]:
    """$MSAF_CAMVID/val, else ../shared/camvid/val next to the source tree (None if neither)."""
    cands = []
    if os.environ.get("MSAF_CAMVID"):
        cands.append(Path(os.environ["MSAF_CAMVID"]) / "val")
    cands.append(SOURCE_ROOT.parent / "shared" / "camvid" / "val")
    for c in cands:
        if c.is_dir():
            return c
    return None


def _sample_drive_frames() -> List[Any]:
    """The frames of the bundled sample drive (CamVid 0016E5 val, JPEG) as PIL images."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    from .bag.io import read_topics  # noqa: PLC0415
    from .sample_drive import CAMERA_TOPIC, sample_drive_path  # noqa: PLC0415
    return [Image.open(io.BytesIO(bytes(msg.data))).convert("RGB")
            for _, _, msg in read_topics(sample_drive_path(), [CAMERA_TOPIC])]


def load_frames(frames_dir: Optional[Path], size: Tuple[int, int]
                ) -> Tuple[List[np.ndarray], str]:
    """RGB uint8 frames of ``size`` (w, h): the images of ``frames_dir`` in name order, or of
    the default CamVid val folder, or of the bundled sample drive. Returns (frames, source)."""
    from PIL import Image  # noqa: PLC0415
    folder = frames_dir if frames_dir is not None else default_frames_dir()
    if folder is not None:
        if not folder.is_dir():
            raise BenchError(f"--frames-dir {folder}: no such folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise BenchError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
        images = [Image.open(p).convert("RGB") for p in files]
        source = str(folder)
    else:
        try:
            images = _sample_drive_frames()
        except Exception as e:  # noqa: BLE001
            raise BenchError(f"no frames: CamVid val not found (set MSAF_CAMVID or pass "
                             f"--frames-dir) and the sample drive is unreadable: {e}") from None
        if not images:
            raise BenchError("no frames: the sample drive holds no camera frames")
        source = "sample drive (msaf_ros/data)"
    frames = []
    for im in images:
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        frames.append(np.asarray(im, dtype=np.uint8))
    return frames, source


def read_proc(pid: int) -> Tuple[Optional[int], Optional[int], Optional[float]]:
    """(VmRSS kB, VmHWM kB, user+system CPU seconds) of a process; Nones where unreadable."""
    rss = hwm = None
    cpu = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return rss, hwm, cpu


def _f(d: Dict[str, Any], key: str) -> float:
    try:
        return float(d.get(key, "nan"))
    except (TypeError, ValueError):
        return float("nan")


def environment() -> Dict[str, Any]:
    import importlib.metadata as md  # noqa: PLC0415
    versions = {}
    for dist in ("torch", "numpy", "rclpy", "ros-rclpy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return {"host": platform.node(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpus": os.cpu_count(),
            "python": platform.python_version(), "versions": versions,
            "rmw": os.environ.get("RMW_IMPLEMENTATION", "default"),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# -- the harness ------------------------------------------------------------------------------
class Harness:
    """segment_node as a child process and, in this process, an rclpy node that publishes
    frames on a schedule and records every output (stamp, frame_id, arrival time), the
    node's /diagnostics and its memory and CPU use.

    Everything runs on this thread: between publishes the executor is spun, so arrival times
    are taken in the subscription callback (``time.time_ns()``, the clock of the stamps)."""

    def __init__(self, frames: List[np.ndarray], *, checkpoint: str, device: str,
                 threads: int, domain_id: int, reliable: bool = False,
                 node_args: Sequence[Tuple[str, str]] = (), diag_period: float = 1.0,
                 outputs: Sequence[str] = (LABELS,), frame_id: str = FRAME_ID,
                 sample_period: float = 1.0) -> None:
        if not frames:
            raise BenchError("no frames to publish")
        self.frames = frames
        self.frame_id = frame_id
        self.domain_id = domain_id
        self.reliable = reliable
        self.outputs = list(outputs)
        self.sample_period = sample_period
        params: Dict[str, Any] = {"checkpoint": checkpoint, "device": device,
                                  "threads": int(threads),
                                  "qos_reliability": "reliable" if reliable else "best_effort",
                                  "diagnostics_period": float(diag_period)}
        for k, v in node_args:
            params[k] = v
        self.params = params
        env = node_env(domain_id)
        # node_env pins torch to one thread (for tests); a benchmark uses `threads` instead.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            if int(threads) > 0:
                env[var] = str(int(threads))
            elif var in os.environ:
                env[var] = os.environ[var]
            else:
                env.pop(var, None)
        self.node = NodeProcess(params, domain_id, remaps=[("image", INPUT_TOPIC)], env=env)
        self.probe = None
        self.msgs: List[Any] = []
        self._next_frame = 0
        self._last_stamp = 0
        # records
        self.sent: Dict[int, Tuple[int, str, int]] = {}   # stamp -> (index, tag, send ns)
        self.order: List[int] = []                         # stamps in send order
        self.got: Dict[str, List[Tuple[int, str, int, int, int, int, str]]] = {
            t: [] for t in self.outputs}   # (stamp, frame_id, arrival ns, rmw ns, w, h, enc)
        self.last_arrival: Dict[Tuple[str, str], float] = {}   # (topic, tag) -> monotonic
        self.diags: List[Dict[str, Any]] = []
        self.samples: List[Tuple[float, int, Optional[int], Optional[int], Optional[float]]] = []
        self._next_sample = 0.0
        self.expect_exit = False
        self.model_line = ""

    # -- life cycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> None:
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        try:
            from diagnostic_msgs.msg import DiagnosticArray  # noqa: PLC0415
            from rclpy.qos import (DurabilityPolicy, HistoryPolicy,  # noqa: PLC0415
                                   QoSProfile, ReliabilityPolicy)
            from sensor_msgs.msg import Image  # noqa: PLC0415
        except ImportError as e:
            raise BenchError(f"ROS 2 Python packages are not importable ({e}); install "
                             f"'.[ros]' or source a ROS 2 installation") from None

        from .image_codec import rgb_to_image  # noqa: PLC0415
        from .testing import Probe  # noqa: PLC0415

        self.msgs = []
        for rgb in self.frames:
            m = rgb_to_image(rgb, "rgb8", msg_type=Image)
            m.header.frame_id = self.frame_id
            self.msgs.append(m)
        self.frames = []   # the messages hold the pixels now
        self.node.start()
        self._sample(force=True)
        t_end = time.monotonic() + timeout
        if not self.node.wait_for("listening on", timeout):
            raise BenchError(self._node_failure("did not start"))
        m = re.search(r"\]: (model .*)$", self.node.output, re.M)
        self.model_line = m.group(1).strip() if m else ""
        self.probe = Probe(self.domain_id, f"msaf_bench_{os.getpid()}")
        node = self.probe.node
        in_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                            reliability=ReliabilityPolicy.RELIABLE if self.reliable
                            else ReliabilityPolicy.BEST_EFFORT,
                            durability=DurabilityPolicy.VOLATILE)
        self.pub = node.create_publisher(Image, INPUT_TOPIC, in_qos)
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        self.subs = {t: node.create_subscription(Image, t, self._output_cb(t), out_qos)
                     for t in self.outputs}
        self.diag_sub = node.create_subscription(DiagnosticArray, DIAGNOSTICS, self._diag_cb, 50)
        ok = self._spin_until(lambda: self.pub.get_subscription_count() > 0
                              and all(s.get_publisher_count() > 0 for s in self.subs.values()),
                              max(5.0, t_end - time.monotonic()))
        if not ok:
            raise BenchError(self._node_failure(f"never matched {INPUT_TOPIC} / "
                                                f"{', '.join(self.outputs)}"))
        others = [t for t, s in self.subs.items() if s.get_publisher_count() > 1]
        if others:
            raise BenchError(f"another node publishes {', '.join(others)} in ROS domain "
                             f"{self.domain_id}: pick a free --domain-id")

    def close(self) -> None:
        """Stop the node (SIGINT, then SIGKILL after 10 s) and the probe, and reap the node;
        SIGINT/SIGTERM to this program are ignored meanwhile so clean-up is not cut short."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, signal.SIG_IGN)
        try:
            try:
                if self.probe is not None:
                    self.probe.close()
            except Exception:  # noqa: BLE001
                pass
            self.probe = None
            try:
                self.node.close()
            except Exception:  # noqa: BLE001
                proc = self.node.proc
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    try:
                        proc.wait(10)
                    except Exception:  # noqa: BLE001
                        pass
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _node_failure(self, what: str) -> str:
        rc = None if self.node.proc is None else self.node.proc.poll()
        errs = [ln for ln in self.node.output.splitlines()
                if "error" in ln.lower() or "Traceback" in ln or "Error" in ln]
        tail = errs[-1] if errs else (self.node.output.strip().splitlines() or [""])[-1]
        state = "is running" if rc is None else f"exited with code {rc}"
        return f"segment_node {what} (it {state}): {tail.strip()}"

    @property
    def pid(self) -> Optional[int]:
        return None if self.node.proc is None else self.node.proc.pid

    # -- callbacks -----------------------------------------------------------------------------
    def _output_cb(self, topic: str) -> Callable:
        box = self.got[topic]
        sent, last = self.sent, self.last_arrival

        def record(msg: Any, rmw_ns: int) -> None:
            t = time.time_ns()
            h = msg.header
            st = int(h.stamp.sec) * 1_000_000_000 + int(h.stamp.nanosec)
            box.append((st, h.frame_id, t, rmw_ns, int(msg.width), int(msg.height),
                        msg.encoding))
            info = sent.get(st)
            if info is not None:
                last[(topic, info[1])] = time.monotonic()

        try:
            from rclpy.subscription import MessageInfo  # noqa: F401,PLC0415
        except ImportError:   # older rclpy: no message info
            return lambda msg: record(msg, 0)

        def cb(msg: Any, info: Any) -> None:
            try:
                rmw_ns = int(info.get("received_timestamp", 0) or 0)
            except Exception:  # noqa: BLE001
                rmw_ns = 0
            record(msg, rmw_ns)
        return cb

    def _diag_cb(self, arr: Any) -> None:
        from .testing import diagnostics_values  # noqa: PLC0415
        d = diagnostics_values(arr)
        if d is None:
            return
        d["_stamp_ns"] = int(arr.header.stamp.sec) * 1_000_000_000 + int(arr.header.stamp.nanosec)
        d["_arrival_ns"] = time.time_ns()
        self.diags.append(d)

    # -- spinning, sampling --------------------------------------------------------------------
    def _sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_sample:
            return
        self._next_sample = now + self.sample_period
        if self.pid is None:
            return
        rss, hwm, cpu = read_proc(self.pid)
        if rss is not None:
            self.samples.append((now, time.time_ns(), rss, hwm, cpu))

    def _housekeeping(self) -> None:
        self._sample()
        proc = self.node.proc
        if not self.expect_exit and proc is not None and proc.poll() is not None:
            raise BenchError(self._node_failure("died during the run"))

    def pump_until(self, deadline: float) -> None:
        """Spin the executor (and sample the node) until time.monotonic() >= deadline."""
        ex = self.probe.executor
        while True:
            self._housekeeping()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ex.spin_once(timeout_sec=min(left, 0.02))

    def _spin_until(self, cond: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            self.pump_until(min(end, time.monotonic() + 0.02))
        return cond()

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, tag: str) -> int:
        """Publish the next frame with stamp = now (wall clock); returns the stamp."""
        m = self.msgs[self._next_frame % len(self.msgs)]
        st = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = st
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(st, 1_000_000_000)
        self.pub.publish(m)
        self.sent[st] = (self._next_frame, tag, st)
        self.order.append(st)
        self._next_frame += 1
        return st

    def stream(self, rate: float, tag: str, *, seconds: Optional[float] = None,
               frames: Optional[int] = None, until: Optional[Callable[[], bool]] = None
               ) -> Dict[str, Any]:
        """Publish at ``rate`` Hz until ``seconds`` passed, ``frames`` were sent or ``until()``
        is true (whichever first). A publisher more than one period behind its schedule
        starts a new schedule instead of bursting (counted as ``late``)."""
        period = 1.0 / rate
        t0 = time.monotonic()
        end = t0 + seconds if seconds is not None else float("inf")
        next_t, n, late = t0, 0, 0
        first = last = None
        while True:
            now = time.monotonic()
            if now >= end or (frames is not None and n >= frames) or (until and until()):
                break
            if now < next_t:
                self.pump_until(min(next_t, end))
                continue
            if now - next_t > period:
                late += 1
                next_t = now
            st = self.publish(tag)
            first = st if first is None else first
            last = st
            n += 1
            next_t += period
            self._housekeeping()
        t1 = time.monotonic()
        return {"sent": n, "late": late, "seconds": t1 - t0, "first_stamp": first,
                "last_stamp": last}

    def wait_quiet(self, tag: str, stamps: Sequence[int], quiet: float, timeout: float,
                   rate: Optional[float] = None, topic: str = LABELS) -> float:
        """Until every frame of ``tag`` has its output, or none came for ``quiet`` seconds
        (``timeout`` at most). With ``rate``, frames (tagged 'tail') go on being published
        meanwhile. Returns the seconds waited."""
        want = set(stamps)
        box = self.got[topic]
        t0 = time.monotonic()
        start = max(t0, self.last_arrival.get((topic, tag), t0))
        done = {"n": 0, "seen": set()}

        def settled() -> bool:
            seen = done["seen"]
            for rec in box[done["n"]:]:
                if rec[0] in want:
                    seen.add(rec[0])
            done["n"] = len(box)
            if len(seen) >= len(want):
                return True
            t_last = max(start, self.last_arrival.get((topic, tag), start))
            return time.monotonic() - t_last >= quiet

        if rate is None:
            self._spin_until(settled, timeout)
        else:
            self.stream(rate, "tail", seconds=timeout, until=settled)
        return time.monotonic() - t0

    def wait_fresh_diag(self, after_ns: int, timeout: float) -> Optional[Dict[str, Any]]:
        """The first /diagnostics status stamped after ``after_ns`` (None on timeout)."""
        def find() -> Optional[Dict[str, Any]]:
            for d in reversed(self.diags):
                if d["_stamp_ns"] > after_ns:
                    return d
            return None
        self._spin_until(lambda: find() is not None, timeout)
        return find()

    # -- analysis ------------------------------------------------------------------------------
    def stamps(self, tag: str) -> List[int]:
        """Stamps of the frames published under ``tag``, in send order."""
        return [st for st in self.order if self.sent[st][1] == tag]

    def outputs_of(self, topic: str, stamps: Iterable[int]) -> List[Tuple]:
        want = set(stamps)
        return [r for r in self.got[topic] if r[0] in want]

    def latencies_ms(self, recs: Sequence[Tuple]) -> Tuple[List[float], List[float]]:
        """(callback arrival - stamp, rmw receive time - stamp) in ms, first output only."""
        seen, cb, rmw = set(), [], []
        for st, _fid, t, r, *_ in recs:
            if st in seen:
                continue
            seen.add(st)
            cb.append((t - st) / 1e6)
            if r:
                rmw.append((r - st) / 1e6)
        return cb, rmw

    def correspondence(self) -> Dict[str, Any]:
        """Every output of every topic: its (stamp, frame_id) is a sent frame, no stamp twice,
        its size is the input's (and labels are mono8)."""
        w, h = (int(self.msgs[0].width), int(self.msgs[0].height)) if self.msgs else (0, 0)
        report: Dict[str, Any] = {}
        ok = True
        for topic, recs in self.got.items():
            counts = Counter(r[0] for r in recs)
            unknown = [r for r in recs if r[0] not in self.sent or r[1] != self.frame_id]
            dup = sorted(st for st, c in counts.items() if c > 1)
            enc = "mono8" if topic == LABELS else "rgb8"
            bad = [r for r in recs if (r[4], r[5]) != (w, h) or r[6] != enc]
            t_ok = not unknown and not dup and not bad
            ok = ok and t_ok
            # informational: one worker publishes, so stamps should only go forward
            backwards = sum(1 for a, b in zip(recs, recs[1:]) if b[0] < a[0])
            report[topic] = {"outputs": len(recs), "unknown": len(unknown),
                             "duplicates": len(dup), "wrong_size_or_encoding": len(bad),
                             "out_of_order": backwards, "ok": t_ok,
                             "examples": [f"stamp {r[0]} frame_id {r[1]!r}"
                                          for r in unknown[:3]]
                             + [f"stamp {s} twice" for s in dup[:3]]
                             + [f"stamp {r[0]}: {r[4]}x{r[5]} {r[6]}" for r in bad[:3]]}
        report["ok"] = ok
        return report

    def node_window(self, t0_ns: int, t1_ns: int) -> Optional[Dict[str, Any]]:
        """The node's own figures between its first and last /diagnostics in [t0, t1]:
        counter deltas, rates, processing time and latency (means weighted by the output
        rate of each period, maxima over the periods)."""
        ds = [d for d in self.diags if t0_ns <= d["_stamp_ns"] <= t1_ns]
        if len(ds) < 2:
            return None
        a, b = ds[0], ds[-1]
        span = (b["_stamp_ns"] - a["_stamp_ns"]) / 1e9
        if span <= 0:
            return None

        def delta(k: str) -> int:
            try:
                return int(b[k]) - int(a[k])
            except (KeyError, ValueError):
                return 0
        inner = ds[1:]
        wts = np.array([max(_f(d, "output_rate_hz"), 0.0) for d in inner])

        def wmean(key: str) -> Optional[float]:
            v = np.array([_f(d, key) for d in inner])
            m = (wts > 0) & np.isfinite(v)
            return round(float((v[m] * wts[m]).sum() / wts[m].sum()), 2) if m.any() else None

        def vmax(key: str) -> Optional[float]:
            v = [_f(d, key) for d in inner if _f(d, "output_rate_hz") > 0]
            v = [x for x in v if np.isfinite(x)]
            return round(max(v), 2) if v else None

        sent = sum(1 for st in self.order if a["_stamp_ns"] < st <= b["_stamp_ns"])
        rec, proc, stale = delta("frames_received"), delta("frames_processed"), \
            delta("frames_dropped_stale")
        return {
            "window_s": round(span, 3), "diagnostics": len(ds),
            "sent_in_window": sent, "received": rec, "processed": proc,
            "dropped_stale": stale, "bad": delta("frames_bad"),
            "cache_resets": delta("cache_resets"), "inference_errors": delta("inference_errors"),
            "published_labels": delta("published_labels"),
            "input_rate_hz": round(rec / span, 2), "output_rate_hz": round(proc / span, 2),
            "stale_share": round(stale / rec, 4) if rec else None,
            "lost_before_node_share": round(max(0.0, 1 - rec / sent), 4) if sent else None,
            "processing_ms_mean": wmean("processing_ms_mean"),
            "processing_ms_max": vmax("processing_ms_max"),
            "latency_ms_mean": wmean("latency_ms_mean"),
            "latency_ms_max": vmax("latency_ms_max"),
        }

    def usage(self, m0: float, m1: float) -> Dict[str, Any]:
        """The node's resident memory (MB) and CPU use (cores) between two monotonic times."""
        s = [x for x in self.samples if m0 <= x[0] <= m1]
        if not s:
            return {}
        out: Dict[str, Any] = {"rss_mb_start": round(s[0][2] / 1024, 1),
                               "rss_mb_end": round(s[-1][2] / 1024, 1),
                               "rss_mb_max": round(max(x[2] for x in s) / 1024, 1)}
        if len(s) >= 2 and s[0][4] is not None and s[-1][4] is not None and s[-1][0] > s[0][0]:
            out["cpu_cores"] = round((s[-1][4] - s[0][4]) / (s[-1][0] - s[0][0]), 2)
        return out

    def totals(self) -> Optional[Dict[str, Any]]:
        """The node's counters in its latest /diagnostics."""
        if not self.diags:
            return None
        d = self.diags[-1]
        keys = ("frames_received", "frames_processed", "frames_dropped_stale", "frames_bad",
                "cache_resets", "inference_errors", "published_labels", "published_color_mask",
                "published_overlay")
        out: Dict[str, Any] = {}
        for k in keys:
            try:
                out[k] = int(d[k])
            except (KeyError, ValueError):
                pass
        if {"frames_received", "frames_processed", "frames_dropped_stale",
                "frames_bad"} <= set(out):
            out["in_flight"] = (out["frames_received"] - out["frames_processed"]
                                - out["frames_dropped_stale"] - out["frames_bad"])
        out["device"] = d.get("device")
        return out


def install_signal_handlers() -> Dict[int, Any]:
    """SIGINT/SIGTERM to this program raise :class:`Interrupted` (so the node is stopped)."""
    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signal.Signals(signum).name)
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        old[s] = signal.signal(s, handler)
    return old


def restore_signal_handlers(old: Dict[int, Any]) -> None:
    for s, h in old.items():
        signal.signal(s, h)


def write_json(path: Optional[Path], report: Dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _fmt(v: Any, spec: str = ".0f") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, spec)


# -- bench_node ---------------------------------------------------------------------------------
def add_node_arguments(p: argparse.ArgumentParser) -> None:
    """The node and frame options bench_node and soak share."""
    p.add_argument("--checkpoint", "-c", default="",
                   help="msaf checkpoint for the node ('' = the bundled model)")
    p.add_argument("--device", default="cpu", help="node parameter device (cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="node parameter threads: torch threads (0 = torch's default)")
    p.add_argument("--diag-period", type=positive(float), default=1.0,
                   help="node parameter diagnostics_period in seconds (1.0)")
    p.add_argument("--node-arg", type=node_param, action="append", default=[],
                   metavar="NAME:=VALUE", help="extra node parameter (repeatable), e.g. "
                                               "inference_height:=360")
    p.add_argument("--frames-dir", type=Path, default=None,
                   help="folder of images published in name order (default: $MSAF_CAMVID/val, "
                        "../shared/camvid/val, else the bundled sample drive)")
    p.add_argument("--frame-id", default=FRAME_ID, help=f"header.frame_id ({FRAME_ID})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m msaf_ros.bench_node",
        description="End-to-end benchmark of segment_node over real DDS: publishes camera "
                    "frames at given rates and measures labels received, frames dropped and "
                    "latency (input stamp to labels arrival).")
    add_node_arguments(p)
    p.add_argument("--rates", type=positive(float), nargs="+", default=[5.0, 10.0, 30.0],
                   help="input rates in Hz, one run each (5 10 30)")
    p.add_argument("--duration", type=positive(float), default=30.0,
                   help="measured seconds per rate (30)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds published at each rate before measuring (5)")
    p.add_argument("--size", type=parse_size, default=(480, 360),
                   help="frame size WIDTHxHEIGHT the frames are resized to (480x360)")
    p.add_argument("--subscribe-all", action="store_true",
                   help="also subscribe color_mask and overlay (the node then computes them)")
    p.add_argument("--reliable", action="store_true",
                   help="reliable input (publisher and node's qos_reliability); default best "
                        "effort, the sensor-data profile")
    p.add_argument("--domain-id", type=int, default=DEFAULT_DOMAIN,
                   help=f"ROS_DOMAIN_ID of the node and the benchmark ({DEFAULT_DOMAIN}); "
                        f"discovery is localhost only")
    p.add_argument("--startup-timeout", type=positive(float), default=180.0,
                   help="seconds for the node to start and segment its first frame (180)")
    p.add_argument("--drain-timeout", type=positive(float), default=15.0,
                   help="seconds at most to wait for the last outputs of a rate (15)")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    return p


def run_rate(h: Harness, rate: float, args: argparse.Namespace, index: int) -> Dict[str, Any]:
    tag = f"measure#{index}@{rate:g}"
    h.stream(rate, f"warmup#{index}@{rate:g}", seconds=max(0.0, args.warmup))
    m0, w0 = time.monotonic(), time.time_ns()
    s = h.stream(rate, tag, seconds=args.duration)
    m1, w1 = time.monotonic(), time.time_ns()
    stamps = h.stamps(tag)
    lat_so_far, _ = h.latencies_ms(h.outputs_of(LABELS, stamps))
    quiet = max(1.0, 2.0 * (float(np.percentile(lat_so_far, 90)) / 1e3 if lat_so_far else 1.0))
    h.wait_quiet(tag, stamps, quiet=quiet, timeout=args.drain_timeout)
    labels = h.outputs_of(LABELS, stamps)
    cb, rmw = h.latencies_ms(labels)
    received = len({r[0] for r in labels})
    sent = len(stamps)
    row: Dict[str, Any] = {
        "rate_hz": rate, "duration_s": round(s["seconds"], 3), "sent": sent,
        "send_rate_hz": round(sent / s["seconds"], 2) if s["seconds"] > 0 else None,
        "late_sends": s["late"], "labels_received": received,
        "dropped": sent - received,
        "dropped_share": round(1 - received / sent, 4) if sent else None,
        "output_rate_hz": round(received / s["seconds"], 2) if s["seconds"] > 0 else None,
        "latency_ms": stats_ms(cb), "latency_rmw_ms": stats_ms(rmw),
        "node": h.node_window(w0, w1), "node_usage": h.usage(m0, m1),
    }
    extra = {}
    for t in h.outputs:
        if t == LABELS:
            continue
        recs = h.outputs_of(t, stamps)
        extra[t] = {"received": len({r[0] for r in recs}),
                    "latency_ms": stats_ms(h.latencies_ms(recs)[0])}
    if extra:
        row["other_outputs"] = extra
    return row


def print_table(report: Dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"segment_node end to end: {cfg['size']} frames, device {cfg['device']}, "
          f"threads {cfg['threads']}, {'reliable' if cfg['reliable'] else 'best-effort'} "
          f"input{', all outputs subscribed' if cfg['subscribe_all'] else ''}")
    if report.get("model"):
        print(f"  {report['model']}")
    print(f"  frames: {report['frames_source']}")
    hdr = (f"{'rate Hz':>7} {'sent':>6} {'labels':>6} {'dropped':>7} {'out Hz':>6} "
           f"{'lat p50':>8} {'p90':>6} {'p99':>6} {'max':>6} | {'node ms':>7} "
           f"{'stale':>6} {'lost':>5} {'resets':>6} {'cpu':>5} {'rss MB':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in report["rates"]:
        lat = r["latency_ms"] or {}
        node = r["node"] or {}
        use = r["node_usage"] or {}
        share = (lambda v: "-" if v is None else f"{100 * v:.0f}%")
        print(f"{r['rate_hz']:>7g} {r['sent']:>6} {r['labels_received']:>6} "
              f"{share(r['dropped_share']):>7} {_fmt(r['output_rate_hz'], '.2f'):>6} "
              f"{_fmt(lat.get('median')):>8} {_fmt(lat.get('p90')):>6} "
              f"{_fmt(lat.get('p99')):>6} {_fmt(lat.get('max')):>6} | "
              f"{_fmt(node.get('processing_ms_mean')):>7} {share(node.get('stale_share')):>6} "
              f"{share(node.get('lost_before_node_share')):>5} "
              f"{_fmt(node.get('cache_resets'), 'd'):>6} "
              f"{_fmt(use.get('cpu_cores'), '.2f'):>5} {_fmt(use.get('rss_mb_max')):>7}")
    print("latency: input stamp (publish time) to labels arrival, ms. node ms: the node's "
          "processing time per frame (/diagnostics). stale: frames the node replaced before "
          "segmenting them; lost: frames that never reached the node; resets: the node's "
          "feature-cache resets; cpu: cores the node used.")
    c = report["correspondence"]
    if not c["ok"]:
        for t, v in c.items():
            if isinstance(v, dict) and not v["ok"]:
                print(f"CORRESPONDENCE FAILED on {t}: {v['unknown']} unknown, "
                      f"{v['duplicates']} duplicated, {v['wrong_size_or_encoding']} wrong "
                      f"size/encoding; e.g. {'; '.join(v['examples'])}")


def run(args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
    t_start = time.monotonic()
    frames, source = load_frames(args.frames_dir, args.size)
    outputs = [LABELS] + (list(EXTRA_OUTPUTS) if args.subscribe_all else [])
    h = Harness(frames, checkpoint=args.checkpoint, device=args.device, threads=args.threads,
                domain_id=args.domain_id, reliable=args.reliable, node_args=args.node_arg,
                diag_period=args.diag_period, outputs=outputs, frame_id=args.frame_id)
    report: Dict[str, Any] = {
        "benchmark": "msaf_ros.bench_node",
        "config": {"checkpoint": args.checkpoint or "(bundled)", "device": args.device,
                   "threads": args.threads, "rates_hz": args.rates,
                   "duration_s": args.duration, "warmup_s": args.warmup,
                   "size": f"{args.size[0]}x{args.size[1]}", "frame_id": args.frame_id,
                   "subscribe_all": args.subscribe_all, "reliable": args.reliable,
                   "diag_period_s": args.diag_period,
                   "node_args": [f"{k}:={v}" for k, v in args.node_arg],
                   "domain_id": args.domain_id},
        "environment": environment(), "frames_source": source, "source_frames": len(frames),
    }
    del frames
    try:
        h.start(args.startup_timeout)
        report["node_command"] = " ".join(h.node.cmd)
        report["model"] = h.model_line
        # First frames: until the model has segmented one (its first pass is the slowest).
        got_one = h.stream(args.rates[0], "prime", seconds=args.startup_timeout,
                           until=lambda: len(h.got[LABELS]) > 0)
        if not h.got[LABELS]:
            raise BenchError(h._node_failure(f"produced no labels in {args.startup_timeout:g} "
                                             f"s ({got_one['sent']} frames sent)"))
        h.wait_quiet("prime", h.stamps("prime"), quiet=1.0, timeout=args.drain_timeout)
        report["rates"] = []
        for i, rate in enumerate(args.rates):
            report["rates"].append(run_rate(h, rate, args, i))
        # The node's counters once it is idle: every frame it received is accounted for.
        last = max(r[2] for recs in h.got.values() for r in recs)
        fresh = h.wait_fresh_diag(last, 3 * args.diag_period + 2)
        report["node_totals"] = h.totals() if fresh is not None else None
        received_all = len(h.got[LABELS])
        report["all_frames"] = {"sent": len(h.order), "labels_received": received_all}
        report["correspondence"] = h.correspondence()
    finally:
        h.close()
    report["node_log_tail"] = h.node.output.strip().splitlines()[-5:]
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    return (0 if report["correspondence"]["ok"] else 1), report


def cli_main(prog: str, argv: Optional[Sequence[str]], parser: argparse.ArgumentParser,
             run_fn, print_fn) -> int:
    """Shared entry point of bench_node and soak: parse, run with signal handling, report.
    Exit codes: the run's own (0 ok, 1 a failed check), 2 cannot run, 130 interrupted."""
    args = parser.parse_args(argv)
    if args.warmup < 0:
        print(f"{prog}: error: --warmup must be >= 0", file=sys.stderr)
        return 2
    old = install_signal_handlers()
    try:
        code, report = run_fn(args)
    except BenchError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"{prog}: interrupted ({e}); the node was stopped", file=sys.stderr)
        return 130
    finally:
        restore_signal_handlers(old)
    print_fn(report)
    write_json(args.json, report)
    if args.json:
        print(f"report: {args.json}")
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main("bench_node", argv, build_parser(), run, print_table)


if __name__ == "__main__":
    sys.exit(main())
