"""The msaf-bag command: the main path on mcap and sqlite3, raw and compressed; broken
inputs, interruptions and existing outputs; the mIoU it prints (no ROS graph)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import (COMPRESSED, IMAGE, IMAGE_RIHS01, PERIOD, T0, CompressedMsg, H, StringMsg,
                     W, assert_no_output, assert_one_line_error, bag_image_msg,
                     camera_messages, deser, expected_labels, header, read_bag, stamp_of,
                     tree_hash, write_bag)
from msaf_core import Segmenter
from msaf_ros.bag import cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def msaf_bag(argv, capsys):
    """``msaf-bag ARGV`` in this process: (exit code, stdout, stderr)."""
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("storage, kind", [("mcap", "rgb8"), ("sqlite3", "bgr8"),
                                           ("mcap", "jpeg"), ("sqlite3", "png")])
def test_segment_bag(tmp_path, tiny_checkpoint, capsys, storage, kind):
    cams = camera_messages(kind)
    chatter = [("/chatter", "std_msgs/msg/String", T0 + i * 50_000_000, StringMsg(data=f"m{i}"))
               for i in range(5)]
    extra = []
    if kind == "jpeg":   # one undecodable frame: dropped, still copied through
        bad = CompressedMsg(header=header(T0 + 10 * PERIOD), format="jpeg",
                            data=np.frombuffer(b"not a jpeg at all", np.uint8))
        extra = [("/camera/image_raw", COMPRESSED, T0 + 10 * PERIOD, bad)]
    msgs = sorted(cams + chatter + extra, key=lambda m: m[2])
    inp = write_bag(tmp_path / "in", storage, msgs, compress=(storage == "mcap"))
    before = tree_hash(inp)
    out = tmp_path / "out"

    rc, stdout, err = msaf_bag(["segment", inp, out, "--topic", "/camera/image_raw",
                               "--checkpoint", tiny_checkpoint, "--device", "cpu",
                               "--no-progress"], capsys)
    assert rc == 0, err
    assert tree_hash(inp) == before                       # the input is untouched
    assert not (tmp_path / "out.partial").exists()
    assert "frames/s" in stdout and "dropped: " in stdout
    assert f"dropped: {len(extra)}" in stdout

    # same storage as the input
    meta = (out / "metadata.yaml").read_text()
    assert f"storage_identifier: {storage}" in meta
    assert (out / ("out.mcap" if storage == "mcap" else "out.db3")).is_file()

    got, conns = read_bag(out)
    assert set(got) == {"/camera/image_raw", "/chatter", "/camera/labels",
                        "/camera/color_mask", "/camera/overlay", "/camera/confidence"}
    # input messages copied byte for byte, same bag times
    src, _ = read_bag(inp)
    for topic in ("/camera/image_raw", "/chatter"):
        assert got[topic] == src[topic]
    for k in ("labels", "color_mask", "overlay", "confidence"):
        assert conns[f"/camera/{k}"].msgtype == IMAGE
        assert conns[f"/camera/{k}"].digest == IMAGE_RIHS01
        assert len(got[f"/camera/{k}"]) == len(cams)

    expect = expected_labels(tiny_checkpoint, cams)
    by_stamp = {stamp_of(m): (bag_ns, m) for _, _, bag_ns, m in cams}
    for k, enc, idx in (("labels", "mono8", 0), ("color_mask", "rgb8", 1),
                        ("overlay", "rgb8", 2), ("confidence", "mono8", 3)):
        for bag_ns, raw, typ in got[f"/camera/{k}"]:
            m = deser(raw, typ)
            in_bag_ns, src_msg = by_stamp[stamp_of(m)]
            assert bag_ns == in_bag_ns                       # written at the frame's bag time
            assert m.header.frame_id == src_msg.header.frame_id
            assert (m.header.stamp.sec, m.header.stamp.nanosec) == \
                (src_msg.header.stamp.sec, src_msg.header.stamp.nanosec)
            assert (m.height, m.width, m.encoding) == (H, W, enc)
            arr = np.asarray(m.data, np.uint8).reshape(H, W, -1)
            want = expect[("/camera/image_raw", stamp_of(m))][idx]
            np.testing.assert_array_equal(arr.reshape(want.shape), want)


@pytest.mark.ros
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_output_deserializes_with_rclpy(tmp_path, tiny_checkpoint, capsys):
    """ROS 2's own deserializer (rclpy + sensor_msgs) reads the messages the tool writes."""
    serialization = pytest.importorskip("rclpy.serialization", reason="rclpy not importable")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not importable")
    inp = write_bag(tmp_path / "in", "mcap", camera_messages("jpeg", n=2))
    out = tmp_path / "out"
    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/camera/image_raw", "--checkpoint",
                          tiny_checkpoint, "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    got, _ = read_bag(out)
    for topic, enc in (("/camera/labels", "mono8"), ("/camera/color_mask", "rgb8"),
                       ("/camera/overlay", "rgb8"), ("/camera/confidence", "mono8")):
        for _, raw, _ in got[topic]:
            m = serialization.deserialize_message(raw, sensor_msgs.Image)
            assert (m.height, m.width, m.encoding, m.header.frame_id) == (H, W, enc, "cam")
            assert len(m.data) == m.step * m.height


