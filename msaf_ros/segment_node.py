"""segment_node: semantic segmentation of camera images with MSAF.

Subscribes ``image`` (sensor_msgs/Image, or sensor_msgs/CompressedImage on
``<image>/compressed`` with ``input_transport:=compressed``) and publishes, with the input's
header and resolution:

- ``labels``      sensor_msgs/Image mono8, one class id per pixel;
- ``color_mask``  sensor_msgs/Image rgb8, the class palette (only while subscribed);
- ``overlay``     sensor_msgs/Image rgb8, frame and mask blended (only while subscribed);
- ``confidence``  sensor_msgs/Image mono8, the winning class's softmax probability × 255
  (computed only while subscribed);
- ``class_info``  std_msgs/String, JSON class names/palette/checkpoint (latched);
- ``label_info``  vision_msgs/LabelInfo (latched; only where vision_msgs is installed);
- ``/diagnostics`` diagnostic_msgs/DiagnosticArray.

Every frame_id is its own stream with its own feature cache. Inference runs on a worker
thread fed by one newest-frame slot per stream, served in turn: a frame arriving while the
model is busy replaces its stream's waiting one (counted as dropped), frames are never
queued.

This module wires the parts together: the parameters (:mod:`msaf_ros.params`), the model
(:mod:`msaf_ros.model`), the topics, the worker (:mod:`msaf_ros.worker`) and the diagnostics
(:mod:`msaf_ros.diagnostics`). Reference: docs/node.md.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any, Callable, Dict, List, Optional

from . import diagnostics, params
from . import image_codec as ic
from .cli import run_cli
from .errors import StartupError, one_line
from .model import class_info, describe, load_node_model
from .msgs import qos
from .params import NODE_NAME
from .runtime import Stats
from .worker import InferenceWorker


class SegmentNode:
    """The node. Built in steps so start-up faults become one-line errors:
    ``SegmentNode(...)`` declares and checks the parameters, :meth:`load_model` loads the
    checkpoint, :meth:`start` creates the topics (:meth:`open_outputs`) and starts the
    worker (:meth:`open_input`); the managed node (:mod:`msaf_ros.lifecycle`) runs these
    steps from its transitions. ``node``: the rclpy node to wire (default: a new one)."""

    def __init__(self, context: Any = None, node: Any = None, **node_kw: Any) -> None:
        if node is None:
            from rclpy.node import Node  # noqa: PLC0415
            node = Node(NODE_NAME, context=context, **node_kw)
        self.node = node
        self.log = self.node.get_logger()
        self.cfg = params.declare(self.node)
        self.seg: Any = None
        self.worker: Optional[InferenceWorker] = None
        self.sub: Any = None
        self.diag_timer: Any = None
        self.log_timer: Any = None
        self.pubs: List[Any] = []
        self.stats = Stats()
        self.input_topic = ""
        for key in ("diag", "log"):
            self.stats.snapshot(key)

    def load_model(self) -> None:
        """Load the checkpoint on the device; ConfigError names the parameter to fix."""
        seg = self.seg = load_node_model(self.cfg)
        params.declare_outputs(self.node, seg.class_names, seg.palette.tolist())
        self.log.info(describe(seg, self.cfg))

    def start(self) -> None:
        """Create the publishers and the subscription, start the worker and the timers."""
        self.open_outputs()
        self.open_input()

    @staticmethod
    def _qos_kw() -> Dict[str, Any]:
        try:
            from rclpy.qos_overriding_options import QoSOverridingOptions  # noqa: PLC0415
            return {"qos_overriding_options": QoSOverridingOptions.with_default_policies()}
        except ImportError:  # very old rclpy
            return {}

    def open_outputs(self) -> None:
        """The publishers: labels, color_mask, overlay, confidence, /diagnostics, the latched
        class info."""
        from diagnostic_msgs.msg import DiagnosticArray  # noqa: PLC0415
        from sensor_msgs.msg import Image  # noqa: PLC0415
        n, kw = self.node, self._qos_kw()
        out_qos = qos(reliable=True, depth=2)
        self._Image = Image
        self.pub_labels = n.create_publisher(Image, "labels", out_qos, **kw)
        self.pub_color = n.create_publisher(Image, "color_mask", out_qos, **kw)
        self.pub_overlay = n.create_publisher(Image, "overlay", out_qos, **kw)
        self.pub_confidence = n.create_publisher(Image, "confidence", out_qos, **kw)
        self.pub_diag = n.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._publish_class_info()
        self.pubs = [self.pub_labels, self.pub_color, self.pub_overlay, self.pub_confidence,
                     self.pub_diag,
                     self.pub_class_info] + ([self.pub_label_info] if self.pub_label_info
                                             else [])

    def open_input(self) -> None:
        """Start the worker, subscribe the input, start the health timers."""
        from sensor_msgs.msg import CompressedImage, Image  # noqa: PLC0415
        n, cfg, kw = self.node, self.cfg, self._qos_kw()
        compressed = cfg["input_transport"] == "compressed"
        self.worker = InferenceWorker(
            self.seg, self._publish, stats=self.stats, log=self.log, compressed=compressed,
            max_pixels=cfg["max_pixels"], max_streams=cfg["max_streams"],
            warn_period=cfg["warn_period"], now_ns=lambda: n.get_clock().now().nanoseconds,
            want_confidence=lambda: self.pub_confidence.get_subscription_count() > 0)
        if compressed:
            topic, mtype = self._resolved("image", Image) + "/compressed", CompressedImage
        else:
            topic, mtype = "image", Image
        in_qos = qos(reliable=cfg["qos_reliability"] == "reliable", depth=5)
        self.sub = n.create_subscription(mtype, topic, self.worker.submit, in_qos, **kw)
        self.input_topic = self.worker.input_topic = self.sub.topic_name
        self.worker.start()
        unknown = params.unknown_overrides(n)
        if unknown:
            self.log.warning(f"ignoring unknown parameter(s) {', '.join(unknown)}; known: "
                             f"{', '.join(params.USER_PARAMETERS)}")
        # Health reporting runs on steady time: with use_sim_time and no /clock (a paused
        # or absent bag player) ROS-time timers never fire, yet the node is alive.
        from rclpy.clock import Clock, ClockType  # noqa: PLC0415
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.diag_timer = n.create_timer(cfg["diagnostics_period"], self._publish_diagnostics,
                                         clock=steady)
        self.log_timer = (n.create_timer(cfg["log_period"], self._log_summary, clock=steady)
                          if cfg["log_period"] > 0 else None)
        kind = "sensor_msgs/CompressedImage" if compressed else "sensor_msgs/Image"
        self.log.info(f"listening on {self.input_topic} ({kind}, {cfg['qos_reliability']}); "
                      f"publishing {self.pub_labels.topic_name}, {self.pub_color.topic_name}, "
                      f"{self.pub_overlay.topic_name}, {self.pub_confidence.topic_name}")

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

    def _publish_class_info(self) -> None:
        from std_msgs.msg import String  # noqa: PLC0415
        latched = qos(reliable=True, depth=1, latched=True)
        self.pub_class_info = self.node.create_publisher(String, "class_info", latched)
        self.pub_class_info.publish(String(data=json.dumps(class_info(self.seg), default=str)))
        self.pub_label_info = None
        try:
            from vision_msgs.msg import LabelInfo, VisionClass  # noqa: PLC0415
        except ImportError:
            return
        self.pub_label_info = self.node.create_publisher(LabelInfo, "label_info", latched)
        li = LabelInfo()
        li.header.stamp = self.node.get_clock().now().to_msg()
        li.class_map = [VisionClass(class_id=i, class_name=name)
                        for i, name in enumerate(self.seg.class_names)]
        li.threshold = 0.0
        self.pub_label_info.publish(li)

    def _publish(self, header: Any, rgb: Any, labels: Any, confidence: Any = None) -> None:
        """The worker's publish callback: labels always; mask and overlay while subscribed;
        confidence when the worker computed it (it asks whether anyone is subscribed)."""
        Image = self._Image
        self.pub_labels.publish(ic.labels_to_image(labels, header, Image))
        self.stats.on_published("labels")
        if self.pub_color.get_subscription_count() > 0:
            self.pub_color.publish(ic.rgb_to_image(self.seg.colorize(labels), "rgb8", header,
                                                   Image))
            self.stats.on_published("color_mask")
        if self.pub_overlay.get_subscription_count() > 0:
            blend = self.seg.overlay(rgb, labels, self.cfg["overlay_alpha"])
            self.pub_overlay.publish(ic.rgb_to_image(blend, "rgb8", header, Image))
            self.stats.on_published("overlay")
        if confidence is not None:
            self.pub_confidence.publish(ic.mono8_to_image(confidence, header, Image))
            self.stats.on_published("confidence")

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa
        device = str(self.seg.device) if self.seg is not None else ""
        s = diagnostics.status(self.stats.snapshot("diag"), self.input_topic, device)
        st = DiagnosticStatus(
            name=f"{self.node.get_fully_qualified_name().lstrip('/')}: "
                 f"{diagnostics.STATUS_NAME}",
            hardware_id=device, level=getattr(DiagnosticStatus, s.level), message=s.message,
            values=[KeyValue(key=k, value=v) for k, v in s.values.items()])
        arr = DiagnosticArray()
        arr.header.stamp = self.node.get_clock().now().to_msg()
        arr.status = [st]
        self.pub_diag.publish(arr)

    def _log_summary(self) -> None:
        self.log.info(diagnostics.summary_line(self.stats.snapshot("log")))

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the worker; True when it ended within ``timeout`` seconds."""
        return self.worker.stop(timeout) if self.worker is not None else True

    def destroy(self) -> None:
        self.node.destroy_node()


