"""segment_node: semantic segmentation of camera images with MSAF.

Subscribes ``image`` (sensor_msgs/Image, or sensor_msgs/CompressedImage on
``<image>/compressed`` with ``input_transport:=compressed``) and publishes, with the input's
header and resolution:

- ``labels``      sensor_msgs/Image mono8, one class id per pixel;
- ``color_mask``  sensor_msgs/Image rgb8, the class palette (only while subscribed);
- ``overlay``     sensor_msgs/Image rgb8, frame and mask blended (only while subscribed);
- ``class_info``  std_msgs/String, JSON class names/palette/checkpoint (latched);
- ``label_info``  vision_msgs/LabelInfo (latched; only where vision_msgs is installed);
- ``/diagnostics`` diagnostic_msgs/DiagnosticArray.

Every frame_id is its own stream with its own feature cache. Inference runs on a worker
thread fed by one newest-frame slot per stream, served in turn: a frame arriving while the
model is busy replaces its stream's waiting one (counted as dropped), frames are never
queued. Parameters: see
:mod:`msaf_ros.params` and docs/node.md.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from . import image_codec as ic
from .params import BY_NAME, NODE_NAME, PARAMETERS, ConfigError, validate
from .runtime import LatestSlot, Stats, Throttle

MIN_SIDE = 8  # msaf_core.segmenter.MIN_SIZE, repeated so the callback needs no torch import

RESET_TEXT = {
    "time-backwards": "the stamp went backwards (a bag looped or time jumped back)",
    "duplicate-stamp": "the stamp repeated",
    "gap": "the gap since the previous frame exceeds max_gap",
    "resolution": "the resolution changed",
}

BAD_TEXT = {
    "encoding": "unknown encoding", "empty": "empty image", "step": "step too small",
    "length": "data length is not height*step", "fields": "malformed message",
    "data": "unreadable data", "compressed": "undecodable compressed image",
    "too-small": "too small for the model", "too-large": "above max_pixels",
}


class StartupError(Exception):
    """The node cannot start (not a parameter problem)."""


def _param_type_name(t: str) -> str:
    return {"string": "a string", "bool": "a bool (true/false)", "int": "an integer",
            "double": "a double (write e.g. 1.0, not 1)", "string_array": "a string list",
            "int_array": "an integer list"}[t]


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class SegmentNode:
    """The node. Built in steps so start-up faults become one-line errors:
    ``SegmentNode(...)`` declares and checks the parameters, :meth:`load_model` loads the
    checkpoint, :meth:`start` creates the topics and the worker."""

    def __init__(self, context: Any = None, **node_kw: Any) -> None:
        import rclpy  # noqa: PLC0415
        from rclpy.node import Node  # noqa: PLC0415

        self._rclpy = rclpy
        self.node = Node(NODE_NAME, context=context, **node_kw)
        self.log = self.node.get_logger()
        self.cfg = validate(self._declare())
        self.seg = None
        self.stats = Stats()
        # one newest-frame slot per camera, served in turn (see LatestSlot)
        self.slot = LatestSlot(max_keys=self.cfg["max_streams"])
        self._throttle = Throttle(self.cfg["warn_period"])
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._known_streams: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._compressed = self.cfg["input_transport"] == "compressed"
        self.input_topic = ""
        for key in ("diag", "log"):
            self.stats.snapshot(key)

    # -- parameters ------------------------------------------------------------------------
    def _descriptor(self, p) -> Any:
        from rcl_interfaces.msg import (FloatingPointRange, IntegerRange,  # noqa: PLC0415
                                        ParameterDescriptor, ParameterType)
        types = {"string": ParameterType.PARAMETER_STRING, "bool": ParameterType.PARAMETER_BOOL,
                 "int": ParameterType.PARAMETER_INTEGER,
                 "double": ParameterType.PARAMETER_DOUBLE,
                 "string_array": ParameterType.PARAMETER_STRING_ARRAY,
                 "int_array": ParameterType.PARAMETER_INTEGER_ARRAY}
        d = ParameterDescriptor(name=p.name, type=types[p.type], description=p.description,
                                read_only=p.read_only)
        if p.choices:
            d.additional_constraints = "one of: " + ", ".join(p.choices)
        if p.range is not None and p.type == "int":
            d.integer_range = [IntegerRange(from_value=int(p.range[0]),
                                            to_value=int(p.range[1]), step=1)]
        elif p.range is not None and p.type == "double":
            d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]),
                                                         to_value=float(p.range[1]), step=0.0)]
        return d

    def _override(self, name: str) -> Any:
        ov = getattr(self.node, "_parameter_overrides", {}).get(name)
        return None if ov is None else ov.value

    def _declare(self) -> Dict[str, Any]:
        """Declare every user parameter once; rclpy type/range errors become ConfigError."""
        from rclpy.exceptions import (InvalidParameterTypeException,  # noqa: PLC0415
                                      InvalidParameterValueException, ParameterException)
        values: Dict[str, Any] = {}
        for p in PARAMETERS:
            if p.output:
                continue
            try:
                self.node.declare_parameter(p.name, p.default, self._descriptor(p))
            except InvalidParameterTypeException:
                raise ConfigError(p.name, f"{self._override(p.name)!r} is not "
                                          f"{_param_type_name(p.type)}") from None
            except InvalidParameterValueException:
                lo, hi = p.range if p.range else (None, None)
                raise ConfigError(p.name, f"{self._override(p.name)!r} is out of range "
                                          f"[{lo}, {hi}]") from None
            except ParameterException as e:
                raise ConfigError(p.name, str(e).splitlines()[0]) from None
            values[p.name] = self.node.get_parameter(p.name).value
        return values

    def _declare_outputs(self) -> None:
        flat = [int(v) for c in self.seg.palette.tolist() for v in c]
        for name, value in (("class_names", list(self.seg.class_names)),
                            ("class_palette", flat)):
            p = BY_NAME[name]
            self.node.declare_parameter(name, value, self._descriptor(p), ignore_override=True)

    # -- model -----------------------------------------------------------------------------
    def load_model(self) -> None:
        """Load the checkpoint on the device; ConfigError names the parameter to fix."""
        cfg = self.cfg
        import torch  # noqa: PLC0415

        from msaf_core import CheckpointError, Segmenter, default_checkpoint  # noqa: PLC0415
        from msaf_core.segmenter import resolve_device  # noqa: PLC0415

        if cfg["threads"] > 0:
            torch.set_num_threads(cfg["threads"])
        try:
            device = resolve_device(cfg["device"])
        except ValueError as e:
            raise ConfigError("device", str(e)) from None
        if cfg["half"] and device.type != "cuda":
            raise ConfigError("half", f"half precision needs a CUDA device, but device "
                                      f"'{cfg['device']}' is {device}")
        if cfg["bf16"] and device.type != "cpu":
            raise ConfigError("bf16", f"bf16 autocast is for the CPU, but device "
                                      f"'{cfg['device']}' is {device}; use half:=true on CUDA")
        path = cfg["checkpoint"] or None
        if path is None and not default_checkpoint().is_file():
            raise ConfigError("checkpoint", f"checkpoint is '' (the bundled model) but "
                                            f"{default_checkpoint()} is not installed")
        if path is not None:
            path = os.path.expanduser(path)
        size = None
        if cfg["inference_height"] and cfg["inference_width"]:
            size = (cfg["inference_height"], cfg["inference_width"])
        try:
            seg = Segmenter.from_checkpoint(path, device=device, size=size, half=cfg["half"],
                                            bf16=cfg["bf16"], max_gap_s=cfg["max_gap"] or None,
                                            max_streams=cfg["max_streams"])
        except CheckpointError as e:
            raise ConfigError("checkpoint", str(e)) from None
        except ValueError as e:
            raise ConfigError("half" if "half" in str(e) else "device", str(e)) from None
        except (RuntimeError, MemoryError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError("device", f"cannot put the model on {device}: {first}",
                              hint="use device:=cpu or free device memory") from None
        seg.on_reset = self._on_reset
        self.seg = seg
        self._declare_outputs()
        ck = seg.checkpoint or {}
        self.log.info(
            f"model {ck.get('path')} ({seg.cfg.backbone}, {seg.cfg.num_classes} classes, "
            f"trained at {ck.get('train_resolution')}) on {seg.device}"
            f"{' fp16' if cfg['half'] else ''}{' bf16' if cfg['bf16'] else ''}, inference size "
            f"{'native' if size is None else f'{size[0]}x{size[1]}'}, torch threads "
            f"{torch.get_num_threads()}")

    # -- topics ------------------------------------------------------------------------------
    def start(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray  # noqa: PLC0415
        from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile,  # noqa: PLC0415
                               ReliabilityPolicy)
        from sensor_msgs.msg import CompressedImage, Image  # noqa: PLC0415
        from std_msgs.msg import String  # noqa: PLC0415
        try:
            from rclpy.qos_overriding_options import QoSOverridingOptions  # noqa: PLC0415
            overrides = QoSOverridingOptions.with_default_policies()
        except ImportError:  # very old rclpy
            overrides = None

        self._Image = Image
        n, cfg = self.node, self.cfg
        kw = {} if overrides is None else {"qos_overriding_options": overrides}
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        self.pub_labels = n.create_publisher(Image, "labels", out_qos, **kw)
        self.pub_color = n.create_publisher(Image, "color_mask", out_qos, **kw)
        self.pub_overlay = n.create_publisher(Image, "overlay", out_qos, **kw)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_class_info = n.create_publisher(String, "class_info", latched)
        self.pub_diag = n.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._publish_class_info(String, latched)

        in_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                            reliability=(ReliabilityPolicy.RELIABLE
                                         if cfg["qos_reliability"] == "reliable"
                                         else ReliabilityPolicy.BEST_EFFORT),
                            durability=DurabilityPolicy.VOLATILE)
        if self._compressed:
            topic, mtype = self._resolved("image", Image) + "/compressed", CompressedImage
        else:
            topic, mtype = "image", Image
        self.sub = n.create_subscription(mtype, topic, self._on_image, in_qos, **kw)
        self.input_topic = self.sub.topic_name
        self._worker = threading.Thread(target=self._work, name="msaf-inference", daemon=True)
        self._worker.start()
        self._warn_unknown_parameters()
        self._diag_timer = n.create_timer(cfg["diagnostics_period"], self._publish_diagnostics)
        self._log_timer = (n.create_timer(cfg["log_period"], self._log_summary)
                           if cfg["log_period"] > 0 else None)
        kind = "sensor_msgs/CompressedImage" if self._compressed else "sensor_msgs/Image"
        self.log.info(
            f"listening on {self.input_topic} ({kind}, "
            f"{cfg['qos_reliability']}); publishing {self.pub_labels.topic_name}, "
            f"{self.pub_color.topic_name}, {self.pub_overlay.topic_name}")

    def _resolved(self, name: str, msg_type: Any) -> str:
        """The fully resolved (namespaced, remapped) name of a topic."""
        n = self.node
        if hasattr(n, "resolve_topic_name"):
            return n.resolve_topic_name(name).rstrip("/")
        probe = n.create_subscription(msg_type, name, lambda _m: None, 1)   # older rclpy
        try:
            return probe.topic_name.rstrip("/")
        finally:
            n.destroy_subscription(probe)

    def _warn_unknown_parameters(self) -> None:
        """rclpy ignores overrides of undeclared parameters; a typo deserves a warning."""
        overrides = getattr(self.node, "_parameter_overrides", {}) or {}
        unknown = sorted(k for k in overrides if not self.node.has_parameter(k))
        if unknown:
            self.log.warning(f"ignoring unknown parameter(s) {', '.join(unknown)}; known: "
                             f"{', '.join(p.name for p in PARAMETERS if not p.output)}")

    def _publish_class_info(self, String, latched) -> None:
        seg = self.seg
        ck = seg.checkpoint or {}
        info = {
            "class_names": list(seg.class_names),
            "palette": seg.palette.tolist(),
            "num_classes": int(seg.cfg.num_classes),
            "ignore_index": int(seg.cfg.ignore_index),
            "labels_encoding": "mono8",
            "checkpoint": ck.get("path"),
            "backbone": seg.cfg.backbone,
            "variant": seg.cfg.variant,
            "train_resolution": ck.get("train_resolution"),
            "metrics": ck.get("metrics") or {},
        }
        self.pub_class_info.publish(String(data=json.dumps(info, default=str)))
        self.pub_label_info = None
        try:
            from vision_msgs.msg import LabelInfo, VisionClass  # noqa: PLC0415
        except ImportError:
            return
        self.pub_label_info = self.node.create_publisher(LabelInfo, "label_info", latched)
        li = LabelInfo()
        li.header.stamp = self.node.get_clock().now().to_msg()
        li.class_map = [VisionClass(class_id=i, class_name=name)
                        for i, name in enumerate(seg.class_names)]
        li.threshold = 0.0
        self.pub_label_info.publish(li)

    # -- callback (executor thread; keep it cheap) ------------------------------------------
    def _on_image(self, msg: Any) -> None:
        self.stats.on_received()
        try:
            if self._compressed:
                ic.check_compressed(msg)        # empty or truncated payloads: no decoding
            else:
                _, h, w = ic.check_image(msg)   # layout only, no pixel copied
                self._check_size(h, w)
        except ic.ImageDecodeError as e:
            self._bad(e.reason, str(e), msg)    # a bad frame never evicts a waiting good one
            return
        replaced, old = self.slot.put((msg, time.monotonic()), key=msg.header.frame_id)
        if replaced:
            self.stats.on_dropped_stale()
            # the skipped frame still shows the stream is alive: the gap rule measures
            # between frames that arrived, not between frames the (slower) model segmented
            old_header = old[0].header
            old_stamp = stamp_to_ns(old_header.stamp)
            if old_stamp:
                self.seg.observe(old_header.frame_id, old_stamp)

    def _check_size(self, h: int, w: int) -> None:
        if min(h, w) < MIN_SIDE:
            raise ic.ImageDecodeError(f"image is {w}x{h}, the model needs both sides >= "
                                      f"{MIN_SIDE} pixels", "too-small")
        mp = self.cfg["max_pixels"]
        if mp and h * w > mp:
            raise ic.ImageDecodeError(f"image is {w}x{h} = {h * w} pixels, above max_pixels "
                                      f"= {mp} (raise max_pixels, 0 = no limit)", "too-large")

    def _bad(self, reason: str, why: str, msg: Any) -> None:
        self.stats.on_bad(reason, why)
        fid = getattr(getattr(msg, "header", None), "frame_id", "?")
        n = self._throttle(f"bad:{reason}:{fid}")   # per kind and camera
        if n is not None:
            more = f" ({n} more of this kind since the last warning)" if n else ""
            self.log.warning(f"dropped a bad frame from '{fid}' on {self.input_topic} "
                             f"({BAD_TEXT.get(reason, reason)}): {why}{more}")

    def _on_reset(self, stream: str, reason: str) -> None:
        self.stats.on_reset(reason)
        self.log.info(f"stream '{stream}': feature cache reset, "
                      f"{RESET_TEXT.get(reason, reason)}")

    # -- worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            ok, item = self.slot.get(timeout=0.5)
            if not ok:
                continue
            msg, _ = item
            try:
                self._process(msg)
            except Exception as e:  # noqa: BLE001 - the node must stay up
                if self._stop.is_set():   # shutting down: publishers may be gone already
                    return
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                self.stats.on_error(f"{type(e).__name__}: {first}")
                if self._throttle("error") is not None:
                    self.log.error(f"inference failed on a frame from "
                                   f"'{msg.header.frame_id}': {type(e).__name__}: {first}")

    def _process(self, msg: Any) -> None:
        t0 = time.perf_counter()
        try:
            if self._compressed:
                rgb = ic.compressed_to_rgb(msg)
                self._check_size(*rgb.shape[:2])
            else:
                rgb = ic.image_to_rgb(msg)
        except ic.ImageDecodeError as e:
            self._bad(e.reason, str(e), msg)
            return
        if self._stop.is_set():
            return
        header = msg.header
        stream = header.frame_id
        stamp_ns = stamp_to_ns(header.stamp)
        if stream in self._known_streams:
            self._known_streams.move_to_end(stream)
        else:
            self._known_streams[stream] = None
            if len(self._known_streams) > 4 * self.cfg["max_streams"]:  # bounded
                self._known_streams.popitem(last=False)
            self.log.info(f"new stream '{stream}' ({rgb.shape[1]}x{rgb.shape[0]})")
        # A zero stamp means "unset": no time-based cache resets for such publishers.
        labels = self.seg.segment(rgb, stream=stream, stamp_ns=stamp_ns or None)
        if self._stop.is_set():
            return
        Image = self._Image
        self.pub_labels.publish(ic.labels_to_image(labels, header, Image))
        self.stats.on_published("labels")
        # Colour mask and overlay cost time: only made while someone listens.
        if self.pub_color.get_subscription_count() > 0:
            self.pub_color.publish(ic.rgb_to_image(self.seg.colorize(labels), "rgb8", header,
                                                   Image))
            self.stats.on_published("color_mask")
        if self.pub_overlay.get_subscription_count() > 0:
            blend = self.seg.overlay(rgb, labels, self.cfg["overlay_alpha"])
            self.pub_overlay.publish(ic.rgb_to_image(blend, "rgb8", header, Image))
            self.stats.on_published("overlay")
        latency = None
        if stamp_ns:
            latency = (self.node.get_clock().now().nanoseconds - stamp_ns) / 1e9
        self.stats.on_processed(stream, time.perf_counter() - t0, latency)

    # -- diagnostics -------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa
        s = self.stats.snapshot("diag")
        st = DiagnosticStatus()
        st.name = f"{self.node.get_fully_qualified_name().lstrip('/')}: MSAF segmentation"
        st.hardware_id = str(self.seg.device) if self.seg is not None else ""
        if s["period_errors"]:
            st.level, st.message = DiagnosticStatus.ERROR, f"inference errors: {s['last_error']}"
        elif s["period_bad"]:
            st.level, st.message = DiagnosticStatus.WARN, f"bad frames dropped: {s['last_bad']}"
        elif s["received"] == 0:
            st.level, st.message = DiagnosticStatus.OK, f"waiting for images on {self.input_topic}"
        else:
            st.level = DiagnosticStatus.OK
            st.message = (f"{s['output_rate_hz']:.1f} Hz out, {s['proc_ms_mean']:.0f} ms "
                          f"per frame")
        values = {
            "input_topic": self.input_topic,
            "input_rate_hz": f"{s['input_rate_hz']:.2f}",
            "output_rate_hz": f"{s['output_rate_hz']:.2f}",
            "processing_ms_mean": f"{s['proc_ms_mean']:.1f}",
            "processing_ms_max": f"{s['proc_ms_max']:.1f}",
            "latency_ms_mean": f"{s['latency_ms_mean']:.1f}",
            "latency_ms_max": f"{s['latency_ms_max']:.1f}",
            "frames_received": s["received"],
            "frames_processed": s["processed"],
            "frames_dropped_stale": s["dropped_stale"],
            "frames_bad": s["bad"],
            "cache_resets": s["resets"],
            "inference_errors": s["errors"],
            "streams": s["streams"],
            "published_labels": s["published"].get("labels", 0),
            "published_color_mask": s["published"].get("color_mask", 0),
            "published_overlay": s["published"].get("overlay", 0),
            "device": st.hardware_id,
        }
        for reason in sorted(BAD_TEXT):
            values[f"bad_{reason}"] = s["bad_by_reason"].get(reason, 0)
        for reason in sorted(RESET_TEXT):
            values[f"resets_{reason}"] = s["resets_by_reason"].get(reason, 0)
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.node.get_clock().now().to_msg()
        arr.status = [st]
        self.pub_diag.publish(arr)

    def _log_summary(self) -> None:
        s = self.stats.snapshot("log")
        bad = ", ".join(f"{k} {v}" for k, v in sorted(s["bad_by_reason"].items())) or "0"
        self.log.info(
            f"in {s['input_rate_hz']:.1f} Hz, out {s['output_rate_hz']:.1f} Hz, "
            f"{s['proc_ms_mean']:.0f} ms/frame, latency {s['latency_ms_mean']:.0f} ms; totals: "
            f"{s['processed']}/{s['received']} frames, {s['dropped_stale']} dropped stale, "
            f"bad {bad}, {s['resets']} cache resets, {s['errors']} errors, "
            f"{s['streams']} streams")

    # -- shutdown ----------------------------------------------------------------------------
    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the worker; True when it ended within ``timeout`` seconds."""
        self._stop.set()
        self.slot.close()
        if self._worker is not None:
            self._worker.join(timeout)
            return not self._worker.is_alive()
        return True

    def destroy(self) -> None:
        self.node.destroy_node()


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return re.sub(r"\s+", " ", text)


