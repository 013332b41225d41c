"""``msaf-bag play``: publish a recorded bag live, with its recorded timing and QoS, and /clock.

For setups without rosbag2 (pip-only, tests); on a ROS 2 install ``ros2 bag play`` does the
same. Messages go out as the bag's serialized bytes (no decoding), each at
``start + (bag time - first bag time) / rate`` on the steady clock.

- QoS per topic, from the profiles recorded in the bag's metadata (as rosbag2 adapts them):
  best effort if any recorded publisher was best effort, else reliable; transient local
  only if every one was; keep last, the largest recorded depth. Topics with no recorded
  profile (bags written by rosbags or older recorders): reliable, volatile, keep last 10.
- ``--clock [HZ]`` publishes rosgraph_msgs/Clock on ``/clock`` (HZ times a second of wall
  time, 40 by default, and at each message's bag time), for nodes with ``use_sim_time``.
- ``--loop`` starts again at the end (the clock jumps back; msaf nodes reset their caches).
- ``--start-offset S`` skips the first S seconds of the bag; ``--topics`` plays only those.

Needs rclpy (the PyPI ROS 2 wheels or a ROS 2 install); Ctrl-C stops it (exit code 0).
"""

from __future__ import annotations

import argparse
import importlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import BagError, MsafRosError, first_line
from .io import messages, open_reader

DEFAULT_DEPTH = 10
DEFAULT_CLOCK_HZ = 40.0
#: After the last message: how long reliable publishers may wait for every subscriber's
#: acknowledgement, and how long the node stays up for best-effort samples still in flight
#: (publish() may return before the middleware has delivered them; a writer destroyed at
#: once can lose them).
FLUSH_TIMEOUT_S = 2.0
LINGER_S = 0.5


@dataclass
class PlayOptions:
    rate: float = 1.0
    clock_hz: float = 0.0            # 0: no /clock
    loop: bool = False
    topics: Sequence[str] = ()       # () = every topic
    start_offset: float = 0.0        # seconds of the bag skipped at the start
    delay: float = 0.0               # seconds between creating the publishers and playing


@dataclass
class PlayStats:
    published: int = 0
    loops: int = 0
    per_topic: Dict[str, int] = field(default_factory=dict)


def check_options(o: PlayOptions) -> None:
    if not o.rate > 0:
        raise MsafRosError(f"--rate must be > 0, got {o.rate}")
    if o.clock_hz < 0:
        raise MsafRosError(f"--clock must be a rate > 0 Hz, got {o.clock_hz}")
    if o.start_offset < 0 or o.delay < 0:
        raise MsafRosError("--start-offset and --delay must be >= 0 seconds")


def qos_policy(profiles: Sequence[Any]) -> Tuple[bool, bool, int]:
    """(reliable, transient_local, depth) for a topic recorded with ``profiles`` (rosbags
    Qos tuples; empty when the bag holds none)."""
    if not profiles:
        return True, False, DEFAULT_DEPTH
    names = [(getattr(p.reliability, "name", str(p.reliability)).upper(),
              getattr(p.durability, "name", str(p.durability)).upper()) for p in profiles]
    reliable = not any(r == "BEST_EFFORT" for r, _ in names)
    transient = all(d == "TRANSIENT_LOCAL" for _, d in names)
    depth = max([int(p.depth) for p in profiles] + [0]) or DEFAULT_DEPTH
    return reliable, transient, depth


def message_class(msgtype: str) -> Any:
    """The rclpy message class of ``pkg/msg/Name`` (BagError when not installed)."""
    pkg, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        raise BagError(f"message type {msgtype} is not installed here (its ROS 2 package "
                       f"{pkg}); leave its topic out with --topics") from None