def test_two_cameras_one_cache_each_and_namespace(tmp_path, tiny_checkpoint, capsys):
    front = camera_messages("rgb8", n=3, topic="/front/image_raw", frame_id="front")
    rear = camera_messages("png", n=3, topic="/rear/image_raw/compressed", frame_id="rear",
                           seed=1)
    inp = write_bag(tmp_path / "in", "mcap", sorted(front + rear, key=lambda m: m[2]))
    out = tmp_path / "out"
    # one --namespace for two cameras collides: refused before any work
    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/front/image_raw",
                          "-t", "/rear/image_raw/compressed", "--namespace", "/seg",
                          "--checkpoint", tiny_checkpoint], capsys)
    assert rc == 1 and "/seg/labels" in err
    assert_one_line_error(err)
    assert_no_output(out)

    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/front/image_raw",
                          "-t", "/rear/image_raw/compressed", "--checkpoint", tiny_checkpoint,
                          "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    got, _ = read_bag(out)
    expect = expected_labels(tiny_checkpoint, front + rear)   # separate streams per topic
    for cam, ns in (("/front/image_raw", "/front"), ("/rear/image_raw/compressed", "/rear")):
        assert len(got[f"{ns}/labels"]) == 3
        for _, raw, typ in got[f"{ns}/labels"]:
            m = deser(raw, typ)
            lab = np.asarray(m.data, np.uint8).reshape(m.height, m.width)
            np.testing.assert_array_equal(lab, expect[(cam, stamp_of(m))][0])


def test_sqlite3_to_mcap_with_namespace(tmp_path, tiny_checkpoint, capsys):
    inp = write_bag(tmp_path / "in", "sqlite3", camera_messages("rgb8", n=2))
    out = tmp_path / "out"
    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/camera/image_raw", "--format", "mcap",
                          "--namespace", "/msaf", "--checkpoint", tiny_checkpoint,
                          "--device", "cpu", "--no-progress", "--alpha", "0.3",
                          "--no-confidence"], capsys)
    assert rc == 0, err
    assert "storage_identifier: mcap" in (out / "metadata.yaml").read_text()
    got, _ = read_bag(out)
    assert {"/msaf/labels", "/msaf/color_mask", "/msaf/overlay"} <= set(got)
    assert "/msaf/confidence" not in got               # --no-confidence


def _small_bag(tmp_path, storage, n=4, name="in"):
    return write_bag(tmp_path / name, storage, camera_messages("rgb8", n=n))


def refuse_corrupt(inp, tmp_path, tiny_checkpoint, capsys):
    """Segment a damaged bag: exit 1 with one line, no output left, the input untouched.
    Returns stderr."""
    before = tree_hash(inp)
    out = tmp_path / "out"
    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/camera/image_raw",
                          "--checkpoint", tiny_checkpoint, "--device", "cpu"], capsys)
    assert rc == 1
    assert_one_line_error(err)
    assert_no_output(out)
    assert tree_hash(inp) == before
    return err


def test_truncated_mcap(tmp_path, tiny_checkpoint, capsys):
    inp = _small_bag(tmp_path, "mcap")
    f = inp / "in.mcap"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])                      # cut in half
    err = refuse_corrupt(inp, tmp_path, tiny_checkpoint, capsys)
    assert "truncated or corrupt" in err


