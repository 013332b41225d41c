"""msaf-bag: segment the camera topics of a rosbag2 offline with MSAF (no ROS graph, no rclpy).

::

    msaf-bag segment INPUT OUTPUT --topic /camera/image_raw [--topic ...] [--checkpoint CKPT]
                     [--namespace NS] [--labels-topic T] [--device auto] [--alpha 0.5]
                     [--format mcap|sqlite3] [--max-frames N] [--force]
    msaf-bag info INPUT

INPUT is a rosbag2 folder (metadata.yaml + .mcap or .db3) or a single .mcap / .db3 file;
it is only ever opened read-only. OUTPUT is a new rosbag2 folder holding every input message
(all topics, copied byte for byte) plus, for each ``--topic``:

- ``<ns>/labels``      sensor_msgs/Image ``mono8``, the class id of every pixel;
- ``<ns>/color_mask``  sensor_msgs/Image ``rgb8``, the classes in the model's palette;
- ``<ns>/overlay``     sensor_msgs/Image ``rgb8``, the mask blended over the frame
  (``(1 - alpha) * frame + alpha * mask``),

each with the header of the input frame (stamp and frame_id) and written at the input
frame's bag time. ``<ns>`` is ``--namespace`` when given, else the input topic's parent
after dropping an image_transport suffix: ``/camera/image_raw`` and
``/camera/image_raw/compressed`` both give ``/camera``; ``/image`` gives ``/`` (topics
``/labels``, ...). Output topics may not collide with each other or with input topics.

Each topic is its own stream (its own feature cache) and is fed to the model in header
stamp order (a zero stamp falls back to the bag time), whatever the order in the bag.

With ``--labels-topic``, ground-truth label images in the bag (``mono8``/``8UC1`` Image or an
8-bit grey PNG CompressedImage) are matched to predictions by header stamp and frame_id and
the mIoU is reported; ground-truth values >= the model's class count (CamVid's void = 11)
and 255 are ignored.

The output is written to ``OUTPUT.partial/`` and moved to ``OUTPUT`` only when complete; an
error or Ctrl-C removes it. ``--force`` replaces an existing OUTPUT (only a rosbag2 folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)
OUTPUT_KINDS = ("labels", "color_mask", "overlay")
TRANSPORT_SUFFIXES = ("compressed", "compressedDepth", "theora", "zstd", "ffmpeg", "h264")
FORMATS = ("mcap", "sqlite3")
# rosbag2 metadata version (rosbags writes 8 or 9; 8 keeps the older QoS layout)
BAG_VERSION = 8
PARTIAL_SUFFIX = ".partial"
PARTIAL_NOTE = ("This folder is an unfinished msaf-bag output (the run was interrupted or "
                "failed). It is not a complete bag: delete it.\n")
IGNORE = 255
_WARN_LIMIT = 5
#: Frames of one topic held back while waiting for one with an earlier header stamp that
#: comes later in the bag. Beyond it, the missing frame is segmented when it finally comes
#: (late, after its successors: the stream's cache restarts there).
REORDER_WINDOW = 64


class BagToolError(Exception):
    """A problem the user can fix; printed as one line, exit code 1."""


class CorruptBagError(BagToolError):
    """The input bag cannot be read (truncated, damaged, not a rosbag2)."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore  # noqa: PLC0415
    return get_typestore(Stores.ROS2_JAZZY)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# naming
# ---------------------------------------------------------------------------------------------
def _norm_ns(ns: str) -> str:
    ns = "/" + ns.strip().strip("/")
    return ns


def base_topic(topic: str, msgtype: str = IMAGE) -> str:
    """The image topic without an image_transport suffix.

    ``/a/image_raw/compressed`` (a CompressedImage) → ``/a/image_raw``.
    """
    parts = topic.rstrip("/").split("/")
    if msgtype == COMPRESSED and len(parts) > 2 and parts[-1] in TRANSPORT_SUFFIXES:
        parts = parts[:-1]
    return "/".join(parts)


