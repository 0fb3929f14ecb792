"""One recording, the same frames kept everywhere: training's clip cutter, the evaluator and the
Forecaster behind the node's intake keep the same frames of a rosbag2 and restart their
histories at the same ones, whatever the camera does (runtime/gate.py has the rules)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_eval import make_tiny_model

from deltaworld_ros.evaluation.evaluator import EvalOptions, evaluate
from deltaworld_ros.evaluation.frames import FrameStats, keep_frames
from deltaworld_ros.io.bags import IMAGE, TYPESTORE, ImageBagWriter, make_header, read_images
from deltaworld_ros.runtime.engine import EngineOptions, open_engine
from deltaworld_ros.runtime.forecaster import Forecaster, ForecasterConfig, FrameInput
from deltaworld_ros.runtime.gate import GAP, RESOLUTION_CHANGED, STAMP_BACKWARDS
from deltaworld_ros.runtime.intake import CameraGate, FrameSizes
from deltaworld_ros.train.data import bag_store

TOPIC = "/camera/image_raw"
NS = 1_000_000_000
SIZE, OTHER = (64, 64), (48, 64)


def camera_frames() -> list[tuple[int, tuple[int, int]]]:
    """(header stamp ns, size) of a 30 Hz camera with 4 ms of stamp jitter, two frames that
    arrive out of order between two kept ones, a lone frame of another size, a 1 s gap, a clock
    that jumps 5 s back, and a resize that lasts."""
    rng = np.random.default_rng(7)
    stamps = 100.0 + np.arange(100) / 30 + rng.uniform(-0.004, 0.004, 100)
    stamps[13], stamps[14] = stamps[14], stamps[13]  # out of order
    stamps[45:] += 1.0  # gap
    stamps[60:] -= 5.0  # the clock jumps back
    sizes = [OTHER if i == 30 or i >= 80 else SIZE for i in range(100)]
    return [(round(t * NS), size) for t, size in zip(stamps, sizes, strict=True)]


def write_recording(path: Path) -> Path:
    """The frames as a recorder logs them: in arrival order, log time always going on."""
    rng = np.random.default_rng(0)
    with ImageBagWriter(path) as bag:
        for i, (stamp, (h, w)) in enumerate(camera_frames()):
            msg = TYPESTORE.types[IMAGE](
                header=make_header(stamp, "camera"), height=h, width=w, encoding="rgb8",
                is_bigendian=0, step=3 * w,
                data=rng.integers(0, 256, h * w * 3, dtype=np.uint8),
            )  # fmt: skip
            bag.write_raw_message(TOPIC, IMAGE, msg, 200 * NS + i * NS // 30)
    return path


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    return write_recording(tmp_path_factory.mktemp("same_frames") / "bag")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def starts(stamps: list[float], restarts: list[bool]) -> list[float]:
    return [t for t, restart in zip(stamps, restarts, strict=True) if restart]


def test_training_the_evaluator_and_the_forecaster_keep_the_same_frames(recording, model_dir):
    engine = open_engine(model_dir, EngineOptions(backend="torch"))
    config = ForecasterConfig(num_hypotheses=2, horizon=1, min_context=1)
    forecaster = Forecaster(engine, config)  # min_context 1: a forecast at every kept frame

    # Training's clip cutter.
    store = bag_store(recording, TOPIC, (64, 64), 2, forecaster.frame_interval)
    training = (list(store.stamps), starts(list(store.stamps), list(store.prev == -1)))

    # The evaluator's frames, and a whole evaluation run over them.
    stats = FrameStats()
    kept = list(keep_frames(read_images(recording, TOPIC), CameraGate(forecaster.gate_settings),
                            stats))  # fmt: skip
    segments = [f.segment for f in kept]
    firsts = [i == 0 or segments[i] != segments[i - 1] for i in range(len(kept))]
    evaluator = ([f.stamp_ns / NS for f in kept], starts([f.stamp_ns / NS for f in kept], firsts))
    options = EvalOptions(recording, TOPIC, label_topic=None, model_dir=model_dir,
                          num_hypotheses=2, horizon=1, engine=EngineOptions(backend="torch"),
                          progress=False)  # fmt: skip
    frames = evaluate(options).metrics.frames

    # The node's path without DDS: the camera's frame sizes, then the Forecaster.
    sizes = FrameSizes()
    forecasts = [
        forecaster.process([FrameInput("cam", f.stamp_ns / NS, f.image)])[0]
        for f in read_images(recording, TOPIC)
        if sizes.admit(f.image.shape[:2])
    ]
    forecasts = [f for f in forecasts if f is not None]
    node = ([f.stamp for f in forecasts], [f.stamp for f in forecasts if f.history_length == 1])

    assert training == evaluator == node
    restarts = {STAMP_BACKWARDS: 1, GAP: 1, RESOLUTION_CHANGED: 1}
    assert stats.restarts == Counter(restarts) and stats.wrong_size == 3 and stats.gated > 50
    assert len(training[1]) == 1 + sum(restarts.values())
    assert frames.kept == len(kept) and frames.restarts == restarts
    assert frames.wrong_size == 3
    assert {k: n for k, n in frames.forecaster[TOPIC].items() if k.startswith("reset")} == {
        f"reset: {reason}": n for reason, n in restarts.items()
    }
    assert frames.forecaster[TOPIC].get("gated", 0) == 0  # the evaluator's frames pass its gate