def test_truncated_mcap_file_subprocess_no_traceback(tmp_path, tiny_checkpoint):
    """The real console entry point (python -m): one line on stderr, exit 1."""
    inp = _small_bag(tmp_path, "mcap")
    f = tmp_path / "cut.mcap"
    data = (inp / "in.mcap").read_bytes()
    f.write_bytes(data[: len(data) // 2])
    before = tree_hash(f)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "msaf_ros.bag.cli", "segment", str(f), str(out),
                        "--topic", "/camera/image_raw", "--checkpoint", str(tiny_checkpoint)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1
    assert_one_line_error(p.stderr)
    assert str(f) in p.stderr
    assert_no_output(out)
    assert tree_hash(f) == before


def test_corrupt_mcap_chunk(tmp_path, tiny_checkpoint, capsys):
    """Footer intact, a compressed chunk damaged: fails while reading, output removed."""
    inp = write_bag(tmp_path / "in", "mcap", camera_messages("rgb8", n=4), compress=True)
    f = inp / "in.mcap"
    data = bytearray(f.read_bytes())
    pos = 8                                              # after the magic
    while data[pos] != 0x06:                             # the first Chunk record
        pos += 9 + int.from_bytes(data[pos + 1:pos + 9], "little")
    start = pos + 9 + 8 + 8 + 8 + 4                      # op, len, times, size, crc
    start += 4 + int.from_bytes(data[start:start + 4], "little") + 8   # 'zstd', data length
    data[start:start + 8] = b"\xff" * 8                  # clobber the zstd frame header
    f.write_bytes(bytes(data))
    refuse_corrupt(inp, tmp_path, tiny_checkpoint, capsys)


def test_corrupt_sqlite3(tmp_path, tiny_checkpoint, capsys):
    inp = _small_bag(tmp_path, "sqlite3")
    f = inp / "in.db3"
    data = bytearray(f.read_bytes())
    data[100:len(data) - 100] = (b"garbage!" * len(data))[: len(data) - 200]
    f.write_bytes(bytes(data))
    refuse_corrupt(inp, tmp_path, tiny_checkpoint, capsys)


def test_not_a_bag_and_missing_topic(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    rc, _, err = msaf_bag(["segment", tmp_path / "nope", out, "-t", "/x"], capsys)
    assert rc == 1 and "no such file" in err
    assert_one_line_error(err)
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"hello, not an mcap")
    rc, _, err = msaf_bag(["segment", junk, out, "-t", "/x"], capsys)
    assert rc == 1
    assert_one_line_error(err)
    inp = _small_bag(tmp_path, "mcap", n=1)
    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/nope"], capsys)
    assert rc == 1 and "/camera/image_raw" in err      # lists the image topics there are
    assert_one_line_error(err)
    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/camera/image_raw",
                          "--checkpoint", tmp_path / "missing.pt"], capsys)
    assert rc == 1 and "missing.pt" in err
    assert_one_line_error(err)
    assert_no_output(out)


def _sigterm(msg):
    """SIGTERM as the tool sees it: its installed handler runs (and turns it into an
    exception). Called directly, not sent with os.kill to this process: in a test process
    that has run rclpy contexts before, a real signal reaches their C-level handler chain
    and crashed the whole pytest run. Real signals are tested on the node's own process
    (test/graph/test_node_faults.py)."""
    import signal
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler), "msaf-bag installed no SIGTERM handler"
    handler(signal.SIGTERM, None)
    raise AssertionError("SIGTERM was not handled")


@pytest.mark.parametrize("exc, code", [(KeyboardInterrupt, 130), (RuntimeError, 1),
                                       (_sigterm, 143)])
def test_interrupt_or_crash_leaves_no_output(tmp_path, tiny_checkpoint, capsys, monkeypatch,
                                             exc, code):
    inp = _small_bag(tmp_path, "mcap")
    before = tree_hash(inp)
    out = tmp_path / "out"
    calls = {"n": 0}
    real = Segmenter.segment

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            # the partial output exists now, clearly marked, with no metadata.yaml
            partial = tmp_path / "out.partial"
            assert (partial / "INCOMPLETE.txt").is_file()
            assert not (partial / "out" / "metadata.yaml").exists()
            raise exc("boom")
        return real(self, *a, **kw)

    monkeypatch.setattr(Segmenter, "segment", flaky)
    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/camera/image_raw", "--checkpoint",
                          tiny_checkpoint, "--device", "cpu", "--no-progress"], capsys)
    assert rc == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert ("error" if code == 1 else "no output written") in lines[0]
    assert_no_output(out)
    assert tree_hash(inp) == before


