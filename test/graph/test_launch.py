"""The launch file and the params file with the real ROS 2 tools: ``colcon build``,
``ros2 launch``, ``ros2 run``, ``ros2 param get``, ``ros2 topic echo --once``/``pub``
(test/ros2_kit.py), and rclpy's own reading of params files. Skipped with the reason where
rclpy or the launch/CLI kit is missing.

The README's "In a ROS 2 workspace" section is the sequence these tests run.
"""
from __future__ import annotations

import importlib.util

import pytest

from conftest import ROOT
from msaf_ros.params import DEFAULTS

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not importable")

LAUNCH = ROOT / "launch" / "segment.launch.py"
YAML = ROOT / "config" / "msaf.yaml"
DOMAIN = 80                      # 80..84: one domain per test that starts nodes
NAMESPACES = ("", "front", "a/b")


def rclpy_overrides(params_file, namespace):
    """The parameters rclpy gives a node named segment_node in ``namespace`` from
    ``--params-file params_file`` (what ``ros2 run ... --params-file`` does)."""
    ctx = rclpy.Context()
    args = ["--ros-args", "--params-file", str(params_file)]
    if namespace:
        args += ["-r", f"__ns:=/{namespace}"]
    rclpy.init(args=args, context=ctx, domain_id=DOMAIN)
    try:
        node = rclpy.create_node("segment_node", context=ctx)
        try:
            return {k: p.value for k, p in node._parameter_overrides.items()}
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_config_applies_to_the_node_in_any_namespace(namespace):
    """config/msaf.yaml reaches segment_node whatever its namespace (ros2 run -r __ns:=...)."""
    assert rclpy_overrides(YAML, namespace) == DEFAULTS


PARAMS_FILES = {
    "wildcards-then-own": "/**:\n  ros__parameters:\n    max_streams: 1\n    half: true\n"
                          "/**/segment_node:\n  ros__parameters:\n    max_streams: 2\n"
                          "/front/segment_node:\n  ros__parameters:\n    max_streams: 3\n",
    "own-then-wildcards": "/front/segment_node:\n  ros__parameters:\n    max_streams: 3\n"
                          "/**/segment_node:\n  ros__parameters:\n    max_streams: 2\n"
                          "/**:\n  ros__parameters:\n    max_streams: 1\n",
    "relative-and-one-token": "segment_node:\n  ros__parameters:\n    threads: 1\n"
                              "/*/segment_node:\n  ros__parameters:\n    threads: 2\n"
                              "/rear/segment_node:\n  ros__parameters:\n    threads: 3\n",
    "nested-namespace": "front:\n  segment_node:\n    ros__parameters:\n      threads: 4\n"
                        "a:\n  b:\n    segment_node:\n      ros__parameters:\n"
                        "        threads: 5\n",
    "groups-merge": "/**:\n  ros__parameters:\n    qos_overrides:\n      /overlay:\n"
                    "        publisher:\n          depth: 1\n"
                    "/**/segment_node:\n  ros__parameters:\n    qos_overrides:\n"
                    "      /labels:\n        publisher:\n          depth: 3\n",
    "other-nodes": "/**/rviz2:\n  ros__parameters:\n    threads: 9\n"
                   "/front/other:\n  ros__parameters:\n    threads: 8\n",
}


@pytest.fixture(scope="module")
def launch_module():
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (run "
                                             "../shared/ros2-py/install.sh VENV)")
    spec = importlib.util.spec_from_file_location("msaf_segment_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", sorted(PARAMS_FILES))
def test_launch_reads_a_params_file_as_rclpy_does(case, launch_module, tmp_path):
    """The launch file's own reading of params_file gives each namespace exactly what rclpy
    gives the node for ``--params-file`` (matching entries in file order, later wins)."""
    f = tmp_path / f"{case}.yaml"
    f.write_text(PARAMS_FILES[case])
    for ns in NAMESPACES + ("rear",):
        assert launch_module.node_parameters(str(f), ns) == rclpy_overrides(f, ns), (case, ns)


# -- the real tools ------------------------------------------------------------------------------
def test_ros2_run_with_the_params_file_in_a_namespace(ros2_ws, tiny_checkpoint, tmp_path):
    """``ros2 run msaf_ros segment_node --ros-args -r __ns:=/front --params-file ...``: the
    file's values reach the node (``ros2 param get``)."""
    params = tmp_path / "msaf.yaml"
    text = YAML.read_text()
    assert "    max_streams: 16 " in text
    params.write_text(text.replace("    max_streams: 16 ", "    max_streams: 5 "))
    node = ros2_ws.start(["ros2", "run", "msaf_ros", "segment_node", "--ros-args",
                          "-r", "__ns:=/front", "--params-file", str(params),
                          "-p", f"checkpoint:={tiny_checkpoint}"], DOMAIN, tmp_path / "run.log")
    try:
        assert node.wait_for("listening on /front/image"), node.output
        got = ros2_ws.retry(["ros2", "param", "get", "--no-daemon", "/front/segment_node",
                             "max_streams"], DOMAIN, lambda r: "Integer value is" in r.stdout)
        assert got.stdout.strip() == "Integer value is: 5", got.stdout + got.stderr
    finally:
        assert node.stop() == 0, node.output


