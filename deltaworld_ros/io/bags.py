"""rosbag2 (sqlite3 or mcap) image I/O with the pure-Python `rosbags` library, no ROS install.

Written bags carry their message definitions, so `ros2 bag play` on Humble and later replays
them; the log time of every message is its header stamp, so replay timing equals sensor timing.

Damaged bags are read up to the damage and on where the storage allows: an mcap cut short (a
recorder killed before its footer) is read up to its last complete record, a directory whose
metadata.yaml was never written is read from its one storage file, and an error in the middle
(a corrupt sqlite page, an mcap chunk that fails its CRC) is noted and reading resumes after
it. Readers take a `damage` list that collects one line per problem.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import Connection
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer
from rosbags.rosbag2.reader import DirectoryReader
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.typesys import Stores, get_typestore

from deltaworld_ros.errors import UsageError
from deltaworld_ros.io.images import (
    CompressedFormat,
    decode_image_message,
    decode_labels,
    encode_compressed,
    encode_raw,
    stamp_ns,
)

Storage = Literal["sqlite3", "mcap"]
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)

# sensor_msgs, std_msgs and diagnostic_msgs are identical in Humble and Jazzy; build messages
# for write_raw_message with TYPESTORE.types["std_msgs/msg/String"](data=...) and friends.
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
_BAG_VERSION: Literal[8] = 8  # the newest version Humble's rosbag2 still reads
_STORAGES: dict[str, StoragePlugin] = {
    "sqlite3": StoragePlugin.SQLITE3,
    "mcap": StoragePlugin.MCAP,
}


log = logging.getLogger(__name__)


class MissingTopicError(UsageError, LookupError):
    """A requested topic is not in the bag."""


class BagNotFoundError(UsageError, FileNotFoundError):
    """No rosbag2 at the path given."""


class BagExistsError(UsageError, FileExistsError):
    """A bag to write is there already (rosbag2 writers never overwrite)."""


class _UnfinishedMcapReader(McapReader):
    """rosbags' MCAP reader, which also reads a file whose footer or summary is missing or
    broken (a recorder killed mid-write): every record up to the last complete one."""

    unfinished = ""  # what was read of a file cut short, for the damage notes

    def _open(self) -> None:
        try:
            super()._open()
        except ReaderError:
            if not self.data_start:  # not even the header is readable
                raise
            self._open_unfinished()

    def _open_unfinished(self) -> None:
        assert self.bio
        for table in (self.schemas, self.channels, self.chunks, self.connections):
            table.clear()
        size, offset = self.bio.seek(0, 2), self.data_start
        while offset + 9 <= size:  # records: opcode (1 byte), length (8), body
            self.bio.seek(offset)
            opcode, length = struct.unpack("<BQ", self.bio.read(9))
            if opcode in (0x02, 0x0F) or offset + 9 + length > size:  # footer, data end, cut
                break
            offset += 9 + length
        self.data_end = offset
        self.unfinished = (
            f"{self.path} ends without its summary and footer (a recording cut short): read "
            f"its records up to byte {offset} of {size}"
        )
        self.meta_scan()
        stats = self.statistics
        assert stats
        self.connections = [
            c._replace(msgcount=stats.channel_message_counts.get(c.id, 0)) for c in self.connections
        ]
        count = stats.message_count
        self.metadata = self.metadata._replace(
            duration=stats.end_time - stats.start_time + 1 if count else 0,
            start_time=stats.start_time if count else 2**63 - 1,
            end_time=stats.end_time + 1 if count else 0,
            message_count=count,
        )

    def messages(
        self, connections: Collection[Connection], start: int | None = None,
        stop: int | None = None,
    ) -> Iterator[tuple[Connection, int, bytes]]:  # fmt: skip
        """Without an index, in file order (rosbags insists on timestamp order there)."""
        if self.unfinished:
            return self.messages_scan(connections, start, stop)
        return super().messages(connections, start, stop)


def make_header(stamp: int, frame_id: str) -> Any:
    """A rosbags std_msgs/Header for a stamp in nanoseconds."""
    if stamp < 0:
        raise ValueError(f"stamp must be >= 0 ns, got {stamp}")
    sec, nanosec = divmod(int(stamp), 1_000_000_000)
    time = TYPESTORE.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    return TYPESTORE.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


class ImageBagWriter:
    """Write images (and any other Humble message) into a new rosbag2.

    >>> with ImageBagWriter("out_bag", storage="mcap") as bag:
    ...     bag.write_image("/camera/image_raw", stamp_ns, rgb, "rgb8")
    """

    def __init__(self, path: str | Path, storage: Storage = "mcap") -> None:
        if storage not in _STORAGES:
            raise ValueError(f"storage must be one of {sorted(_STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise BagExistsError(
                f"bag {self.path} exists already; rosbag2 writers never overwrite, "
                "choose another path or delete it"
            )
        self.storage = storage
        self._writer = Writer(self.path, version=_BAG_VERSION, storage_plugin=_STORAGES[storage])
        self._writer.open()
        self._connections: dict[str, Connection] = {}
        self.message_count = 0

    def __enter__(self) -> ImageBagWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Like rosbags: a failed write leaves no metadata.yaml rather than a bag that looks whole.
        if exc_type is None:
            self.close()
        else:
            self._writer.abort()

    def close(self) -> None:
        """Write the index and metadata.yaml; the bag is readable afterwards."""
        if self._writer.storage is not None:
            self._writer.close()

    def write_raw_message(self, topic: str, msgtype: str, msg: Any, stamp_ns: int) -> None:
        """Serialize a rosbags message of `msgtype` onto `topic` at log time `stamp_ns`."""
        connection = self._connections.get(topic)
        if connection is None:
            if msgtype not in TYPESTORE.types:
                raise ValueError(
                    f"message type {msgtype!r} is unknown to the ROS 2 Humble typestore; "
                    "spell it like 'sensor_msgs/msg/Image'"
                )
            connection = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            self._connections[topic] = connection
        elif connection.msgtype != msgtype:
            raise ValueError(
                f"topic {topic} already carries {connection.msgtype}, cannot also write {msgtype}"
            )
        if stamp_ns < 0:
            raise ValueError(f"stamp_ns must be >= 0, got {stamp_ns}")
        self._writer.write(connection, int(stamp_ns), TYPESTORE.serialize_cdr(msg, msgtype))
        self.message_count += 1

    def write_image(
        self,
        topic: str,
        stamp_ns: int,
        array: np.ndarray,
        encoding: str,
        frame_id: str = "camera",
    ) -> None:
        """Write a raw sensor_msgs/Image (encodings as in `encode_raw`)."""
        array = np.asarray(array)
        data, step = encode_raw(array, encoding)
        msg = TYPESTORE.types[IMAGE](
            header=make_header(stamp_ns, frame_id),
            height=array.shape[0],
            width=array.shape[1],
            encoding=encoding,
            is_bigendian=0,
            step=step,
            data=np.frombuffer(data, dtype=np.uint8),
        )
        self.write_raw_message(topic, IMAGE, msg, stamp_ns)

    def write_compressed(
        self,
        topic: str,
        stamp_ns: int,
        rgb: np.ndarray,
        fmt: CompressedFormat = "jpeg",
        frame_id: str = "camera",
    ) -> None:
        """Write a sensor_msgs/CompressedImage the way image_transport does for an rgb8 source."""
        data = encode_compressed(rgb, fmt)
        msg = TYPESTORE.types[COMPRESSED_IMAGE](
            header=make_header(stamp_ns, frame_id),
            format=f"rgb8; {fmt} compressed bgr8",
            data=np.frombuffer(data, dtype=np.uint8),
        )
        self.write_raw_message(topic, COMPRESSED_IMAGE, msg, stamp_ns)


@dataclass
class BagFrame:
    """One image message; `image` is None and `error` says why when it could not be decoded."""

    stamp_ns: int  # header stamp (sensor time); 0 if the message could not be deserialized
    frame_id: str
    image: np.ndarray | None  # RGB uint8 (H, W, 3), or class ids (H, W) with labels=True
    error: str | None
    log_time_ns: int  # when the recorder received it; differs from stamp_ns in recorded bags


class BagMessage(NamedTuple):
    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any  # rosbags dataclass with the ROS field names


def open_bag(path: str | Path) -> AnyReader:
    """An (unopened) AnyReader that also reads unfinished recordings; see the module doc."""
    path = Path(path)
    if not path.exists():
        raise BagNotFoundError(
            f"no rosbag2 at {path}: pass the bag directory (with metadata.yaml) "
            "or its .mcap / .db3 file"
        )
    if path.is_dir() and not (path / "metadata.yaml").exists():
        storages = [*path.glob("*.mcap"), *path.glob("*.db3")]
        if len(storages) == 1:  # the recorder died before writing metadata.yaml
            log.warning("%s has no metadata.yaml; reading %s alone", path, storages[0].name)
            path = storages[0]
    reader = AnyReader([path], default_typestore=TYPESTORE)
    for bag in reader.readers:  # rosbags picks its storage readers by class attributes
        if isinstance(bag.storage, DirectoryReader):
            bag.storage.STORAGE_PLUGINS = {**DirectoryReader.STORAGE_PLUGINS,
                                           "mcap": _UnfinishedMcapReader}  # fmt: skip
        elif isinstance(bag.storage, McapReader):
            bag.storage = _UnfinishedMcapReader(bag.storage.path)
    return reader


def bag_messages(
    reader: AnyReader, connections: list[Connection], damage: list[str] | None = None
) -> Iterator[tuple[Connection, int, bytes]]:
    """reader.messages(connections) that survives damage in the storage: each damaged place
    is noted in `damage` (and logged), and reading resumes just after the last message read,
    then ever further ahead (1 ns, 2 ns, 4 ns, ...) while the same place still fails."""
    damage = [] if damage is None else damage
    for storage in _storages(reader):
        unfinished = isinstance(storage, _UnfinishedMcapReader) and storage.unfinished
        if unfinished and unfinished not in damage:  # "" for a file that was closed properly
            damage.append(unfinished)
    start: int | None = None
    last: int | None = None  # log time of the last message read
    failed_after: int | None | str = "never"  # `last` when the storage last failed
    skip = 1
    while True:
        try:
            for connection, log_time, raw in reader.messages(connections=connections, start=start):
                last = log_time
                yield connection, log_time, raw
            return
        except Exception as err:  # sqlite, mcap, zstd and lz4 each raise their own kinds
            if last != failed_after:  # a new damaged place: retry just after the last read
                failed_after, skip = last, 1
                start = reader.start_time if last is None else last + 1
                where = "at its start" if last is None else f"after log time {last} ns"
                damage.append(f"bag {reader.paths[0]} is damaged {where}: "
                              f"{type(err).__name__}: {err}")  # fmt: skip
                log.warning("%s; reading on after it", damage[-1])
            else:
                start, skip = start + skip, skip * 2
            if start >= reader.end_time:
                damage.append(f"bag {reader.paths[0]}: nothing after log time {last} ns could "
                              "be read")  # fmt: skip
                log.warning(damage[-1])
                return


def _storages(reader: AnyReader) -> list[Any]:
    """The storage readers (one per file) behind an AnyReader."""
    storages = []
    for bag in reader.readers:
        storages += getattr(bag.storage, "storages", [bag.storage])
    return storages


def _connections(reader: AnyReader, topics: Iterable[str]) -> list[Connection]:
    wanted = set(topics)
    present = {c.topic for c in reader.connections}
    if missing := sorted(wanted - present):
        listing = ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections)
        raise MissingTopicError(
            f"topic(s) {', '.join(missing)} not in bag {reader.paths[0]}; "
            f"it has: {listing or 'no topics'}"
        )
    return [c for c in reader.connections if c.topic in wanted]


def bag_topics(path: str | Path) -> dict[str, str]:
    """Topic -> message type ('sensor_msgs/msg/Image') of every topic in the bag."""
    with open_bag(path) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def message_count(path: str | Path, topic: str) -> int:
    """Messages on `topic` by the bag's own count (metadata, or an unfinished file's scan)."""
    with open_bag(path) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic == topic)


def read_messages(
    path: str | Path, topics: Iterable[str] | None = None, damage: list[str] | None = None
) -> Iterator[BagMessage]:
    """Every message on `topics` (all when None), deserialized, in log-time order; damaged
    storage and messages that do not deserialize are skipped and noted in `damage`."""
    damage = [] if damage is None else damage
    unreadable = 0
    with open_bag(path) as reader:
        connections = reader.connections if topics is None else _connections(reader, topics)
        for connection, log_time, raw in bag_messages(reader, connections, damage):
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except (AnyReaderError, ValueError, IndexError, struct.error):
                unreadable += 1
                continue
            yield BagMessage(connection.topic, connection.msgtype, log_time, msg)
    if unreadable:
        damage.append(f"{unreadable} message(s) of {path} did not deserialize and were skipped")


def read_images(
    path: str | Path, topic: str, labels: bool = False, damage: list[str] | None = None
) -> Iterator[BagFrame]:
    """Decoded frames of one Image or CompressedImage topic, in log-time order.

    A message that cannot be decoded is yielded with image=None and the reason in `error`, so
    a long replay survives one bad frame and the caller can count drops; damage in the
    storage is noted in `damage` (see bag_messages).
    """
    with open_bag(path) as reader:
        image_topics = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            listing = ", ".join(f"{c.topic} ({c.msgtype})" for c in image_topics)
            raise MissingTopicError(
                f"image topic {topic} not in bag {path}; its image topics are: "
                f"{listing or 'none'} (pick one with --topic)"
            )
        if wrong := [c.msgtype for c in connections if c.msgtype not in IMAGE_TYPES]:
            raise ValueError(f"topic {topic} carries {wrong[0]}, not {IMAGE} or {COMPRESSED_IMAGE}")
        decode = decode_labels if labels else decode_image_message
        for connection, log_time, raw in bag_messages(reader, connections, damage):
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except (AnyReaderError, ValueError, IndexError, struct.error) as err:
                yield BagFrame(0, "", None, f"cannot deserialize message: {err}", log_time)
                continue
            header = msg.header
            try:
                image, error = decode(msg), None
            except ValueError as err:  # ImageDecodeError, and malformed fields
                image, error = None, str(err)
            yield BagFrame(stamp_ns(header), header.frame_id, image, error, log_time)
