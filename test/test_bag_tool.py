"""msaf-bag, msaf-demo and the sample drive, on bags these tests write (no ROS graph)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

rosbags = pytest.importorskip("rosbags")
from rosbags.rosbag2 import (CompressionFormat, CompressionMode, Reader,  # noqa: E402
                             StoragePlugin, Writer)
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from msaf_core import Segmenter  # noqa: E402
from msaf_ros import bag_tool, demo, sample_drive  # noqa: E402
from msaf_ros.image_codec import compressed_to_rgb, image_to_rgb  # noqa: E402

TS = get_typestore(Stores.ROS2_JAZZY)
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
ImageMsg = TS.types["sensor_msgs/msg/Image"]
CompressedMsg = TS.types["sensor_msgs/msg/CompressedImage"]
StringMsg = TS.types["std_msgs/msg/String"]
IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
# RIHS01 of sensor_msgs/msg/Image as ROS 2 (Iron .. Kilted) computes it
IMAGE_RIHS01 = "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47"
T0 = 1_600_000_000 * 10**9
PERIOD = 66_666_667
H, W = 48, 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on the shared, loaded 2-core machine this is ~30x faster."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def synth_frames(n, h=H, w=W, seed=0):
    """Smooth, distinct, deterministic RGB frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        base = np.stack([(xx * (3 + i) + yy * 2) % 256, (yy * 4 + i * 20) % 256,
                         (xx + yy + i * 30) % 256], -1).astype(np.int16)
        noise = rng.integers(-10, 10, size=(h, w, 3))
        out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return out


def header(stamp_ns, frame_id="cam"):
    return Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


def image_msg(rgb, enc, stamp_ns, frame_id="cam"):
    if enc == "bgr8":
        px = rgb[..., ::-1]
    elif enc == "mono8":
        px = rgb
    else:
        px = rgb
    h, w = px.shape[:2]
    ch = 1 if px.ndim == 2 else 3
    return ImageMsg(header=header(stamp_ns, frame_id), height=h, width=w, encoding=enc,
                    is_bigendian=0, step=w * ch,
                    data=np.ascontiguousarray(px, np.uint8).reshape(-1))


def compressed_msg(rgb, fmt, stamp_ns, frame_id="cam"):
    from PIL import Image
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        f = "rgb8; jpeg compressed bgr8"
    else:
        Image.fromarray(rgb).save(buf, "PNG")
        f = "rgb8; png compressed bgr8"
    return CompressedMsg(header=header(stamp_ns, frame_id), format=f,
                         data=np.frombuffer(buf.getvalue(), np.uint8))


def write_bag(path, storage, messages, compress=False):
    """messages: list of (topic, msgtype, bag_ns, msg or raw bytes) in write order."""
    w = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap"
               else StoragePlugin.SQLITE3)
    if compress:
        w.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    conns = {}
    with w:
        for topic, typ, _, _ in messages:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, typ, typestore=TS)
        for topic, typ, bag_ns, msg in messages:
            raw = msg if isinstance(msg, (bytes, bytearray)) else TS.serialize_cdr(msg, typ)
            w.write(conns[topic], bag_ns, raw)
    return path


def read_bag(path):
    """{topic: [(bag_ns, raw bytes, msgtype)]} in bag order, plus the connections."""
    out = {}
    with Reader(path) as r:
        conns = {c.topic: c for c in r.connections}
        for c, t, raw in r.messages():
            out.setdefault(c.topic, []).append((t, bytes(raw), c.msgtype))
    return out, conns


def tree_hash(path):
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest(), [f.name for f in files]


def deser(raw, typ):
    return TS.deserialize_cdr(raw, typ)


def stamp_of(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def run_cli(argv, capsys):
    rc = bag_tool.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "error" in lines[0]


def assert_no_output(out):
    out = Path(out)
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(out.name)
                 or p.name.startswith("." + out.name)]
    assert leftovers == []


# The frame order in the bag differs from the header stamp order (frame 2 before frame 1).
STAMP_SLOTS = [0, 2, 1, 3]


