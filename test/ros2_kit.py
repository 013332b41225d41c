"""The real ROS 2 tools in the tests: this package built with ``colcon build`` in a temporary
workspace, and ``ros2 launch``/``run``/``param``/``topic`` run in that workspace's
environment (``source install/setup.bash``), as a user runs them.

The workspace is built once per test session: the ``ros2_ws`` fixture (test/conftest.py)
and the launch_testing files (test/launch/, which cannot ask for fixtures) both call
:func:`workspace`. Where the kit is missing (colcon, launch_ros, ros2cli, launch_testing:
``../shared/ros2-py/install.sh VENV --with-colcon``) :func:`missing` says why and the tests
skip. Every command gets local-only discovery and the ROS domain its test names.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KIT = "../shared/ros2-py/install.sh VENV --with-colcon"
MODULES = ("rclpy", "launch", "launch_ros", "launch_testing", "ros2cli", "ros2launch",
           "ros2param", "ros2topic", "colcon_core")


def missing() -> str:
    """Why the ROS 2 tools cannot run here ('' when they can)."""
    for m in MODULES:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"the ROS 2 launch/CLI kit is not installed (no '{m}'; run {KIT})"
    for exe in ("colcon", "ros2"):
        if not (BIN / exe).exists():
            return f"no {BIN / exe} (run {KIT})"
    return ""


class Workspace:
    """A colcon workspace with msaf_ros built into ``install/``."""

    def __init__(self, root: Path, env: Dict[str, str]) -> None:
        self.root = root
        self.install = root / "install"
        self._env = env

    def env(self, domain: int, **extra: str) -> Dict[str, str]:
        """The sourced workspace environment for ROS domain ``domain`` (the tests pass
        ``--no-daemon`` to the ros2 verbs that have it, so no daemon outlives them)."""
        env = dict(self._env)
        env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   ROS_LOG_DIR=str(self.root / "ros_log"))   # not ~/.ros/log
        env.pop("RCUTILS_COLORIZED_OUTPUT", None)   # what a user has: rcutils decides
        env.update(extra)
        return env

    def run(self, cmd: Sequence[str], domain: int, timeout: float = 120,
            **extra: str) -> subprocess.CompletedProcess:
        """Run a command to its end (output captured as text)."""
        return subprocess.run(list(cmd), env=self.env(domain, **extra), cwd=self.root,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start(self, cmd: Sequence[str], domain: int, log: Path, **extra: str) -> "Started":
        """Start a command in the background, stdout and stderr into ``log``."""
        return Started(cmd, self.env(domain, **extra), self.root, log)

    def retry(self, cmd: Sequence[str], domain: int, ok, timeout: float = 60,
              **extra: str) -> subprocess.CompletedProcess:
        """Run ``cmd`` until ``ok(result)`` (discovery takes a while); the last result."""
        end = time.monotonic() + timeout
        while True:
            res = self.run(cmd, domain, timeout=max(10.0, end - time.monotonic()), **extra)
            if ok(res) or time.monotonic() > end:
                return res
            time.sleep(1.0)


class Started:
    """A background process with SIGINT restored (so ``ros2 launch`` can be stopped as with
    Ctrl-C) in a session of its own (so nothing it started outlives the test)."""

    def __init__(self, cmd: Sequence[str], env: Dict[str, str], cwd: Path, log: Path) -> None:
        self.log = Path(log)
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=self._out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                      signal.SIG_DFL))

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 120.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.output:
                return True
            if self.proc.poll() is not None:
                return text in self.output
            time.sleep(0.2)
        return text in self.output

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGINT to the process group, as Ctrl-C in a terminal (``ros2 run`` leaves the
        node to get it from there); the group is killed if it does not end."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:                                        # anything left in its session
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._out.close()
        return self.proc.returncode


_BUILT: Dict[str, Workspace] = {}


def _sourced_env(root: Path, base: Dict[str, str]) -> Dict[str, str]:
    out = subprocess.run(["bash", "-c", "source install/setup.bash && env -0"], cwd=root,
                         env=base, capture_output=True, check=True)
    env = {}
    for item in out.stdout.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode()] = v.decode(errors="replace")
    return env


def workspace() -> Workspace:
    """The session's workspace: ``src/msaf_ros`` links to this repository, built once with
    ``colcon build --packages-select msaf_ros`` (RuntimeError with colcon's output if it
    fails). Removed when the test process ends."""
    if "ws" in _BUILT:
        return _BUILT["ws"]
    root = Path(tempfile.mkdtemp(prefix="msaf_ros_ws_"))
    atexit.register(shutil.rmtree, root, True)
    (root / "src").mkdir()
    (root / "src" / "msaf_ros").symlink_to(ROOT, target_is_directory=True)
    base = dict(os.environ)
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    for k in ("AMENT_PREFIX_PATH", "COLCON_PREFIX_PATH", "PYTHONPATH"):
        base.pop(k, None)
    res = subprocess.run([str(BIN / "colcon"), "build", "--packages-select", "msaf_ros"],
                         cwd=root, env=base, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"colcon build failed ({res.returncode}):\n"
                           f"{(res.stdout + res.stderr)[-3000:]}")
    ws = _BUILT["ws"] = Workspace(root, _sourced_env(root, base))
    return ws


def lines_with(text: str, *words: str) -> List[str]:
    return [ln for ln in text.splitlines() if all(w in ln for w in words)]
