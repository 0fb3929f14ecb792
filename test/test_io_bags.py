"""rosbag2 round trips in both storages: raw, compressed and label images, stamps preserved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deltaworld_ros.io.bags import (
    TYPESTORE,
    ImageBagWriter,
    MissingTopicError,
    bag_topics,
    make_header,
    read_images,
    read_messages,
)

RNG = np.random.default_rng(1)
FRAMES = [RNG.integers(0, 256, (8, 10, 3), dtype=np.uint8) for _ in range(3)]
LABELS = [RNG.integers(0, 19, (8, 10), dtype=np.uint8) for _ in range(3)]
STAMPS = [1_700_000_000_000_000_000 + i * 100_000_000 + 7 for i in range(3)]


def write_bag(path: Path, storage: str) -> Path:
    with ImageBagWriter(path, storage=storage) as bag:
        # Written out of order on purpose: readers must return log-time order.
        for i in (2, 0, 1):
            bag.write_image("/cam/raw", STAMPS[i], FRAMES[i], "bgr8", frame_id="front")
            bag.write_compressed("/cam/compressed", STAMPS[i], FRAMES[i], fmt="png")
            bag.write_image("/cam/labels", STAMPS[i], LABELS[i], "mono8")
        note = TYPESTORE.types["std_msgs/msg/String"](data="hello")
        bag.write_raw_message("/note", "std_msgs/msg/String", note, STAMPS[0])
    return path


@pytest.fixture(params=["sqlite3", "mcap"])
def bag(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return write_bag(tmp_path / f"bag_{request.param}", request.param)


def test_topics_and_types(bag: Path) -> None:
    assert bag_topics(bag) == {
        "/cam/raw": "sensor_msgs/msg/Image",
        "/cam/compressed": "sensor_msgs/msg/CompressedImage",
        "/cam/labels": "sensor_msgs/msg/Image",
        "/note": "std_msgs/msg/String",
    }


@pytest.mark.parametrize("topic", ["/cam/raw", "/cam/compressed"])
def test_images_round_trip_in_time_order(bag: Path, topic: str) -> None:
    frames = list(read_images(bag, topic))
    assert [f.stamp_ns for f in frames] == STAMPS
    assert [f.log_time_ns for f in frames] == STAMPS  # log time = header stamp
    assert all(f.error is None for f in frames)
    for frame, expected in zip(frames, FRAMES, strict=True):
        np.testing.assert_array_equal(frame.image, expected)
    assert {f.frame_id for f in read_images(bag, "/cam/raw")} == {"front"}


def test_labels_round_trip(bag: Path) -> None:
    frames = list(read_images(bag, "/cam/labels", labels=True))
    for frame, expected in zip(frames, LABELS, strict=True):
        assert frame.image is not None and frame.image.dtype == np.uint8
        np.testing.assert_array_equal(frame.image, expected)


def test_read_messages_is_generic(bag: Path) -> None:
    messages = list(read_messages(bag, ["/note", "/cam/labels"]))
    assert [m.log_time_ns for m in messages] == sorted(m.log_time_ns for m in messages)
    (note,) = [m for m in messages if m.topic == "/note"]
    assert note.msgtype == "std_msgs/msg/String" and note.msg.data == "hello"
    assert len(list(read_messages(bag))) == 10


def test_missing_topic_lists_what_the_bag_has(bag: Path) -> None:
    with pytest.raises(MissingTopicError) as err:
        next(read_images(bag, "/camera/image_raw"))
    text = str(err.value)
    assert "/camera/image_raw not in bag" in text
    assert "/cam/raw (sensor_msgs/msg/Image)" in text and "/note" not in text
    with pytest.raises(MissingTopicError, match=r"/nope not in bag .*/note \(std_msgs"):
        next(read_messages(bag, ["/nope"]))
    with pytest.raises(ValueError, match="/note carries std_msgs/msg/String"):
        next(read_images(bag, "/note"))


def test_undecodable_frames_are_yielded_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    with ImageBagWriter(path, storage="mcap") as bag:
        bag.write_image("/cam", STAMPS[0], FRAMES[0], "rgb8")
        broken = TYPESTORE.types["sensor_msgs/msg/CompressedImage"](
            header=make_header(STAMPS[1], "camera"),
            format="jpeg",
            data=np.frombuffer(b"\xff\xd8\xff\xe0 not really a jpeg", np.uint8),
        )
        bag.write_raw_message("/cam_c", "sensor_msgs/msg/CompressedImage", broken, STAMPS[1])
        bag.write_image("/cam_l", STAMPS[0], FRAMES[0], "rgb8")
    (bad,) = read_images(path, "/cam_c")
    assert bad.image is None and "cannot decode" in bad.error and bad.stamp_ns == STAMPS[1]
    (colour_as_labels,) = read_images(path, "/cam_l", labels=True)
    assert colour_as_labels.image is None and "not a class-id encoding" in colour_as_labels.error


def test_writer_refuses_misuse(tmp_path: Path) -> None:
    path = write_bag(tmp_path / "exists", "mcap")
    with pytest.raises(FileExistsError, match="exists already"):
        ImageBagWriter(path)
    with pytest.raises(ValueError, match="storage must be one of"):
        ImageBagWriter(tmp_path / "x", storage="rosbag1")  # type: ignore[arg-type]
    with ImageBagWriter(tmp_path / "y") as bag:
        bag.write_image("/cam", 0, FRAMES[0], "rgb8")
        with pytest.raises(ValueError, match="/cam already carries sensor_msgs/msg/Image"):
            bag.write_compressed("/cam", 1, FRAMES[0])
        with pytest.raises(ValueError, match="stamp must be >= 0 ns, got -1"):
            bag.write_image("/cam", -1, FRAMES[0], "rgb8")
    with pytest.raises(FileNotFoundError, match="no rosbag2 at"):
        bag_topics(tmp_path / "missing")
