"""segment_node as a separate process, over real DDS: outputs, streams, resets, parameters.

The node's labels are compared with an in-process Segmenter on the same checkpoint and the
same frames (both on one CPU thread, so the floating point is the same).
"""
from __future__ import annotations

import json
import signal
import types

import numpy as np
import pytest

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not importable")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from conftest import ROOT  # noqa: E402
from helpers import image_msg, msg_array, small, stamp_of, wait_diagnostics  # noqa: E402
from msaf_ros.msgs import set_stamp  # noqa: E402
from msaf_ros.tools.node_process import NodeProcess, Probe  # noqa: E402

DOMAIN = 61
ALPHA = 0.4
MAX_GAP = 1.0
SEC = 1_000_000_000
T0 = 1_000 * SEC            # stamps of the tests start here
DT = SEC // 10              # 10 Hz


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """Make fresh in-process segmenters like the node's (one torch thread)."""
    import torch
    from msaf_core import Segmenter
    torch.set_num_threads(1)

    def make(**kw):
        return Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", max_gap_s=MAX_GAP, **kw)
    return make


@pytest.fixture(scope="module")
def probe():
    p = Probe(DOMAIN, "test_node_probe")
    yield p
    p.close()


@pytest.fixture(scope="module")
def node(tiny_checkpoint, probe):
    n = NodeProcess({"checkpoint": str(tiny_checkpoint), "qos_reliability": "reliable",
                     "overlay_alpha": ALPHA, "max_gap": MAX_GAP, "diagnostics_period": 0.2,
                     "warn_period": 0.0, "threads": 1},
                    DOMAIN, remaps=[("image", "/cam/image_raw")]).start()
    try:
        n.wait_ready()
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def io(node, probe):
    pub = probe.publisher(Image, "/cam/image_raw")
    for t in ("/labels", "/color_mask", "/overlay"):
        probe.subscribe(Image, t)
    probe.subscribe(DiagnosticArray, "/diagnostics")
    probe.wait_matched([pub], ["/labels", "/color_mask", "/overlay"])
    return types.SimpleNamespace(pub=pub, probe=probe, node=node)


def find(box, frame_id, stamp, start=0):
    for m in box[start:]:
        if m.header.frame_id == frame_id and stamp_of(m) == stamp:
            return m
    return None


def send(io, rgb, frame_id, stamp, outputs=("/labels",), timeout=60.0, encoding="rgb8"):
    """Publish one frame and wait for its outputs (matched by frame_id and stamp)."""
    start = {t: len(io.probe.received[t]) for t in outputs}   # only newer messages count
    io.pub.publish(image_msg(rgb, frame_id, stamp, encoding))
    got = {}

    def done():
        for t in outputs:
            if t not in got:
                m = find(io.probe.received[t], frame_id, stamp, start[t])
                if m is not None:
                    got[t] = m
        return len(got) == len(outputs)
    assert io.probe.spin_until(done, timeout), \
        f"no {set(outputs) - set(got)} for {frame_id}@{stamp}; node log:\n{io.node.output[-2000:]}"
    return got


def latest_diag(io, cond=lambda d: True, timeout=10.0):
    return wait_diagnostics(io.probe, cond, timeout)


# -- outputs -----------------------------------------------------------------------------------
def test_camvid_frames_labels_mask_overlay(io, val_frames, reference):
    frames = val_frames[0][:3]
    seg = reference()
    for i, rgb in enumerate(frames):
        stamp = T0 + i * DT
        got = send(io, rgb, "cam_front", stamp, ("/labels", "/color_mask", "/overlay"))
        lab, col, ovl = got["/labels"], got["/color_mask"], got["/overlay"]
        for m, enc in ((lab, "mono8"), (col, "rgb8"), (ovl, "rgb8")):
            assert m.encoding == enc and (m.height, m.width) == (360, 480)
            assert m.header.frame_id == "cam_front" and stamp_of(m) == stamp
        ref = seg.segment(rgb, "cam_front", stamp)
        labels = msg_array(lab)
        assert labels.max() < seg.cfg.num_classes
        assert np.array_equal(labels, ref)
        assert np.array_equal(msg_array(col), seg.colorize(ref))
        assert np.array_equal(msg_array(ovl), seg.overlay(rgb, ref, ALPHA))


