"""Reading rosbag2 bags (mcap, sqlite3) with rosbags, for every msaf_ros program that does.

Opening a bag and iterating its messages turn every read failure into a one-line
:class:`~msaf_ros.errors.CorruptBagError` (or :class:`~msaf_ros.errors.BagError`). Image and
label messages are decoded with :mod:`msaf_ros.image_codec`. No rclpy.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable, Iterator, Tuple

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
