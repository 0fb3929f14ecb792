"""Hostile camera input for forecast_node, seeded: every malformed kind the node must survive.

`Hostile(seed).case(transport, stamp)` draws one case: a message (or raw CDR bytes) and the
counter the node must count it under (None where the kind cannot say in advance, e.g. random
bytes that may happen to deserialize). The fuzz test throws thousands of them at a real node;
`deltaworld soak` mixes them into a long stream and reports memory and latency start vs end.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import struct
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ..arguments import at_least, size
from ..io.images import encode_compressed, encode_raw, stamp_ns
from ..model.store import read_manifest
from ..ros import topics
from ..ros.diagnostics import NORMALISED, WRONG_SIZE, decode_error, dropped, latest_cameras
from ..ros.inputs import UNDESERIALIZABLE, bad_stamp
from ..ros.node import OUTPUT_QOS, SENSOR_QOS
from ..ros.share import package_model_dir
from ..runtime.arguments import add_forecast_arguments
from .harness import NodeProcess, Probe, domain_id, write_params

NS = 1_000_000_000


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
        return Case("negative stamp", msg, dropped(bad_stamp("negative")))

    def _zero_stamp(self, transport: str, stamp: int) -> Case:
        msg = self._good(transport, stamp)
        msg.header.stamp.sec = msg.header.stamp.nanosec = 0
        return Case("zero stamp", msg, dropped(bad_stamp("zero")))

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
        return Case("truncated cdr", bytes(cdr[:cut]), dropped(UNDESERIALIZABLE))

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


# --------------------------------------------------------------------------------------------
# `deltaworld soak`: a long stream with hostile messages mixed in.


def node_rss_kib(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Frames at args.rate per camera, stamped with the wall clock, args.bad of them hostile;
    RSS of the node and stamp-to-arrival latency of the forecasts, start vs end."""
    model_dir = args.model_dir or package_model_dir()
    read_manifest(model_dir, verify=False)  # ModelDirError now rather than a node that exits
    names = [f"cam{i}" for i in range(args.cameras)]
    transports = {n: "compressed" if i % 2 else "raw" for i, n in enumerate(names)}
    namespace = f"/{topics.DEFAULT_NAMESPACE}"
    futures = {n: topics.output(f"{namespace}/{n}", topics.FUTURES) for n in names}
    params = {
        "model_dir": str(model_dir),
        "cameras": names,
        "num_hypotheses": args.num_hypotheses,
        "horizon": args.horizon,
        "diagnostics_period": 1.0,
        **{f"cameras.{n}.transport": t for n, t in transports.items()},
    }
    hostile = Hostile(args.seed, args.size)
    sent: dict[str, Counter] = {n: Counter() for n in names}
    rss: list[int] = []  # node KiB, about once a second
    domain = domain_id("soak")
    with tempfile.TemporaryDirectory() as tmp:
        files = [write_params(Path(tmp) / "soak.yaml", params)]
        with NodeProcess(files, domain, Path(tmp) / "node.log") as node, Probe(domain) as probe:
            probe.subscribe(DiagnosticArray, topics.DIAGNOSTICS)
            publishers = {}
            for n in names:
                compressed = transports[n] == "compressed"
                topic = f"{n}/image/compressed" if compressed else f"{n}/image"
                kind = CompressedImage if compressed else Image
                publishers[n] = probe.publisher(kind, topic, SENSOR_QOS)
                probe.subscribe(Image, futures[n], OUTPUT_QOS)

            def publish_round(bad: float) -> None:
                """One frame per camera, `bad` of them hostile, stamped with the wall clock."""
                if not node.running():
                    raise RuntimeError(f"forecast_node exited:\n{node.log()}")
                for n in names:
                    stamp = time.time_ns()
                    if hostile.rng.random() < bad:
                        case = hostile.case(transports[n], stamp)
                        message, cause = case.message, case.cause or "unpredictable"
                    else:
                        message, cause = good_message(transports[n], args.size, stamp), "good"
                    publishers[n].publish(message)
                    sent[n][cause] += 1

            deadline = time.monotonic() + args.startup_timeout
            while not all(probe.received(futures[n]) for n in names):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no forecast within {args.startup_timeout} s:\n"
                                       f"{node.log()}")  # fmt: skip
                publish_round(0.0)
                time.sleep(1 / args.rate)
            for counts in sent.values():
                counts.clear()  # the soak proper starts here
            begin = time.time()
            rounds, start = args.frames // args.cameras, time.monotonic()
            for i in range(rounds):
                publish_round(args.bad)
                if i % max(1, int(args.rate)) == 0:  # about once a second
                    rss.append(node_rss_kib(node.process.pid))
                    print(f"soak: {(i + 1) * args.cameras}/{args.frames} stream-frames, node "
                          f"RSS {rss[-1] / 1024:.1f} MiB", flush=True)  # fmt: skip
                time.sleep(max(0.0, start + (i + 1) / args.rate - time.monotonic()))
            time.sleep(2.5)  # the last forecasts and diagnostics
            counts = latest_cameras(probe.received(topics.DIAGNOSTICS))
            futures = [
                (arrived, stamp_ns(m.header))
                for n in names
                for arrived, m in probe.timed(futures[n])
                if stamp_ns(m.header) >= begin * 1e9
            ]
            code = node.interrupt()
            log = node.log()
    futures.sort(key=lambda f: f[1])
    latency_ms = np.array([(arrived - stamp * 1e-9) * 1e3 for arrived, stamp in futures])
    window = max(1, int(len(latency_ms) * args.window))
    rss_window = max(1, int(len(rss) * args.window))
    start_rss, end_rss = np.median(rss[:rss_window]), np.median(rss[-rss_window:])
    start_p99 = float(np.percentile(latency_ms[:window], 99))
    end_p99 = float(np.percentile(latency_ms[-window:], 99))
    return {
        "what": "forecast_node soaked with hostile input (deltaworld soak)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "model_dir": str(model_dir),
        "params": params,
        "rate_hz_per_camera": args.rate,
        "bad_fraction": args.bad,
        "seed": args.seed,
        "stream_frames_sent": sum(sum(c.values()) for c in sent.values()),
        "sent_by_cause": {n: dict(c) for n, c in sent.items()},
        "node_counters": counts,
        "forecasts_received": len(futures),
        "rss_mib": {
            "start": round(start_rss / 1024, 1),
            "end": round(end_rss / 1024, 1),
            "max": round(max(rss) / 1024, 1),
        },  # fmt: skip
        "latency_p99_ms": {"start": round(start_p99, 2), "end": round(end_p99, 2)},
        "window": f"first and last {args.window:.0%} of the forecasts / RSS samples",
        "exit_code_after_sigint": code,
        "traceback_in_log": "Traceback" in log,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir", type=Path, help="model directory (default: the embedded model)"
    )
    parser.add_argument("--frames", type=at_least(1), default=20000, help="stream-frames in all")
    parser.add_argument(
        "--cameras", type=at_least(1), default=2, help="cameras (raw, compressed, ...)"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second per camera")
    parser.add_argument("--bad", type=float, default=0.05, help="share of hostile messages")
    parser.add_argument("--size", type=size, default=(96, 128), help="HxW of the frames")
    add_forecast_arguments(parser)
    parser.add_argument("--window", type=float, default=0.1, help="start/end share compared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="s for the node")
    parser.add_argument("--out", type=Path, help="JSON (default: benchmarks/soak-node.json)")


def run(args: argparse.Namespace) -> int:
    result = soak(args)
    out = args.out or Path("benchmarks") / "soak-node.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    rss, p99 = result["rss_mib"], result["latency_p99_ms"]
    print(
        f"{result['stream_frames_sent']} stream-frames ({args.bad:.0%} hostile), "
        f"{result['forecasts_received']} forecasts; node RSS {rss['start']} -> {rss['end']} MiB "
        f"(max {rss['max']}), p99 stamp-to-forecast {p99['start']} -> {p99['end']} ms; "
        f"exit {result['exit_code_after_sigint']} after SIGINT -> {out}"
    )
    ok = result["exit_code_after_sigint"] == 0 and not result["traceback_in_log"]
    return 0 if ok else 1
