"""Helpers of the msaf_ros tests (not installed with the package).

- bags: rosbags messages, bags written and read back, a fake segmenter, and the checks
  every msaf-bag test repeats;
- the node over DDS: frames as sensor_msgs/Image, outputs back as arrays, waiting for
  /diagnostics (segment_node itself runs as :class:`msaf_ros.tools.node_process.NodeProcess`,
  spoken to from a :class:`~msaf_ros.tools.node_process.Probe`).

Imports no rclpy at import time.
"""
from __future__ import annotations

import hashlib
import io
import types
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from msaf_core import Segmenter
from msaf_ros import msgs
from msaf_ros.diagnostics import values_of
from msaf_ros.image_codec import compressed_to_rgb, image_to_rgb

# ---------------------------------------------------------------------------------------------
# bags (rosbags, no ROS graph)
# ---------------------------------------------------------------------------------------------
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
    """A rosbags std_msgs/Header."""
    return Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


def bag_image_msg(rgb, enc, stamp_ns, frame_id="cam"):
    """A rosbags sensor_msgs/Image of an RGB (or mono8 H×W) array."""
    px = rgb[..., ::-1] if enc == "bgr8" else rgb
    h, w = px.shape[:2]
    ch = 1 if px.ndim == 2 else 3
    return ImageMsg(header=header(stamp_ns, frame_id), height=h, width=w, encoding=enc,
                    is_bigendian=0, step=w * ch,
                    data=np.ascontiguousarray(px, np.uint8).reshape(-1))


def compressed_msg(rgb, fmt, stamp_ns, frame_id="cam"):
    """A rosbags sensor_msgs/CompressedImage (JPEG or PNG) of an RGB array."""
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
    """A message of the bag back from its bytes."""
    return TS.deserialize_cdr(raw, typ)


def stamp_of(msg):
    return msgs.stamp_ns(msg.header.stamp)


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
            m, typ = bag_image_msg(rgb, kind, stamp, frame_id), IMAGE
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
        lab, conf = seg.segment(rgb, stream=topic, stamp_ns=stamp_of(m), confidence=True)
        out[(topic, stamp_of(m))] = (lab, seg.colorize(lab), seg.overlay(rgb, lab, alpha), conf)
    return out



class FakeSeg:
    """Predicts class 0 in the top half and class 1 in the bottom half, K = 3."""

    cfg = types.SimpleNamespace(num_classes=3)
    class_names = ("a", "b", "c")
    checkpoint = {"path": "fake.pt"}
    on_reset = None
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)

    def segment(self, rgb, stream="default", stamp_ns=None, confidence=False):
        lab = np.zeros(rgb.shape[:2], np.uint8)
        lab[rgb.shape[0] // 2:] = 1
        return (lab, np.full(lab.shape, 255, np.uint8)) if confidence else lab

    def colorize(self, labels):
        return self.palette[labels]

    def overlay(self, rgb, labels, alpha=0.5):
        return rgb.copy()




# ---------------------------------------------------------------------------------------------
# the node over DDS (rclpy message types imported when called)
# ---------------------------------------------------------------------------------------------
def small(frame: np.ndarray, f: int = 4) -> np.ndarray:
    """A real CamVid frame, downscaled by f (area average) to keep CPU time low."""
    from PIL import Image as PILImage
    h, w = frame.shape[:2]
    return np.asarray(PILImage.fromarray(frame).resize((w // f, h // f), PILImage.BOX))


def image_msg(rgb: np.ndarray, frame_id: str, stamp: int, encoding: str = "rgb8"):
    """A sensor_msgs/Image (rclpy) of an RGB frame with the given header."""
    from sensor_msgs.msg import Image

    from msaf_ros.image_codec import rgb_to_image
    m = rgb_to_image(rgb, encoding, msg_type=Image)
    m.header.frame_id = frame_id
    msgs.set_stamp(m.header.stamp, stamp)
    return m


def msg_array(msg) -> np.ndarray:
    """Pixels of an rgb8/mono8 output message (no padding) as H×W(×3) uint8."""
    a = np.frombuffer(bytes(msg.data), np.uint8)
    ch = 1 if msg.encoding == "mono8" else 3
    a = a.reshape(msg.height, msg.step)[:, : msg.width * ch]
    return a.reshape(msg.height, msg.width, ch)[..., 0] if ch == 1 else \
        a.reshape(msg.height, msg.width, 3)


def wait_diagnostics(probe, cond, timeout: float, log: str = ""):
    """Spin ``probe`` until a /diagnostics message newer than the call satisfies ``cond``
    (a predicate on the status values); returns those values, or fails the test."""
    box = probe.received["/diagnostics"]
    start = len(box)
    out = {}

    def ok() -> bool:
        for arr in box[start:]:
            d = values_of(arr)
            if d is not None and cond(d):
                out["d"] = d
                return True
        return False
    assert probe.spin_until(ok, timeout), f"no matching /diagnostics message\n{log}"
    return out["d"]