def test_existing_output_needs_force(tmp_path, tiny_checkpoint, capsys):
    inp = _small_bag(tmp_path, "mcap", n=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metadata.yaml").write_text("old bag\n")
    (out / "out.mcap").write_bytes(b"old")
    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/camera/image_raw",
                          "--checkpoint", tiny_checkpoint, "--device", "cpu"], capsys)
    assert rc == 1 and "--force" in err
    assert_one_line_error(err)
    assert (out / "metadata.yaml").read_text() == "old bag\n"     # untouched

    rc, _, err = msaf_bag(["segment", inp, out, "-t", "/camera/image_raw", "--force",
                          "--checkpoint", tiny_checkpoint, "--device", "cpu",
                          "--no-progress"], capsys)
    assert rc == 0, err
    got, _ = read_bag(out)
    assert len(got["/camera/labels"]) == 2
    assert not (tmp_path / "out.partial").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []

    # a partial output left by a killed run is replaced; a foreign one is refused
    (tmp_path / "out2.partial").mkdir()
    (tmp_path / "out2.partial" / "INCOMPLETE.txt").write_text("x")
    rc, _, err = msaf_bag(["segment", inp, tmp_path / "out2", "-t", "/camera/image_raw",
                          "--checkpoint", tiny_checkpoint, "--device", "cpu",
                          "--no-progress"], capsys)
    assert rc == 0 and "earlier interrupted run" in err
    assert not (tmp_path / "out2.partial").exists() and (tmp_path / "out2").is_dir()
    (tmp_path / "out3.partial").mkdir()
    rc, _, err = msaf_bag(["segment", inp, tmp_path / "out3", "-t", "/camera/image_raw"], capsys)
    assert rc == 1 and (tmp_path / "out3.partial").is_dir()
    assert_one_line_error(err)

    # --force never deletes something that is not a bag, nor the input
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    rc, _, err = msaf_bag(["segment", inp, other, "-t", "/camera/image_raw", "--force"], capsys)
    assert rc == 1 and (other / "thesis.tex").exists()
    assert_one_line_error(err)
    rc, _, err = msaf_bag(["segment", inp, inp, "-t", "/camera/image_raw", "--force"], capsys)
    assert rc == 1 and (inp / "metadata.yaml").exists()
    rc, _, err = msaf_bag(["segment", inp, tmp_path, "-t", "/camera/image_raw", "--force"],
                         capsys)
    assert rc == 1 and (inp / "metadata.yaml").exists()


