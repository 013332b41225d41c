"""msaf-bag's output: a new rosbag2 folder, built beside its place and moved there when
complete.

The bag is written into ``OUTPUT.partial/OUTPUT`` (with an ``INCOMPLETE.txt`` beside it) and
renamed to ``OUTPUT`` only after it is closed; an error or a signal removes
``OUTPUT.partial/``. :func:`check_output` refuses outputs that would overwrite the input or
something that is not a bag. No rclpy.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from ..errors import BagError, first_line
from .io import IMAGE

# rosbag2 metadata version (rosbags writes 8 or 9; 8 keeps the older QoS layout)
BAG_VERSION = 8
PARTIAL_SUFFIX = ".partial"
PARTIAL_NOTE = ("This folder is an unfinished msaf-bag output (the run was interrupted or "
                "failed). It is not a complete bag: delete it.\n")


def partial_dir(output: Path) -> Path:
    """Where ``output`` is built: ``OUTPUT.partial``."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


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
        raise BagError(f"{output}: the output must not be the input, inside the input "
                       f"bag or contain it ({input_path})")
    if not inp.is_dir() and out == in_dir:
        raise BagError(f"{output}: the output must be a new folder, not the input's folder")
    if output.suffix in (".mcap", ".db3"):
        raise BagError(f"{output}: OUTPUT is a rosbag2 folder; give it a name without the "
                       f"'{output.suffix}' suffix")
    if output.exists() or output.is_symlink():
        if not force:
            raise BagError(f"{output} exists; pass --force to replace it")
        if not output.is_dir() or output.is_symlink():
            raise BagError(f"{output} exists and is not a folder; refusing to replace it "
                           f"even with --force")
        if any(output.iterdir()) and not (output / "metadata.yaml").is_file():
            raise BagError(f"{output} exists and is not a rosbag2 folder (no metadata.yaml);"
                           f" refusing to replace it even with --force")
    staging = partial_dir(output)
    if (staging.exists() or staging.is_symlink()) and not (staging / "INCOMPLETE.txt").is_file():
        raise BagError(f"{staging} exists and was not left by msaf-bag; move it away (the "
                       f"output is written there first)")


def connection_definition(conn: Any, store: Any) -> Tuple[str, str]:
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


def _faithful_writer_class() -> Any:
    """rosbags' Writer whose MCAP storage also writes each message's sequence and publish
    time, and channel metadata beyond the QoS (``topic_type_hash``, and whatever an input
    channel carried), as rosbag2 does. rosbags' own writes publish time = log time, sequence
    0 and the QoS alone."""
    from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: PLC0415
    from rosbags.rosbag2.storage_mcap import (Channel, McapWriter, write_channel,  # noqa
                                              write_record, write_string, write_uint16,
                                              write_uint32, write_uint64)
    from io import BytesIO  # noqa: PLC0415

    class FaithfulMcapWriter(McapWriter):
        #: metadata of the next channel added (set by OutputBag before add_connection)
        next_metadata: Dict[str, str] = {}

        def add_connection(self, connection: Any, offered_qos_profiles: str) -> None:
            meta = dict(self.next_metadata)
            meta["offered_qos_profiles"] = offered_qos_profiles
            meta.setdefault("topic_type_hash", connection.digest or "")
            self.next_metadata = {}
            rec = BytesIO()
            for k, v in meta.items():
                write_string(rec, k)
                write_string(rec, v)
            self.channels.append(Channel(connection.id, connection.msgtype, connection.topic,
                                         connection.ext.serialization_format, rec.getvalue()))
            self.channel_stats[connection.id] = 0
            write_channel(self.chunk.bio, self.channels[-1], self.schemas)

        def write(self, connection: Any, timestamp: int, data: Any, sequence: int = 0,
                  publish_time: Optional[int] = None) -> None:
            self.message_start_time = min(timestamp, self.message_start_time)
            self.message_end_time = max(timestamp, self.message_end_time)
            self.channel_stats[connection.id] += 1
            self.chunk.message_start_time = min(timestamp, self.chunk.message_start_time)
            self.chunk.message_end_time = max(timestamp, self.chunk.message_end_time)
            self.chunk.msgs[connection.id].append((timestamp, self.chunk.bio.tell()))
            rec = BytesIO()
            write_uint16(rec, connection.id)
            write_uint32(rec, sequence & 0xFFFFFFFF)
            write_uint64(rec, timestamp)
            write_uint64(rec, timestamp if publish_time is None else publish_time)
            rec.write(data)
            write_record(self.chunk.bio, 0x05, rec)
            if self.chunk.bio.tell() > 2**20:
                self.close_chunk()

    class FaithfulWriter(Writer):
        STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: FaithfulMcapWriter}

    return FaithfulWriter


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _full_message(output: Path, e: OSError) -> str:
    return (f"{output}: the disk is full ({e.strerror or e}) while writing the output bag; "
            f"the unfinished output was removed. Free space there or choose another OUTPUT")


