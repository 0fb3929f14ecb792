"""forecast_node under bad input, over real DDS: no bad message costs a good frame its forecast.

Decompression bombs and corrupt payloads are one camera's counted drop, samples that are not
valid CDR never displace the good frame before them, header stamps of any value follow one
rule, settings that cannot work are refused at start and settings that make forecasting
unlikely are warned about. The seeded fuzz test throws every malformed kind of
deltaworld_ros.ros.fuzz at a node with two cameras.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image
from test_node import (
    NS,
    START_TIMEOUT,
    Camera,
    base_params,
    camera_values,
    forecast_node,
    stamp,
    stream,
)

from deltaworld_ros.ros.fuzz import (
    UNDESERIALIZABLE,
    Hostile,
    good_message,
    jpeg_declaring,
    png_bomb,
    png_declaring,
)
from deltaworld_ros.ros.harness import NodeProcess, write_params
from deltaworld_ros.ros.node import OUTPUT_QOS, WARN_EVERY_S

pytestmark = pytest.mark.dds

TOO_LARGE = "dropped: decode error (too large)"
SIZE = (48, 64)


def forecast_stamps(probe, topic: str) -> set[int]:
    return {stamp(m) for m in probe.received(topic)}


def wait_forecast(node, probe, camera: Camera, topic: str, sent: int, timeout: float = 10) -> bool:
    """Until the forecast of the frame stamped `sent` arrives (False on timeout)."""
    done = probe.wait_for(lambda: sent in forecast_stamps(probe, topic), timeout)
    assert node.running(), node.log()
    return done


def warm_up(node, probe, cameras: dict[str, Camera]) -> None:
    topics = {name: f"/deltaworld/{name}/futures" for name in cameras}
    stream(node, list(cameras.values()), lambda: all(probe.received(t) for t in topics.values()),
           START_TIMEOUT)  # fmt: skip


def log_lines(log: str, text: str) -> int:
    return sum(text in line for line in log.splitlines())


def test_a_bomb_on_one_camera_costs_the_other_camera_nothing(tmp_path, domain, model_dir):
    """Camera b sends PNG and JPEG bombs (refused from their headers, before decompression) in
    the same batches as camera a's frames: every one of a's frames is forecast, b's bombs are
    counted as 'too large' and logged once per period, and b forecasts again afterwards."""
    params = base_params(model_dir, cameras=["a", "b"], **{"cameras.b.transport": "compressed"})
    bombs = [png_bomb(9000), png_declaring(30000), jpeg_declaring(65000)]
    with forecast_node(tmp_path, domain, params) as (node, probe):
        for name in ("a", "b"):
            probe.subscribe(Image, f"/deltaworld/{name}/futures", OUTPUT_QOS)
        a = Camera(probe, "/a/image", "a")
        b = Camera(probe, "/b/image/compressed", "b", compressed=True)
        warm_up(node, probe, {"a": a, "b": b})
        start, missed = time.monotonic(), []
        for i in range(12):
            b.send(CompressedImage(format="png" if i % 3 < 2 else "jpeg", data=bombs[i % 3]))
            sent = a.send()
            if not wait_forecast(node, probe, a, "/deltaworld/a/futures", sent):
                missed.append(sent)
        bombing_s = time.monotonic() - start
        last_bomb = b.stamp
        stream(node, [a, b], lambda: max(forecast_stamps(probe, "/deltaworld/b/futures"))
               > last_bomb, 20)  # fmt: skip
        probe.wait_for(lambda: int(camera_values(probe, "b").get(TOO_LARGE, 0)) >= 12, 5)
        values = camera_values(probe, "b")
        log = node.log()

    assert missed == []
    assert int(values[TOO_LARGE]) == 12
    assert "dropped: inference error" not in values
    assert log_lines(log, "forecast failed") == 0
    assert 1 <= log_lines(log, "too large") <= 1 + bombing_s / WARN_EVERY_S
    assert "declares 9000x9000 = 81000000 pixels, more than the limit of 16777216" in log


def test_good_frames_survive_undeserializable_neighbours(tmp_path, domain, model_dir):
    """Each good frame is followed at once by a sample that is not valid CDR (truncated, bad
    encapsulation, random): the good frames are forecast, the bad ones counted."""
    rng = np.random.default_rng(2)
    with forecast_node(tmp_path, domain, base_params(model_dir)) as (node, probe):
        probe.subscribe(Image, "/deltaworld/futures", OUTPUT_QOS)
        camera = Camera(probe, "/image", "camera")
        stream(node, [camera], lambda: probe.received("/deltaworld/futures"), START_TIMEOUT)
        forecast = 0
        for i in range(20):
            msg = good_message("raw", SIZE, camera.stamp)
            sent = camera.send(msg)
            good = serialize_message(msg)
            bad = [good[: len(good) // 2], b"\x07\x07" + good[2:],
                   rng.integers(0, 256, 300, np.uint8).tobytes()][i % 3]  # fmt: skip
            camera.publisher.publish(bad)
            forecast += wait_forecast(node, probe, camera, "/deltaworld/futures", sent, 3)
        probe.wait_for(lambda: int(camera_values(probe, "camera").get(UNDESERIALIZABLE, 0)) >= 20, 5)
        values = camera_values(probe, "camera")
        log = node.log()

    assert forecast >= 19, f"{forecast} of 20 good frames forecast: {values}\n{log}"
    assert int(values[UNDESERIALIZABLE]) == 20
    assert "exceeds remaining buffer" not in log  # no unattributed line from the C deserializer
