"""Reading rosbag2 bags (mcap, sqlite3) with rosbags, for every msaf_ros program that does.

Opening a bag and iterating its messages turn every read failure into a one-line
:class:`~msaf_ros.errors.CorruptBagError` (or :class:`~msaf_ros.errors.BagError`). Image and
label messages are decoded with :mod:`msaf_ros.image_codec`. No rclpy.
"""

from __future__ import annotations

import collections
import functools
import struct
import zlib
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Tuple

import numpy as np

from ..errors import BagError, CorruptBagError, ImageDecodeError, first_line
from ..image_codec import compressed_to_rgb, image_to_rgb
from ..msgs import stamp_ns

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)
FORMATS = ("mcap", "sqlite3")

#: A frame's identity across topics: (header stamp in ns, frame_id).
Key = Tuple[int, str]


@functools.lru_cache(maxsize=None)
def typestore() -> Any:
    """The rosbags type store of ROS 2 messages msaf_ros reads and writes (Jazzy's)."""
    from rosbags.typesys import Stores, get_typestore  # noqa: PLC0415
    return get_typestore(Stores.ROS2_JAZZY)


def storage_of(path: Path) -> str:
    """'mcap' or 'sqlite3' for a rosbag2 folder or a single storage file."""
    if path.is_dir():
        meta = path / "metadata.yaml"
        if not meta.is_file():
            raise BagError(f"{path}: not a rosbag2 folder (no metadata.yaml)")
        try:
            from ruamel.yaml import YAML  # noqa: PLC0415  (a rosbags dependency)
            info = YAML(typ="safe").load(meta.read_text())["rosbag2_bagfile_information"]
            ident = str(info["storage_identifier"])
        except Exception as e:  # noqa: BLE001
            raise CorruptBagError(f"{meta}: unreadable metadata ({first_line(e)})") from None
        if ident not in FORMATS:
            raise BagError(f"{path}: storage '{ident}' is not supported (mcap or sqlite3)")
        return ident
    if path.suffix == ".mcap":
        return "mcap"
    if path.suffix == ".db3":
        return "sqlite3"
    raise BagError(f"{path}: not a rosbag2 folder, .mcap or .db3 file")


def open_reader(path: Path) -> Any:
    """An open rosbags Reader; every failure becomes a one-line CorruptBagError/BagError."""
    from rosbags.rosbag2 import Reader  # noqa: PLC0415
    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: no such file or folder")
    storage_of(path)
    try:
        reader = Reader(path)
        reader.open()
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except PermissionError as e:
        raise BagError(f"{path}: {first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - rosbags, sqlite3, struct, zstd ... errors
        raise _corrupt(path, "open", e) from None
    return reader


def messages(reader: Any, path: Path, connections: Iterable[Any] = ()
             ) -> Iterator[Tuple[Any, int, bytes]]:
    """``reader.messages()`` (connection, bag time, raw bytes), read errors turned into one
    CorruptBagError."""
    try:
        it = iter(reader.messages(connections=list(connections)))
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            yield item
    except (KeyboardInterrupt, SystemExit, MemoryError, GeneratorExit):
        raise
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, "read", e) from None


def _corrupt(path: Path, verb: str, e: BaseException) -> CorruptBagError:
    return CorruptBagError(f"{path}: cannot {verb} the bag, it is truncated or corrupt "
                           f"({first_line(e)})")


def read_topics(path: Path, topics: Iterable[str]) -> Iterator[Tuple[Any, int, Any]]:
    """(connection, bag time, deserialized message) of ``topics`` in bag order."""
    store, wanted = typestore(), set(topics)
    reader = open_reader(Path(path))
    try:
        conns = [c for c in reader.connections if c.topic in wanted]
        for conn, bag_ns, raw in messages(reader, Path(path), conns):
            yield conn, bag_ns, store.deserialize_cdr(raw, conn.msgtype)
    finally:
        reader.close()


def header_key(msg: Any) -> Key:
    """The (stamp ns, frame_id) of a message's header."""
    return stamp_ns(msg.header.stamp), str(msg.header.frame_id)


def decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """An Image or CompressedImage message → H×W×3 uint8 RGB (ImageDecodeError if not)."""
    return compressed_to_rgb(msg) if msgtype == COMPRESSED else image_to_rgb(msg)


def decode_labels(msg: Any, msgtype: str) -> np.ndarray:
    """A ground-truth label message → H×W uint8 ids (mono8/8UC1 Image or grey PNG)."""
    if msgtype == IMAGE:
        enc = str(msg.encoding).strip().lower()
        if enc not in ("mono8", "8uc1"):
            raise ImageDecodeError(f"label images must be mono8 or 8UC1, got {msg.encoding!r}")
        return np.ascontiguousarray(image_to_rgb(msg)[..., 0])
    rgb = compressed_to_rgb(msg)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise ImageDecodeError("compressed label images must be single-channel (grey PNG)")
    return np.ascontiguousarray(rgb[..., 0])


