"""The machinery of the node benchmarks (``msaf-bench-node``, ``msaf-soak``).

:class:`Harness` runs segment_node as a child process and, in this process, an rclpy node
that publishes frames on a schedule and records into a
:class:`~msaf_ros.tools.report.Recording` every output (stamp, frame_id, arrival time), the
node's /diagnostics and its memory and CPU use. Also: the frames to publish
(:func:`load_frames`), the options both programs share, and their common ``main``
(:func:`run_program`).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..cli import ignoring_signals, restore_signal_handlers, run_cli
from ..diagnostics import values_of
from ..errors import BenchError
from ..msgs import qos, set_stamp, stamp_ns
from ..params import MIN_SIDE
from ..resources import SOURCE_ROOT
from .node_process import NodeProcess, node_env
from .report import CONFIDENCE, LABELS, Recording, write_json

INPUT_TOPIC = "/camera/image_raw"
EXTRA_OUTPUTS = ("/color_mask", "/overlay", CONFIDENCE)
DIAGNOSTICS = "/diagnostics"
FRAME_ID = "camera"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


# -- frames ------------------------------------------------------------------------------------
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

    from ..bag.io import read_topics  # noqa: PLC0415
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


# -- the harness -------------------------------------------------------------------------------
class Harness:
    """segment_node as a child process and, in this process, an rclpy node that publishes
    frames on a schedule and records what comes back (``self.rec``).

    Everything runs on this thread: between publishes the executor is spun, so arrival times
    are taken in the subscription callback (``time.time_ns()``, the clock of the stamps)."""

    def __init__(self, frames: List[np.ndarray], *, checkpoint: str, device: str,
                 threads: int, domain_id: int, reliable: bool = False,
                 node_args: Sequence[Tuple[str, str]] = (), diag_period: float = 1.0,
                 outputs: Sequence[str] = (LABELS,), frame_id: str = FRAME_ID,
                 sample_period: float = 1.0) -> None:
        if not frames:
            raise BenchError("no frames to publish")
        h, w = frames[0].shape[:2]
        self.frames = frames
        self.rec = Recording(frame_id, (w, h), list(outputs))
        self.frame_id = frame_id
        self.domain_id = domain_id
        self.reliable = reliable
        self.outputs = list(outputs)
        self.sample_period = sample_period
        params: Dict[str, Any] = {"checkpoint": checkpoint, "device": device,
                                  "threads": int(threads),
                                  "qos_reliability": "reliable" if reliable else "best_effort",
                                  "diagnostics_period": float(diag_period)}
        params.update(dict(node_args))
        self.node = NodeProcess(params, domain_id, remaps=[("image", INPUT_TOPIC)],
                                env=_bench_env(domain_id, int(threads)))
        self.probe: Any = None
        self.msgs: List[Any] = []
        self._next_frame = 0
        self._last_stamp = 0
        self.last_arrival: Dict[Tuple[str, str], float] = {}   # (topic, tag) -> monotonic
        self._next_sample = 0.0
        self.expect_exit = False
        self.model_line = ""

    # -- life cycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> None:
        """Start the node, wait for it to listen, and match the probe's topics with it."""
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        try:
            from diagnostic_msgs.msg import DiagnosticArray  # noqa: PLC0415
            from sensor_msgs.msg import Image  # noqa: PLC0415
        except ImportError as e:
            raise BenchError(f"ROS 2 Python packages are not importable ({e}); install "
                             f"'.[ros]' or source a ROS 2 installation") from None
        from ..image_codec import rgb_to_image  # noqa: PLC0415
        from .node_process import Probe  # noqa: PLC0415

        self.msgs = []
        for rgb in self.frames:
            m = rgb_to_image(rgb, "rgb8", msg_type=Image)
            m.header.frame_id = self.frame_id
            self.msgs.append(m)
        self.frames = []   # the messages hold the pixels now
        self.node.start()
        self.sample(force=True)
        t_end = time.monotonic() + timeout
        if not self.node.wait_for("listening on", timeout):
            raise BenchError(self.node_failure("did not start"))
        m = re.search(r"\]: (model .*)$", self.node.output, re.M)
        self.model_line = m.group(1).strip() if m else ""
        self.probe = Probe(self.domain_id, f"msaf_bench_{os.getpid()}")
        node = self.probe.node
        self.pub = node.create_publisher(Image, INPUT_TOPIC, qos(self.reliable, depth=5))
        self.subs = {t: node.create_subscription(Image, t, self._output_cb(t), qos(depth=50))
                     for t in self.outputs}
        self.diag_sub = node.create_subscription(DiagnosticArray, DIAGNOSTICS, self._diag_cb, 50)
        ok = self._spin_until(lambda: self.pub.get_subscription_count() > 0
                              and all(s.get_publisher_count() > 0 for s in self.subs.values()),
                              max(5.0, t_end - time.monotonic()))
        if not ok:
            raise BenchError(self.node_failure(f"never matched {INPUT_TOPIC} / "
                                               f"{', '.join(self.outputs)}"))
        others = [t for t, s in self.subs.items() if s.get_publisher_count() > 1]
        if others:
            raise BenchError(f"another node publishes {', '.join(others)} in ROS domain "
                             f"{self.domain_id}: pick a free --domain-id")

    def close(self) -> None:
        """Stop the node (SIGINT, then SIGKILL after 10 s) and the probe, and reap the node;
        SIGINT/SIGTERM to this program are ignored meanwhile so clean-up is not cut short."""
        old = ignoring_signals()
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
            restore_signal_handlers(old)

    def node_failure(self, what: str) -> str:
        """One line about the node: ``what`` happened, whether it runs, its last error."""
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
        box, sent, last = self.rec.got[topic], self.rec.sent, self.last_arrival

        def record(msg: Any, rmw_ns: int) -> None:
            t = time.time_ns()
            st = stamp_ns(msg.header.stamp)
            box.append((st, msg.header.frame_id, t, rmw_ns, int(msg.width), int(msg.height),
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
        d = values_of(arr)
        if d is None:
            return
        d["_stamp_ns"] = stamp_ns(arr.header.stamp)
        d["_arrival_ns"] = time.time_ns()
        self.rec.diags.append(d)

    # -- spinning, sampling --------------------------------------------------------------------
    def sample(self, force: bool = False) -> None:
        """Record the node's memory and CPU time (at most once per sample period)."""
        now = time.monotonic()
        if not force and now < self._next_sample:
            return
        self._next_sample = now + self.sample_period
        if self.pid is None:
            return
        rss, hwm, cpu = read_proc(self.pid)
        if rss is not None:
            self.rec.samples.append((now, time.time_ns(), rss, hwm, cpu))

    def _housekeeping(self) -> None:
        self.sample()
        proc = self.node.proc
        if not self.expect_exit and proc is not None and proc.poll() is not None:
            raise BenchError(self.node_failure("died during the run"))

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
        set_stamp(m.header.stamp, st)
        self.pub.publish(m)
        self.rec.sent[st] = (self._next_frame, tag, st)
        self.rec.order.append(st)
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
        box = self.rec.got[topic]
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
            for d in reversed(self.rec.diags):
                if d["_stamp_ns"] > after_ns:
                    return d
            return None
        self._spin_until(lambda: find() is not None, timeout)
        return find()

    def prime(self, rate: float, timeout: float) -> Dict[str, Any]:
        """Publish until the node's first labels (its first forward pass is the slowest)."""
        got = self.rec.got[LABELS]
        s = self.stream(rate, "prime", seconds=timeout, until=lambda: len(got) > 0)
        if not got:
            raise BenchError(self.node_failure(f"produced no labels in {timeout:g} s "
                                               f"({s['sent']} frames sent)"))
        return s


def _bench_env(domain_id: int, threads: int) -> Dict[str, str]:
    """The node's environment: node_env pins torch to one thread (for tests); a benchmark
    uses ``threads`` instead (0: the caller's setting or torch's default)."""
    env = node_env(domain_id)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads > 0:
            env[var] = str(threads)
        elif var in os.environ:
            env[var] = os.environ[var]
        else:
            env.pop(var, None)
    return env


# -- the options and the main both programs share ------------------------------------------------
def parse_size(text: str) -> Tuple[int, int]:
    """'1024x512' -> (1024, 512) = (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < MIN_SIDE or int(m.group(2)) < MIN_SIDE:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (both >= {MIN_SIDE}), "
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
    """An argparse type: a number of ``kind`` above 0."""
    def conv(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return v
    return conv


def node_program_parser(prog: str, description: str, domain_id: int
                        ) -> argparse.ArgumentParser:
    """A parser with the node, frame and run options bench_node and soak share."""
    p = argparse.ArgumentParser(prog=prog, description=description)
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
    p.add_argument("--reliable", action="store_true",
                   help="reliable input (publisher and node's qos_reliability); default best "
                        "effort, the sensor-data profile")
    p.add_argument("--domain-id", type=int, default=domain_id,
                   help=f"ROS_DOMAIN_ID of the node and the program ({domain_id}); discovery "
                        f"is localhost only")
    p.add_argument("--startup-timeout", type=positive(float), default=180.0,
                   help="seconds for the node to start and segment its first frame (180)")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    return p


def make_harness(args: argparse.Namespace, frames: List[np.ndarray],
                 outputs: Sequence[str] = (LABELS,)) -> Harness:
    """A Harness for the shared options of ``args``."""
    return Harness(frames, checkpoint=args.checkpoint, device=args.device,
                   threads=args.threads, domain_id=args.domain_id, reliable=args.reliable,
                   node_args=args.node_arg, diag_period=args.diag_period, outputs=outputs,
                   frame_id=args.frame_id)


def run_program(prog: str, argv: Optional[Sequence[str]], parser: argparse.ArgumentParser,
                run: Callable[[argparse.Namespace], Tuple[int, Dict[str, Any]]],
                show: Callable[[Dict[str, Any]], None]) -> int:
    """The ``main`` of bench_node and soak: parse, run, print and save the report.
    Exit codes: the run's own (0 ok, 1 a failed check), 2 cannot run, 130/143 a signal."""
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")

    def work() -> int:
        code, report = run(args)
        show(report)
        write_json(args.json, report)
        if args.json:
            print(f"report: {args.json}")
        return code
    return run_cli(f"{prog}:", work, error_code=2, interrupted="the node was stopped",
                   debug=args.debug)


def node_report(h: Harness) -> Dict[str, Any]:
    """The node's command line and the last lines of its log (after the run)."""
    return {"node_command": " ".join(h.node.cmd),
            "node_log_tail": h.node.output.strip().splitlines()[-5:]}
