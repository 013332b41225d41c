"""segment_node with backend:=openvino over real DDS: the exported pair of the tiny
checkpoint runs in the node and its labels match the torch Segmenter's."""
from __future__ import annotations

import types

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not importable")
pytest.importorskip("openvino", reason="openvino is not installed (pip install .[openvino])")
pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript")

from sensor_msgs.msg import Image  # noqa: E402

from helpers import image_msg, msg_array, stamp_of  # noqa: E402
from msaf_core.export import RECORD_NAME, cache_key  # noqa: E402
from msaf_ros.tools.node_process import NodeProcess, Probe  # noqa: E402

DOMAIN = 67
SEC = 1_000_000_000


@pytest.fixture(scope="module")
def export_dir(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint's ONNX export, in the session's export cache (shared with
    test/core/test_export_backends.py, which makes it the same way)."""
    from msaf_core.tools import export as export_tool
    out = tmp_path_factory.getbasetemp() / "msaf_cache" / "exports" / cache_key(tiny_checkpoint)
    if not (out / RECORD_NAME).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        assert export_tool.main(["--format", "onnx", str(tiny_checkpoint), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def io(export_dir):
    probe = Probe(DOMAIN, "test_node_backend_probe")
    node = NodeProcess({"checkpoint": str(export_dir), "backend": "openvino", "threads": 1,
                        "qos_reliability": "reliable"}, DOMAIN,
                       remaps=[("image", "/cam/image_raw")]).start()
    try:
        node.wait_ready()
        pub = probe.publisher(Image, "/cam/image_raw")
        probe.subscribe(Image, "/labels")
        probe.wait_matched([pub], ["/labels"])
        yield types.SimpleNamespace(pub=pub, probe=probe, node=node)
    finally:
        node.close()
        probe.close()


def test_openvino_node_labels_match_torch(io, val_frames, tiny_checkpoint):
    import torch

    from msaf_core import Segmenter
    torch.set_num_threads(1)
    ref = Segmenter.from_checkpoint(tiny_checkpoint)
    for i, rgb in enumerate(val_frames[0][:3]):
        stamp = 1000 * SEC + i * SEC // 10
        io.pub.publish(image_msg(rgb, "cam_front", stamp))

        def got():
            return [m for m in io.probe.received["/labels"] if stamp_of(m) == stamp]
        assert io.probe.spin_until(lambda: bool(got()), 60.0), io.node.output[-2000:]
        (msg,) = got()
        assert msg.header.frame_id == "cam_front" and (msg.height, msg.width) == (360, 480)
        want = ref.segment(rgb, "cam_front", stamp)
        assert float((msg_array(msg) == want).mean()) >= 0.999
    assert "openvino fp32" in io.node.output       # the node says what runs its model
