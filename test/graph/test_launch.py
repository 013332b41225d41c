"""The real launch file, where launch_ros is installed (a ROS 2 distro); skipped with the
reason elsewhere."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

LAUNCH = ROOT / "launch" / "segment.launch.py"


def test_real_launch_starts_the_node(tiny_checkpoint, tmp_path):
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (needs a ROS 2 "
                                             "distro: Humble, Jazzy or Kilted)")
    launch = pytest.importorskip("launch", reason="ROS 2 'launch' is not installed")
    if not hasattr(launch, "LaunchService"):   # the repository's launch/ folder, not ROS
        pytest.skip("ROS 2 'launch' is not installed")
    try:
        from ament_index_python.packages import get_package_prefix
        prefix = Path(get_package_prefix("msaf_ros"))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"msaf_ros is not installed in an ament workspace ({e})")
    if not (prefix / "lib" / "msaf_ros" / "segment_node").exists():
        pytest.skip(f"no {prefix}/lib/msaf_ros/segment_node (build with colcon)")
    script = (
        "import sys\n"
        "from launch import LaunchDescription, LaunchService\n"
        "from launch.actions import IncludeLaunchDescription\n"
        "from launch.launch_description_sources import PythonLaunchDescriptionSource\n"
        f"src = PythonLaunchDescriptionSource({str(LAUNCH)!r})\n"
        "args = {'checkpoint': sys.argv[1], 'namespace': 'lt', 'image_topic': '/lt/image',\n"
        "        'device': 'cpu'}\n"
        "ls = LaunchService()\n"
        "ls.include_launch_description(LaunchDescription(\n"
        "    [IncludeLaunchDescription(src, launch_arguments=args.items())]))\n"
        "sys.exit(ls.run())\n")
    from msaf_ros.tools.node_process import node_env
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", script, str(tiny_checkpoint)],
                                env=node_env(79), stdout=out, stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + 90
            while time.monotonic() < end and "listening on /lt/image" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
            assert "listening on /lt/image" in log.read_text(), log.read_text()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert "Traceback" not in log.read_text()
