"""The msaf-bag library without the command line: naming, type hashes, the frame order,
the --max-frames cut and the mIoU, on small bags these tests write (no rclpy)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from helpers import (COMPRESSED, IMAGE, IMAGE_RIHS01, PERIOD, T0, FakeSeg, bag_image_msg,
                     read_bag, synth_frames, write_bag)
from msaf_ros.bag import reorder
from msaf_ros.bag.io import typestore
from msaf_ros.bag.plan import output_topics
from msaf_ros.bag.segment import segment_bag


def test_output_topic_naming():
    f = output_topics
    assert f("/camera/image_raw") == {"labels": "/camera/labels",
                                      "color_mask": "/camera/color_mask",
                                      "overlay": "/camera/overlay",
                                      "confidence": "/camera/confidence"}
    assert f("/camera/image_raw/compressed", COMPRESSED)["labels"] == "/camera/labels"
    assert f("/a/b/image", IMAGE)["overlay"] == "/a/b/overlay"
    assert f("/image_raw")["labels"] == "/labels"
    assert f("/camera/image_raw", IMAGE, "/seg/front")["color_mask"] == "/seg/front/color_mask"
    assert f("/camera/image_raw", IMAGE, "seg/")["labels"] == "/seg/labels"
    # a raw Image topic that happens to end in 'compressed' keeps its name
    assert f("/cam/compressed", IMAGE)["labels"] == "/cam/labels"


def test_output_type_hash_matches_ros(tmp_path):
    """The Image definition the tool declares hashes like ROS 2 Kilted's own sensor_msgs."""
    share = Path(sys.prefix) / "share" / "sensor_msgs" / "msg" / "Image.json"
    if share.is_file():
        doc = json.loads(share.read_text())
        hashes = [h["hash_string"] for h in doc.get("type_hashes", [])
                  if h.get("type_name") == "sensor_msgs/msg/Image"]
        assert hashes == [IMAGE_RIHS01]
    assert typestore().hash_rihs01(IMAGE) == IMAGE_RIHS01


def test_far_out_of_order_frame_is_not_waited_for(tmp_path, monkeypatch):
    """The earliest-stamped frame comes last in the bag: with a reorder window of 2 the tool
    does not hold the whole topic back; every frame is still segmented once."""
    monkeypatch.setattr(reorder, "REORDER_WINDOW", 2)
    rgb = synth_frames(1, h=8, w=8)[0]
    stamps = [T0 + (i + 1) * PERIOD for i in range(5)] + [T0]
    msgs = [("/cam/image", IMAGE, T0 + i * PERIOD, bag_image_msg(rgb, "rgb8", st))
            for i, st in enumerate(stamps)]
    inp = write_bag(tmp_path / "in", "mcap", msgs)
    seen = []

    class Rec(FakeSeg):
        def segment(self, rgb, stream="default", stamp_ns=None, confidence=False):
            seen.append(stamp_ns)
            return super().segment(rgb, stream, stamp_ns, confidence)

    res = segment_bag(inp, tmp_path / "out", ["/cam/image"], segmenter=Rec(),
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
            ("/cam/image", IMAGE, T0 + o, bag_image_msg(rgb, "rgb8", T0 + o)) for o in offsets])
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
    res = segment_bag(bag, tmp_path / "out", ["/cam/image"], segmenter=FakeSeg(),
                               max_frames=3, log=lambda s: None)
    assert [f.stamp_ns - T0 for f in res.frames] == [0, sec // 2, sec]


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
        ("/cam/gt", IMAGE, s[0], bag_image_msg(gt_a, "mono8", s[0])),          # GT before frame
        ("/cam/image", IMAGE, s[0] + 5, bag_image_msg(rgb, "rgb8", s[0])),
        ("/cam/image", IMAGE, s[1] + 5, bag_image_msg(rgb, "rgb8", s[1])),
        ("/cam/gt", IMAGE, s[1] + 9, bag_image_msg(gt_b, "mono8", s[1])),      # GT after frame
        ("/cam/gt", IMAGE, s[2], bag_image_msg(np.zeros((8, 8), np.uint8), "mono8", s[2],
                                           frame_id="other")),            # no frame matches
        ("/cam/image", IMAGE, s[2] + 5, bag_image_msg(rgb, "rgb8", s[2])),     # no GT
    ]
    inp = write_bag(tmp_path / "in", "mcap", msgs)
    res = segment_bag(inp, tmp_path / "out", ["/cam/image"], segmenter=FakeSeg(),
                               labels_topic="/cam/gt")
    assert res.gt_frames == 3 and res.gt_matched == 2
    assert res.miou == pytest.approx(2 / 9)
    assert res.summary["iou"] == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 3),
                                  "c": pytest.approx(0.0)}
    np.testing.assert_array_equal(res.confusion, [[24, 16, 0], [32, 32, 0], [0, 16, 0]])
    assert "mIoU: 22.22%" in res.report()


def test_reorder_hands_frames_out_in_stamp_order():
    r = reorder.Reorder([2, 0, 1], window=5)
    assert r.push(0, "a") == [] and r.push(1, "b") == []      # waiting for 2
    assert r.push(2, "c") == [("c", False), ("a", False), ("b", False)]
    assert r.flush() == []
    r = reorder.Reorder([1, 0], window=5)
    assert r.push(0, "a") == [] and r.flush() == ["a"]         # 1 never came


def test_reorder_stops_waiting_beyond_the_window():
    r = reorder.Reorder([3, 0, 1, 2], window=1)
    assert r.push(0, "a") == []
    assert r.push(1, "b") == [("a", False), ("b", False)]      # gave up waiting for 3
    assert r.push(2, "c") == [("c", False)]
    assert r.push(3, "d") == [("d", True)]                     # late, handed out at once
    assert 3 in r and 4 not in r