def main(args: Optional[List[str]] = None, fast_exit: bool = True) -> int:
    """Console script ``segment_node``. Exit codes: 0 clean stop, 1 bad config or start-up.

    ``fast_exit``: after the node and ROS 2 are shut down, end the process with
    ``os._exit`` instead of returning: Python's finalisation of torch and rclpy modules
    takes seconds, and SIGINT/SIGTERM must end the node within two. Pass False to get the
    exit code returned (for callers that keep running)."""
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    argv = sys.argv if args is None else args

    try:
        import rclpy  # noqa: PLC0415
        from rclpy.executors import SingleThreadedExecutor  # noqa: PLC0415
        try:
            from rclpy.signals import SignalHandlerOptions  # noqa: PLC0415
            rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
        except ImportError:
            rclpy.init(args=argv)
    except Exception as e:  # noqa: BLE001 - bad --ros-args, no RMW, ...
        print(f"[{NODE_NAME}] error: cannot initialise ROS 2: {_one_line(e)}", file=sys.stderr)
        return 1

    app: Optional[SegmentNode] = None
    code = 0
    try:
        app = SegmentNode()
        if not stop.is_set():
            app.load_model()
        if not stop.is_set():
            app.start()
            executor = SingleThreadedExecutor()
            executor.add_node(app.node)
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
    except ConfigError as e:
        print(f"[{NODE_NAME}] error: {_one_line(e)}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - no traceback for users; say what failed
        print(f"[{NODE_NAME}] error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        code = 1
    finally:
        clean = True
        if app is not None:
            clean = app.stop(timeout=0.5)
            if code == 0:
                app.log.info("shutting down")
            try:
                app.destroy()
            except Exception:  # noqa: BLE001
                pass
        try:
            if hasattr(rclpy, "try_shutdown"):
                rclpy.try_shutdown()
            elif rclpy.ok():
                rclpy.shutdown()
        except Exception:  # noqa: BLE001
            pass
        if fast_exit or not clean:
            # Nothing is left to clean up: the node, its topics and ROS 2 are shut down. When
            # the worker is still inside a long forward pass it is not waited for either.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