#: build(stop, keep): create the node, hand it to ``keep`` at once, bring it up unless ``stop``.
Build = Callable[[threading.Event, Callable[[Any], None]], None]


def main(args: Optional[List[str]] = None, fast_exit: bool = True,
         build: Optional[Build] = None) -> int:
    """Console script ``segment_node``. Exit codes: 0 clean stop (also on SIGINT/SIGTERM),
    1 bad configuration or start-up failure (one line on stderr).

    ``fast_exit``: after the node and ROS 2 are shut down, end the process with
    ``os._exit`` instead of returning: Python's finalisation of torch and rclpy modules
    takes seconds, and SIGINT/SIGTERM must end the node within two. Pass False to get the
    exit code returned (for callers that keep running). ``build``: how the node is made and
    brought up (default: the plain node, started at once; msaf_ros.lifecycle passes the
    managed one)."""
    stop = threading.Event()
    argv = sys.argv if args is None else args
    outcome = {"clean": True}
    code = run_cli(f"[{NODE_NAME}]", lambda: _run(argv, stop, outcome, build or _plain),
                   stop=stop)
    if fast_exit or not outcome["clean"]:
        # Nothing is left to clean up: the node, its topics and ROS 2 are shut down. When
        # the worker is still inside a long forward pass it is not waited for either.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)
    return code


def _plain(stop: threading.Event, keep: Callable[[Any], None]) -> None:
    app = SegmentNode()
    keep(app)
    if not stop.is_set():
        app.load_model()
    if not stop.is_set():
        app.start()


def _run(argv: List[str], stop: threading.Event, outcome: Dict[str, bool],
         build: Build) -> int:
    """Start ROS 2 and the node, spin until ``stop``, shut both down."""
    try:
        import rclpy  # noqa: PLC0415
        from rclpy.executors import SingleThreadedExecutor  # noqa: PLC0415
        try:
            from rclpy.signals import SignalHandlerOptions  # noqa: PLC0415
            rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
        except ImportError:
            rclpy.init(args=argv)
    except Exception as e:  # noqa: BLE001 - bad --ros-args, no RMW, ...
        raise StartupError(f"cannot initialise ROS 2: {one_line(e)}") from None
    apps: List[Any] = []
    ok = False
    try:
        build(stop, apps.append)
        if apps and not stop.is_set():
            executor = SingleThreadedExecutor()
            executor.add_node(apps[0].node)
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
        ok = True
        return 0
    finally:
        for app in apps:
            outcome["clean"] = app.stop(timeout=0.5)
            if ok:
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


if __name__ == "__main__":
    sys.exit(main())