def test_rviz_without_rviz2_starts_nothing(ros2_ws, tiny_checkpoint, tmp_path):
    """``rviz:=true`` where rviz2 is not installed: one clear error, exit code 1, no node
    started, no RViz file written."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    res = ros2_ws.run(["ros2", "launch", "msaf_ros", "segment.launch.py", "rviz:=true",
                       f"checkpoint:={tiny_checkpoint}"], DOMAIN + 1, TMPDIR=str(tmp))
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    errors = [ln for ln in out.splitlines() if "ERROR" in ln or "error" in ln]
    assert len(errors) == 1 and "'rviz2' is not installed" in errors[0], out
    assert "process started" not in out and "segment_node" not in out, out
    assert list(tmp.iterdir()) == []


def test_launch_fails_when_the_node_fails(ros2_ws, tmp_path):
    """A node that cannot start (a missing checkpoint) ends ``ros2 launch`` with code 1,
    after the node's own one-line error."""
    res = ros2_ws.run(["ros2", "launch", "msaf_ros", "segment.launch.py",
                       "checkpoint:=/nonexistent/model.pt"], DOMAIN + 2)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "parameter 'checkpoint': /nonexistent/model.pt" in out, out
    assert "failed (exit code 1)" in out, out
    assert "Traceback" not in out


def test_launch_namespace_params_file_overrides_and_sim_time(ros2_ws, tiny_checkpoint,
                                                             tmp_path):
    """``ros2 launch`` with namespace, params_file, checkpoint/device overrides and
    use_sim_time: the parameters the node holds (``ros2 param get``), its latched class
    info (``ros2 topic echo --once``), its diagnostics stamped with /clock's time
    (``ros2 topic pub /clock``), plain captured logs, exit code 0 after Ctrl-C."""
    own = tmp_path / "front.yaml"
    own.write_text("/**/segment_node:\n  ros__parameters:\n    overlay_alpha: 0.3\n"
                   "    device: auto\n    diagnostics_period: 0.5\n"
                   "/front/segment_node:\n  ros__parameters:\n    max_streams: 5\n"
                   "/rear/segment_node:\n  ros__parameters:\n    max_streams: 7\n")
    d = DOMAIN + 3
    launch = ros2_ws.start(["ros2", "launch", "msaf_ros", "segment.launch.py", "namespace:=front",
                            f"params_file:={own}", f"checkpoint:={tiny_checkpoint}",
                            "device:=cpu", "use_sim_time:=true",
                            "image_topic:=/front/image_raw"], d, tmp_path / "launch.log")
    clock = None
    try:
        assert launch.wait_for("listening on /front/image_raw"), launch.output

        def param(name):
            r = ros2_ws.retry(["ros2", "param", "get", "--no-daemon", "/front/segment_node",
                               name], d, lambda r: "value is" in r.stdout)
            return r.stdout.strip()
        assert param("overlay_alpha") == "Double value is: 0.3"
        assert param("max_streams") == "Integer value is: 5"
        assert param("device") == "String value is: cpu"
        assert param("checkpoint") == f"String value is: {tiny_checkpoint}"
        assert param("use_sim_time") == "Boolean value is: True"
        info = ros2_ws.retry(["ros2", "topic", "echo", "--once", "--no-daemon",
                              "/front/class_info"], d, lambda r: "Sky" in r.stdout, timeout=90)
        assert "class_names" in info.stdout and "Sky" in info.stdout, info.stdout + info.stderr
        clock = ros2_ws.start(["ros2", "topic", "pub", "-r", "20", "/clock",
                               "rosgraph_msgs/msg/Clock", "{clock: {sec: 4242}}"], d,
                              tmp_path / "clock.log")
        diag = ros2_ws.retry(["ros2", "topic", "echo", "--once", "--no-daemon", "/diagnostics"],
                             d, lambda r: "sec: 4242" in r.stdout, timeout=90)
        assert "sec: 4242" in diag.stdout, diag.stdout + diag.stderr
        assert "front/segment_node: MSAF segmentation" in diag.stdout
    finally:
        if clock is not None:
            clock.stop()
        rc = launch.stop()
    log = launch.output
    assert rc == 0, log
    assert "\x1b[" not in log, "ANSI colour codes in the captured log:\n" + log[-2000:]
    assert "[segment_node-1]" in log and "Traceback" not in log