def select(connections: Sequence[Any], topics: Sequence[str], path: Path) -> List[Any]:
    """The connections to play: all, or those of ``topics`` (each must be in the bag)."""
    have = sorted({c.topic for c in connections})
    unknown = [t for t in topics if t not in have]
    if unknown:
        raise BagError(f"{path}: no topic {', '.join(unknown)}; topics in the bag: "
                       f"{', '.join(have)}")
    return [c for c in connections if not topics or c.topic in topics]


class Player:
    """Plays one bag into a ROS 2 graph (its own rclpy context; ROS_DOMAIN_ID applies)."""

    def __init__(self, path: Path, options: PlayOptions, stop: threading.Event,
                 say: Callable[[str], None] = print) -> None:
        check_options(options)
        self.path, self.o, self.stop, self.say = Path(path), options, stop, say
        self.stats = PlayStats()

    def run(self) -> PlayStats:
        reader = open_reader(self.path)
        try:
            conns = select(reader.connections, self.o.topics, self.path)
            first = reader.start_time + int(self.o.start_offset * 1e9)
            if first >= reader.end_time:
                raise BagError(f"--start-offset {self.o.start_offset} s is past the end of "
                               f"the bag ({reader.duration / 1e9:.2f} s)")
            with _Ros(clock=bool(self.o.clock_hz)) as ros:
                pubs = {c.id: ros.publisher(c) for c in conns}
                self.say(f"msaf-bag play: {self.path}, {len({c.topic for c in conns})} "
                         f"topics, rate {self.o.rate:g}"
                         + (f", /clock at {self.o.clock_hz:g} Hz" if self.o.clock_hz else ""))
                if self.stop.wait(self.o.delay):
                    return self.stats
                while not self.stop.is_set():
                    self._play_once(reader, conns, pubs, ros, first)
                    self.stats.loops += 1
                    if not self.o.loop:
                        break
                if not self.stop.is_set():
                    ros.flush(self.stop)     # the last messages reach the subscribers
        finally:
            reader.close()
        return self.stats

    def _play_once(self, reader: Any, conns: List[Any], pubs: Dict[int, Any], ros: "_Ros",
                   first: int) -> None:
        t0 = time.monotonic()
        rate, hz = self.o.rate, self.o.clock_hz
        next_tick = t0

        def bag_now() -> int:
            return first + int((time.monotonic() - t0) * rate * 1e9)

        for conn, bag_ns, raw in messages(reader, self.path, conns):
            if bag_ns < first:
                continue
            due = t0 + (bag_ns - first) / 1e9 / rate
            while True:                  # wait for the message, ticking /clock meanwhile
                now = time.monotonic()
                if hz and next_tick <= min(now, due):
                    ros.clock(min(bag_now(), bag_ns))
                    next_tick = max(next_tick + 1.0 / hz, now - 1.0 / hz)   # no bursts
                    continue
                wake = min(due, next_tick) if hz else due
                if now >= due:
                    break
                if self.stop.wait(max(0.0, wake - now)):
                    return
            if hz:
                ros.clock(bag_ns)
            pubs[conn.id].publish(bytes(raw))
            self.stats.published += 1
            self.stats.per_topic[conn.topic] = self.stats.per_topic.get(conn.topic, 0) + 1


