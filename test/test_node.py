"""forecast_node over real DDS, started as a user starts it: the `forecast_node` console script
with --ros-args --params-file, in a ROS domain of its own per test. A probe node publishes
camera frames and reads every output. Model: the tiny random-weight export, K=2, T=2.

Every test ends with SIGINT, as Ctrl-C in a terminal: the node must exit 0, no traceback.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from deltaworld_ros.io.images import encode_compressed, stamp_ns
from deltaworld_ros.ros import packing
from deltaworld_ros.ros.futures import decode_depth, decode_float_image, decode_futures, untile
from deltaworld_ros.ros.node import LAYOUT_QOS, OUTPUT_QOS, SENSOR_QOS
from deltaworld_ros.tools.harness import EXECUTABLE, NodeProcess, Probe, write_params

pytestmark = pytest.mark.dds

ROOT = Path(__file__).resolve().parents[1]
K, T = 2, 2
SIZE = (48, 64)  # camera frames (H, W)
NS = 1_000_000_000
STEP_NS = NS // 10  # between frame stamps: the tiny model's frame_interval, 0.1 s
START_TIMEOUT = 40.0  # s for the node to start and publish a first forecast


def base_params(model_dir: Path, **overrides) -> dict:
    params = {
        "model_dir": str(model_dir),
        "num_hypotheses": K,
        "horizon": T,
        "diagnostics_period": 0.25,
        "providers": ["cpu"],  # no GPU here: spare the log the CUDA/TensorRT load errors
    }
    params.update(overrides)
    return params


@contextmanager
def forecast_node(
    tmp_path: Path,
    domain: int,
    params: dict,
    config: Path | None = None,
    executable: str = EXECUTABLE,
) -> Iterator[tuple[NodeProcess, Probe]]:
    """The node (config file first, then `params`) and a probe; SIGINT must end it cleanly."""
    files = [config] if config else []
    files.append(write_params(tmp_path / "params.yaml", params))
    with (
        NodeProcess(files, domain, tmp_path / "node.log", executable=executable) as node,
        Probe(domain) as probe,
    ):
        probe.subscribe(DiagnosticArray, "/diagnostics")
        yield node, probe
        assert node.running(), f"the node died:\n{node.log()}"
        code = node.interrupt()
        log = node.log()
        assert code == 0, f"exit code {code} after SIGINT:\n{log}"
        assert "Traceback" not in log, log


class Camera:
    """Publishes frames of a moving gradient with stamps STEP apart on one topic."""

    def __init__(self, probe: Probe, topic: str, frame_id: str, compressed: bool = False):
        self.publisher = probe.publisher(
            CompressedImage if compressed else Image, topic, SENSOR_QOS
        )
        self.frame_id = frame_id
        self.compressed = compressed
        self.stamp = 1000 * NS  # header stamp of the last frame sent, ns
        self.sent: list[int] = []

    def header(self, stamp: int) -> Header:
        header = Header(frame_id=self.frame_id)
        header.stamp.sec, header.stamp.nanosec = divmod(stamp, NS)
        return header

    def frame(self, size: tuple[int, int] = SIZE) -> np.ndarray:
        h, w = size
        shift = self.stamp // STEP_NS % w
        ramp = np.roll(np.linspace(0, 255, w).astype(np.uint8), shift)
        return np.stack([np.broadcast_to(ramp, (h, w)), np.full((h, w), 90, np.uint8),
                         np.broadcast_to(ramp[::-1], (h, w))], -1)  # fmt: skip

    def send(self, msg: Image | CompressedImage | None = None) -> int:
        """A good frame (or `msg`, given the next stamp); returns its stamp."""
        self.stamp += STEP_NS
        if msg is None:
            rgb = self.frame()
            msg = (
                CompressedImage(format="jpeg", data=encode_compressed(rgb, "jpeg"))
                if self.compressed
                else packing.image_message(rgb, "rgb8", Header())
            )
        msg.header = self.header(self.stamp)
        self.publisher.publish(msg)
        self.sent.append(self.stamp)
        return self.stamp


def stream(node: NodeProcess, cameras: list[Camera], until, timeout: float, send=None) -> None:
    """Publish a frame on every camera (good ones, or send(camera)'s) each 50 ms until until()
    holds; fail early if the node died."""
    deadline = time.monotonic() + timeout
    while not until():
        assert node.running(), f"the node died:\n{node.log()}"
        assert time.monotonic() < deadline, f"timed out after {timeout} s:\n{node.log()}"
        for camera in cameras:
            camera.send(send(camera) if send else None)
        time.sleep(0.05)


def stamp(msg) -> int:
    return stamp_ns(msg.header)


def status_values(probe: Probe, name: str) -> dict[str, str]:
    """The latest /diagnostics key/values of the status `name` (empty before the first)."""
    for array in reversed(probe.received("/diagnostics")):
        for status in array.status:
            if status.name == name:
                return {kv.key: kv.value for kv in status.values}
    return {}


def camera_values(probe: Probe, camera: str) -> dict[str, str]:
    return status_values(probe, f"deltaworld: camera {camera}")


def engine_values(probe: Probe) -> dict[str, str]:
    return status_values(probe, "deltaworld: engine")


def test_outputs_have_the_documented_types_shapes_and_headers(tmp_path, domain, model_dir):
    """One camera: /deltaworld/futures (+ confidence, uncertainty, layout), visualization and
    /diagnostics, each with the source frame's header; SIGINT mid-stream exits 0."""
    with forecast_node(tmp_path, domain, base_params(model_dir)) as (node, probe):
        ns = "/deltaworld"
        for topic in ("futures", "futures/confidence", "futures/uncertainty", "futures/depth",
                      "visualization"):  # fmt: skip
            probe.subscribe(Image, f"{ns}/{topic}", OUTPUT_QOS)
        probe.subscribe(String, f"{ns}/futures/layout", LAYOUT_QOS)
        camera = Camera(probe, "/image", "camera_optical_frame")
        stream(node, [camera], lambda: len(probe.received(f"{ns}/futures")) >= 3, START_TIMEOUT)
        futures = probe.received(f"{ns}/futures")[0]  # its companions are surely in by now
        by_stamp = {
            topic: {stamp(m): m for m in probe.received(f"{ns}/{topic}")}
            for topic in (
                "futures/confidence",
                "futures/uncertainty",
                "futures/depth",
                "visualization",
            )  # fmt: skip
        }
        layout = json.loads(probe.received(f"{ns}/futures/layout")[-1].data)

        def reported() -> bool:
            published = int(camera_values(probe, "camera").get("forecasts published", 0))
            return published >= 3 and "node: pack mean ms" in engine_values(probe)

        stream(node, [camera], reported, 10)
        engine = engine_values(probe)
        cam = camera_values(probe, "camera")

    assert stamp(futures) in camera.sent
    assert futures.header.frame_id == "camera_optical_frame"
    assert (layout["K"], layout["T"], layout["encoding"]) == (K, T, "mono8")
    assert layout["step_seconds"] == pytest.approx(STEP_NS / NS)
    assert len(layout["class_names"]) == len(layout["palette"]) == 5
    assert layout["crops"] == [[0, 0, SIZE[1], SIZE[0]]] and layout["source_size"] == list(SIZE)
    assert layout["confidence"] == "kernel density"  # the tiny export has no learned scorer
    h, w = layout["tile_size"]
    assert (futures.encoding, futures.height, futures.width) == ("mono8", K * h, T * w)

    confidence = by_stamp["futures/confidence"][stamp(futures)]
    classes, conf = decode_futures(futures, confidence, layout)
    assert classes.shape == (K, T, h, w) and classes.max() < 5
    assert (confidence.encoding, confidence.height, confidence.width) == ("32FC1", 1, K)
    assert conf.sum() == pytest.approx(1, abs=1e-5) and np.all(np.diff(conf) <= 0)

    uncertainty = by_stamp["futures/uncertainty"][stamp(futures)]
    assert (uncertainty.encoding, uncertainty.height, uncertainty.width) == ("32FC1", h, T * w)
    share = untile(decode_float_image(uncertainty), 1, T)
    assert np.all((share >= 0) & (share <= 1 - 1 / K + 1e-6))

    depth_msg = by_stamp["futures/depth"][stamp(futures)]  # the tiny model has a depth head
    assert depth_msg.header.frame_id == "camera_optical_frame" and depth_msg.encoding == "32FC1"
    assert layout["depth"]["unit"] == "m"
    depth = decode_depth(depth_msg, layout)
    assert depth.shape == (K, T, h, w) and np.all(np.isfinite(depth)) and depth.min() > 0

    mosaic = by_stamp["visualization"][stamp(futures)]
    assert mosaic.encoding == "rgb8" and mosaic.header.frame_id == "camera_optical_frame"
    assert (mosaic.height, mosaic.width) == (K * h, w + packing.BAR_WIDTH + T * w)

    assert engine["backend"] == "onnxruntime" and engine["K"] == str(K)
    assert {
        f"provider: {g}" for g in ("backbone", "encoder", "predictor", "decoder", "head")
    } <= set(engine)
    stages = ("node: convert", "node: pack", "node: publish", "forecaster: total",
              "forecaster: encode ahead")  # fmt: skip
    for stage in stages:  # the period's samples: each mean and p95 within its max
        mean, p95, most = (float(engine[f"{stage} {s} ms"]) for s in ("mean", "p95", "max"))
        assert 0 <= mean <= most and p95 <= most, stage
    total, backbone = (float(engine[f"forecaster: {s} mean ms"]) for s in ("total", "backbone"))
    assert total >= backbone > 0  # the same forecasts: the backbone is part of each one's total
    assert float(cam["input rate (Hz)"]) > 0 and int(cam["forecasts published"]) >= 3


def test_two_cameras_publish_under_their_own_namespaces(tmp_path, domain, model_dir):
    """config/vehicle.yaml: front (raw bgr8, wide: two square crops side by side) and side
    (jpeg CompressedImage), batched in one engine, outputs under /deltaworld/<camera>."""
    params = base_params(model_dir, output_size=[16, 16], precision="fp32")
    config = ROOT / "config" / "vehicle.yaml"
    with forecast_node(tmp_path, domain, params, config) as (node, probe):
        for name in ("front", "side"):
            probe.subscribe(Image, f"/deltaworld/{name}/futures", OUTPUT_QOS)
            probe.subscribe(String, f"/deltaworld/{name}/futures/layout", LAYOUT_QOS)
        front = Camera(probe, "/front/image_raw", "front_optical")
        side = Camera(probe, "/side/image_raw/compressed", "side_optical", compressed=True)

        def wide_bgr8(camera: Camera) -> Image | None:
            if camera is side:
                return None
            return packing.image_message(camera.frame((48, 96)), "bgr8", Header())

        stream(
            node,
            [front, side],
            lambda: all(probe.received(f"/deltaworld/{n}/futures") for n in ("front", "side")),
            START_TIMEOUT,
            send=wide_bgr8,
        )
        topics = {name for name, _ in probe.node.get_topic_names_and_types()}
        layouts = {
            n: json.loads(probe.received(f"/deltaworld/{n}/futures/layout")[-1].data)
            for n in ("front", "side")
        }
        results = {n: probe.received(f"/deltaworld/{n}/futures")[-1] for n in ("front", "side")}

    assert "/deltaworld/futures" not in topics
    assert results["front"].header.frame_id == "front_optical"
    assert results["side"].header.frame_id == "side_optical"
    assert layouts["front"]["crops"] == [[0, 0, 48, 48], [48, 0, 96, 48]]
    assert layouts["front"]["tile_size"] == [16, 32]  # two 16x16 crops side by side
    assert (results["front"].height, results["front"].width) == (K * 16, T * 32)
    assert layouts["side"]["tile_size"] == [16, 16] and layouts["side"]["crop"] == "square"


MALFORMED_RAW = {
    "dropped: decode error (step/data length)": lambda: Image(
        height=48, width=64, encoding="rgb8", step=192, data=bytes(100)
    ),
    "dropped: decode error (zero size)": lambda: Image(height=0, width=0, encoding="rgb8"),
    "dropped: decode error (unknown encoding)": lambda: Image(
        height=2, width=2, encoding="rgb9", step=6, data=bytes(12)
    ),
    "dropped: wrong size": lambda: packing.image_message(
        np.zeros((32, 32, 3), np.uint8), "rgb8", Header()
    ),
}
JPEG = encode_compressed(np.full((*SIZE, 3), 120, np.uint8), "jpeg")
MALFORMED_JPEG = [  # truncated, and garbage after a JPEG start marker
    CompressedImage(format="jpeg", data=JPEG[: len(JPEG) // 2]),
    CompressedImage(format="jpeg", data=b"\xff\xd8\xff" + bytes(500)),
]


def test_malformed_frames_are_counted_and_good_frames_keep_flowing(tmp_path, domain, model_dir):
    """Each bad message is dropped, logged and counted by cause in /diagnostics; the frames
    after it are forecast again (a lone frame of another size does not reset the stream)."""
    params = base_params(
        model_dir, cameras=["cam", "jpg"], **{"cameras.jpg.transport": "compressed"}
    )
    with forecast_node(tmp_path, domain, params) as (node, probe):
        for name in ("cam", "jpg"):
            probe.subscribe(Image, f"/deltaworld/{name}/futures", OUTPUT_QOS)
        cam = Camera(probe, "/cam/image", "cam")
        jpg = Camera(probe, "/jpg/image/compressed", "jpg", compressed=True)
        stream(
            node,
            [cam, jpg],
            lambda: all(probe.received(f"/deltaworld/{n}/futures") for n in ("cam", "jpg")),
            START_TIMEOUT,
        )

        def deliver(camera: Camera, name: str, key: str, msg) -> None:
            """Send the bad message (again every 0.5 s: best effort) until it is counted."""
            before = int(camera_values(probe, name).get(key, 0))
            deadline = time.monotonic() + 10
            while int(camera_values(probe, name).get(key, 0)) <= before:
                assert time.monotonic() < deadline, f"{key} never counted: {node.log()}"
                camera.send(msg)
                probe.wait_for(lambda: int(camera_values(probe, name).get(key, 0)) > before, 0.5)

        for key, make in MALFORMED_RAW.items():
            deliver(cam, "cam", key, make())
        for msg in MALFORMED_JPEG:
            deliver(jpg, "jpg", "dropped: decode error (corrupt payload)", msg)
        last_bad = {"cam": cam.stamp, "jpg": jpg.stamp}

        def resumed() -> bool:
            return all(
                any(stamp(m) > last_bad[n] for m in probe.received(f"/deltaworld/{n}/futures"))
                for n in ("cam", "jpg")
            )

        stream(node, [cam, jpg], resumed, 20)
        values = camera_values(probe, "cam")
        log = node.log()

    assert all(int(values[key]) >= 1 for key in MALFORMED_RAW)
    assert "reset: resolution changed" not in values
    assert (
        "unsupported image encoding 'rgb9'" in log and "dropped: wrong size: a 32x32 frame" in log
    )
    assert "cannot decode" in log


def test_a_stamp_that_jumps_back_resets_that_cameras_history(tmp_path, domain, model_dir):
    """Bag replay with use_sim_time: /clock drives the node's time (diagnostics stamps); a loop
    back to earlier stamps restarts the history, counted as a reset, and forecasts resume."""
    params = base_params(model_dir, use_sim_time=True)
    with forecast_node(tmp_path, domain, params) as (node, probe):
        probe.subscribe(Image, "/deltaworld/futures", OUTPUT_QOS)
        clock = probe.publisher(Clock, "/clock", 10)
        camera = Camera(probe, "/image", "camera")

        def play(until, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not until():
                assert node.running() and time.monotonic() < deadline, node.log()
                clock.publish(Clock(clock=camera.header(camera.stamp + STEP_NS).stamp))
                camera.send()
                time.sleep(0.05)

        play(lambda: len(probe.received("/deltaworld/futures")) >= 2, START_TIMEOUT)
        camera.stamp = 500 * NS  # the bag loops
        play(lambda: any(stamp(m) < 600 * NS for m in probe.received("/deltaworld/futures")), 20)
        play(lambda: "reset: stamp went backwards" in camera_values(probe, "camera"), 10)
        values = camera_values(probe, "camera")
        report = probe.received("/diagnostics")[-1]  # the one that counted the reset

    assert values["reset: stamp went backwards"] == "1"
    assert 500 * NS < stamp(report) < 600 * NS  # stamped on the bag's clock, after the loop


@pytest.mark.parametrize(
    "signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM)], ids=str
)
def test_a_second_signal_while_stopping_still_ends_cleanly(tmp_path, domain, model_dir, signals):
    """Ctrl-C twice, or a supervisor's signal to the whole process group after launch's own,
    while frames keep arriving: the node finishes stopping and exits 0 without a traceback."""
    params_file = write_params(tmp_path / "params.yaml", base_params(model_dir))
    with NodeProcess([params_file], domain, tmp_path / "node.log") as node, Probe(domain) as probe:
        probe.subscribe(Image, "/deltaworld/futures", OUTPUT_QOS)
        camera = Camera(probe, "/image", "camera")
        stream(node, [camera], lambda: len(probe.received("/deltaworld/futures")) >= 2,
               START_TIMEOUT)  # fmt: skip
        first, second = signals
        node.send(first)
        for _ in range(20):  # frames keep coming while it stops
            camera.send()
            time.sleep(0.005)
            if _ == 1:
                node.send(second)
        code = node.wait(20)
        log = node.log()
    assert code == 0, f"exit code {code} after {first.name} + {second.name}:\n{log}"
    assert "Traceback" not in log and "terminate called" not in log, log


@pytest.mark.parametrize(
    ("config", "params", "expected"),
    [
        ("robot.yaml", {}, ["parameter model_dir='~/deltaworld_models/vitb16_vspw'",
                            "no such directory", "model_dir:=''"]),
        ("vehicle.yaml", {}, ["parameter model_dir='~/deltaworld_models/vitb16_cityscapes'"]),
        (None, {"num_hypotheses": 0}, ["parameter num_hypotheses=0", "in [1, 64]"]),
    ],
)  # fmt: skip
def test_a_bad_parameter_stops_the_node_with_the_fix(tmp_path, domain, model_dir, config, params,
                                                     expected):  # fmt: skip
    """Shipped configs whose model the user has not brought yet, and an out-of-range value:
    exit code 2 and one line that names the parameter, the value and the fix."""
    files = [ROOT / "config" / config] if config else []
    if params:
        files.append(write_params(tmp_path / "bad.yaml", base_params(model_dir, **params)))
    with NodeProcess(files, domain, tmp_path / "node.log") as node:
        code = node.wait(60)
        log = node.log()
    assert code == 2, log
    for text in expected:
        assert text in log, log
    assert "Traceback" not in log