def test_sample_drive_replayed_live_with_clock_is_segmented_and_scored(ros2_ws, tmp_path):
    """The bundled model behind ``ros2 launch ... use_sim_time:=true``, fed by ``msaf-bag
    play`` of the sample drive with ``--clock``: the labels that come back carry the drive's
    frame headers, score well against the drive's ground truth, and the node measures its
    latency against the bag's /clock."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from helpers import msg_array
    from msaf_core import default_checkpoint
    from msaf_core.config import CAMVID_CLASSES
    from msaf_ros.bag.io import decode_labels, header_key, read_topics
    from msaf_ros.bag.scoring import Scorer
    from msaf_ros.diagnostics import values_of
    from msaf_ros.tools.node_process import Probe
    from msaf_ros.tools.sample_drive import sample_drive_path
    if not default_checkpoint().is_file():
        pytest.skip("the bundled model is not installed")
    drive = sample_drive_path()
    gt = {header_key(m): decode_labels(m, c.msgtype)
          for c, _, m in read_topics(drive, ["/camera/gt_labels"])}
    own = tmp_path / "drive.yaml"
    own.write_text("/**/segment_node:\n  ros__parameters:\n    input_transport: compressed\n"
                   "    qos_reliability: reliable\n    threads: 1\n")
    d = DOMAIN + 4
    probe = Probe(d, "drive_probe")
    launch = ros2_ws.start(["ros2", "launch", "msaf_ros", "segment.launch.py",
                            "image_topic:=/camera/image_raw", f"params_file:={own}",
                            "device:=cpu", "use_sim_time:=true"], d, tmp_path / "launch.log")
    try:
        labels = probe.subscribe(Image, "/labels")
        diags = probe.subscribe(DiagnosticArray, "/diagnostics")
        assert launch.wait_for("listening on /camera/image_raw/compressed"), launch.output
        probe.wait_matched(subs=["/labels"])
        play = ros2_ws.start(["msaf-bag", "play", str(drive), "--clock", "--rate", "0.5",
                              "--delay", "3"], d, tmp_path / "play.log")
        assert probe.spin_until(lambda: play.proc.poll() is not None, 240), play.output
        probe.spin_until(lambda: False, 5.0)            # the last frame's labels
        assert play.stop() == 0 and "202 messages (/camera/gt_labels 101, " \
            "/camera/image_raw/compressed 101)" in play.output, play.output
        latency = [float(v["latency_ms_mean"]) for v in map(values_of, diags)
                   if v and int(v["frames_processed"]) > 0]
    finally:
        rc = launch.stop()
        probe.close()
    assert rc == 0, launch.output
    assert len(labels) >= 3, launch.output[-3000:]
    scorer = Scorer(len(CAMVID_CLASSES), set(gt), set(gt), lambda _: None)
    for m in labels:
        key = header_key(m)
        assert key in gt and m.header.frame_id == key[1]
        scorer.prediction(key, msg_array(m))
    for key, g in gt.items():
        scorer.ground_truth(key, g)
    summary = scorer.summary(CAMVID_CLASSES)
    assert scorer.matched == len(labels)
    assert summary["pixel_accuracy"] > 0.8 and summary["miou"] > 0.4, summary
    assert latency and 0 <= min(latency) < 60_000     # against /clock, not the wall clock


def test_launch_lifecycle_node_is_managed(ros2_ws, tiny_checkpoint, tmp_path):
    """``ros2 launch ... lifecycle:=true``: the node waits unconfigured; ``ros2 service call``
    of its lifecycle_msgs services configures and activates it."""
    d = DOMAIN + 4
    launch = ros2_ws.start(["ros2", "launch", "msaf_ros", "segment.launch.py", "lifecycle:=true",
                            "namespace:=managed", f"checkpoint:={tiny_checkpoint}"], d,
                           tmp_path / "launch.log")
    try:
        assert launch.wait_for("unconfigured: waiting for configure"), launch.output

        def call(service, srv, request=""):
            return ros2_ws.retry(["ros2", "service", "call", f"/managed/segment_node/{service}",
                                  f"lifecycle_msgs/srv/{srv}"] + ([request] if request else []),
                                 d, lambda r: "response:" in r.stdout).stdout
        assert "label='unconfigured'" in call("get_state", "GetState")
        assert "success=True" in call("change_state", "ChangeState", "{transition: {id: 1}}")
        assert "success=True" in call("change_state", "ChangeState", "{transition: {id: 3}}")
        assert "label='active'" in call("get_state", "GetState")
        assert launch.wait_for("listening on /camera/image_raw"), launch.output
    finally:
        rc = launch.stop()
    assert rc == 0, launch.output