def test_miou_real_model_matches_numpy(tmp_path, tiny_checkpoint, capsys):
    """CLI path: the reported mIoU equals one computed here from the output labels."""
    cams = camera_messages("rgb8", n=3)
    rng = np.random.default_rng(5)
    gts = []
    for _, _, bag_ns, m in cams:
        g = rng.integers(0, 12, size=(H, W)).astype(np.uint8)    # 11 = void
        gts.append(("/camera/gt", IMAGE, bag_ns + 1, bag_image_msg(g, "mono8", stamp_of(m), "cam")))
    inp = write_bag(tmp_path / "in", "sqlite3", sorted(cams + gts, key=lambda x: x[2]))
    out = tmp_path / "out"
    rc, stdout, err = msaf_bag(["segment", inp, out, "-t", "/camera/image_raw",
                               "--labels-topic", "/camera/gt", "--checkpoint", tiny_checkpoint,
                               "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    got, _ = read_bag(out)
    preds = {}
    for _, raw, typ in got["/camera/labels"]:
        m = deser(raw, typ)
        preds[stamp_of(m)] = np.asarray(m.data, np.uint8).reshape(H, W)
    k = 11
    cm = np.zeros((k, k), np.int64)
    for _, _, _, g in gts:
        gt = np.asarray(g.data, np.uint8).reshape(H, W)
        p = preds[stamp_of(g)]
        keep = gt < k
        np.add.at(cm, (gt[keep].astype(int), p[keep].astype(int)), 1)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1) - tp
    miou = np.mean(tp[denom > 0] / denom[denom > 0])
    assert f"mIoU: {100 * miou:.2f}%" in stdout


# -- msaf-bag play ---------------------------------------------------------------------------------
PLAY_DOMAIN = 86


def _qos(reliability, durability, depth):
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    never = QosTime(sec=0, nsec=0)
    return Qos(QosHistory.KEEP_LAST, depth, getattr(QosReliability, reliability),
               getattr(QosDurability, durability), never, never, QosLiveliness.AUTOMATIC,
               never, False)


def _play_bag(path):
    """4 camera frames recorded best effort (depth 5) and 2 latched status strings."""
    from helpers import TS, synth_frames
    from rosbags.rosbag2 import StoragePlugin, Writer
    frames = synth_frames(4)
    w = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    with w:
        cam = w.add_connection("/cam/image_raw", IMAGE, typestore=TS,
                               offered_qos_profiles=[_qos("BEST_EFFORT", "VOLATILE", 5)])
        status = w.add_connection("/status", "std_msgs/msg/String", typestore=TS,
                                  offered_qos_profiles=[_qos("RELIABLE", "TRANSIENT_LOCAL", 1)])
        msgs = [(T0 + 500, status, StringMsg(data="start"), "std_msgs/msg/String")]
        msgs += [(T0 + i * PERIOD + 1000, cam, bag_image_msg(f, "rgb8", T0 + i * PERIOD),
                  IMAGE) for i, f in enumerate(frames)]
        msgs += [(T0 + 2 * PERIOD + 500, status, StringMsg(data="half"), "std_msgs/msg/String")]
        for t, conn, msg, typ in sorted(msgs, key=lambda m: m[0]):
            w.write(conn, t, TS.serialize_cdr(msg, typ))
    return frames


def test_play_flushes_before_the_node_goes(tmp_path, monkeypatch):
    """After the last message the player lets it arrive (acknowledgements of reliable
    publishers, a linger for best-effort fragments in flight) before destroying the node;
    a stopped play does not linger. Without this the last camera frame of a bag was
    sometimes lost when the player exited right after publishing it."""
    import threading

    from msaf_ros.bag import play
    events = []

    class FakeRos:
        def __init__(self, clock):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            events.append("destroyed")

        def publisher(self, conn):
            return type("Pub", (), {"publish": lambda _s, raw: events.append(conn.topic)})()

        def clock(self, ns):
            pass

        def flush(self, stop):
            events.append("flush")
    monkeypatch.setattr(play, "_Ros", FakeRos)
    bag = tmp_path / "drive"
    _play_bag(bag)
    play.Player(bag, play.PlayOptions(rate=100.0), threading.Event()).run()
    assert events[-2:] == ["flush", "destroyed"] and events.count("/cam/image_raw") == 4
    events.clear()
    stop = threading.Event()
    stop.set()
    play.Player(bag, play.PlayOptions(rate=100.0), stop).run()
    assert events == ["destroyed"]


def test_play_qos_policy_follows_the_recorded_profiles():
    from msaf_ros.bag.play import DEFAULT_DEPTH, qos_policy
    assert qos_policy([]) == (True, False, DEFAULT_DEPTH)
    assert qos_policy([_qos("BEST_EFFORT", "VOLATILE", 5)]) == (False, False, 5)
    assert qos_policy([_qos("RELIABLE", "TRANSIENT_LOCAL", 1)]) == (True, True, 1)
    mixed = [_qos("RELIABLE", "TRANSIENT_LOCAL", 1), _qos("BEST_EFFORT", "VOLATILE", 7)]
    assert qos_policy(mixed) == (False, False, 7)
    assert qos_policy([_qos("RELIABLE", "VOLATILE", 0)]) == (True, False, DEFAULT_DEPTH)


def test_play_bad_input_is_one_line(tmp_path, capsys):
    bag = tmp_path / "drive"
    _play_bag(bag)
    rc, _, err = msaf_bag(["play", bag, "--topics", "/nope"], capsys)
    assert rc == 1 and "no topic /nope; topics in the bag: /cam/image_raw, /status" in err
    assert_one_line_error(err)
    rc, _, err = msaf_bag(["play", bag, "--rate", "0"], capsys)
    assert rc == 1 and "--rate must be > 0" in err
    rc, _, err = msaf_bag(["play", bag, "--start-offset", "9"], capsys)
    assert rc == 1 and "past the end of the bag" in err
    rc, _, err = msaf_bag(["play", tmp_path / "missing.mcap"], capsys)
    assert rc == 1 and "no such file" in err
    assert (bag / "metadata.yaml").is_file()              # the input is left as it was


@pytest.mark.ros
def test_play_publishes_the_bag_with_its_qos_and_clock(tmp_path):
    """msaf-bag play (the console script): every message arrives byte for byte in bag order,
    publishers offer the recorded QoS, /clock runs through the bag's times up to the last
    message; --topics and --start-offset select what is played."""
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not importable")
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from helpers import msg_array
    from msaf_ros.tools.node_process import Probe, node_env
    bag = tmp_path / "drive"
    frames = _play_bag(bag)
    probe = Probe(PLAY_DOMAIN, "play_probe")
    exe = os.path.join(os.path.dirname(sys.executable), "msaf-bag")
    try:
        images = probe.subscribe(Image, "/cam/image_raw", probe.qos(reliable=False, depth=50))
        status = probe.subscribe(String, "/status", probe.qos(reliable=True, depth=10,
                                                              latched=True))
        clock = probe.subscribe(Clock, "/clock", probe.qos(reliable=True, depth=1000))
        proc = subprocess.Popen([exe, "play", str(bag), "--clock", "50", "--delay", "5"],
                                env=node_env(PLAY_DOMAIN), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        node = probe.node
        assert probe.spin_until(lambda: node.get_publishers_info_by_topic("/status")
                                and node.get_publishers_info_by_topic("/cam/image_raw"), 30)
        (cam_pub,) = node.get_publishers_info_by_topic("/cam/image_raw")
        (status_pub,) = node.get_publishers_info_by_topic("/status")
        assert cam_pub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        assert status_pub.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
        assert probe.spin_until(lambda: proc.poll() is not None, 120)
        probe.spin_for(1.0)
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        assert "6 messages (/cam/image_raw 4, /status 2)" in out, out
        assert [stamp_of(m) for m in images] == [T0 + i * PERIOD for i in range(4)]
        for m, f in zip(images, frames):
            np.testing.assert_array_equal(msg_array(m), f)
        assert [m.data for m in status] == ["start", "half"]
        ticks = [c.clock.sec * 10**9 + c.clock.nanosec for c in clock]
        assert ticks == sorted(ticks) and ticks[0] >= T0 + 500
        assert ticks[-1] == T0 + 3 * PERIOD + 1000                    # the last message
    finally:
        probe.close()
    only = subprocess.run([exe, "play", str(bag), "--topics", "/cam/image_raw",
                           "--start-offset", f"{(1.5 * PERIOD) / 1e9}", "--rate", "4"],
                          env=node_env(PLAY_DOMAIN), capture_output=True, text=True, timeout=120)
    assert only.returncode == 0, only.stderr
    assert "2 messages (/cam/image_raw 2)" in only.stdout, only.stdout


@pytest.mark.ros
def test_play_loop_until_ctrl_c(tmp_path):
    """--loop plays the bag again and again; Ctrl-C ends it with exit code 0 and a summary."""
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not importable")
    import signal

    from std_msgs.msg import String

    from msaf_ros.tools.node_process import Probe, node_env
    bag = tmp_path / "drive"
    _play_bag(bag)
    probe = Probe(PLAY_DOMAIN + 1, "loop_probe")
    exe = os.path.join(os.path.dirname(sys.executable), "msaf-bag")
    try:
        status = probe.subscribe(String, "/status", probe.qos(reliable=True, depth=50))
        proc = subprocess.Popen([exe, "play", str(bag), "--loop", "--rate", "4", "--delay", "2"],
                                env=node_env(PLAY_DOMAIN + 1), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert probe.spin_until(lambda: [m.data for m in status].count("start") >= 3, 90)
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    finally:
        probe.close()
    assert proc.returncode == 0, err
    assert out.rstrip().endswith("stopped") and "Traceback" not in err
    got = [m.data for m in status]        # bag order, again and again (discovery may cost
    assert all(x != y for x, y in zip(got, got[1:]))   # the very first message)
