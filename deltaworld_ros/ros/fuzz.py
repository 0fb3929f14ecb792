"""Hostile camera input for forecast_node, seeded: every malformed kind the node must survive.

`Hostile(seed).case(transport, stamp)` draws one case: a message (or raw CDR bytes) and the
counter the node must count it under (None where the kind cannot say in advance, e.g. random
bytes that may happen to deserialize). The fuzz test throws thousands of them at a real node;
`deltaworld soak` mixes them into a long stream and reports memory and latency start vs end.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ..io.images import encode_compressed, encode_raw
from .diagnostics import DECODE_ERROR, NORMALISED, WRONG_SIZE

NS = 1_000_000_000
UNDESERIALIZABLE = "dropped: undeserializable"


def decode_error(cause: str) -> str:
    return f"{DECODE_ERROR} ({cause})"


@dataclass
class Case:
    kind: str
    message: Image | CompressedImage | bytes  # bytes: serialized CDR, published as is
    cause: str | None  # the node's counter for it; None: not predictable
    good: bool = False  # unusual but valid: the node must forecast it


def header(stamp: int, frame_id: str = "camera") -> Header:
    """A header of `stamp` ns; negative stamps keep sec negative and nanosec in range."""
    msg = Header(frame_id=frame_id)
    msg.stamp.sec, msg.stamp.nanosec = divmod(stamp, NS)
    return msg


def moving_frame(size: tuple[int, int], stamp: int) -> np.ndarray:
    """A moving gradient (RGB uint8), so that consecutive frames differ."""
    h, w = size
    ramp = np.roll(np.linspace(0, 255, w).astype(np.uint8), stamp // (NS // 10) % w)
    return np.stack([np.broadcast_to(ramp, (h, w)), np.full((h, w), 90, np.uint8),
                     np.broadcast_to(ramp[::-1], (h, w))], -1)  # fmt: skip


def good_message(transport: str, size: tuple[int, int], stamp: int) -> Image | CompressedImage:
    rgb = moving_frame(size, stamp)
    if transport == "compressed":
        return CompressedImage(header=header(stamp), format="jpeg", data=encode_compressed(rgb))
    data, step = encode_raw(rgb, "rgb8")
    return Image(header=header(stamp), height=size[0], width=size[1], encoding="rgb8",
                 step=step, data=data)  # fmt: skip


def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.cache
def png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side zero pixels: ~80 KB for 9000 px, 81 MB decoded."""
    compressor = zlib.compressobj(6)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return _png(side, side, idat)


def png_declaring(side: int) -> bytes:
    """A PNG header declaring side x side pixels over a token payload."""
    return _png(side, side, zlib.compress(bytes(side + 1)))