class OutputBag:
    """The output bag while it is written: a context manager around a rosbags Writer.

    On a clean exit of the ``with`` block the bag is closed and moved to ``output``
    (replacing an old output only then); on any exception, Ctrl-C included, the staging
    folder is removed and the exception goes on."""

    def __init__(self, output: Path, fmt: str, store: Any, *, compression: str = "zstd",
                 note: str = "", log: Callable[[str], None] = print) -> None:
        self.output, self.fmt, self.store = Path(output), fmt, store
        self.compression, self.note, self.log = compression, note, log
        self.staging = partial_dir(self.output)
        self.built = self.staging / self.output.name
        self.writer: Any = None

    def __enter__(self) -> "OutputBag":
        from rosbags.rosbag2 import (CompressionFormat, CompressionMode,  # noqa: PLC0415
                                     StoragePlugin)
        if self.staging.exists():   # check_output made sure it is an old partial output of ours
            self.log(f"note: removing {self.staging}, left by an earlier interrupted run")
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        (self.staging / "INCOMPLETE.txt").write_text(PARTIAL_NOTE)
        self.writer = _faithful_writer_class()(self.built, version=BAG_VERSION,
                             storage_plugin=StoragePlugin.MCAP if self.fmt == "mcap" else
                             StoragePlugin.SQLITE3)
        if self.fmt == "mcap" and self.compression == "zstd":
            self.writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        try:
            if self.note:
                self.writer.set_custom_data("msaf", self.note)
            self.writer.open()
        except BaseException:
            self._discard()
            raise
        return self

    def copy_connections(self, connections: Iterable[Any],
                         metadata: Optional[Dict[str, Dict[str, str]]] = None
                         ) -> Dict[int, Any]:
        """Declare the input's connections in the output; {input connection id: output one}.
        Connections alike in topic, type, serialization and QoS become one. ``metadata``:
        MCAP channel metadata per topic (:class:`~msaf_ros.bag.io.McapExtras`), carried
        over into MCAP output."""
        out: Dict[int, Any] = {}
        declared: Dict[Tuple, Any] = {}
        for c in connections:
            key = (c.topic, c.msgtype, c.ext.serialization_format,
                   repr(c.ext.offered_qos_profiles))
            if key not in declared:
                msgdef, digest = connection_definition(c, self.store)
                meta = dict((metadata or {}).get(c.topic, {}))
                if meta.get("topic_type_hash"):
                    digest = meta["topic_type_hash"]      # the input's own, unchanged
                self._next_metadata(meta)
                declared[key] = self.writer.add_connection(
                    c.topic, c.msgtype, msgdef=msgdef, rihs01=digest,
                    serialization_format=c.ext.serialization_format,
                    offered_qos_profiles=c.ext.offered_qos_profiles)
            out[c.id] = declared[key]
        return out

    def add_image_topic(self, topic: str) -> Any:
        """A new sensor_msgs/Image connection (ROS 2's own definition and hash)."""
        return self.writer.add_connection(topic, IMAGE, typestore=self.store)

    def _next_metadata(self, meta: Dict[str, str]) -> None:
        storage = getattr(self.writer, "storage", None)
        if hasattr(storage, "next_metadata"):
            storage.next_metadata = meta

    def write(self, connection: Any, bag_ns: int, raw: bytes, sequence: int = 0,
              publish_ns: Optional[int] = None) -> None:
        """Write one message at bag (log) time ``bag_ns``; MCAP output also keeps its
        ``sequence`` and publish time (default: the log time)."""
        storage = getattr(self.writer, "storage", None)
        if (sequence or publish_ns is not None) and hasattr(storage, "next_metadata"):
            if connection not in self.writer.connections:
                raise BagError(f"internal error: unknown output connection {connection.topic}")
            storage.write(connection, bag_ns, raw, sequence, publish_ns)
            self.writer.counts[connection.id] += 1
            return
        self.writer.write(connection, bag_ns, raw)

    def write_message(self, connection: Any, bag_ns: int, msg: Any) -> None:
        self.writer.write(connection, bag_ns, self.store.serialize_cdr(msg, msg.__msgtype__))

    def close(self) -> None:
        """Finish the bag's files (the ``with`` block's end moves it into place)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            if isinstance(exc, OSError) and exc.errno in _FULL:
                raise BagError(_full_message(self.output, exc)) from None
            return
        try:
            self.close()
            self._install()
        except OSError as e:
            self._discard()
            if e.errno in _FULL:
                raise BagError(_full_message(self.output, e)) from None
            raise BagError(f"{self.output}: cannot move the finished bag into place "
                           f"({first_line(e)})") from None
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        if self.writer is not None:
            try:
                self.writer.abort()
            except Exception:  # noqa: BLE001
                pass
            self.writer = None
        shutil.rmtree(self.staging, ignore_errors=True)

    def _install(self) -> None:
        """Move the finished bag into place (replacing an old output only now)."""
        output, old = self.output, None
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.replace(output, old)
        try:
            os.replace(self.built, output)
        except BaseException:
            if old is not None:
                os.replace(old, output)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.staging, ignore_errors=True)
