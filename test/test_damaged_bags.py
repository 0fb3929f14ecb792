"""Damaged bags are read up to the damage and on where the storage allows: by io.bags, by
`deltaworld eval` (a report over the good frames with a note of what was lost), by
`deltaworld replay` (its own recording always closed into a readable bag, also on Ctrl-C) and
by training's bag source. Real rosbag2 files, damaged as disks and killed recorders do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sensor_msgs.msg import Image

from deltaworld_ros.cli import main as deltaworld
from deltaworld_ros.io.bags import (
    COMPRESSED_IMAGE,
    TYPESTORE,
    ImageBagWriter,
    make_header,
    message_count,
    read_images,
    read_messages,
)
from deltaworld_ros.tools.fuzz import moving_frame, png_bomb
from deltaworld_ros.tools.harness import LOCAL_DISCOVERY, Probe
from deltaworld_ros.train.data import bag_store

TOPIC = "/camera/image"
FRAMES = 150  # 96x128 rgb8: about 5 MB, five 1 MiB mcap chunks


def write_bag(path: Path, storage: str) -> Path:
    with ImageBagWriter(path, storage=storage) as writer:
        for i in range(FRAMES):
            stamp = (i + 1) * 10**8
            writer.write_image(TOPIC, stamp, moving_frame((96, 128), stamp), "rgb8")
    return path


def storage_file(bag: Path) -> Path:
    return next(f for f in bag.iterdir() if f.suffix in (".db3", ".mcap"))


def sqlite_damaged_in_the_middle(bag: Path) -> None:
    file = storage_file(bag)
    data = bytearray(file.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8192] = b"\xa5" * 8192  # two pages of garbage
    file.write_bytes(bytes(data))


def truncated(fraction: float, keep_metadata: bool = True):
    def damage(bag: Path) -> None:
        file = storage_file(bag)
        data = file.read_bytes()
        file.write_bytes(data[: int(len(data) * fraction)])  # killed before the footer
        if not keep_metadata:
            (bag / "metadata.yaml").unlink()

    return damage


DAMAGES = {  # name -> (storage, damage, frames readable at least, the note)
    "sqlite3 damaged in the middle": (
        "sqlite3", sqlite_damaged_in_the_middle, FRAMES - 2,
        "is damaged after log time",
    ),
    "mcap truncated at 95 %": ("mcap", truncated(0.95), 110, "ends without its summary"),
    "mcap truncated at 60 %, no metadata.yaml": (
        "mcap", truncated(0.6, keep_metadata=False), 80, "ends without its summary",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clean")
    return {storage: write_bag(root / storage, storage) for storage in ("sqlite3", "mcap")}


@pytest.fixture(params=list(DAMAGES))
def damaged(request, clean, tmp_path) -> tuple[Path, int, str]:
    storage, damage, readable, note = DAMAGES[request.param]
    bag = tmp_path / "damaged"
    shutil.copytree(clean[storage], bag)
    damage(bag)
    return bag, readable, note


def test_reading_goes_up_to_the_damage_and_on(damaged):
    bag, readable, note = damaged
    damage: list[str] = []
    frames = list(read_images(bag, TOPIC, damage=damage))
    stamps = [f.stamp_ns for f in frames]
    assert readable <= len(frames) < FRAMES or "sqlite" in str(damage)
    assert all(f.image is not None for f in frames) and stamps == sorted(stamps)
    assert len(damage) == 1 and note in damage[0], damage
    assert len(bag_store(bag, TOPIC, (64, 64), clip_length=4).rgb) == len(frames)


def test_eval_reports_the_good_frames_and_what_was_lost(damaged, model_dir, tmp_path, capsys):
    bag, readable, note = damaged
    out = tmp_path / "report"
    args = ["eval", "--bag", str(bag), "--image-topic", TOPIC, "--model-dir", str(model_dir),
            "--num-hypotheses", "2", "--horizon", "2", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert deltaworld(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"]["messages"] >= readable
    notes = " ".join(metrics["notes"])
    assert note in notes
    if message_count(bag, TOPIC) > metrics["frames"]["messages"]:
        assert "could not be read from the damaged bag" in notes
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture
def listener(domain):
    """Someone subscribed to the camera topic, so that replay plays (no node needed)."""
    with Probe(domain, "listener") as probe:
        probe.subscribe(Image, TOPIC)
        yield probe


def test_replay_plays_a_damaged_bag_and_closes_its_recording(
    listener, domain, clean, tmp_path, capsys
):
    bag = tmp_path / "damaged"
    shutil.copytree(clean["sqlite3"], bag)
    sqlite_damaged_in_the_middle(bag)
    record = tmp_path / "record"
    args = ["replay", "--bag", str(bag), "--image-topic", TOPIC, "--record", str(record),
            "--rate", "50", "--settle", "0.1", "--domain-id", str(domain),
            "--no-progress"]  # fmt: skip
    assert deltaworld(args) == 1  # played, but no node forecast anything
    assert "is damaged after log time" in capsys.readouterr().err
    (stats,) = [m.msg for m in read_messages(record) if m.topic == "/deltaworld/replay/stats"]
    summary = json.loads(stats.data)
    assert summary["frames_published"] == FRAMES - 1
    assert "is damaged after log time" in summary["input_bag_damage"][0]


def test_replay_interrupted_leaves_a_readable_recording(listener, domain, clean, tmp_path):
    record = tmp_path / "record"
    command = [sys.executable, "-m", "deltaworld_ros.cli", "replay", "--bag",
               str(clean["mcap"]), "--image-topic", TOPIC, "--record", str(record), "--rate",
               "1", "--domain-id", str(domain), "--no-progress"]  # fmt: skip
    env = {**LOCAL_DISCOVERY, **os.environ}
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as replay:
        try:
            assert listener.wait_for(lambda: len(listener.received(TOPIC)) >= 3, 60)
            replay.send_signal(signal.SIGINT)
            code = replay.wait(30)
        finally:
            replay.kill()
        err = replay.stderr.read()
    assert code == 1 and "Traceback" not in err, err
    assert "stopped (interrupted)" in err
    (stats,) = [m.msg for m in read_messages(record) if m.topic == "/deltaworld/replay/stats"]
    summary = json.loads(stats.data)
    assert summary["stopped_by"] == "interrupted"
    assert 3 <= summary["frames_published"] < FRAMES


def test_eval_drops_a_bomb_frame_and_reports_the_rest(model_dir, tmp_path, capsys):
    """A PNG bomb among jpeg frames is one undecodable frame, not a traceback."""
    bag = tmp_path / "bombed"
    with ImageBagWriter(bag) as writer:
        for i in range(20):
            stamp = (i + 1) * 10**8
            if i in (8, 9):
                msg = TYPESTORE.types[COMPRESSED_IMAGE](
                    header=make_header(stamp, "camera"), format="png",
                    data=np.frombuffer(png_bomb(9000), np.uint8),
                )  # fmt: skip
                writer.write_raw_message(TOPIC, COMPRESSED_IMAGE, msg, stamp)
            else:
                writer.write_compressed(TOPIC, stamp, moving_frame((96, 128), stamp))
    out = tmp_path / "report"
    args = ["eval", "--bag", str(bag), "--image-topic", TOPIC, "--model-dir", str(model_dir),
            "--num-hypotheses", "2", "--horizon", "2", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert deltaworld(args) == 0
    frames = json.loads((out / "metrics.json").read_text())["frames"]
    assert (frames["messages"], frames["undecodable"]) == (20, 2)
    assert "Traceback" not in capsys.readouterr().err
