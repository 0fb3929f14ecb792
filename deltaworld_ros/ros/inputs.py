"""What the node accepts from a camera message before inference, and why it drops the rest.

The node takes its camera topics serialized and deserializes them here, so that a sample the
middleware cannot turn into a message is counted on its camera and never displaces a good
frame (a keep-last-1 reader would otherwise hold the bad sample in place of the good one).
The sizes in the CDR are checked first: the C deserializer prints an unattributed line to
stderr for each string or sequence that overruns the buffer, at the rate the samples come.

One rule for header stamps: the stamp is sec * 1e9 + nanosec nanoseconds, whatever the
fields hold. A stamp <= 0 (negative, or zero = never set) cannot place a frame in time and is
dropped; a nanosec field >= 1e9 is carried into the seconds, and the outputs carry the
normalised stamp, so that every published header is a valid time.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ..io.images import stamp_ns
from ..runtime.gate import GateSettings

NS = 1_000_000_000
MAX_SEC = 2**31 - 1  # builtin_interfaces/Time.sec is an int32
SPACING_WINDOW = 20  # stamp differences behind a spacing verdict
FAR_SPACING = 1.5  # x frame_interval: kept frames further apart than the model was trained on


UNDESERIALIZABLE = "undeserializable"  # causes of InputRejected


def bad_stamp(kind: str) -> str:
    """The cause of a rejected header stamp: "negative", "zero", "out of range"."""
    return f"bad stamp ({kind})"


class InputRejected(Exception):
    """A camera message the node drops; `cause` names the counter, the message the details."""

    def __init__(self, cause: str, text: str) -> None:
        super().__init__(text)
        self.cause = cause


@dataclass
class Received:
    msg: Any  # sensor_msgs Image or CompressedImage
    stamp_ns: int  # the stamp by the rule above, > 0
    header: Header  # the header the outputs carry: the frame's, stamp normalised
    normalised: bool  # nanosec was >= 1e9


# The CDR fields of each camera message type after the header, in order: "u32" a 4-byte
# number, "u8" a byte, "str"/"seq" a 4-byte length followed by that many bytes.
_HEADER = ("u32", "u32", "str")  # stamp.sec, stamp.nanosec, frame_id
_LAYOUTS = {
    Image: (*_HEADER, "u32", "u32", "str", "u8", "u32", "seq"),
    CompressedImage: (*_HEADER, "str", "seq"),
}
_ENCAPSULATIONS = {0: ">", 1: "<", 6: ">", 7: "<"}  # plain CDR and CDR2, big / little endian


def _cdr_problem(raw: bytes, kind: type) -> str | None:
    """Why `raw` cannot be a `kind` message (a length past the end of the sample), or None."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] not in _ENCAPSULATIONS:
        return f"encapsulation header {raw[:4].hex() or 'missing'} is not CDR"
    order, offset = _ENCAPSULATIONS[raw[1]], 4
    end = len(raw) - (raw[3] & 3)  # the options' low bits count padding after the payload
    for field in _LAYOUTS[kind]:
        if field == "u8":
            offset += 1
            continue
        offset = 4 + -(-(offset - 4) // 4) * 4  # 4-byte alignment from the end of the header
        if offset + 4 > end:
            return f"the payload ends at byte {end}, inside its fields"
        offset += 4
        if field in ("str", "seq"):
            (length,) = struct.unpack_from(f"{order}I", raw, offset - 4)
            if length > end - offset:
                return f"a {field} declares {length} bytes where {end - offset} remain"
            offset += length
    return None


def receive(raw: bytes, kind: type) -> Received:
    """Serialized camera message -> Received; InputRejected when it cannot be used."""
    problem = _cdr_problem(raw, kind)
    if problem is not None:
        raise InputRejected(
            UNDESERIALIZABLE,
            f"a {len(raw)}-byte sample is not a valid {kind.__name__}: {problem}; check the "
            "publisher's message type",
        )
    try:
        msg = deserialize_message(raw, kind)
    except Exception as err:  # rmw raises its own error types for malformed CDR
        raise InputRejected(
            UNDESERIALIZABLE,
            f"a {len(raw)}-byte sample is not a valid {kind.__name__} ({err}); "
            "check the publisher's message type",
        ) from err
    stamp = stamp_ns(msg.header)
    if stamp <= 0:
        kind_of = "negative" if stamp < 0 else "zero"
        raise InputRejected(
            bad_stamp(kind_of),
            f"header stamp sec={msg.header.stamp.sec} nanosec={msg.header.stamp.nanosec} is "
            f"{kind_of}: frames need their capture time in header.stamp",
        )
    sec, nanosec = divmod(stamp, NS)
    if sec > MAX_SEC:  # only a huge nanosec can carry sec past builtin_interfaces' int32
        raise InputRejected(
            bad_stamp("out of range"),
            f"header stamp sec={msg.header.stamp.sec} nanosec={msg.header.stamp.nanosec} "
            f"normalises past the largest time a header holds (sec {MAX_SEC})",
        )
    header = Header(frame_id=msg.header.frame_id)
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    return Received(msg, stamp, header, msg.header.stamp.nanosec >= NS)


class SpacingCheck:
    """One camera's header-stamp spacing against the forecaster's gate: says when the
    settings make forecasting unlikely, with the numbers and the fix."""

    def __init__(self, gate: GateSettings) -> None:
        self.gate = gate
        self._stamps: deque[int] = deque(maxlen=SPACING_WINDOW + 1)
        self.text: str | None = None  # the problem that holds now, if any
        self._told: set[str] = set()  # kinds of problem logged already

    def observe(self, stamp: int) -> str | None:
        """Add a frame's stamp; the problem's text the first time a kind of problem shows
        (log it then; `text` says while it lasts)."""
        self._stamps.append(stamp)
        if len(self._stamps) <= SPACING_WINDOW:
            return None
        spacing = float(np.median(np.diff(np.asarray(self._stamps)))) / NS
        kind, self.text = self._verdict(spacing)
        if kind is None or kind in self._told:
            return None
        self._told.add(kind)
        return self.text

    def _verdict(self, spacing: float) -> tuple[str | None, str | None]:
        interval, restart_after = self.gate.frame_interval, self.gate.restart_after
        window = f"median over the last {SPACING_WINDOW} frames"
        if spacing <= 0:
            return "still", (
                f"header stamps do not advance ({window}: {spacing:g} s): every frame after "
                "the first is gated or restarts the history; stamp each frame with its "
                "capture time"
            )
        if spacing > restart_after:
            return "restart", (
                f"frames are {spacing:.3g} s apart ({window}), more than the "
                f"{restart_after:.3g} s gap (max_gap {self.gate.max_gap:g} x frame_interval "
                f"{interval:g} s) that restarts the history: no frame is ever forecast; set "
                f"frame_interval:={spacing:.3g} or send frames at least every "
                f"{restart_after:.3g} s"
            )
        if spacing > FAR_SPACING * interval:
            return "far", (
                f"frames are {spacing:.3g} s apart ({window}), {spacing / interval:.1f} x "
                f"frame_interval {interval:g} s: each forecast steps {interval:g} s from a "
                "history spaced wider than that; set frame_interval:="
                f"{spacing:.3g} or send frames at least every {interval:g} s"
            )
        return None, None
