"""forecast_node under bad input, over real DDS: no bad message costs a good frame its forecast.

Decompression bombs and corrupt payloads are one camera's counted drop, samples that are not
valid CDR never displace the good frame before them, header stamps of any value follow one
rule, settings that cannot work are refused at start and settings that make forecasting
unlikely are warned about. The seeded fuzz test throws every malformed kind of
deltaworld_ros.tools.fuzz at a node with two cameras.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from functools import partial

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
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

from deltaworld_ros.ros.diagnostics import dropped
from deltaworld_ros.ros.inputs import UNDESERIALIZABLE
from deltaworld_ros.ros.node import OUTPUT_QOS, WARN_EVERY_S
from deltaworld_ros.tools.fuzz import (
    Hostile,
    good_message,
    jpeg_declaring,
    png_bomb,
    png_declaring,
)
from deltaworld_ros.tools.harness import EXECUTABLE, MANAGED_EXECUTABLE, NodeProcess, write_params

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


def recovered(probe, since: dict[str, int]) -> bool:
    """Every camera has a forecast of a frame stamped after since[camera]."""
    return all(
        max(forecast_stamps(probe, f"/deltaworld/{name}/futures")) > stamp
        for name, stamp in since.items()
    )


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


@pytest.mark.parametrize("executable", [EXECUTABLE, MANAGED_EXECUTABLE])
def test_good_frames_survive_undeserializable_neighbours(tmp_path, domain, model_dir, executable):
    """Each good frame is followed at once by a sample that is not valid CDR (truncated, bad
    encapsulation, random): the good frames are forecast, the bad ones counted. The managed
    node (autostart) takes the same input path."""
    rng = np.random.default_rng(2)
    params = base_params(
        model_dir, **({"autostart": True} if executable == MANAGED_EXECUTABLE else {})
    )
    with forecast_node(tmp_path, domain, params, executable=executable) as (node, probe):
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
        probe.wait_for(
            lambda: int(camera_values(probe, "camera").get(dropped(UNDESERIALIZABLE), 0)) >= 20, 5
        )
        values = camera_values(probe, "camera")
        log = node.log()

    assert forecast >= 19, f"{forecast} of 20 good frames forecast: {values}\n{log}"
    assert int(values[dropped(UNDESERIALIZABLE)]) == 20
    assert "exceeds remaining buffer" not in log  # no unattributed line from the C deserializer


def test_header_stamps_of_any_value_follow_one_rule(tmp_path, domain, model_dir):
    """Negative and zero stamps are dropped and counted; nanosec >= 1e9 is normalised, counted,
    and the forecast carries the normalised (valid) stamp; nothing is an inference error."""
    with forecast_node(tmp_path, domain, base_params(model_dir)) as (node, probe):
        probe.subscribe(Image, "/deltaworld/futures", OUTPUT_QOS)
        camera = Camera(probe, "/image", "camera")
        stream(node, [camera], lambda: probe.received("/deltaworld/futures"), START_TIMEOUT)
        for sec, nanosec in ((-5, 0), (-1, 999_999_999), (0, 0)):
            msg = good_message("raw", SIZE, camera.stamp)
            msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
            camera.publisher.publish(msg)
            time.sleep(0.05)
        unnormalised = []
        for _ in range(3):
            camera.stamp += NS // 10
            msg = good_message("raw", SIZE, camera.stamp)
            msg.header.stamp.sec -= 1  # the same time, spelt with nanosec >= 1e9
            msg.header.stamp.nanosec += NS
            camera.publisher.publish(msg)
            unnormalised.append(camera.stamp)
            wait_forecast(node, probe, camera, "/deltaworld/futures", camera.stamp, 5)

        def counted() -> bool:
            values = camera_values(probe, "camera")
            return (
                int(values.get("stamp: nanosec normalised", 0)) >= 3
                and int(values.get("dropped: bad stamp (zero)", 0)) >= 1
            )

        probe.wait_for(counted, 5)
        values = camera_values(probe, "camera")
        futures = probe.received("/deltaworld/futures")
        log = node.log()

    assert int(values["dropped: bad stamp (negative)"]) == 2
    assert int(values["dropped: bad stamp (zero)"]) == 1
    assert int(values["stamp: nanosec normalised"]) == 3
    assert "dropped: inference error" not in values
    assert all(m.header.stamp.nanosec < NS for m in futures)
    assert set(unnormalised) <= {stamp(m) for m in futures}
    assert int(values["forecasts published"]) == len(futures)
    assert log_lines(log, "bad stamp (negative)") == 1  # rate-limited: two within 5 s


def test_a_frame_interval_the_camera_never_meets_is_warned_once(tmp_path, domain, model_dir):
    """frame_interval:=0.01 s with frames 0.1 s apart restarts the history at every frame: one
    WARN line with the numbers and the fix, and a WARN status on /diagnostics."""
    params = base_params(model_dir, frame_interval=0.01)
    with forecast_node(tmp_path, domain, params) as (node, probe):
        camera = Camera(probe, "/image", "camera")

        def warned() -> bool:
            return any(
                s.level == DiagnosticStatus.WARN and "restarts the history" in s.message
                for array in probe.received("/diagnostics")
                for s in array.status
            )

        stream(node, [camera], warned, START_TIMEOUT)
        stream(node, [camera], lambda: len(camera.sent) >= 40, 10)
        log = node.log()

    assert log_lines(log, "restarts the history") == 1
    assert "frames are 0.1 s apart" in log and "set frame_interval:=0.1" in log


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-p", "context_length:=1"), "context_length=1 is invalid"),
        (("-p", "num_hypotheses:=abc"), "num_hypotheses='abc' (from -p) is invalid"),
        (("-p", "use_sim_time:=notbool"), "invalid parameter: Trying to set parameter "
                                          "'use_sim_time' to 'notbool'"),
        (("--params-file", "/nonexistent/params.yaml"),
         "cannot read the params file /nonexistent/params.yaml"),
        (("-p", "cameras:=[]"), "cameras=[] is invalid"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("executable", [EXECUTABLE, MANAGED_EXECUTABLE])
def test_settings_that_cannot_work_stop_the_node_with_one_line(
    tmp_path, domain, model_dir, args, expected, executable
):
    """The same for the plain and the managed node: the command line is checked before
    rclpy.init, the values when the node declares them."""
    files = [write_params(tmp_path / "params.yaml", base_params(model_dir))]
    with NodeProcess(files, domain, tmp_path / "node.log", args, executable) as node:
        code = node.wait(60)
        log = node.log()
    assert code == 2, log
    assert expected in log, log
    assert len(log.strip().splitlines()) == 1, log


def test_seeded_fuzz_of_every_malformed_kind(tmp_path, domain, model_dir):
    """3,000 hostile messages from deltaworld_ros.tools.fuzz in 30 blocks, on a raw and a
    compressed camera: the node stays up, counts what it got by cause (never more than was
    sent of a cause), and after every block both cameras forecast good frames again."""
    hostile = Hostile(seed=14, size=SIZE)
    params = base_params(model_dir, cameras=["raw", "jpg"], visualization=False,
                         **{"cameras.jpg.transport": "compressed"})  # fmt: skip
    sent: dict[str, Counter] = {"raw": Counter(), "jpg": Counter()}
    unpredictable = Counter()
    with forecast_node(tmp_path, domain, params) as (node, probe):
        cameras = {
            "raw": Camera(probe, "/raw/image", "camera"),
            "jpg": Camera(probe, "/jpg/image/compressed", "camera", compressed=True),
        }
        for name in cameras:
            probe.subscribe(Image, f"/deltaworld/{name}/futures", OUTPUT_QOS)
        warm_up(node, probe, cameras)
        start = time.monotonic()
        for _ in range(30):
            for _ in range(100):
                name = "raw" if hostile.rng.random() < 0.5 else "jpg"
                camera = cameras[name]
                transport = "compressed" if camera.compressed else "raw"
                camera.stamp += NS // 10
                case = hostile.case(transport, camera.stamp)
                camera.publisher.publish(case.message)
                sent[name][case.cause] += 1
                unpredictable[name] += case.cause is None
                time.sleep(0.002)
            since = {name: camera.stamp for name, camera in cameras.items()}
            stream(node, list(cameras.values()), partial(recovered, probe, since), 20)
        fuzz_s = time.monotonic() - start
        time.sleep(0.6)  # one more diagnostics period
        counted = {name: camera_values(probe, name) for name in cameras}
        log = node.log()

    for name, causes in sent.items():
        values = counted[name]
        for cause, count in causes.items():
            if cause is not None:
                got = int(values.get(cause, 0))
                assert 1 <= got <= count + unpredictable[name], (name, cause, got, count)
        assert int(values["frames received"]) <= sum(causes.values()) + len(cameras[name].sent)
        assert "dropped: inference error" not in values
    for cause in {c for causes in sent.values() for c in causes if c and c.startswith("dropped")}:
        shown = log_lines(log, cause.removeprefix("dropped: "))
        assert shown <= 2 * (1 + fuzz_s / WARN_EVERY_S), (cause, shown)  # per camera and period
    assert not re.search(r"exceeds remaining buffer|forecast failed", log)