class _Ros:
    """rclpy context, node, publishers and the /clock publisher of one play."""

    def __init__(self, clock: bool) -> None:
        self._with_clock = clock

    def __enter__(self) -> "_Ros":
        try:
            import rclpy  # noqa: PLC0415
            from rclpy.qos import (DurabilityPolicy, HistoryPolicy,  # noqa: PLC0415
                                   QoSProfile, ReliabilityPolicy)
        except ImportError as e:
            raise MsafRosError(f"msaf-bag play needs rclpy ({first_line(e)}): pip install "
                               f"-e '.[ros]' or source a ROS 2 install") from None
        self._qos = (QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy)
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node("msaf_bag_play", context=self.context,
                                      start_parameter_services=False)
        self._clock_pub: Optional[Any] = None
        if self._with_clock:
            from rosgraph_msgs.msg import Clock  # noqa: PLC0415
            self._clock_msg = Clock
            self._clock_pub = self.node.create_publisher(Clock, "/clock", 10)
        return self

    def publisher(self, conn: Any) -> Any:
        QoSProfile, Rel, Dur, Hist = self._qos
        reliable, transient, depth = qos_policy(conn.ext.offered_qos_profiles)
        profile = QoSProfile(history=Hist.KEEP_LAST, depth=depth,
                             reliability=Rel.RELIABLE if reliable else Rel.BEST_EFFORT,
                             durability=Dur.TRANSIENT_LOCAL if transient else Dur.VOLATILE)
        return self.node.create_publisher(message_class(conn.msgtype), conn.topic, profile)

    def flush(self, stop: threading.Event) -> None:
        """Let what was published arrive before the node goes: reliable publishers wait
        for their subscribers' acknowledgements (at most FLUSH_TIMEOUT_S), then the node
        stays up LINGER_S for best-effort samples in flight (unless ``stop``)."""
        from rclpy.duration import Duration  # noqa: PLC0415
        for pub in self.node.publishers:
            if pub.qos_profile.reliability == self._qos[1].RELIABLE:
                pub.wait_for_all_acked(Duration(seconds=FLUSH_TIMEOUT_S))
        stop.wait(LINGER_S)

    def clock(self, ns: int) -> None:
        msg = self._clock_msg()
        msg.clock.sec, msg.clock.nanosec = divmod(int(ns), 1_000_000_000)
        self._clock_pub.publish(msg)

    def __exit__(self, *exc: Any) -> None:
        try:
            self.node.destroy_node()
        finally:
            self.rclpy.try_shutdown(context=self.context)


# -- the command line (wired into msaf-bag by msaf_ros.bag.cli) ----------------------------------
def add_parser(sub: Any) -> None:
    """``msaf-bag play`` and its options."""
    p = sub.add_parser(
        "play", help="publish a bag live with its recorded timing and QoS (needs rclpy)",
        description="Publish the messages of BAG into the ROS 2 graph with their recorded "
                    "timing and QoS, optionally with /clock (for nodes with use_sim_time). "
                    "Ctrl-C stops. On a ROS 2 install, 'ros2 bag play' does the same.")
    p.add_argument("input", type=Path, help="rosbag2 folder, or a .mcap / .db3 file")
    p.add_argument("--clock", nargs="?", type=float, const=DEFAULT_CLOCK_HZ, default=0.0,
                   metavar="HZ", help=f"publish /clock (default {DEFAULT_CLOCK_HZ:g} Hz)")
    p.add_argument("--rate", "-r", type=float, default=1.0, help="playback speed (1.0)")
    p.add_argument("--loop", "-l", action="store_true", help="start again at the end")
    p.add_argument("--topics", nargs="+", default=[], metavar="TOPIC",
                   help="play only these topics (default: all)")
    p.add_argument("--start-offset", type=float, default=0.0, metavar="S",
                   help="skip the first S seconds of the bag")
    p.add_argument("--delay", type=float, default=0.0, metavar="S",
                   help="wait S seconds after creating the publishers (discovery)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    """Play as ``args`` say until the end (or Ctrl-C: ``stop``); one summary line."""
    opts = PlayOptions(rate=args.rate, clock_hz=args.clock or 0.0, loop=args.loop,
                       topics=tuple(args.topics), start_offset=args.start_offset,
                       delay=args.delay)
    t0 = time.monotonic()
    stats = Player(args.input, opts, stop).run()
    topics = ", ".join(f"{t} {n}" for t, n in sorted(stats.per_topic.items()))
    print(f"msaf-bag play: {stats.published} messages ({topics or 'none'}) in "
          f"{time.monotonic() - t0:.1f} s" + (", stopped" if stop.is_set() else ""))
    return 0