def camera_messages(kind, n=4, topic="/camera/image_raw", frame_id="cam", seed=0):
    frames = synth_frames(n, seed=seed)
    msgs = []
    for i, rgb in enumerate(frames):
        stamp = T0 + STAMP_SLOTS[i % 4] * PERIOD + (i // 4) * 4 * PERIOD
        if kind in ("rgb8", "bgr8"):
            m, typ = image_msg(rgb, kind, stamp, frame_id), IMAGE
        else:
            m, typ = compressed_msg(rgb, kind, stamp, frame_id), COMPRESSED
        msgs.append((topic, typ, T0 + i * PERIOD + 1000, m))   # bag time: arrival order
    return msgs


def expected_labels(ckpt, msgs, alpha=0.5):
    """What the tool must produce: a fresh Segmenter, frames in header stamp order."""
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    out = {}
    for topic, typ, _, m in sorted(msgs, key=lambda x: stamp_of(x[3])):
        rgb = image_to_rgb(m) if typ == IMAGE else compressed_to_rgb(m)
        lab = seg.segment(rgb, stream=topic, stamp_ns=stamp_of(m))
        out[(topic, stamp_of(m))] = (lab, seg.colorize(lab), seg.overlay(rgb, lab, alpha))
    return out


# ----------------------------------------------------------------------------------------
# naming
# ----------------------------------------------------------------------------------------
def test_output_topic_naming():
    f = bag_tool.output_topics
    assert f("/camera/image_raw") == {"labels": "/camera/labels",
                                      "color_mask": "/camera/color_mask",
                                      "overlay": "/camera/overlay"}
    assert f("/camera/image_raw/compressed", COMPRESSED)["labels"] == "/camera/labels"
    assert f("/a/b/image", IMAGE)["overlay"] == "/a/b/overlay"
    assert f("/image_raw")["labels"] == "/labels"
    assert f("/camera/image_raw", IMAGE, "/seg/front")["color_mask"] == "/seg/front/color_mask"
    assert f("/camera/image_raw", IMAGE, "seg/")["labels"] == "/seg/labels"
    # a raw Image topic that happens to end in 'compressed' keeps its name
    assert f("/cam/compressed", IMAGE)["labels"] == "/cam/labels"


# ----------------------------------------------------------------------------------------
# the main path: mcap and sqlite3, raw and compressed
# ----------------------------------------------------------------------------------------
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

    rc, stdout, err = run_cli(["segment", inp, out, "--topic", "/camera/image_raw",
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
                        "/camera/color_mask", "/camera/overlay"}
    # input messages copied byte for byte, same bag times
    src, _ = read_bag(inp)
    for topic in ("/camera/image_raw", "/chatter"):
        assert got[topic] == src[topic]
    for k in ("labels", "color_mask", "overlay"):
        assert conns[f"/camera/{k}"].msgtype == IMAGE
        assert conns[f"/camera/{k}"].digest == IMAGE_RIHS01
        assert len(got[f"/camera/{k}"]) == len(cams)

    expect = expected_labels(tiny_checkpoint, cams)
    by_stamp = {stamp_of(m): (bag_ns, m) for _, _, bag_ns, m in cams}
    for k, enc, idx in (("labels", "mono8", 0), ("color_mask", "rgb8", 1),
                        ("overlay", "rgb8", 2)):
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


def test_output_type_hash_matches_ros(tmp_path):
    """The Image definition the tool declares hashes like ROS 2 Kilted's own sensor_msgs."""
    share = Path(sys.prefix) / "share" / "sensor_msgs" / "msg" / "Image.json"
    if share.is_file():
        doc = json.loads(share.read_text())
        hashes = [h["hash_string"] for h in doc.get("type_hashes", [])
                  if h.get("type_name") == "sensor_msgs/msg/Image"]
        assert hashes == [IMAGE_RIHS01]
    assert bag_tool._typestore().hash_rihs01(IMAGE) == IMAGE_RIHS01


@pytest.mark.ros
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_output_deserializes_with_rclpy(tmp_path, tiny_checkpoint, capsys):
    """ROS 2's own deserializer (rclpy + sensor_msgs) reads the messages the tool writes."""
    serialization = pytest.importorskip("rclpy.serialization", reason="rclpy not importable")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not importable")
    inp = write_bag(tmp_path / "in", "mcap", camera_messages("jpeg", n=2))
    out = tmp_path / "out"
    rc, _, err = run_cli(["segment", inp, out, "-t", "/camera/image_raw", "--checkpoint",
                          tiny_checkpoint, "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    got, _ = read_bag(out)
    for topic, enc in (("/camera/labels", "mono8"), ("/camera/color_mask", "rgb8"),
                       ("/camera/overlay", "rgb8")):
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
    rc, _, err = run_cli(["segment", inp, out, "-t", "/front/image_raw",
                          "-t", "/rear/image_raw/compressed", "--namespace", "/seg",
                          "--checkpoint", tiny_checkpoint], capsys)
    assert rc == 1 and "/seg/labels" in err
    assert_one_line_error(err)
    assert_no_output(out)

    rc, _, err = run_cli(["segment", inp, out, "-t", "/front/image_raw",
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


def test_far_out_of_order_frame_is_not_waited_for(tmp_path, monkeypatch):
    """The earliest-stamped frame comes last in the bag: with a reorder window of 2 the tool
    does not hold the whole topic back; every frame is still segmented once."""
    monkeypatch.setattr(bag_tool, "REORDER_WINDOW", 2)
    rgb = synth_frames(1, h=8, w=8)[0]
    stamps = [T0 + (i + 1) * PERIOD for i in range(5)] + [T0]
    msgs = [("/cam/image", IMAGE, T0 + i * PERIOD, image_msg(rgb, "rgb8", st))
            for i, st in enumerate(stamps)]
    inp = write_bag(tmp_path / "in", "mcap", msgs)
    seen = []

    class Rec(FakeSeg):
        def segment(self, rgb, stream="default", stamp_ns=None):
            seen.append(stamp_ns)
            return super().segment(rgb, stream, stamp_ns)

    res = bag_tool.segment_bag(inp, tmp_path / "out", ["/cam/image"], segmenter=Rec(),
                               log=lambda s: None)
    assert sorted(seen) == sorted(stamps) and len(seen) == 6
    assert seen[-1] == T0                              # segmented late, not dropped
    assert res.n_frames == 6 and any("late" in w for w in res.warnings)
    got, _ = read_bag(tmp_path / "out")
    assert len(got["/cam/labels"]) == 6


def test_max_frames_on_a_split_bag_whose_files_overlap_in_time(tmp_path):
    """A bag of two files whose times interleave (the reader returns file by file, so bag
    time goes back at the second file): --max-frames 3 segments the first three frames in
    stamp order, i.e. the numbering of messages past the cutoff stays the same in both passes."""
    import shutil

    import yaml
    rgb = synth_frames(1, h=8, w=8)[0]

    def part(name, offsets):
        return write_bag(tmp_path / name, "mcap", [
            ("/cam/image", IMAGE, T0 + o, image_msg(rgb, "rgb8", T0 + o)) for o in offsets])
    sec = 10**9
    a, b = part("a", [0, sec, 2 * sec, 3 * sec]), part("b", [sec // 2, 3 * sec // 2, 5 * sec // 2])
    bag = tmp_path / "split"
    bag.mkdir()
    meta_a = yaml.safe_load((a / "metadata.yaml").read_text())
    meta_b = yaml.safe_load((b / "metadata.yaml").read_text())
    ia, ib = meta_a["rosbag2_bagfile_information"], meta_b["rosbag2_bagfile_information"]
    shutil.copy(a / ia["relative_file_paths"][0], bag / "a.mcap")
    shutil.copy(b / ib["relative_file_paths"][0], bag / "b.mcap")
    fa, fb = ia["files"][0], ib["files"][0]
    fa["path"], fb["path"] = "a.mcap", "b.mcap"
    ia["relative_file_paths"], ia["files"] = ["a.mcap", "b.mcap"], [fa, fb]
    ia["message_count"] += ib["message_count"]
    ia["topics_with_message_count"][0]["message_count"] += ib["message_count"]
    ia["duration"]["nanoseconds"] = 3 * sec + 1
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta_a))
    with Reader(bag) as r:                         # the premise: time goes back mid-bag
        times = [t for _, t, _ in r.messages()]
    assert times != sorted(times)
    res = bag_tool.segment_bag(bag, tmp_path / "out", ["/cam/image"], segmenter=FakeSeg(),
                               max_frames=3, log=lambda s: None)
    assert [f.stamp_ns - T0 for f in res.frames] == [0, sec // 2, sec]


def test_sqlite3_to_mcap_with_namespace(tmp_path, tiny_checkpoint, capsys):
    inp = write_bag(tmp_path / "in", "sqlite3", camera_messages("rgb8", n=2))
    out = tmp_path / "out"
    rc, _, err = run_cli(["segment", inp, out, "-t", "/camera/image_raw", "--format", "mcap",
                          "--namespace", "/msaf", "--checkpoint", tiny_checkpoint,
                          "--device", "cpu", "--no-progress", "--alpha", "0.3"], capsys)
    assert rc == 0, err
    assert "storage_identifier: mcap" in (out / "metadata.yaml").read_text()
    got, _ = read_bag(out)
    assert {"/msaf/labels", "/msaf/color_mask", "/msaf/overlay"} <= set(got)


# ----------------------------------------------------------------------------------------
# broken inputs, interruptions, existing outputs
# ----------------------------------------------------------------------------------------
def _small_bag(tmp_path, storage, n=4, name="in"):
    return write_bag(tmp_path / name, storage, camera_messages("rgb8", n=n))


def refuse_corrupt(inp, tmp_path, tiny_checkpoint, capsys):
    """Segment a damaged bag: exit 1 with one line, no output left, the input untouched.
    Returns stderr."""
    before = tree_hash(inp)
    out = tmp_path / "out"
    rc, _, err = run_cli(["segment", inp, out, "-t", "/camera/image_raw",
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
    p = subprocess.run([sys.executable, "-m", "msaf_ros.bag_tool", "segment", str(f), str(out),
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
    rc, _, err = run_cli(["segment", tmp_path / "nope", out, "-t", "/x"], capsys)
    assert rc == 1 and "no such file" in err
    assert_one_line_error(err)
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"hello, not an mcap")
    rc, _, err = run_cli(["segment", junk, out, "-t", "/x"], capsys)
    assert rc == 1
    assert_one_line_error(err)
    inp = _small_bag(tmp_path, "mcap", n=1)
    rc, _, err = run_cli(["segment", inp, out, "-t", "/nope"], capsys)
    assert rc == 1 and "/camera/image_raw" in err      # lists the image topics there are
    assert_one_line_error(err)
    rc, _, err = run_cli(["segment", inp, out, "-t", "/camera/image_raw",
                          "--checkpoint", tmp_path / "missing.pt"], capsys)
    assert rc == 1 and "missing.pt" in err
    assert_one_line_error(err)
    assert_no_output(out)


def _sigterm(msg):
    import signal
    os.kill(os.getpid(), signal.SIGTERM)   # the tool's handler turns it into an exception
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
    rc, _, err = run_cli(["segment", inp, out, "-t", "/camera/image_raw", "--checkpoint",
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
    rc, _, err = run_cli(["segment", inp, out, "-t", "/camera/image_raw",
                          "--checkpoint", tiny_checkpoint, "--device", "cpu"], capsys)
    assert rc == 1 and "--force" in err
    assert_one_line_error(err)
    assert (out / "metadata.yaml").read_text() == "old bag\n"     # untouched

    rc, _, err = run_cli(["segment", inp, out, "-t", "/camera/image_raw", "--force",
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
    rc, _, err = run_cli(["segment", inp, tmp_path / "out2", "-t", "/camera/image_raw",
                          "--checkpoint", tiny_checkpoint, "--device", "cpu",
                          "--no-progress"], capsys)
    assert rc == 0 and "earlier interrupted run" in err
    assert not (tmp_path / "out2.partial").exists() and (tmp_path / "out2").is_dir()
    (tmp_path / "out3.partial").mkdir()
    rc, _, err = run_cli(["segment", inp, tmp_path / "out3", "-t", "/camera/image_raw"], capsys)
    assert rc == 1 and (tmp_path / "out3.partial").is_dir()
    assert_one_line_error(err)

    # --force never deletes something that is not a bag, nor the input
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    rc, _, err = run_cli(["segment", inp, other, "-t", "/camera/image_raw", "--force"], capsys)
    assert rc == 1 and (other / "thesis.tex").exists()
    assert_one_line_error(err)
    rc, _, err = run_cli(["segment", inp, inp, "-t", "/camera/image_raw", "--force"], capsys)
    assert rc == 1 and (inp / "metadata.yaml").exists()
    rc, _, err = run_cli(["segment", inp, tmp_path, "-t", "/camera/image_raw", "--force"],
                         capsys)
    assert rc == 1 and (inp / "metadata.yaml").exists()


# ----------------------------------------------------------------------------------------
# ground truth and mIoU
# ----------------------------------------------------------------------------------------
class FakeSeg:
    """Predicts class 0 in the top half and class 1 in the bottom half, K = 3."""

    cfg = types.SimpleNamespace(num_classes=3)
    class_names = ("a", "b", "c")
    checkpoint = {"path": "fake.pt"}
    on_reset = None
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)

    def segment(self, rgb, stream="default", stamp_ns=None):
        lab = np.zeros(rgb.shape[:2], np.uint8)
        lab[rgb.shape[0] // 2:] = 1
        return lab

    def colorize(self, labels):
        return self.palette[labels]

    def overlay(self, rgb, labels, alpha=0.5):
        return rgb.copy()


def test_miou_hand_computed(tmp_path):
    """8×8 frames, prediction: rows 0-3 class 0, rows 4-7 class 1.

    GT A: class 0, rows 6-7 class 2, row 0 void (11).   GT B: all class 1.
    Confusion (rows = GT, cols = prediction), row 0 of A ignored:
        GT 0: pred 0 = 24 (A rows 1-3), pred 1 = 16 (A rows 4-5)
        GT 1: pred 0 = 32, pred 1 = 32 (B)
        GT 2: pred 1 = 16 (A rows 6-7)
    IoU 0 = 24 / (40 + 56 - 24) = 1/3, IoU 1 = 32 / (64 + 64 - 32) = 1/3, IoU 2 = 0 / 16 = 0
    mIoU = 2/9. A third GT image with another frame_id matches nothing.
    """
    rgb = np.full((8, 8, 3), 100, np.uint8)
    gt_a = np.zeros((8, 8), np.uint8)
    gt_a[6:] = 2
    gt_a[0] = 11
    gt_b = np.ones((8, 8), np.uint8)
    s = [T0 + i * PERIOD for i in range(3)]
    msgs = [
        ("/cam/gt", IMAGE, s[0], image_msg(gt_a, "mono8", s[0])),          # GT before frame
        ("/cam/image", IMAGE, s[0] + 5, image_msg(rgb, "rgb8", s[0])),
        ("/cam/image", IMAGE, s[1] + 5, image_msg(rgb, "rgb8", s[1])),
        ("/cam/gt", IMAGE, s[1] + 9, image_msg(gt_b, "mono8", s[1])),      # GT after frame
        ("/cam/gt", IMAGE, s[2], image_msg(np.zeros((8, 8), np.uint8), "mono8", s[2],
                                           frame_id="other")),            # no frame matches
        ("/cam/image", IMAGE, s[2] + 5, image_msg(rgb, "rgb8", s[2])),     # no GT
    ]
    inp = write_bag(tmp_path / "in", "mcap", msgs)
    res = bag_tool.segment_bag(inp, tmp_path / "out", ["/cam/image"], segmenter=FakeSeg(),
                               labels_topic="/cam/gt")
    assert res.gt_frames == 3 and res.gt_matched == 2
    assert res.miou == pytest.approx(2 / 9)
    assert res.summary["iou"] == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 3),
                                  "c": pytest.approx(0.0)}
    np.testing.assert_array_equal(res.confusion, [[24, 16, 0], [32, 32, 0], [0, 16, 0]])
    assert "mIoU: 22.22%" in res.report()


def test_miou_real_model_matches_numpy(tmp_path, tiny_checkpoint, capsys):
    """CLI path: the reported mIoU equals one computed here from the output labels."""
    cams = camera_messages("rgb8", n=3)
    rng = np.random.default_rng(5)
    gts = []
    for _, _, bag_ns, m in cams:
        g = rng.integers(0, 12, size=(H, W)).astype(np.uint8)    # 11 = void
        gts.append(("/camera/gt", IMAGE, bag_ns + 1, image_msg(g, "mono8", stamp_of(m), "cam")))
    inp = write_bag(tmp_path / "in", "sqlite3", sorted(cams + gts, key=lambda x: x[2]))
    out = tmp_path / "out"
    rc, stdout, err = run_cli(["segment", inp, out, "-t", "/camera/image_raw",
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


# ----------------------------------------------------------------------------------------
# the sample drive
# ----------------------------------------------------------------------------------------
def test_sample_drive_shipped():
    path = sample_drive.sample_drive_path()
    meta = path.parent / "metadata.yaml"
    total = path.stat().st_size + meta.stat().st_size
    assert total < 10 * 1024 * 1024, f"{total / 1e6:.1f} MB"
    got, conns = read_bag(path)
    assert set(got) == {sample_drive.CAMERA_TOPIC, sample_drive.LABELS_TOPIC}
    assert conns[sample_drive.CAMERA_TOPIC].msgtype == COMPRESSED
    assert conns[sample_drive.LABELS_TOPIC].msgtype == IMAGE
    cam, lab = got[sample_drive.CAMERA_TOPIC], got[sample_drive.LABELS_TOPIC]
    assert len(cam) == len(lab) == 101
    stamps = []
    for i, ((t1, r1, ty1), (t2, r2, ty2)) in enumerate(zip(cam, lab)):
        m1, m2 = deser(r1, ty1), deser(r2, ty2)
        assert stamp_of(m1) == stamp_of(m2) == t1 == t2
        assert m1.header.frame_id == m2.header.frame_id == "camera"
        assert (m2.height, m2.width, m2.encoding) == (360, 480, "mono8")
        if i in (0, 50, 100):
            assert compressed_to_rgb(m1).shape == (360, 480, 3)
            assert np.asarray(m2.data).max() <= 11
        stamps.append(stamp_of(m1))
    assert stamps[0] == sample_drive.START_NS
    np.testing.assert_allclose(np.diff(stamps), 1e9 / 15, atol=1)     # 15 Hz
    # the data folder is also a rosbag2 folder
    with Reader(path.parent) as r:
        assert r.message_count == 202


def test_sample_drive_fidelity_and_reproducible(tmp_path, camvid_root):
    """The builder is deterministic and reproduces the shipped bag's messages."""
    from PIL import Image
    a = sample_drive.build(camvid_root, tmp_path / "a", max_frames=3)
    b = sample_drive.build(camvid_root, tmp_path / "b", max_frames=3)
    assert a.read_bytes() == b.read_bytes()
    small, _ = read_bag(a)
    shipped, _ = read_bag(sample_drive.sample_drive_path())
    for topic in small:
        assert small[topic] == shipped[topic][:3]
    frames = sample_drive.list_frames(camvid_root)
    assert len(frames) == 101
    num, img_path, lab_path = frames[0]
    m = deser(shipped[sample_drive.CAMERA_TOPIC][0][1], COMPRESSED)
    orig = np.asarray(Image.open(img_path).convert("RGB")).astype(float)
    mse = ((compressed_to_rgb(m).astype(float) - orig) ** 2).mean()
    assert 10 * np.log10(255 ** 2 / mse) > 35                    # JPEG q90: ~39 dB
    g = deser(shipped[sample_drive.LABELS_TOPIC][0][1], IMAGE)
    np.testing.assert_array_equal(np.asarray(g.data).reshape(360, 480),
                                  np.asarray(Image.open(lab_path)))


# ----------------------------------------------------------------------------------------
# msaf-demo
# ----------------------------------------------------------------------------------------
def test_demo_end_to_end(tmp_path, tiny_checkpoint, capsys):
    from PIL import Image
    out = tmp_path / "demo"
    rc = demo.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--max-frames",
                    "2", "--rows", "2", "--device", "cpu", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "frames per second:" in cap.out and "mIoU:" in cap.out
    png = out / "msaf_demo.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width >= 3 * 320 and im.height > 2 * 240
    got, _ = read_bag(out / "segmented_drive")
    assert len(got["/camera/labels"]) == 2 and len(got["/camera/overlay"]) == 2
    assert len(got[sample_drive.LABELS_TOPIC]) == 2
    # a second run does not overwrite without --force
    rc = demo.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "--force" in err
    assert_one_line_error(err)


def test_demo_without_default_model(tmp_path, monkeypatch, capsys):
    import msaf_core.checkpoint
    import msaf_core.segmenter
    missing = tmp_path / "weights" / "msaf_r18_camvid.pt"
    monkeypatch.setattr(msaf_core.segmenter, "default_checkpoint", lambda: missing)
    monkeypatch.setattr(msaf_core.checkpoint, "default_checkpoint", lambda: missing)
    out = tmp_path / "demo"
    rc = demo.main(["--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert_one_line_error(err)
    assert str(missing) in err and "--checkpoint" in err
    assert not (out / "segmented_drive").exists()


def test_console_scripts_declared():
    from importlib.metadata import entry_points
    eps = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert eps.get("msaf-bag") == "msaf_ros.bag_tool:main"
    assert eps.get("msaf-demo") == "msaf_ros.demo:main"
