"""Segmenting the camera topics of a bag into a new bag: :func:`segment_bag`.

The way of a message, after the plan (:mod:`~msaf_ros.bag.plan`, pass 1) ::

    input bag ── copied to the output bag ──┬── --labels-topic image ── Scorer
                                            └── --topic frame ── Reorder (stamp order)
        ── decode ── Segmenter.segment ── labels, color_mask, overlay, confidence written
           at the frame's bag time with its header ── Scorer

Each ``--topic`` is its own stream of the Segmenter (its own feature cache). No rclpy.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from ..errors import first_line
from ..image_codec import labels_to_image, mono8_to_image, rgb_to_image
from ..model import load_model
from .io import (IMAGE, McapExtras, decode_image, decode_labels, header_key, mcap_extras,
                 messages, open_reader, typestore)
from .output import OutputBag
from .plan import OUTPUT_KINDS, Plan, check_request, make_plan
from .reorder import Reorder
from .result import Frame, SegmentResult, TopicStats
from .scoring import Scorer

WARN_LIMIT = 5      # warnings printed; the rest are counted


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def segment_bag(input_path, output, topics: Sequence[str], *, segmenter=None,
                checkpoint=None, device: str = "auto", namespace: Optional[str] = None,
                labels_topic: Optional[str] = None, alpha: float = 0.5,
                fmt: Optional[str] = None, compression: str = "zstd", force: bool = False,
                max_frames: Optional[int] = None, progress: bool = False,
                confidence: bool = True,
                log: Callable[[str], None] = _stderr) -> SegmentResult:
    """Segment ``topics`` of the bag at ``input_path`` into a new bag at ``output``.

    ``segmenter``: a ready :class:`msaf_core.Segmenter` (else one is loaded from
    ``checkpoint``, None = the bundled default model, on ``device``). ``confidence``:
    also write ``<ns>/confidence`` (mono8, the winning class's softmax × 255). Raises
    :class:`~msaf_ros.errors.MsafRosError` (one-line message) for every problem a user can
    cause, an unusable model included; never leaves an incomplete OUTPUT.
    """
    input_path, output = Path(input_path), Path(output)
    topics = list(dict.fromkeys(topics))
    fmt = check_request(input_path, output, topics, alpha=alpha, fmt=fmt,
                        compression=compression, max_frames=max_frames, force=force)
    reader = open_reader(input_path)
    try:
        kinds = [k for k in OUTPUT_KINDS if confidence or k != "confidence"]
        plan = make_plan(reader, input_path, topics, labels_topic, namespace, kinds)
        seg = segmenter if segmenter is not None else load_model(checkpoint, device)
        plan.scan(reader, input_path, max_frames)
        if plan.total == 0:
            log(f"warning: no decodable image messages on {', '.join(topics)}")
        result = SegmentResult(
            input_path, output, fmt,
            {t: TopicStats(t, plan.msgtypes[t], plan.outputs[t]) for t in topics},
            labels_topic=labels_topic, class_names=tuple(seg.class_names))
        model = Path(str((seg.checkpoint or {}).get("path", "?"))).name
        with OutputBag(output, fmt, typestore(), compression=compression, log=log,
                       note=f"segmented by msaf-bag from {input_path.name}; model {model}"
                       ) as out:
            SecondPass(plan, seg, out, result, alpha=alpha, log=log).run(
                reader, input_path, progress)
    finally:
        try:
            reader.close()
        except Exception:  # noqa: BLE001
            pass
    if len(result.warnings) > WARN_LIMIT:
        log(f"warning: {len(result.warnings) - WARN_LIMIT} more warnings not shown")
    return result


class SecondPass:
    """Pass 2: copy every message, segment the frames in stamp order, write, score."""

    def __init__(self, plan: Plan, seg: Any, out: OutputBag, result: SegmentResult, *,
                 alpha: float, log: Callable[[str], None]) -> None:
        self.plan, self.seg, self.out, self.result = plan, seg, out, result
        self.alpha, self.log = alpha, log
        self.store = typestore()
        self.reorder = {t: Reorder(plan.order[t]) for t in plan.topics}
        self.seqs: Dict[str, int] = defaultdict(int)
        self.scorer = Scorer(seg.cfg.num_classes, plan.frame_keys, plan.gt_keys, self.warn)
        self.bar: Any = None
        self.extras = McapExtras()

    def run(self, reader: Any, input_path: Path, progress: bool = False) -> None:
        if self.out.fmt == "mcap":
            # sequence, publish time and channel metadata, which rosbags does not read
            self.extras = mcap_extras(reader)
        self.copy_to = self.out.copy_connections(reader.connections,
                                                 self.extras.channel_metadata)
        self.write_to = {t: {kind: self.out.add_image_topic(name) for kind, name in outs.items()}
                         for t, outs in self.plan.outputs.items()}
        resets: Dict[str, int] = defaultdict(int)
        prev_reset = self.seg.on_reset
        self.seg.on_reset = lambda stream, reason: resets.__setitem__(stream, resets[stream] + 1)
        try:
            if progress and self.plan.total:
                from tqdm import tqdm  # noqa: PLC0415
                self.bar = tqdm(total=self.plan.total, unit="frame", desc="segmenting",
                                file=sys.stderr, dynamic_ncols=True, leave=False)
            t0 = time.perf_counter()
            for conn, bag_ns, raw in messages(reader, input_path):
                self.message(conn, bag_ns, raw)
            for t, reorder in self.reorder.items():
                for item in reorder.flush():   # frames whose predecessors never came
                    self.frame(t, *item)
            self.out.close()
            self.result.seconds = time.perf_counter() - t0
        finally:
            self.seg.on_reset = prev_reset
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        for t, st in self.result.topics.items():
            st.resets = resets[t]
        self._score_into(self.result)

    def message(self, conn: Any, bag_ns: int, raw: bytes) -> None:
        """One message in bag order: copy it, then hand frames and ground truth on."""
        plan, result = self.plan, self.result
        seq = -1
        if conn.id in plan.topic_ids:        # numbered as in pass 1: every message, also
            seq = self.seqs[conn.topic]      # those past the --max-frames cutoff (bag time
            self.seqs[conn.topic] += 1       # may go back between the files of a bag)
        if plan.cutoff is not None and bag_ns > plan.cutoff:
            return
        mcap_seq, publish_ns = self.extras.take(conn.topic, bag_ns, raw)
        self.out.write(self.copy_to[conn.id], bag_ns, raw, mcap_seq, publish_ns)
        result.copied += 1
        if conn.id in plan.gt_ids:
            self.ground_truth(conn, bag_ns, raw)
            return
        if seq < 0:
            return
        t = conn.topic
        result.topics[t].messages += 1
        if seq in plan.undecodable[t]:
            result.topics[t].dropped += 1
            self.warn(f"{t} at bag time {bag_ns}: dropped (cannot deserialize the message)")
            return
        reorder = self.reorder[t]
        if seq not in reorder:
            return                           # beyond --max-frames
        for item, late in reorder.push(seq, (conn, bag_ns, raw)):
            if late:
                self.warn(f"{t}: a frame stamped {reorder.window}+ frames earlier came at "
                          f"bag time {bag_ns}; segmented late")
            self.frame(t, *item)

    def frame(self, topic: str, conn: Any, bag_ns: int, raw: bytes) -> None:
        """Segment one frame and write its outputs at its bag time."""
        st, seg, store = self.result.topics[topic], self.seg, self.store
        try:
            msg = store.deserialize_cdr(raw, conn.msgtype)
            rgb = decode_image(msg, conn.msgtype)
            key = header_key(msg)
            t0 = time.perf_counter()
            want = "confidence" in self.write_to[topic]
            out = seg.segment(rgb, stream=topic, stamp_ns=key[0] if key[0] > 0 else bag_ns,
                              **({"confidence": True} if want else {}))
            labels, conf = out if want else (out, None)
            self.result.model_seconds += time.perf_counter() - t0
        except ValueError as e:   # ImageDecodeError and msaf_core's InputError are ValueErrors
            st.dropped += 1
            self.warn(f"{topic} at bag time {bag_ns}: dropped ({first_line(e)})")
            return
        ImageMsg, header = store.types[IMAGE], msg.header
        outs = {"labels": labels_to_image(labels, header, ImageMsg),
                "color_mask": rgb_to_image(seg.colorize(labels), "rgb8", header, ImageMsg),
                "overlay": rgb_to_image(seg.overlay(rgb, labels, self.alpha), "rgb8", header,
                                        ImageMsg)}
        if conf is not None:
            outs["confidence"] = mono8_to_image(conf, header, ImageMsg, "confidence")
        for kind, m in outs.items():
            self.out.write(self.write_to[topic][kind], bag_ns, store.serialize_cdr(m, IMAGE))
        st.frames += 1
        self.result.frames.append(Frame(topic, key[0], key[1], bag_ns))
        self.scorer.prediction(key, labels)
        if self.bar is not None:
            self.bar.update(1)

    def ground_truth(self, conn: Any, bag_ns: int, raw: bytes) -> None:
        self.result.gt_frames += 1
        try:
            msg = self.store.deserialize_cdr(raw, conn.msgtype)
            gt = decode_labels(msg, conn.msgtype)
        except Exception as e:  # noqa: BLE001 - any undecodable label message
            self.scorer.dropped += 1
            self.warn(f"{self.result.labels_topic} at bag time {bag_ns}: unusable "
                      f"({first_line(e)})")
            return
        self.scorer.ground_truth(header_key(msg), gt)

    def warn(self, text: str) -> None:
        self.result.warnings.append(text)
        if len(self.result.warnings) <= WARN_LIMIT:
            (self.bar.write if self.bar is not None else self.log)(f"warning: {text}")

    def _score_into(self, result: SegmentResult) -> None:
        s = self.scorer
        result.gt_matched, result.gt_dropped = s.matched, s.dropped
        if result.labels_topic:
            result.confusion = s.cm
            result.summary = s.summary(self.seg.class_names)
            if result.summary is not None:
                result.gt_ignored_fraction = s.void_fraction
