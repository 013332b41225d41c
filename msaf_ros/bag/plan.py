"""What msaf-bag will do, settled before the first frame is segmented.

:func:`check_request` checks the options; :func:`make_plan` checks the topics against the
bag and names the output topics (:func:`output_topics`); :meth:`Plan.scan` reads the bag
once (pass 1) for the header stamps: the order each topic's frames go to the model, which
messages cannot be deserialized, the ground-truth keys, and the ``--max-frames`` cutoff. Messages are named by
their *sequence number*: their index among the messages of their topic, in bag order. No
rclpy.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import BagError
from .io import (COMPRESSED, FORMATS, IMAGE, IMAGE_TYPES, Key, header_key, messages, storage_of,
                 typestore)
from .output import check_output

#: what is written for every segmented topic (confidence unless --no-confidence)
OUTPUT_KINDS = ("labels", "color_mask", "overlay", "confidence")
TRANSPORT_SUFFIXES = ("compressed", "compressedDepth", "theora", "zstd", "ffmpeg", "h264")


def base_topic(topic: str, msgtype: str = IMAGE) -> str:
    """The image topic without an image_transport suffix.

    ``/a/image_raw/compressed`` (a CompressedImage) → ``/a/image_raw``.
    """
    parts = topic.rstrip("/").split("/")
    if msgtype == COMPRESSED and len(parts) > 2 and parts[-1] in TRANSPORT_SUFFIXES:
        parts = parts[:-1]
    return "/".join(parts)


def output_topics(topic: str, msgtype: str = IMAGE, namespace: Optional[str] = None,
                  kinds: Sequence[str] = OUTPUT_KINDS) -> Dict[str, str]:
    """{'labels': ..., 'color_mask': ..., 'overlay': ..., 'confidence': ...} (the ``kinds``)
    for one input image topic."""
    if namespace:
        ns = "/" + namespace.strip().strip("/")
    else:
        ns = base_topic(topic, msgtype).rsplit("/", 1)[0] or "/"
    prefix = "" if ns == "/" else ns
    return {k: f"{prefix}/{k}" for k in kinds}


def check_request(input_path: Path, output: Path, topics: Sequence[str], *, alpha: float,
                  fmt: Optional[str], compression: str, max_frames: Optional[int],
                  force: bool) -> str:
    """Check the options before the bag is opened; returns the output format."""
    if not topics:
        raise BagError("no --topic given; 'msaf-bag info INPUT' lists the image topics")
    if not 0.0 <= alpha <= 1.0:
        raise BagError(f"--alpha must be within [0, 1], got {alpha}")
    if max_frames is not None and max_frames < 1:
        raise BagError(f"--max-frames must be >= 1, got {max_frames}")
    if compression not in ("zstd", "none"):
        raise BagError(f"--compression must be zstd or none, got {compression!r}")
    if not input_path.exists():
        raise BagError(f"{input_path}: no such file or folder")
    fmt = fmt or storage_of(input_path)
    if fmt not in FORMATS:
        raise BagError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_output(input_path, output, force)
    return fmt


@dataclasses.dataclass
class Plan:
    topics: List[str]
    msgtypes: Dict[str, str]                 # topic -> its image message type
    outputs: Dict[str, Dict[str, str]]       # topic -> {kind: output topic}
    topic_ids: Set[int]                      # connection ids of the --topics
    gt_ids: Set[int]                         # connection ids of the --labels-topic
    order: Dict[str, List[int]] = dataclasses.field(default_factory=dict)
    #: sequence numbers per topic, in header stamp order (within --max-frames)
    undecodable: Dict[str, Set[int]] = dataclasses.field(default_factory=dict)
    frame_keys: Set[Key] = dataclasses.field(default_factory=set)   # of the frames in order
    gt_keys: Set[Key] = dataclasses.field(default_factory=set)
    cutoff: Optional[int] = None             # last bag time copied (--max-frames)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.order.values())

    def scan(self, reader: Any, input_path: Path, max_frames: Optional[int] = None) -> None:
        """Pass 1: header stamps → processing order per topic, ground-truth keys, cutoff."""
        store = typestore()
        # per topic: (order key, bag time, sequence number, (stamp, frame_id))
        entries: Dict[str, List[Tuple[int, int, int, Key]]] = defaultdict(list)
        seqs: Dict[str, int] = defaultdict(int)
        self.undecodable = {t: set() for t in self.topics}
        scan = [c for c in reader.connections if c.id in self.topic_ids | self.gt_ids]
        for conn, bag_ns, raw in messages(reader, input_path, scan):
            if conn.id in self.gt_ids:
                try:
                    self.gt_keys.add(header_key(store.deserialize_cdr(raw, conn.msgtype)))
                except Exception:  # noqa: BLE001 - counted when met again in pass 2
                    pass
                continue
            seq = seqs[conn.topic]
            seqs[conn.topic] += 1
            try:
                key = header_key(store.deserialize_cdr(raw, conn.msgtype))
            except Exception:  # noqa: BLE001
                self.undecodable[conn.topic].add(seq)
                continue
            entries[conn.topic].append((key[0] if key[0] > 0 else bag_ns, bag_ns, seq, key))
        for t in self.topics:
            ent = sorted(entries[t], key=lambda e: e[:3])
            if max_frames is not None:
                ent = ent[:max_frames]
                if ent:
                    last = max(e[1] for e in ent)
                    self.cutoff = last if self.cutoff is None else max(self.cutoff, last)
            self.order[t] = [e[2] for e in ent]
            self.frame_keys.update(e[3] for e in ent)
        if max_frames is not None and self.cutoff is None:
            self.cutoff = -1


def make_plan(reader: Any, input_path: Path, topics: Sequence[str],
              labels_topic: Optional[str] = None, namespace: Optional[str] = None,
              kinds: Sequence[str] = OUTPUT_KINDS) -> Plan:
    """Check the topics against the bag and name the outputs (:meth:`Plan.scan` then reads
    the bag for the frame order)."""
    by_topic: Dict[str, List[Any]] = defaultdict(list)
    for c in reader.connections:
        by_topic[c.topic].append(c)
    _check_topics(input_path, by_topic, topics, labels_topic)
    plan = Plan(list(topics), {t: by_topic[t][0].msgtype for t in topics}, {},
                {c.id for t in topics for c in by_topic[t]},
                {c.id for c in by_topic[labels_topic]} if labels_topic else set())
    taken: Dict[str, str] = {}
    for t in topics:
        plan.outputs[t] = output_topics(t, plan.msgtypes[t], namespace, kinds)
        for name in plan.outputs[t].values():
            if name in by_topic:
                raise BagError(f"output topic {name} (for {t}) already exists in the input bag;"
                               f" choose another --namespace")
            if name in taken:
                raise BagError(f"output topic {name} would be written for both {taken[name]} "
                               f"and {t}; segment them with separate runs or give --namespace")
            taken[name] = t
    return plan


def _check_topics(input_path: Path, by_topic: Dict[str, List[Any]], topics: Sequence[str],
                  labels_topic: Optional[str]) -> None:
    image_topics = sorted(t for t, cs in by_topic.items()
                          if any(c.msgtype in IMAGE_TYPES for c in cs))
    for t in list(topics) + ([labels_topic] if labels_topic else []):
        if t not in by_topic:
            raise BagError(f"{input_path}: no topic {t}; image topics in the bag: "
                           f"{', '.join(image_topics) or 'none'}")
        bad = [c.msgtype for c in by_topic[t] if c.msgtype not in IMAGE_TYPES]
        if bad:
            raise BagError(f"{input_path}: topic {t} is {bad[0]}, not sensor_msgs/Image or "
                           f"CompressedImage")
    if labels_topic and labels_topic in topics:
        raise BagError(f"{labels_topic} is both a --topic and the --labels-topic")
