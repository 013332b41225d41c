"""segment_node as a child process, and a probe node that talks to it over DDS.

The node benchmarks and the graph tests start the real node (``python -m
msaf_ros.segment_node --ros-args ...``) with :class:`NodeProcess` and publish to it and
listen to it from :class:`Probe`, an rclpy node of their own, in its own context and ROS
domain. Imports rclpy only in :class:`Probe`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..msgs import qos
from ..resources import SOURCE_ROOT


def node_env(domain_id: int, **extra: str) -> Dict[str, str]:
    """Environment of a node process: local discovery only, one torch thread, msaf_ros on
    the path even where the package is not installed."""
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RCUTILS_COLORIZED_OUTPUT="0",
               RCUTILS_LOGGING_BUFFERED_STREAM="0", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SOURCE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


class NodeProcess:
    """``python -m msaf_ros.segment_node --ros-args ...`` as a child process."""

    def __init__(self, params: Dict[str, Any], domain_id: int,
                 remaps: Sequence[Tuple[str, str]] = (), args: Sequence[str] = (),
                 env: Optional[Dict[str, str]] = None) -> None:
        self.cmd = [sys.executable, "-m", "msaf_ros.segment_node", "--ros-args"]
        for k, v in params.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif v == "":
                v = "''"
            self.cmd += ["-p", f"{k}:={v}"]
        for a, b in remaps:
            self.cmd += ["-r", f"{a}:={b}"]
        self.cmd += list(args)
        self.env = env or node_env(domain_id)
        self._log = tempfile.NamedTemporaryFile("w+", prefix="segment_node_", suffix=".log",
                                                delete=False)
        self._err = tempfile.NamedTemporaryFile("w+", prefix="segment_node_", suffix=".err",
                                                delete=False)
        self.proc: Optional[subprocess.Popen] = None
        self._saved: Optional[Tuple[str, str]] = None   # the logs, once close() removed them

    def start(self) -> "NodeProcess":
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=self._err,
                                     stdin=subprocess.DEVNULL)
        return self

    @staticmethod
    def _read(f) -> str:
        try:
            return Path(f.name).read_text(errors="replace")
        except OSError:
            return ""

    @property
    def stdout(self) -> str:
        return self._saved[0] if self._saved else self._read(self._log)

    @property
    def stderr(self) -> str:
        return self._saved[1] if self._saved else self._read(self._err)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, text: str, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.output:
                return True
            if not self.alive():
                return text in self.output
            time.sleep(0.05)
        return False

    def wait_ready(self, timeout: float = 90.0) -> None:
        if not self.wait_for("listening on", timeout):
            raise RuntimeError(f"segment_node did not start (rc={self.proc.poll()}):\n"
                               f"{self.output[-3000:]}")

    def run(self, timeout: float = 90.0) -> int:
        """Start and wait for the exit (for start-up failures)."""
        self.start()
        return self.proc.wait(timeout)

    def signal(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> Tuple[int, float]:
        """Send ``sig``; returns (exit code, seconds until the process ended)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        return rc, time.monotonic() - t0

    def close(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._saved is None:
            self._saved = (self._read(self._log), self._read(self._err))
        for f in (self._log, self._err):
            f.close()
            try:
                os.unlink(f.name)
            except OSError:
                pass


class Probe:
    """An rclpy node in the test process, in its own context and domain."""

    def __init__(self, domain_id: int, name: str = "msaf_probe") -> None:
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        import rclpy  # noqa: PLC0415
        from rclpy.executors import SingleThreadedExecutor  # noqa: PLC0415
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=domain_id)  # not sys.argv
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: Dict[str, List[Any]] = {}
        self.subs: Dict[str, Any] = {}

    qos = staticmethod(qos)

    def publisher(self, msg_type: Any, topic: str, qos: Any = None):
        return self.node.create_publisher(msg_type, topic, qos or self.qos(depth=50))

    def subscribe(self, msg_type: Any, topic: str, qos: Any = None) -> List[Any]:
        box = self.received.setdefault(topic, [])
        self.subs[topic] = self.node.create_subscription(
            msg_type, topic, box.append, qos or self.qos(depth=100))
        return box

    def unsubscribe(self, topic: str) -> None:
        sub = self.subs.pop(topic, None)
        if sub is not None:
            self.node.destroy_subscription(sub)

    def spin_until(self, cond: Callable[[], bool], timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return cond()

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)

    def wait_matched(self, pubs: Iterable[Any] = (), subs: Iterable[str] = (),
                     timeout: float = 60.0) -> None:
        pubs, subs = list(pubs), list(subs)
        ok = self.spin_until(
            lambda: all(p.get_subscription_count() > 0 for p in pubs)
            and all(self.subs[t].get_publisher_count() > 0 for t in subs), timeout)
        if not ok:
            raise TimeoutError(f"no match for publishers {[p.topic_name for p in pubs]} / "
                               f"subscriptions {subs}")

    def close(self) -> None:
        try:
            self.executor.shutdown()
            self.node.destroy_node()
        finally:
            self.rclpy.try_shutdown(context=self.context)
