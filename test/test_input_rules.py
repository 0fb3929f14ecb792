"""The node's rules for what it accepts from a camera message, without DDS: the CDR check
before deserialization, the one stamp rule, and the stamp-spacing verdicts."""

from __future__ import annotations

import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image

from deltaworld_ros.ros.inputs import NS, InputRejected, SpacingCheck, receive
from deltaworld_ros.runtime.gate import GateSettings
from deltaworld_ros.tools.fuzz import good_message

STAMP = 1000 * NS + 5


def cdr(transport: str = "raw", stamp: int = STAMP) -> bytes:
    return serialize_message(good_message(transport, (4, 6), stamp))


@pytest.mark.parametrize("kind", [Image, CompressedImage])
def test_a_good_sample_is_received_with_its_stamp(kind):
    frame = receive(cdr("raw" if kind is Image else "compressed"), kind)
    assert frame.stamp_ns == STAMP and not frame.normalised
    assert (frame.header.stamp.sec, frame.header.stamp.nanosec) == (1000, 5)
    assert frame.header.frame_id == "camera"


@pytest.mark.parametrize(
    ("sample", "why"),
    [
        (b"", "encapsulation header missing is not CDR"),
        (b"\x00\x09\x00\x00" + cdr()[4:], "encapsulation header 00090000 is not CDR"),
        (cdr()[:30], "the payload ends at byte 30, inside its fields"),
        (cdr()[:-10], "a seq declares 72 bytes where 62 remain"),
        (cdr()[:12] + b"\xff\xff\xff\x7f" + cdr()[16:], "a str declares 2147483647 bytes"),
    ],
)
def test_a_sample_that_is_not_cdr_of_the_type_is_rejected_before_deserializing(sample, why):
    with pytest.raises(InputRejected, match=why) as caught:
        receive(sample, Image)
    assert caught.value.cause == "undeserializable"


@pytest.mark.parametrize(
    ("sec", "nanosec", "cause"),
    [(-3, 0, "bad stamp (negative)"), (-1, 999_999_999, "bad stamp (negative)"),
     (0, 0, "bad stamp (zero)"), (2**31 - 1, 4_000_000_000, "bad stamp (out of range)")],
)  # fmt: skip
def test_a_stamp_that_is_no_time_is_rejected(sec, nanosec, cause):
    msg = good_message("raw", (4, 6), STAMP)
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    with pytest.raises(InputRejected) as caught:
        receive(serialize_message(msg), Image)
    assert caught.value.cause == cause


def test_unnormalised_nanoseconds_are_carried_into_the_seconds():
    msg = good_message("raw", (4, 6), STAMP)
    msg.header.stamp.sec, msg.header.stamp.nanosec = 998, 2 * NS + 5
    frame = receive(serialize_message(msg), Image)
    assert frame.normalised and frame.stamp_ns == STAMP
    assert (frame.header.stamp.sec, frame.header.stamp.nanosec) == (1000, 5)


@pytest.mark.parametrize(
    ("spacing", "verdict"),
    [
        (0.1, None),
        (0.033, None),  # a 30 Hz camera: gated to one frame per step, as intended
        (0.2, "frames are 0.2 s apart (median over the last 20 frames), 2.0 x frame_interval"),
        (0.5, "more than the 0.3 s gap (max_gap 3 x frame_interval 0.1 s) that restarts the "
              "history: no frame is ever forecast; set frame_interval:=0.5"),
        (0.0, "header stamps do not advance"),
    ],
)  # fmt: skip
def test_a_spacing_that_makes_forecasting_unlikely_is_told_once(spacing, verdict):
    check = SpacingCheck(GateSettings(frame_interval=0.1, tolerance=0.25, max_gap=3.0))
    told = [check.observe(STAMP + round(i * spacing * NS)) for i in range(60)]
    if verdict is None:
        assert told == [None] * 60 and check.text is None
    else:
        assert [t for t in told if t] == [check.text] and verdict in check.text