@functools.cache
def jpeg_declaring(side: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims side x side pixels."""
    jpeg = bytearray(encode_compressed(np.zeros((8, 8, 3), np.uint8), "jpeg"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(jpeg)


class Hostile:
    """Seeded malformed cases for a camera of `size` (H, W); see the module docstring."""

    def __init__(self, seed: int, size: tuple[int, int]) -> None:
        self.rng = np.random.default_rng(seed)
        self.size = size
        common: dict[str, Callable[[str, int], Case]] = {
            "negative stamp": self._negative_stamp,
            "zero stamp": self._zero_stamp,
            "unnormalised nanosec": self._unnormalised,
            "far future stamp": self._far_future,
            "truncated cdr": self._truncated_cdr,
            "random cdr": self._random_cdr,
            "bit-flipped cdr": self._bit_flipped_cdr,
            "invalid utf-8 frame_id": self._invalid_utf8,
            "string without nul": self._no_nul,
            "bad encapsulation": self._bad_encapsulation,
        }
        self.kinds = {
            "raw": {
                "wrong step": self._wrong_step,
                "truncated data": self._truncated_data,
                "huge declared size": self._huge_raw,
                "8192x8192 declared": self._declared_8k,
                "zero size": self._zero_size,
                "unknown encoding": self._unknown_encoding,
                "odd yuv422 width": self._odd_yuv,
                "is_bigendian junk": self._bigendian_junk,
                "other size": self._other_size,
                "16-bit and yuv": self._wide_encodings,
                **common,
            },
            "compressed": {
                "truncated jpeg": self._truncated_jpeg,
                "garbage png": self._garbage_png,
                "png bomb": self._png_bomb,
                "png declaring 30000x30000": self._png_header_bomb,
                "jpeg declaring 65000x65000": self._jpeg_bomb,
                "unknown format": self._unknown_format,
                **common,
            },
        }

    def case(self, transport: str, stamp: int) -> Case:
        kinds = self.kinds[transport]
        kind = list(kinds)[self.rng.integers(len(kinds))]
        return kinds[kind](transport, stamp)

    # Raw sensor_msgs/Image.
    def _raw(self, stamp: int, **fields: Any) -> Image:
        return Image(header=header(stamp), **fields)

    def _wrong_step(self, _: str, stamp: int) -> Case:
        h, w = self.size
        msg = self._raw(stamp, height=h, width=w, encoding="rgb8", step=3 * w - 1,
                        data=bytes(3 * w * h))  # fmt: skip
        return Case("wrong step", msg, decode_error("step/data length"))

    def _truncated_data(self, _: str, stamp: int) -> Case:
        h, w = self.size
        cut = int(self.rng.integers(0, 3 * w * h))
        msg = self._raw(stamp, height=h, width=w, encoding="bgr8", step=3 * w, data=bytes(cut))
        return Case("truncated data", msg, decode_error("step/data length"))

    def _huge_raw(self, _: str, stamp: int) -> Case:
        side = int(self.rng.integers(20000, 60000))
        msg = self._raw(stamp, height=side, width=side, encoding="rgb8", step=3 * side,
                        data=bytes(64))  # fmt: skip
        return Case("huge declared size", msg, decode_error("too large"))

    def _declared_8k(self, _: str, stamp: int) -> Case:
        msg = self._raw(stamp, height=8192, width=8192, encoding="mono8", step=8192, data=b"")
        return Case("8192x8192 declared", msg, decode_error("too large"))

    def _zero_size(self, _: str, stamp: int) -> Case:
        return Case("zero size", self._raw(stamp, encoding="rgb8"), decode_error("zero size"))

    def _unknown_encoding(self, _: str, stamp: int) -> Case:
        encoding = str(self.rng.choice(["rgb9", "bayer_xyz8", "", "32FC3", "RGB8"]))
        h, w = self.size
        msg = self._raw(stamp, height=h, width=w, encoding=encoding, step=3 * w,
                        data=bytes(3 * w * h))  # fmt: skip
        return Case("unknown encoding", msg, decode_error("unknown encoding"))

    def _odd_yuv(self, _: str, stamp: int) -> Case:
        h, w = self.size[0], self.size[1] - 1
        msg = self._raw(stamp, height=h, width=w, encoding="yuv422", step=2 * w,
                        data=bytes(2 * w * h))  # fmt: skip
        return Case("odd yuv422 width", msg, decode_error("odd width"))

    def _bigendian_junk(self, _: str, stamp: int) -> Case:
        h, w = self.size
        junk = int(self.rng.integers(2, 256))
        msg = self._raw(stamp, height=h, width=w, encoding="rgb16", step=6 * w,
                        data=bytes(6 * w * h), is_bigendian=junk)  # fmt: skip
        return Case("is_bigendian junk", msg, decode_error("is_bigendian"))

    def _other_size(self, _: str, stamp: int) -> Case:
        rgb = moving_frame((self.size[0] // 2, self.size[1] // 2), stamp)
        data, step = encode_raw(rgb, "rgb8")
        msg = self._raw(stamp, height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                        step=step, data=data)  # fmt: skip
        return Case("other size", msg, WRONG_SIZE)

    def _wide_encodings(self, _: str, stamp: int) -> Case:
        """A valid frame in a 16-bit or 4:2:2 encoding, big-endian or not: forecast."""
        h, w = self.size
        encoding = str(self.rng.choice(["mono16", "rgb16", "bgr16", "16UC1", "yuv422", "yuyv"]))
        channels = {"mono16": 1, "16UC1": 1, "rgb16": 3, "bgr16": 3}.get(encoding, 1)
        step = 2 * channels * w
        data = self.rng.integers(0, 256, step * h, dtype=np.uint8).tobytes()
        msg = self._raw(stamp, height=h, width=w, encoding=encoding, step=step, data=data,
                        is_bigendian=int(self.rng.integers(2)))  # fmt: skip
        return Case("16-bit and yuv", msg, None, good=True)

    # sensor_msgs/CompressedImage.
    def _compressed(self, stamp: int, fmt: str, data: bytes) -> CompressedImage:
        return CompressedImage(header=header(stamp), format=fmt, data=data)

    def _truncated_jpeg(self, _: str, stamp: int) -> Case:
        jpeg = encode_compressed(moving_frame(self.size, stamp))
        cut = int(self.rng.integers(0, len(jpeg) - 2))
        msg = self._compressed(stamp, "rgb8; jpeg compressed bgr8", jpeg[:cut])
        return Case("truncated jpeg", msg, decode_error("corrupt payload"))

    def _garbage_png(self, _: str, stamp: int) -> Case:
        junk = self.rng.integers(0, 256, int(self.rng.integers(0, 4000)), dtype=np.uint8)
        return Case("garbage png", self._compressed(stamp, "png", junk.tobytes()),
                    decode_error("corrupt payload"))  # fmt: skip

    def _png_bomb(self, _: str, stamp: int) -> Case:
        msg = self._compressed(stamp, "png", png_bomb(9000))
        return Case("png bomb", msg, decode_error("too large"))

    def _png_header_bomb(self, _: str, stamp: int) -> Case:
        msg = self._compressed(stamp, "png", png_declaring(30000))
        return Case("png declaring 30000x30000", msg, decode_error("too large"))

    def _jpeg_bomb(self, _: str, stamp: int) -> Case:
        msg = self._compressed(stamp, "jpeg", jpeg_declaring(65000))
        return Case("jpeg declaring 65000x65000", msg, decode_error("too large"))

    def _unknown_format(self, _: str, stamp: int) -> Case:
        fmt = str(self.rng.choice(["tiff", "", "16UC1; compressedDepth png", "webp"]))
        msg = self._compressed(stamp, fmt, encode_compressed(moving_frame(self.size, stamp)))
        return Case("unknown format", msg, decode_error("format"))

    # Stamps: one rule for any value.
    def _good(self, transport: str, stamp: int) -> Image | CompressedImage:
        return good_message(transport, self.size, stamp)

    def _negative_stamp(self, transport: str, stamp: int) -> Case:
        msg = self._good(transport, stamp)
        msg.header.stamp.sec = -int(self.rng.integers(1, 2**31))
        return Case("negative stamp", msg, "dropped: bad stamp (negative)")

    def _zero_stamp(self, transport: str, stamp: int) -> Case:
        msg = self._good(transport, stamp)
        msg.header.stamp.sec = msg.header.stamp.nanosec = 0
        return Case("zero stamp", msg, "dropped: bad stamp (zero)")

    def _unnormalised(self, transport: str, stamp: int) -> Case:
        msg = self._good(transport, stamp)
        msg.header.stamp.sec -= 1
        msg.header.stamp.nanosec += NS  # the same time, spelt with nanosec >= 1e9
        return Case("unnormalised nanosec", msg, NORMALISED, good=True)

    def _far_future(self, transport: str, stamp: int) -> Case:
        """Valid, but a jump: the history restarts here and again when time comes back."""
        msg = self._good(transport, stamp)
        msg.header.stamp.sec = 2**31 - 1 - int(self.rng.integers(0, 1000))
        return Case("far future stamp", msg, None)

    # Serialized samples the middleware cannot (or can barely) deserialize.
    def _cdr(self, transport: str, stamp: int) -> bytearray:
        return bytearray(serialize_message(self._good(transport, stamp)))

    def _truncated_cdr(self, transport: str, stamp: int) -> Case:
        cdr = self._cdr(transport, stamp)
        cut = int(self.rng.integers(4, len(cdr) - 1))
        return Case("truncated cdr", bytes(cdr[:cut]), UNDESERIALIZABLE)

    def _random_cdr(self, _: str, stamp: int) -> Case:
        size = int(self.rng.integers(0, 2000))
        return Case("random cdr", self.rng.integers(0, 256, size, np.uint8).tobytes(), None)

    def _bit_flipped_cdr(self, transport: str, stamp: int) -> Case:
        cdr = self._cdr(transport, stamp)
        for bit in self.rng.integers(0, 8 * min(len(cdr), 80), int(self.rng.integers(1, 8))):
            cdr[bit // 8] ^= 1 << (bit % 8)  # in the header and sizes, where it hurts most
        return Case("bit-flipped cdr", bytes(cdr), None)

    def _invalid_utf8(self, transport: str, stamp: int) -> Case:
        cdr = self._cdr(transport, stamp)
        at = cdr.index(b"camera")
        cdr[at : at + 6] = b"\xff\xfe\x80\xc3(\xa0"
        return Case("invalid utf-8 frame_id", bytes(cdr), None)

    def _no_nul(self, transport: str, stamp: int) -> Case:
        cdr = self._cdr(transport, stamp)
        cdr[cdr.index(b"camera") + 6] = ord("x")
        return Case("string without nul", bytes(cdr), None)

    def _bad_encapsulation(self, transport: str, stamp: int) -> Case:
        cdr = self._cdr(transport, stamp)
        cdr[0:2] = self.rng.integers(0, 256, 2, np.uint8).tobytes()
        return Case("bad encapsulation", bytes(cdr), None)