def output_topics(topic: str, msgtype: str = IMAGE, namespace: Optional[str] = None
                  ) -> Dict[str, str]:
    """{'labels': ..., 'color_mask': ..., 'overlay': ...} for one input image topic."""
    if namespace:
        ns = _norm_ns(namespace)
    else:
        base = base_topic(topic, msgtype)
        ns = base.rsplit("/", 1)[0] or "/"
    prefix = "" if ns == "/" else ns
    return {k: f"{prefix}/{k}" for k in OUTPUT_KINDS}


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def storage_of(path: Path) -> str:
    """'mcap' or 'sqlite3' for a rosbag2 folder or a single storage file."""
    if path.is_dir():
        meta = path / "metadata.yaml"
        if not meta.is_file():
            raise BagToolError(f"{path}: not a rosbag2 folder (no metadata.yaml)")
        try:
            from ruamel.yaml import YAML  # noqa: PLC0415  (a rosbags dependency)
            info = YAML(typ="safe").load(meta.read_text())["rosbag2_bagfile_information"]
            ident = str(info["storage_identifier"])
        except Exception as e:  # noqa: BLE001
            raise CorruptBagError(f"{meta}: unreadable metadata ({_first_line(e)})") from None
        if ident not in FORMATS:
            raise BagToolError(f"{path}: storage '{ident}' is not supported (mcap or sqlite3)")
        return ident
    if path.suffix == ".mcap":
        return "mcap"
    if path.suffix == ".db3":
        return "sqlite3"
    raise BagToolError(f"{path}: not a rosbag2 folder, .mcap or .db3 file")