# -- what rosbags does not read from MCAP files ------------------------------------------------
#: (topic, log time, crc32 of the bytes) of a message -> its (sequence, publish time)s in order
MessageMeta = Dict[Tuple[str, int, int], Deque[Tuple[int, int]]]


class McapExtras:
    """What an MCAP input holds beyond what rosbags reads: each message's ``sequence`` and
    ``publish_time`` (rosbags gives only the log time) and each channel's metadata
    (``offered_qos_profiles``, ``topic_type_hash``, ...), so that msaf-bag's copies come out
    as they went in. Read by :func:`mcap_extras` in one pass over the files."""

    def __init__(self) -> None:
        self.messages: MessageMeta = collections.defaultdict(collections.deque)
        self.channel_metadata: Dict[str, Dict[str, str]] = {}   # topic -> metadata

    def take(self, topic: str, log_time: int, raw: bytes) -> Tuple[int, int]:
        """(sequence, publish time) of a message as read by rosbags; (0, log time) when
        unknown."""
        q = self.messages.get((topic, log_time, zlib.crc32(raw)))
        return q.popleft() if q else (0, log_time)


def mcap_extras(reader: Any) -> McapExtras:
    """The :class:`McapExtras` of the MCAP files of an open rosbags Reader (empty for other
    storage). Read record by record (one chunk in memory at a time); messages whose sequence
    is 0 and publish time their log time (rosbags' own output) take no memory. A damaged
    part ends the scan of its file: rosbags reports damage itself."""
    extras = McapExtras()
    top = getattr(reader, "storage", None)          # a folder's reader, or one file's
    for storage in getattr(top, "storages", [top]):
        path = getattr(storage, "path", None)
        if path is None or not str(path).endswith(".mcap"):
            continue
        try:
            with open(path, "rb") as f:
                _scan_mcap_file(f, extras)
        except (OSError, ValueError, struct.error, IndexError, KeyError, EOFError):
            continue
    return extras


def _decompress(kind: str, data: bytes) -> bytes:
    if kind == "":
        return data
    if kind == "zstd":
        try:
            from compression import zstd  # noqa: PLC0415 (Python >= 3.14)
        except ImportError:
            from backports import zstd  # noqa: PLC0415 (a rosbags dependency)
        return zstd.decompress(data)
    if kind == "lz4":
        from lz4.frame import decompress  # noqa: PLC0415 (a rosbags dependency)
        return decompress(data)
    raise ValueError(f"chunk compression {kind!r}")


def _string(b: Any, o: int) -> Tuple[str, int]:
    n = struct.unpack_from("<I", b, o)[0]
    return bytes(b[o + 4:o + 4 + n]).decode("utf-8", "replace"), o + 4 + n


def _scan_mcap_file(f: Any, extras: McapExtras) -> None:
    topics: Dict[int, str] = {}         # this file's channel ids
    if len(f.read(8)) != 8:
        raise EOFError
    while True:
        head = f.read(9)
        if len(head) < 9:
            return
        op, n = head[0], struct.unpack_from("<Q", head, 1)[0]
        if op in (0x04, 0x05, 0x06):
            body = f.read(n)
            if len(body) != n:
                raise EOFError
            _record(op, memoryview(body), extras, topics)
        elif op in (0x02, 0x0F):        # Footer, DataEnd: only indexes follow
            return
        else:
            f.seek(n, 1)


def _record(op: int, b: memoryview, extras: McapExtras, topics: Dict[int, str]) -> None:
    """One Channel (0x04), Message (0x05) or Chunk (0x06) record's body."""
    if op == 0x04:
        cid = struct.unpack_from("<H", b, 0)[0]
        topic, o = _string(b, 4)
        _, o = _string(b, o)                             # message encoding
        end, meta = o + 4 + struct.unpack_from("<I", b, o)[0], {}
        o += 4
        while o < end:
            k, o = _string(b, o)
            v, o = _string(b, o)
            meta[k] = v
        topics[cid] = topic
        extras.channel_metadata.setdefault(topic, meta)
    elif op == 0x05:
        cid, seq, log_t, pub_t = struct.unpack_from("<HIQQ", b, 0)
        topic = topics.get(cid)
        if topic is not None and (seq or pub_t != log_t):
            extras.messages[(topic, log_t, zlib.crc32(b[22:]))].append((seq, pub_t))
    elif op == 0x06:
        kind, o = _string(b, 28)
        length = struct.unpack_from("<Q", b, o)[0]
        records = memoryview(_decompress(kind, bytes(b[o + 8:o + 8 + length])))
        i = 0
        while i + 9 <= len(records):
            rop, n = records[i], struct.unpack_from("<Q", records, i + 1)[0]
            if rop in (0x04, 0x05):
                _record(rop, records[i + 9:i + 9 + n], extras, topics)
            i += 9 + n