def test_input_encodings_bgr8_and_mono8(io, val_frames, reference):
    """Other encodings go through the codec: bgr8 gives the rgb8 result exactly."""
    rgb = small(val_frames[0][4])
    seg = reference()
    got = send(io, rgb, "cam_bgr", T0, encoding="bgr8")
    assert np.array_equal(msg_array(got["/labels"]), seg.segment(rgb, "x", T0))
    got = send(io, rgb, "cam_mono", T0, encoding="mono8")
    assert msg_array(got["/labels"]).shape == rgb.shape[:2]


def test_multi_camera_streams(io, val_frames, reference):
    """Two frame_ids interleaved: each is its own stream with its own cache."""
    fr = [small(f, 2) for f in val_frames[0]]
    seg = reference()
    for i in range(3):
        for cam, frame in (("cam_left", fr[i]), ("cam_right", fr[5 - i])):
            stamp = T0 + i * DT + (DT // 2 if cam == "cam_right" else 0)
            got = send(io, frame, cam, stamp)
            assert np.array_equal(msg_array(got["/labels"]), seg.segment(frame, cam, stamp)), \
                f"{cam} frame {i}"
    d = latest_diag(io, lambda d: int(d["streams"]) >= 2)
    assert int(d["streams"]) >= 2


@pytest.mark.parametrize("kind", ["time-backwards", "duplicate-stamp", "gap", "resolution",
                                  "frame-id-switch"])
def test_reset_equals_fresh_stream(io, val_frames, reference, kind):
    """After a cache reset the labels equal those of a fresh stream on the same frames."""
    fr = [small(f) for f in val_frames[0]]
    cam = f"cam_{kind}"
    base = T0 + 100 * SEC
    for i in range(3):
        send(io, fr[i], cam, base + i * DT)
    last = base + 2 * DT
    if kind == "time-backwards":          # a bag loops
        after = [(cam, fr[3], base - 5 * SEC), (cam, fr[4], base - 5 * SEC + DT)]
    elif kind == "duplicate-stamp":
        after = [(cam, fr[3], last), (cam, fr[4], last + DT)]
    elif kind == "gap":
        after = [(cam, fr[3], last + int(2.5 * MAX_GAP * SEC)),
                 (cam, fr[4], last + int(2.5 * MAX_GAP * SEC) + DT)]
    elif kind == "resolution":
        after = [(cam, small(val_frames[0][3], 3), last + DT),
                 (cam, small(val_frames[0][4], 3), last + 2 * DT)]
    else:                                 # the camera now publishes under a new frame_id
        after = [(cam + "_b", fr[3], last + DT), (cam + "_b", fr[4], last + 2 * DT)]
    fresh = reference()
    for fid, frame, stamp in after:
        got = send(io, frame, fid, stamp)
        assert np.array_equal(msg_array(got["/labels"]), fresh.segment(frame, "fresh", stamp))
    if kind != "frame-id-switch":
        assert io.node.wait_for(f"stream '{cam}': feature cache reset", 10), io.node.output[-2000:]
        d = latest_diag(io, lambda d: int(d[f"resets_{kind}"]) >= 1)
        assert int(d["cache_resets"]) >= 1


def test_reset_is_observable(val_frames, reference):
    """Sanity for the test above: on these frames a continued stream gives other labels than
    a fresh one, so equality with the fresh stream really shows that the cache was reset."""
    fr = [small(f) for f in val_frames[0]]
    cont, fresh = reference(), reference()
    for i in range(3):
        cont.segment(fr[i], "c", T0 + i * DT)
    assert not np.array_equal(cont.segment(fr[3], "c", T0 + 3 * DT),
                              fresh.segment(fr[3], "c", T0 + 3 * DT))


def test_odd_size_and_inference_size_native(io, val_frames, reference):
    """481x361 works, and labels come back at the input resolution."""
    rgb = np.pad(val_frames[0][5], ((0, 1), (0, 1), (0, 0)), mode="edge")[::3, ::3]
    assert rgb.shape[:2] == (121, 161)
    got = send(io, rgb, "cam_odd", T0)
    assert msg_array(got["/labels"]).shape == (121, 161)
    assert np.array_equal(msg_array(got["/labels"]), reference().segment(rgb, "o", T0))


def test_frames_faster_than_the_model_are_dropped_not_queued(io, val_frames):
    """A burst of full-size frames: stale ones are dropped (and counted), the newest one is
    always segmented, nothing is queued behind the model."""
    before = latest_diag(io)
    n = 8
    for i in range(n):
        io.pub.publish(image_msg(val_frames[0][i % 6], "cam_burst", T0 + i * DT))
    last = T0 + (n - 1) * DT
    assert io.probe.spin_until(
        lambda: find(io.probe.received["/labels"], "cam_burst", last) is not None, 60)
    io.probe.spin_for(1.0)
    outs = [m for m in io.probe.received["/labels"] if m.header.frame_id == "cam_burst"]
    d = latest_diag(io, lambda d: int(d["frames_processed"])
                    >= int(before["frames_processed"]) + len(outs))
    received = int(d["frames_received"]) - int(before["frames_received"])
    dropped = int(d["frames_dropped_stale"]) - int(before["frames_dropped_stale"])
    assert len(outs) < n                         # not every frame: nothing queued
    # Every frame not segmented was dropped: by the newest-frame slot (counted), or already
    # by the input's keep-last DDS history (the sensor-data profile) before the callback.
    assert dropped >= 1
    assert received == len(outs) + dropped
    assert received <= n


def test_diagnostics(io, val_frames):
    send(io, small(val_frames[0][0]), "cam_diag", T0)
    d = latest_diag(io, lambda d: int(d["frames_processed"]) >= 1)
    for key in ("processing_ms_mean", "latency_ms_mean", "input_rate_hz", "output_rate_hz",
                "frames_received", "frames_dropped_stale", "frames_bad", "cache_resets",
                "bad_length", "bad_step", "bad_encoding", "bad_too-small", "bad_too-large",
                "resets_gap", "device"):
        assert key in d, key
    assert d["device"] == "cpu" and d["input_topic"] == "/cam/image_raw"
    assert float(d["processing_ms_mean"]) >= 0.0


def test_class_info_latched_and_parameters(io, probe, reference):
    seg = reference()
    box = probe.subscribe(String, "/class_info", probe.qos(latched=True, depth=1))
    assert probe.spin_until(lambda: len(box) > 0, 20), "no latched class_info"
    info = json.loads(box[0].data)
    assert info["class_names"] == list(seg.class_names)
    assert info["palette"] == seg.palette.tolist()
    assert info["checkpoint"] == seg.checkpoint["path"]
    # Parameters, over the parameter services.
    from rcl_interfaces.srv import GetParameters, SetParameters
    from rclpy.parameter import Parameter
    cli = probe.node.create_client(GetParameters, "/segment_node/get_parameters")
    assert cli.wait_for_service(timeout_sec=20)
    fut = cli.call_async(GetParameters.Request(names=["class_names", "class_palette",
                                                     "overlay_alpha", "input_transport"]))
    assert probe.spin_until(fut.done, 20)
    vals = fut.result().values
    assert list(vals[0].string_array_value) == list(seg.class_names)
    assert list(vals[1].integer_array_value) == seg.palette.reshape(-1).tolist()
    assert vals[2].double_value == pytest.approx(ALPHA)
    assert vals[3].string_value == "raw"
    setc = probe.node.create_client(SetParameters, "/segment_node/set_parameters")
    assert setc.wait_for_service(timeout_sec=20)
    fut = setc.call_async(SetParameters.Request(
        parameters=[Parameter("overlay_alpha", value=0.9).to_parameter_msg()]))
    assert probe.spin_until(fut.done, 20)
    assert not fut.result().results[0].successful    # read-only: needs a restart
    from rcl_interfaces.srv import DescribeParameters
    dc = probe.node.create_client(DescribeParameters, "/segment_node/describe_parameters")
    assert dc.wait_for_service(timeout_sec=20)
    fut = dc.call_async(DescribeParameters.Request(names=["overlay_alpha", "device"]))
    assert probe.spin_until(fut.done, 20)
    alpha, device = fut.result().descriptors
    assert alpha.read_only and alpha.description
    assert (alpha.floating_point_range[0].from_value, alpha.floating_point_range[0].to_value) \
        == (0.0, 1.0)
    assert "cuda:N" in device.description


def test_confidence_only_while_subscribed(io, probe, val_frames, reference):
    """confidence: mono8, the input's header and size, the winning class's softmax x 255 as
    the Segmenter computes it; not computed or published while nobody subscribes."""
    rgb = small(val_frames[0][2])
    seg = reference()
    before = latest_diag(io)
    send(io, rgb, "cam_conf", T0)
    after = latest_diag(io, lambda d: int(d["published_labels"]) > int(before["published_labels"]))
    assert after["published_confidence"] == before["published_confidence"]
    seg.segment(rgb, "c", T0)
    probe.subscribe(Image, "/confidence")
    probe.wait_matched(subs=["/confidence"])
    probe.spin_for(1.0)                 # let the node see the subscription
    got = send(io, rgb, "cam_conf", T0 + DT, ("/labels", "/confidence"))
    conf = got["/confidence"]
    assert conf.encoding == "mono8" and (conf.height, conf.width) == rgb.shape[:2]
    assert conf.header.frame_id == "cam_conf" and stamp_of(conf) == T0 + DT
    want_labels, want_conf = seg.segment(rgb, "c", T0 + DT, confidence=True)
    assert np.array_equal(msg_array(got["/labels"]), want_labels)
    assert np.abs(msg_array(conf).astype(int) - want_conf.astype(int)).max() <= 1
    counted = latest_diag(io, lambda d: int(d["published_confidence"])
                          > int(before["published_confidence"]))
    probe.unsubscribe("/confidence")
    probe.spin_for(1.5)
    send(io, rgb, "cam_conf", T0 + 2 * DT)
    later = latest_diag(io, lambda d: int(d["published_labels"])
                        > int(counted["published_labels"]))
    assert later["published_confidence"] == counted["published_confidence"]


def test_vision_msgs_label_info(io, probe):
    vm = pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed here")
    box = probe.subscribe(vm.LabelInfo, "/label_info", probe.qos(latched=True, depth=1))
    assert probe.spin_until(lambda: len(box) > 0, 20)
    assert [c.class_name for c in box[0].class_map][:2] == ["Sky", "Building"]


def test_mask_and_overlay_only_while_subscribed(io, probe, val_frames):
    rgb = small(val_frames[0][1])
    send(io, rgb, "cam_subs", T0, ("/labels", "/color_mask", "/overlay"))
    before = latest_diag(io)
    probe.unsubscribe("/color_mask")
    probe.unsubscribe("/overlay")
    probe.spin_for(1.5)                 # let the node see the subscriptions go
    send(io, rgb, "cam_subs", T0 + DT)
    after = latest_diag(io, lambda d: int(d["published_labels"]) > int(before["published_labels"]))
    assert after["published_color_mask"] == before["published_color_mask"]
    assert after["published_overlay"] == before["published_overlay"]
    probe.subscribe(Image, "/color_mask")
    probe.subscribe(Image, "/overlay")
    probe.wait_matched(subs=["/color_mask", "/overlay"])
    probe.spin_for(1.0)                 # and come back
    send(io, rgb, "cam_subs", T0 + 2 * DT, ("/labels", "/color_mask", "/overlay"))


def test_compressed_transport_best_effort(tiny_checkpoint, probe, val_frames, reference):
    """input_transport:=compressed reads <image>/compressed (image_transport's name), with the
    default best-effort sensor QoS."""
    import cv2
    from rclpy.qos import ReliabilityPolicy
    n = NodeProcess({"checkpoint": str(tiny_checkpoint), "input_transport": "compressed",
                     # QoSOverridingOptions: output QoS can be changed from parameters/YAML
                     "qos_overrides./comp/overlay.publisher.reliability": "best_effort"},
                    DOMAIN, remaps=[("image", "/cam2/image_raw")],
                    args=["-r", "__ns:=/comp"]).start()
    try:
        n.wait_ready()
        assert "listening on /cam2/image_raw/compressed" in n.output
        pub = probe.publisher(CompressedImage, "/cam2/image_raw/compressed")
        box = probe.subscribe(Image, "/comp/labels")
        probe.wait_matched([pub], ["/comp/labels"])
        node = probe.node
        (sub_info,) = node.get_subscriptions_info_by_topic("/cam2/image_raw/compressed")
        assert sub_info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        (lab_info,) = node.get_publishers_info_by_topic("/comp/labels")
        assert lab_info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        (ovl_info,) = node.get_publishers_info_by_topic("/comp/overlay")
        assert ovl_info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
        rgb = small(val_frames[0][2])
        ok, png = cv2.imencode(".png", rgb[..., ::-1])
        msg = CompressedImage(format="png", data=png.tobytes())
        msg.header.frame_id = "cam2"
        # Best effort may lose a message while the connection settles: resend (new stamps).
        stamp = None
        for k in range(5):
            stamp = T0 + k * DT
            set_stamp(msg.header.stamp, stamp)
            pub.publish(msg)
            if probe.spin_until(lambda: find(box, "cam2", stamp) is not None, 15):
                break
        got = find(box, "cam2", stamp)
        assert got is not None, n.output[-2000:]
        assert np.array_equal(msg_array(got), reference().segment(rgb, "c", stamp))
        rc, _ = n.signal(signal.SIGINT)
        assert rc == 0
    finally:
        n.close()


# -- start-up faults ---------------------------------------------------------------------------
def _foreign(path):
    import torch
    torch.save({"weights": torch.zeros(3)}, path)


def _truncated(path, src):
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_classes(path, src):
    """A checkpoint whose config says 11 classes but whose weights have 19."""
    import torch
    from conftest import make_tiny_model
    from msaf_core import save_checkpoint
    from msaf_core.config import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
    m = make_tiny_model(num_classes=19, class_names=CITYSCAPES_CLASSES,
                        palette=CITYSCAPES_PALETTE)
    save_checkpoint(path, m)
    ck = torch.load(path, weights_only=True)
    camvid = torch.load(src, weights_only=True)
    for k in ("config", "class_names", "palette"):
        ck[k] = camvid[k]
    torch.save(ck, path)


BAD_PARAMS = [
    # (id, params, parameter named in the message, text in the message)
    ("bad-device", {"device": "gpu"}, "device", "not a device"),
    ("cuda-without-cuda", {"device": "cuda"}, "device", "CUDA"),
    ("cuda-index", {"device": "cuda:7"}, "device", "cuda"),
    ("half-on-cpu", {"device": "cpu", "half": True}, "half", "CUDA"),
    ("alpha-high", {"overlay_alpha": 1.5}, "overlay_alpha", "out of range"),
    ("alpha-negative", {"overlay_alpha": -0.1}, "overlay_alpha", "out of range"),
    ("alpha-int", {"overlay_alpha": 1}, "overlay_alpha", "double"),
    ("bad-transport", {"input_transport": "theora"}, "input_transport", "raw, compressed"),
    ("bad-qos", {"qos_reliability": "sometimes"}, "qos_reliability", "best_effort"),
    ("negative-gap", {"max_gap": -1.0}, "max_gap", "out of range"),
    ("half-size", {"inference_height": 256}, "inference_width", "both"),
    ("tiny-size", {"inference_height": 4, "inference_width": 4}, "inference_height", "small"),
    ("threads", {"threads": -2}, "threads", "out of range"),
    ("missing-checkpoint", {"checkpoint": "/nonexistent/model.pt"}, "checkpoint",
     "/nonexistent/model.pt"),
    ("truncated-checkpoint", "truncated", "checkpoint", "truncated"),
    ("foreign-checkpoint", "foreign", "checkpoint", "not an msaf checkpoint"),
    ("class-count-mismatch", "classes", "checkpoint", "do not fit"),
    ("checkpoint-is-dir", "dir", "checkpoint", "not a regular file"),
]


@pytest.mark.parametrize("case", BAD_PARAMS, ids=[c[0] for c in BAD_PARAMS])
def test_bad_parameter_exits_1_with_one_line(case, tiny_checkpoint, tmp_path):
    _, params, name, text = case
    if isinstance(params, str):
        path = tmp_path / f"{params}.pt"
        if params == "truncated":
            _truncated(path, tiny_checkpoint)
        elif params == "foreign":
            _foreign(path)
        elif params == "classes":
            _wrong_classes(path, tiny_checkpoint)
        else:
            path = tmp_path
        params = {"checkpoint": str(path)}
    full = {"checkpoint": str(tiny_checkpoint), **params}
    n = NodeProcess(full, DOMAIN + 10)
    try:
        rc = n.run(timeout=120)
        err = n.stderr
        assert rc == 1, n.output
        assert "Traceback" not in n.output
        lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
        assert len(lines) == 1, err
        assert f"parameter '{name}'" in lines[0] and text in lines[0], lines[0]
        if params.get("checkpoint", "").endswith(".pt"):
            assert params["checkpoint"] in lines[0]      # names the file
    finally:
        n.close()


def test_bundled_checkpoint_missing(tmp_path):
    from msaf_core import default_checkpoint
    if default_checkpoint().is_file():
        pytest.skip(f"the bundled model {default_checkpoint()} is installed")
    n = NodeProcess({"checkpoint": ""}, DOMAIN + 10)
    try:
        assert n.run(timeout=120) == 1
        assert "parameter 'checkpoint'" in n.stderr and str(default_checkpoint()) in n.stderr
        assert "Traceback" not in n.output
    finally:
        n.close()


def _bundled_node_labels(probe, frame, cam, ns, params=None):
    """Start a node on the bundled model (skip if it is not installed), send it ``frame``
    as camera ``cam`` and return (labels at the frame's size, the node's log) and the
    float32 labels of the bundled model in-process (one torch thread, like the node)."""
    from msaf_core import Segmenter, default_checkpoint
    if not default_checkpoint().is_file():
        pytest.skip("the bundled model is not installed")
    n = NodeProcess({"checkpoint": "", "qos_reliability": "reliable", "threads": 1,
                     **(params or {})}, DOMAIN,
                    remaps=[("image", f"/{cam}/image_raw")], args=["-r", f"__ns:=/{ns}"]).start()
    try:
        n.wait_ready(timeout=120)
        pub = probe.publisher(Image, f"/{cam}/image_raw")
        box = probe.subscribe(Image, f"/{ns}/labels")
        probe.wait_matched([pub], [f"/{ns}/labels"])
        pub.publish(image_msg(frame, cam, T0))
        assert probe.spin_until(lambda: find(box, cam, T0) is not None, 120), n.output[-2000:]
        got = msg_array(find(box, cam, T0))
        assert got.shape == frame.shape[:2]
        log = n.output
    finally:
        n.close()
    import torch
    torch.set_num_threads(1)
    fp32 = Segmenter.from_checkpoint(None, max_gap_s=MAX_GAP).segment(frame, "x", T0)
    return got, log, fp32


def test_bundled_model_segments_a_real_frame(probe, val_frames):
    """Out of the box (checkpoint ''), the node loads the bundled model and segments a real
    CamVid frame as well as the model does in-process, and plausibly (vs ground truth)."""
    frames, labels = val_frames
    got, _, ref = _bundled_node_labels(probe, frames[0], "cam3", "bundled")
    np.testing.assert_array_equal(got, ref)
    valid = labels[0] < 11
    assert np.mean(got[valid] == labels[0][valid]) > 0.8  # a trained model, not noise


def test_bf16_node_on_cpu(probe, val_frames):
    """bf16:=true runs the bundled model under bfloat16 autocast on the CPU: labels at the
    input size, nearly the float32 labels, and still right against the ground truth."""
    frames, labels = val_frames
    got, log, fp32 = _bundled_node_labels(probe, frames[1], "cam4", "bf16",
                                          {"device": "cpu", "bf16": True})
    assert " bf16," in log
    assert np.mean(got == fp32) > 0.97
    valid = labels[1] < 11
    assert np.mean(got[valid] == labels[1][valid]) > 0.8


def test_console_script_entry_point():
    """setup.py declares segment_node = msaf_ros.segment_node:main."""
    from msaf_ros import segment_node
    assert callable(segment_node.main)
    src = (ROOT / "setup.py").read_text()
    assert "segment_node = msaf_ros.segment_node:main" in src


def test_unknown_parameter_is_warned(tiny_checkpoint):
    n = NodeProcess({"checkpoint": str(tiny_checkpoint), "overlay_alpah": 0.3}, DOMAIN + 10)
    try:
        n.start()
        n.wait_ready()
        assert n.wait_for("ignoring unknown parameter(s) overlay_alpah", 10), n.output
    finally:
        n.close()


def test_health_reporting_on_steady_time_under_sim_time(tiny_checkpoint, probe):
    """use_sim_time:=true with no /clock: ROS time stands still at 0, yet /diagnostics and
    the log summary keep coming (their timers run on steady time)."""
    n = NodeProcess({"checkpoint": str(tiny_checkpoint), "use_sim_time": True,
                     "diagnostics_period": 0.2, "log_period": 0.5},
                    DOMAIN, args=["-r", "__ns:=/simtime"]).start()
    try:
        n.wait_ready()
        box = probe.subscribe(DiagnosticArray, "/diagnostics")
        start = len(box)

        def ours():
            return [a for a in box[start:] for s in a.status if s.name.startswith("simtime/")]
        assert probe.spin_until(lambda: len(ours()) >= 2, 30), n.output[-2000:]
        assert stamp_of(ours()[0]) == 0            # sim time: no /clock has come
        assert n.wait_for("cache resets, 0 errors", 30), n.output[-2000:]   # the log summary
    finally:
        n.close()


# -- the managed (lifecycle) node --------------------------------------------------------------
def _change_state(probe, client, transition_id):
    from lifecycle_msgs.srv import ChangeState
    req = ChangeState.Request()
    req.transition.id = transition_id
    fut = client.call_async(req)
    assert probe.spin_until(fut.done, 120)
    return fut.result().success


def _state(probe, client):
    from lifecycle_msgs.srv import GetState
    fut = client.call_async(GetState.Request())
    assert probe.spin_until(fut.done, 30)
    return fut.result().current_state.label


def test_lifecycle_node_transitions(tiny_checkpoint, probe, val_frames, reference):
    """segment_lifecycle_node through the lifecycle_msgs services: unconfigured (no model, no
    topics) -> configure (model, publishers, latched class info) -> activate (input
    subscribed, frames segmented) -> deactivate (input gone) -> cleanup (publishers gone) ->
    configure and activate again (segments again) -> Ctrl-C, exit code 0."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    n = NodeProcess({"checkpoint": str(tiny_checkpoint), "qos_reliability": "reliable",
                     "threads": 1}, DOMAIN, remaps=[("image", "/lc_cam/image_raw")],
                    args=["-r", "__ns:=/lc"])
    n.cmd[n.cmd.index("msaf_ros.segment_node")] = "msaf_ros.lifecycle"
    n.start()
    node = probe.node
    try:
        assert n.wait_for("unconfigured: waiting for configure", 90), n.output
        change = node.create_client(ChangeState, "/lc/segment_node/change_state")
        get = node.create_client(GetState, "/lc/segment_node/get_state")
        assert change.wait_for_service(timeout_sec=30) and get.wait_for_service(timeout_sec=30)
        assert _state(probe, get) == "unconfigured"
        assert not node.get_publishers_info_by_topic("/lc/labels")
        assert _change_state(probe, change, Transition.TRANSITION_CONFIGURE)
        assert _state(probe, get) == "inactive"
        assert probe.spin_until(lambda: node.get_publishers_info_by_topic("/lc/labels"), 30)
        assert not node.get_subscriptions_info_by_topic("/lc_cam/image_raw")
        info = probe.subscribe(String, "/lc/class_info", probe.qos(latched=True, depth=1))
        assert probe.spin_until(lambda: len(info) > 0, 30)
        pub = probe.publisher(Image, "/lc_cam/image_raw")
        box = probe.subscribe(Image, "/lc/labels")
        rgb = small(val_frames[0][0])
        for rounds in range(2):
            assert _change_state(probe, change, Transition.TRANSITION_ACTIVATE)
            assert _state(probe, get) == "active"
            probe.wait_matched([pub], ["/lc/labels"])
            stamp = T0 + rounds * 100 * SEC
            pub.publish(image_msg(rgb, "lc", stamp))
            assert probe.spin_until(lambda: find(box, "lc", stamp) is not None, 60), n.output
            assert np.array_equal(msg_array(find(box, "lc", stamp)),
                                  reference().segment(rgb, "x", stamp))
            assert _change_state(probe, change, Transition.TRANSITION_DEACTIVATE)
            assert probe.spin_until(lambda: pub.get_subscription_count() == 0, 30)
            assert _change_state(probe, change, Transition.TRANSITION_CLEANUP)
            assert _state(probe, get) == "unconfigured"
            assert probe.spin_until(
                lambda: not node.get_publishers_info_by_topic("/lc/labels"), 30)
            if rounds == 0:
                assert _change_state(probe, change, Transition.TRANSITION_CONFIGURE)
        assert "cleaned up: publishers destroyed, model freed" in n.output
        rc, _ = n.signal(signal.SIGINT, timeout=30)
        assert rc == 0, n.output
    finally:
        n.close()


def test_lifecycle_configure_failure_keeps_the_node_unconfigured(probe):
    """A checkpoint that cannot load: configure fails with the one-line reason in the log,
    the node stays up and unconfigured."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    n = NodeProcess({"checkpoint": "/nonexistent/model.pt"}, DOMAIN, args=["-r", "__ns:=/lcbad"])
    n.cmd[n.cmd.index("msaf_ros.segment_node")] = "msaf_ros.lifecycle"
    n.start()
    try:
        assert n.wait_for("unconfigured: waiting for configure", 90), n.output
        change = probe.node.create_client(ChangeState, "/lcbad/segment_node/change_state")
        get = probe.node.create_client(GetState, "/lcbad/segment_node/get_state")
        assert change.wait_for_service(timeout_sec=30)
        assert not _change_state(probe, change, Transition.TRANSITION_CONFIGURE)
        assert _state(probe, get) == "unconfigured" and n.alive()
        assert n.wait_for("configure failed: parameter 'checkpoint': /nonexistent/model.pt", 10)
    finally:
        n.close()