def open_reader(path: Path):
    """An open rosbags Reader; every failure becomes a one-line CorruptBagError/BagToolError."""
    from rosbags.rosbag2 import Reader  # noqa: PLC0415
    if not path.exists():
        raise BagToolError(f"{path}: no such file or folder")
    storage_of(path)
    try:
        reader = Reader(path)
        reader.open()
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except PermissionError as e:
        raise BagToolError(f"{path}: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - rosbags, sqlite3, struct, zstd ... errors
        raise CorruptBagError(f"{path}: cannot open the bag, it is truncated or corrupt "
                              f"({_first_line(e)})") from None
    return reader


def _messages(reader, path: Path, connections=()) -> Iterator[Tuple[Any, int, bytes]]:
    """reader.messages() with read errors turned into one CorruptBagError."""
    try:
        it = iter(reader.messages(connections=connections))
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001
        raise CorruptBagError(f"{path}: cannot read the bag, it is truncated or corrupt "
                              f"({_first_line(e)})") from None
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001
            raise CorruptBagError(f"{path}: cannot read the bag, it is truncated or corrupt "
                                  f"({_first_line(e)})") from None
        yield item


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def decode_labels(msg: Any, msgtype: str) -> np.ndarray:
    """A ground-truth label message → H×W uint8 ids (mono8/8UC1 Image or grey PNG)."""
    from .image_codec import ImageDecodeError, compressed_to_rgb, image_to_rgb  # noqa: PLC0415
    if msgtype == IMAGE:
        enc = str(msg.encoding).strip().lower()
        if enc not in ("mono8", "8uc1"):
            raise ImageDecodeError(f"label images must be mono8 or 8UC1, got {msg.encoding!r}")
        return np.ascontiguousarray(image_to_rgb(msg)[..., 0])
    rgb = compressed_to_rgb(msg)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise ImageDecodeError("compressed label images must be single-channel (grey PNG)")
    return np.ascontiguousarray(rgb[..., 0])


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TopicStats:
    topic: str
    msgtype: str
    outputs: Dict[str, str]
    messages: int = 0          # image messages of the topic copied (within --max-frames' cut)
    frames: int = 0            # segmented
    dropped: int = 0           # undecodable / unusable messages
    resets: int = 0            # feature-cache resets (gaps, loops, size changes)


@dataclasses.dataclass
class Frame:
    topic: str
    stamp_ns: int
    frame_id: str
    bag_ns: int


@dataclasses.dataclass
class SegmentResult:
    input: Path
    output: Path
    storage: str
    topics: Dict[str, TopicStats]
    copied: int = 0                        # input messages written to the output
    seconds: float = 0.0                   # wall time of the segmenting pass (decode, model,
    #                                        encode, write; not the model load or the scan)
    model_seconds: float = 0.0             # time inside Segmenter.segment
    frames: List[Frame] = dataclasses.field(default_factory=list)
    warnings: List[str] = dataclasses.field(default_factory=list)
    labels_topic: Optional[str] = None
    gt_frames: int = 0                     # ground-truth messages in the input
    gt_matched: int = 0                    # ... scored against a prediction
    gt_dropped: int = 0                    # undecodable, or size/values unusable
    gt_ignored_fraction: float = float("nan")
    confusion: Optional[np.ndarray] = None
    summary: Optional[Dict[str, Any]] = None   # msaf_core.metrics.summarize(), mIoU etc.
    class_names: Tuple[str, ...] = ()

    @property
    def n_frames(self) -> int:
        return sum(t.frames for t in self.topics.values())

    @property
    def n_dropped(self) -> int:
        return sum(t.dropped for t in self.topics.values())

    @property
    def fps(self) -> float:
        return self.n_frames / self.seconds if self.seconds > 0 else float("nan")

    @property
    def model_fps(self) -> float:
        return self.n_frames / self.model_seconds if self.model_seconds > 0 else float("nan")

    @property
    def miou(self) -> Optional[float]:
        return None if self.summary is None else float(self.summary["miou"])

    def report(self) -> str:
        lines = [f"wrote {self.output} ({self.storage}): {self.copied} input messages copied"]
        for st in self.topics.values():
            lines.append(f"  {st.topic} -> {', '.join(st.outputs.values())}: {st.frames} frames"
                         f" segmented, {st.dropped} dropped (undecodable), {st.resets} cache "
                         f"resets")
        lines.append(f"frames: {self.n_frames} in {self.seconds:.1f} s = {self.fps:.2f} frames/s"
                     f" end to end ({self.model_fps:.2f} frames/s in the model); "
                     f"dropped: {self.n_dropped}")
        if self.labels_topic:
            if self.summary is None:
                lines.append(f"mIoU: n/a, no ground truth on {self.labels_topic} matched a "
                             f"prediction ({self.gt_frames} label messages, "
                             f"{self.gt_dropped} unusable)")
            else:
                from msaf_core.metrics import format_table  # noqa: PLC0415
                lines.append(format_table(
                    self.summary, f"IoU (%) against {self.labels_topic}: {self.gt_matched} of "
                                  f"{self.gt_frames} label frames matched by stamp+frame_id, "
                                  f"{self.gt_dropped} unusable, "
                                  f"{100 * self.gt_ignored_fraction:.1f}% of pixels void"))
                lines.append(f"mIoU: {100 * self.summary['miou']:.2f}%")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# output folder handling
# ---------------------------------------------------------------------------------------------
def _is_within(a: Path, b: Path) -> bool:
    try:
        a.relative_to(b)
        return True
    except ValueError:
        return False


def check_output(input_path: Path, output: Path, force: bool) -> None:
    """Refuse outputs that would overwrite the input or an unrelated folder."""
    inp, out = input_path.resolve(), output.resolve()
    in_dir = inp if inp.is_dir() else inp.parent
    if out == inp or (inp.is_dir() and _is_within(out, inp)) or _is_within(inp, out):
        raise BagToolError(f"{output}: the output must not be the input, inside the input "
                           f"bag or contain it ({input_path})")
    if not inp.is_dir() and out == in_dir:
        raise BagToolError(f"{output}: the output must be a new folder, not the input's folder")
    if output.suffix in (".mcap", ".db3"):
        raise BagToolError(f"{output}: OUTPUT is a rosbag2 folder; give it a name without the "
                           f"'{output.suffix}' suffix")
    if output.exists() or output.is_symlink():
        if not force:
            raise BagToolError(f"{output} exists; pass --force to replace it")
        if not output.is_dir() or output.is_symlink():
            raise BagToolError(f"{output} exists and is not a folder; refusing to replace it "
                               f"even with --force")
        if any(output.iterdir()) and not (output / "metadata.yaml").is_file():
            raise BagToolError(f"{output} exists and is not a rosbag2 folder (no metadata.yaml);"
                               f" refusing to replace it even with --force")
    staging = _partial_dir(output)
    if (staging.exists() or staging.is_symlink()) and not (staging / "INCOMPLETE.txt").is_file():
        raise BagToolError(f"{staging} exists and was not left by msaf-bag; move it away (the "
                           f"output is written there first)")


def _partial_dir(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX)


def _install(built: Path, output: Path, staging: Path) -> None:
    """Move the finished bag into place (replacing an old output only now)."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    try:
        os.replace(built, output)
    except BaseException:
        if old is not None:
            os.replace(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------------
def _conn_def(conn, store) -> Tuple[str, str]:
    """(message definition, RIHS01 hash) to declare an input connection in the output."""
    from rosbags.interfaces import MessageDefinitionFormat  # noqa: PLC0415
    msgdef = conn.msgdef.data if conn.msgdef.format != MessageDefinitionFormat.NONE else ""
    digest = conn.digest or ""
    known = conn.msgtype in store.fielddefs
    if not msgdef and known:
        msgdef = store.generate_msgdef(conn.msgtype, ros_version=2)[0]
    if not digest:
        if known:
            digest = store.hash_rihs01(conn.msgtype)
        elif msgdef:
            try:
                from rosbags.typesys import Stores, get_typestore, get_types_from_msg  # noqa
                tmp = get_typestore(Stores.EMPTY)
                if conn.msgdef.format == MessageDefinitionFormat.MSG:
                    tmp.register(get_types_from_msg(msgdef, conn.msgtype))
                    digest = tmp.hash_rihs01(conn.msgtype)
            except Exception:  # noqa: BLE001 - best effort for exotic definitions
                digest = ""
    if not digest:
        # No definition anywhere (an old sqlite3 bag with a custom type). rosbags needs a
        # hash; an all-zero one marks it unknown. The bytes are copied all the same.
        digest = "RIHS01_" + "0" * 64
    return msgdef, digest


def segment_bag(input_path, output, topics: Sequence[str], *, segmenter=None,
                checkpoint=None, device: str = "auto", namespace: Optional[str] = None,
                labels_topic: Optional[str] = None, alpha: float = 0.5,
                fmt: Optional[str] = None, compression: str = "zstd", force: bool = False,
                max_frames: Optional[int] = None, progress: bool = False,
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
                ) -> SegmentResult:
    """Segment ``topics`` of the bag at ``input_path`` into a new bag at ``output``.

    ``segmenter``: a ready :class:`msaf_core.Segmenter` (else one is loaded from
    ``checkpoint``, None = the bundled default model, on ``device``). Raises
    :class:`BagToolError` (one-line message) for every problem a user can cause,
    ``CheckpointError`` for an unusable model; never leaves an incomplete OUTPUT.
    """
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    from msaf_core.metrics import confusion, summarize

    from .image_codec import ImageDecodeError, compressed_to_rgb, image_to_rgb
    from .image_codec import labels_to_image, rgb_to_image

    input_path, output = Path(input_path), Path(output)
    topics = list(dict.fromkeys(topics))
    if not topics:
        raise BagToolError("no --topic given; 'msaf-bag info INPUT' lists the image topics")
    if not 0.0 <= alpha <= 1.0:
        raise BagToolError(f"--alpha must be within [0, 1], got {alpha}")
    if max_frames is not None and max_frames < 1:
        raise BagToolError(f"--max-frames must be >= 1, got {max_frames}")
    if compression not in ("zstd", "none"):
        raise BagToolError(f"--compression must be zstd or none, got {compression!r}")
    if not input_path.exists():
        raise BagToolError(f"{input_path}: no such file or folder")
    in_fmt = storage_of(input_path)
    fmt = fmt or in_fmt
    if fmt not in FORMATS:
        raise BagToolError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_output(input_path, output, force)

    reader = open_reader(input_path)
    try:
        by_topic: Dict[str, List[Any]] = defaultdict(list)
        for c in reader.connections:
            by_topic[c.topic].append(c)
        image_topics = sorted(t for t, cs in by_topic.items()
                              if any(c.msgtype in IMAGE_TYPES for c in cs))
        for t in topics + ([labels_topic] if labels_topic else []):
            if t not in by_topic:
                raise BagToolError(f"{input_path}: no topic {t}; image topics in the bag: "
                                   f"{', '.join(image_topics) or 'none'}")
            bad = [c.msgtype for c in by_topic[t] if c.msgtype not in IMAGE_TYPES]
            if bad:
                raise BagToolError(f"{input_path}: topic {t} is {bad[0]}, not sensor_msgs/Image"
                                   f" or CompressedImage")
        if labels_topic and labels_topic in topics:
            raise BagToolError(f"{labels_topic} is both a --topic and the --labels-topic")

        stats: Dict[str, TopicStats] = {}
        taken: Dict[str, str] = {}
        for t in topics:
            outs = output_topics(t, by_topic[t][0].msgtype, namespace)
            for name in outs.values():
                if name in by_topic:
                    raise BagToolError(f"output topic {name} (for {t}) already exists in the "
                                       f"input bag; choose another --namespace")
                if name in taken:
                    raise BagToolError(f"output topic {name} would be written for both "
                                       f"{taken[name]} and {t}; segment them with separate "
                                       f"runs or give --namespace")
                taken[name] = t
            stats[t] = TopicStats(t, by_topic[t][0].msgtype, outs)

        seg = segmenter
        if seg is None:
            from msaf_core import Segmenter  # noqa: PLC0415
            try:
                seg = Segmenter.from_checkpoint(checkpoint, device=device)
            except ValueError as e:   # an unusable device
                raise BagToolError(str(e)) from None
        k = int(seg.cfg.num_classes)

        store = _typestore()
        ImageMsg = store.types[IMAGE]
        wanted = {c.id for t in topics for c in by_topic[t]}
        gt_ids = {c.id for c in by_topic[labels_topic]} if labels_topic else set()

        # -- pass 1: header stamps → processing order per topic, ground-truth keys ----------
        # per topic: (order key, bag time, sequence number in the bag, (stamp, frame_id))
        entries: Dict[str, List[Tuple[int, int, int, Tuple[int, str]]]] = defaultdict(list)
        undecodable: Dict[str, set] = defaultdict(set)
        gt_keys: set = set()
        seqs: Dict[str, int] = defaultdict(int)
        scan = [c for c in reader.connections if c.id in wanted or c.id in gt_ids]
        for conn, bag_ns, raw in _messages(reader, input_path, scan):
            if conn.id in gt_ids:
                try:
                    h = store.deserialize_cdr(raw, conn.msgtype).header
                    gt_keys.add((_stamp_ns(h), str(h.frame_id)))
                except Exception:  # noqa: BLE001 - counted when met again in pass 2
                    pass
                continue
            seq = seqs[conn.topic]
            seqs[conn.topic] += 1
            try:
                h = store.deserialize_cdr(raw, conn.msgtype).header
                stamp = _stamp_ns(h)
            except Exception:  # noqa: BLE001
                undecodable[conn.topic].add(seq)
                continue
            entries[conn.topic].append((stamp if stamp > 0 else bag_ns, bag_ns, seq,
                                        (stamp, str(h.frame_id))))
        order: Dict[str, List[int]] = {}
        frame_keys: set = set()
        cutoff = None
        for t in topics:
            ent = sorted(entries[t], key=lambda e: e[:3])
            if max_frames is not None:
                ent = ent[:max_frames]
                if ent:
                    last = max(e[1] for e in ent)
                    cutoff = last if cutoff is None else max(cutoff, last)
            order[t] = [e[2] for e in ent]
            frame_keys.update(e[3] for e in ent)
        if max_frames is not None and cutoff is None:
            cutoff = -1

        total = sum(len(v) for v in order.values())
        if total == 0:
            log(f"warning: no decodable image messages on {', '.join(topics)}")

        # -- pass 2: copy through, segment in stamp order, write --------------------------------
        result = SegmentResult(input_path, output, fmt, stats, labels_topic=labels_topic,
                               class_names=tuple(seg.class_names))
        staging = _partial_dir(output)
        if staging.exists():      # check_output made sure it is an old partial output of ours
            log(f"note: removing {staging}, left by an earlier interrupted run")
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        (staging / "INCOMPLETE.txt").write_text(PARTIAL_NOTE)
        built = staging / output.name
        writer = Writer(built, version=BAG_VERSION,
                        storage_plugin=StoragePlugin.MCAP if fmt == "mcap" else
                        StoragePlugin.SQLITE3)
        if fmt == "mcap" and compression == "zstd":
            writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        bar = None
        resets: Dict[str, int] = defaultdict(int)
        prev_reset = seg.on_reset
        try:
            model_name = Path(str((seg.checkpoint or {}).get("path", "?"))).name
            writer.set_custom_data("msaf", f"segmented by msaf-bag from {input_path.name}; "
                                           f"model {model_name}")
            writer.open()
            out_conn: Dict[int, Any] = {}
            declared: Dict[Tuple, Any] = {}
            for c in reader.connections:
                key = (c.topic, c.msgtype, c.ext.serialization_format,
                       repr(c.ext.offered_qos_profiles))
                if key not in declared:
                    msgdef, digest = _conn_def(c, store)
                    declared[key] = writer.add_connection(
                        c.topic, c.msgtype, msgdef=msgdef, rihs01=digest,
                        serialization_format=c.ext.serialization_format,
                        offered_qos_profiles=c.ext.offered_qos_profiles)
                out_conn[c.id] = declared[key]
            seg_conn: Dict[str, Dict[str, Any]] = {
                t: {kind: writer.add_connection(name, IMAGE, typestore=store)
                    for kind, name in stats[t].outputs.items()} for t in topics}

            if progress and total:
                from tqdm import tqdm  # noqa: PLC0415
                bar = tqdm(total=total, unit="frame", desc="segmenting", file=sys.stderr,
                           dynamic_ncols=True, leave=False)
            seg.on_reset = lambda stream, reason: resets.__setitem__(stream, resets[stream] + 1)

            t_loop = time.perf_counter()
            cm = np.zeros((k, k), np.int64)
            gt_void = gt_total = 0
            waiting_pred: Dict[Tuple[int, str], np.ndarray] = {}   # predictions awaiting GT
            waiting_gt: Dict[Tuple[int, str], np.ndarray] = {}     # GT awaiting a prediction
            scored: set = set()
            pending: Dict[str, Dict[int, Tuple[Any, int, bytes]]] = defaultdict(dict)
            pos: Dict[str, int] = defaultdict(int)
            rank = {t: {s: i for i, s in enumerate(order[t])} for t in topics}
            late: Dict[str, set] = defaultdict(set)
            seqs2: Dict[str, int] = defaultdict(int)

            def warn(msg: str) -> None:
                result.warnings.append(msg)
                if len(result.warnings) <= _WARN_LIMIT:
                    (bar.write if bar is not None else log)(f"warning: {msg}")

            def score(pred: np.ndarray, gt: np.ndarray, key) -> None:
                nonlocal cm, gt_void, gt_total
                if pred.shape != gt.shape:
                    result.gt_dropped += 1
                    warn(f"ground truth at stamp {key[0]} is {gt.shape[1]}x{gt.shape[0]}, the "
                         f"frame {pred.shape[1]}x{pred.shape[0]}; not scored")
                    return
                scored.add(key)
                void = gt >= k
                target = np.where(void, IGNORE, gt).astype(np.uint8)
                cm += confusion(pred, target, k, ignore_index=IGNORE)
                gt_void += int(void.sum())
                gt_total += void.size
                result.gt_matched += 1

            def process(t: str, conn, bag_ns: int, raw: bytes) -> None:
                st = stats[t]
                try:
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                    rgb = image_to_rgb(msg) if conn.msgtype == IMAGE else compressed_to_rgb(msg)
                    t0 = time.perf_counter()
                    labels = seg.segment(rgb, stream=t, stamp_ns=_stamp_ns(msg.header)
                                         if _stamp_ns(msg.header) > 0 else bag_ns)
                    result.model_seconds += time.perf_counter() - t0
                except (ImageDecodeError, ValueError) as e:   # InputError is a ValueError
                    st.dropped += 1
                    warn(f"{t} at bag time {bag_ns}: dropped ({_first_line(e)})")
                    return
                header = msg.header
                outs = {"labels": labels_to_image(labels, header, ImageMsg),
                        "color_mask": rgb_to_image(seg.colorize(labels), "rgb8", header, ImageMsg),
                        "overlay": rgb_to_image(seg.overlay(rgb, labels, alpha), "rgb8", header,
                                                ImageMsg)}
                for kind, m in outs.items():
                    writer.write(seg_conn[t][kind], bag_ns, store.serialize_cdr(m, IMAGE))
                st.frames += 1
                key = (_stamp_ns(header), str(header.frame_id))
                result.frames.append(Frame(t, key[0], key[1], bag_ns))
                gt = waiting_gt.pop(key, None)
                if gt is not None:
                    score(labels, gt, key)
                elif key in gt_keys and key not in scored:
                    waiting_pred[key] = labels

            for conn, bag_ns, raw in _messages(reader, input_path):
                seq = -1
                if conn.id in wanted:             # numbered as in pass 1: every message,
                    seq = seqs2[conn.topic]       # also those past the --max-frames cutoff
                    seqs2[conn.topic] += 1        # (bag time may go back between files)
                if cutoff is not None and bag_ns > cutoff:
                    continue
                writer.write(out_conn[conn.id], bag_ns, raw)
                result.copied += 1
                if conn.id in gt_ids:
                    result.gt_frames += 1
                    try:
                        gmsg = store.deserialize_cdr(raw, conn.msgtype)
                        gt = decode_labels(gmsg, conn.msgtype)
                    except Exception as e:  # noqa: BLE001 - any undecodable label message
                        result.gt_dropped += 1
                        warn(f"{labels_topic} at bag time {bag_ns}: unusable ({_first_line(e)})")
                        continue
                    key = (_stamp_ns(gmsg.header), str(gmsg.header.frame_id))
                    pred = waiting_pred.pop(key, None)
                    if pred is not None:
                        score(pred, gt, key)
                    elif key in frame_keys and key not in scored:
                        waiting_gt[key] = gt      # its frame comes later (or is dropped)
                    continue
                if conn.id not in wanted:
                    continue
                t = conn.topic
                stats[t].messages += 1
                if seq in undecodable[t]:
                    stats[t].dropped += 1
                    warn(f"{t} at bag time {bag_ns}: dropped (cannot deserialize the message)")
                    continue
                if seq not in rank[t]:
                    continue                      # beyond --max-frames
                if seq in late[t]:
                    warn(f"{t}: a frame stamped {REORDER_WINDOW}+ frames earlier came at bag "
                         f"time {bag_ns}; segmented late")
                    process(t, conn, bag_ns, raw)
                    if bar is not None:
                        bar.update(1)
                    continue
                pending[t][seq] = (conn, bag_ns, raw)
                while pos[t] < len(order[t]):
                    head = order[t][pos[t]]
                    if head not in pending[t]:
                        if len(pending[t]) <= REORDER_WINDOW:
                            break
                        late[t].add(head)         # stop waiting for it
                        pos[t] += 1
                        continue
                    c2, b2, r2 = pending[t].pop(head)
                    pos[t] += 1
                    process(t, c2, b2, r2)
                    if bar is not None:
                        bar.update(1)
            for t in topics:      # frames whose predecessors never came (should not happen)
                for s in order[t][pos[t]:]:
                    if s in pending[t]:
                        process(t, *pending[t].pop(s))
            if bar is not None:
                bar.close()
                bar = None
            writer.close()
            result.seconds = time.perf_counter() - t_loop
        except BaseException:
            if bar is not None:
                bar.close()
            try:
                writer.abort()
            except Exception:  # noqa: BLE001
                pass
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            seg.on_reset = prev_reset
        try:
            _install(built, output, staging)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise BagToolError(f"{output}: cannot move the finished bag into place "
                               f"({_first_line(e)})") from None
    finally:
        try:
            reader.close()
        except Exception:  # noqa: BLE001
            pass

    for t in topics:
        stats[t].resets = resets[t]
    if labels_topic:
        result.confusion = cm
        if result.gt_matched:
            result.summary = summarize(cm, seg.class_names)
            result.gt_ignored_fraction = gt_void / gt_total if gt_total else float("nan")
    if len(result.warnings) > _WARN_LIMIT:
        log(f"warning: {len(result.warnings) - _WARN_LIMIT} more warnings not shown")
    return result


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------
def bag_info(path: Path) -> str:
    reader = open_reader(Path(path))
    try:
        lines = [f"{path}: {storage_of(Path(path))}, {reader.message_count} messages, "
                 f"{reader.duration / 1e9:.2f} s"]
        for topic, info in sorted(reader.topics.items()):
            tag = ""
            if info.msgtype in IMAGE_TYPES:
                outs = output_topics(topic, info.msgtype)
                tag = f"  [image; would segment to {outs['labels'].rsplit('/', 1)[0] or '/'}/...]"
            lines.append(f"  {topic:<40} {info.msgtype:<36} {info.msgcount:>7}{tag}")
        return "\n".join(lines)
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def set_threads(n: Optional[int]) -> None:
    """torch.set_num_threads(n) when n is given (BagToolError when n < 1)."""
    if n is None:
        return
    if n < 1:
        raise BagToolError(f"--threads must be >= 1, got {n}")
    import torch  # noqa: PLC0415
    torch.set_num_threads(n)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the partial output is removed)."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msaf-bag",
        description="Segment the camera topics of a rosbag2 (mcap or sqlite3) with MSAF, "
                    "offline; no ROS installation needed.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{segment,info}")
    s = sub.add_parser(
        "segment", help="write a copy of a bag with labels, color_mask and overlay topics",
        description="Write OUTPUT, a copy of INPUT with <ns>/labels (mono8), <ns>/color_mask "
                    "(rgb8) and <ns>/overlay (rgb8) for every --topic. <ns> is --namespace, or "
                    "the parent of the input topic (image_transport suffix dropped): "
                    "/camera/image_raw -> /camera/labels, /camera/color_mask, /camera/overlay.")
    s.add_argument("input", type=Path, help="input rosbag2 folder, or a .mcap / .db3 file")
    s.add_argument("output", type=Path, help="output rosbag2 folder (must not exist)")
    s.add_argument("--topic", "-t", action="append", default=[], required=True,
                   help="an Image or CompressedImage topic to segment (repeat for more)")
    s.add_argument("--checkpoint", "-c", default=None,
                   help="model checkpoint (default: the bundled default model)")
    s.add_argument("--namespace", "-n", default=None,
                   help="namespace of the output topics (default: the input topic's parent)")
    s.add_argument("--labels-topic", default=None,
                   help="ground-truth label images in the bag (mono8); reports the mIoU")
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    s.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (0.5)")
    s.add_argument("--format", dest="fmt", choices=FORMATS, default=None,
                   help="output storage (default: the input's)")
    s.add_argument("--compression", choices=("zstd", "none"), default="zstd",
                   help="mcap chunk compression (default zstd; sqlite3 output is never "
                        "compressed)")
    s.add_argument("--max-frames", type=int, default=None,
                   help="segment only the first N frames of each topic and cut the output "
                        "there (a short slice)")
    s.add_argument("--force", "-f", action="store_true",
                   help="replace OUTPUT if it exists (a rosbag2 folder only)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 can be much faster "
                        "on a CPU busy with other work)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    i = sub.add_parser("info", help="list a bag's topics and which ones are images")
    i.add_argument("input", type=Path)
    i.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from msaf_core import CheckpointError  # noqa: PLC0415

    old = None
    try:
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:      # not the main thread
        pass
    try:
        if args.cmd == "info":
            print(bag_info(args.input))
            return 0
        set_threads(args.threads)
        res = segment_bag(args.input, args.output, args.topic, checkpoint=args.checkpoint,
                          device=args.device, namespace=args.namespace,
                          labels_topic=args.labels_topic, alpha=args.alpha, fmt=args.fmt,
                          compression=args.compression, force=args.force,
                          max_frames=args.max_frames,
                          progress=not args.no_progress and sys.stderr.isatty())
        print(res.report())
        return 0
    except CheckpointError as e:
        from msaf_core.checkpoint import default_checkpoint  # noqa: PLC0415
        if getattr(args, "checkpoint", None) is None and not default_checkpoint().exists():
            msg = (f"the default model {default_checkpoint()} is not installed; pass "
                   f"--checkpoint PATH")
        else:
            msg = str(e)
        print(f"msaf-bag: error: {msg}", file=sys.stderr)
        return 1
    except BagToolError as e:
        print(f"msaf-bag: error: {e}", file=sys.stderr)
        return 1
    except _Terminated:
        print("msaf-bag: terminated; no output written (partial output removed)",
              file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("msaf-bag: interrupted; no output written (partial output removed)",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        if getattr(args, "debug", False):
            raise
        print(f"msaf-bag: error: {_first_line(e)} (no output written; rerun with --debug "
              f"for the traceback)", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            try:
                signal.signal(signal.SIGTERM, old)
            except ValueError:
                pass


if __name__ == "__main__":
    sys.exit(main())