def test_scorer_matches_in_either_order_ignores_void_and_skips_other_sizes():
    from msaf_ros.bag.scoring import Scorer
    warned = []
    keys = {(1, "c"), (2, "c"), (3, "c")}
    s = Scorer(3, frame_keys=keys, gt_keys=keys | {(9, "x")}, warn=warned.append)
    pred = np.array([[0, 1], [2, 2]], np.uint8)
    s.ground_truth((1, "c"), np.array([[0, 1], [2, 7]], np.uint8))   # GT first; 7 >= K: void
    s.prediction((1, "c"), pred)
    s.prediction((2, "c"), pred)                                     # prediction first
    s.ground_truth((2, "c"), np.array([[0, 0], [2, 2]], np.uint8))
    s.prediction((3, "c"), pred)
    s.ground_truth((3, "c"), np.zeros((3, 3), np.uint8))             # another size
    s.ground_truth((9, "x"), pred)                                   # no such frame
    assert (s.matched, s.dropped, len(warned)) == (2, 1, 1)
    assert (s.void, s.pixels) == (1, 8) and s.void_fraction == 1 / 8
    np.testing.assert_array_equal(s.cm, [[2, 1, 0], [0, 1, 0], [0, 0, 3]])
    assert s.summary(("a", "b", "c")) is not None


# -- fidelity of the copies (issue 16, item 5) -------------------------------------------------
def _mcap_records(path):
    """(channels {id: (topic, metadata)}, messages [(topic, seq, log, publish, data)]) of an
    MCAP file with uncompressed chunks, parsed here independently of the code under test."""
    import struct
    b = Path(path).read_bytes()
    chans, msgs = {}, []

    def string(o):
        n = struct.unpack_from("<I", b, o)[0]
        return b[o + 4:o + 4 + n].decode(), o + 4 + n

    def walk(i, end):
        while i + 9 <= end:
            op, n = b[i], struct.unpack_from("<Q", b, i + 1)[0]
            body = i + 9
            if op == 0x04:
                cid = struct.unpack_from("<H", b, body)[0]
                topic, o = string(body + 4)
                _, o = string(o)
                mend, meta = o + 4 + struct.unpack_from("<I", b, o)[0], {}
                o += 4
                while o < mend:
                    k, o = string(o)
                    meta[k], o = string(o)
                chans[cid] = (topic, meta)
            elif op == 0x05:
                cid, seq, log_t, pub_t = struct.unpack_from("<HIQQ", b, body)
                msgs.append((chans[cid][0], seq, log_t, pub_t, b[body + 22:body + n]))
            elif op == 0x06:
                kind, o = string(body + 28)
                assert kind == "", "test bags are written without chunk compression"
                length = struct.unpack_from("<Q", b, o)[0]
                walk(o + 8, o + 8 + length)
            elif op in (0x02, 0x0F):
                return
            i = body + n
    walk(8, len(b))
    return chans, msgs, b


def test_copied_messages_keep_sequence_publish_time_and_channel_metadata(tmp_path):
    """A recorded bag's messages have sequence numbers and publish times of their own (rosbag2
    records both) and its channels a topic_type_hash: the output keeps them, byte for byte."""
    import struct
    rgb = synth_frames(1, h=8, w=8)[0]
    msgs = [("/cam/image", IMAGE, T0 + i * PERIOD, bag_image_msg(rgb, "rgb8", T0 + i * PERIOD))
            for i in range(3)]
    inp = write_bag(tmp_path / "in", "mcap", msgs)
    # give every message of the input a sequence and an earlier publish time (in place)
    mcap = next(Path(inp).glob("*.mcap"))
    chans, found, b = _mcap_records(mcap)
    data = bytearray(b)
    i = 0
    for k, (topic, seq, log_t, pub_t, payload) in enumerate(found):
        at = data.find(struct.pack("<QQ", log_t, pub_t) + payload, i)
        struct.pack_into("<IQQ", data, at - 4, 100 + k, log_t, log_t - 5_000_000)
        i = at + 1
    mcap.write_bytes(bytes(data))
    segment_bag(inp, tmp_path / "out", ["/cam/image"], segmenter=FakeSeg(), compression="none",
                log=lambda s: None)
    out_chans, out_msgs, _ = _mcap_records(next((tmp_path / "out").glob("*.mcap")))
    copied = [(s, lg, p) for t, s, lg, p, _ in out_msgs if t == "/cam/image"]
    assert copied == [(100 + k, T0 + k * PERIOD, T0 + k * PERIOD - 5_000_000) for k in range(3)]
    for topic, meta in out_chans.values():
        assert meta.get("topic_type_hash") == IMAGE_RIHS01, (topic, meta)
        assert "offered_qos_profiles" in meta


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """ENOSPC in the middle of the output: a BagError that says the disk is full, and neither
    OUTPUT nor OUTPUT.partial is left behind."""
    import errno

    from msaf_ros.bag import output
    from msaf_ros.errors import BagError
    rgb = synth_frames(1, h=8, w=8)[0]
    msgs = [("/cam/image", IMAGE, T0 + i * PERIOD, bag_image_msg(rgb, "rgb8", T0 + i * PERIOD))
            for i in range(4)]
    inp = write_bag(tmp_path / "in", "mcap", msgs)
    calls = []
    real = output.OutputBag.write

    def write(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)
    monkeypatch.setattr(output.OutputBag, "write", write)
    with pytest.raises(BagError, match="disk is full .*No space left on device.*removed"):
        segment_bag(inp, tmp_path / "out", ["/cam/image"], segmenter=FakeSeg(),
                    log=lambda s: None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
