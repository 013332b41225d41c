"""msaf-demo and the sample drive it segments (no ROS graph)."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from helpers import (COMPRESSED, IMAGE, assert_one_line_error, deser, read_bag, stamp_of)
from msaf_ros.tools import demo, sample_drive
from msaf_ros.image_codec import compressed_to_rgb

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_demo_end_to_end(tmp_path, tiny_checkpoint, capsys):
    from PIL import Image
    out = tmp_path / "demo"
    rc = demo.main(["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--max-frames",
                    "2", "--rows", "2", "--device", "cpu", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "frames per second:" in cap.out and "mIoU:" in cap.out
    # the sample drive is a street CamVid trains on: the demo says so beside its mIoU
    assert "0016E5" in cap.out and "train split" in cap.out
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
    import msaf_core
    import msaf_core.checkpoint
    import msaf_core.segmenter
    missing = tmp_path / "weights" / "msaf_r18_camvid.pt"
    for module in (msaf_core, msaf_core.segmenter, msaf_core.checkpoint):
        monkeypatch.setattr(module, "default_checkpoint", lambda: missing)
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
    assert eps.get("msaf-bag") == "msaf_ros.bag.cli:main"
    assert eps.get("msaf-demo") == "msaf_ros.tools.demo:main"
    assert eps.get("msaf-bench-node") == "msaf_ros.tools.bench_node:main"
    assert eps.get("msaf-soak") == "msaf_ros.tools.soak:main"
    assert eps.get("segment_node") == "msaf_ros.segment_node:main"
