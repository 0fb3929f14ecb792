"""forecast_node: camera images in, K forecast semantic maps per horizon step out.

Callbacks deserialize and check each message (inputs.py) and put it into its camera's
latest-frame slot; one worker thread takes the filled slots, decodes them, runs all cameras
through the Forecaster in one batch and publishes. A frame replaced in its slot before the
worker took it is dropped as stale. A frame that cannot be used is dropped, counted by cause
and logged at most every WARN_EVERY_S per cause; it never costs another camera its forecast.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logging_severity_from_string
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from ..io.images import ImageDecodeError, decode_image_message
from ..model.store import ModelDirError
from ..runtime.engine import open_engine
from ..runtime.forecaster import Forecast, Forecaster, FrameInput
from ..runtime.intake import ADOPT_SIZE_AFTER, FrameSizes, LatestFrames
from . import packing, topics
from .diagnostics import (
    CONVERT,
    FAILED,
    FORECASTER,
    INACTIVE,
    LATENCY,
    NORMALISED,
    PACK,
    PUBLISH,
    PUBLISHED,
    RECEIVED,
    STALE,
    WRONG_SIZE,
    NodeStats,
    decode_error,
    dropped,
)
from .futures import make_layout
from .inputs import InputRejected, Received, SpacingCheck, receive
from .params import (
    NodeSettings,
    ParameterError,
    check_arguments,
    declare_and_read,
    undeclared_overrides,
)

# Camera inputs: drop rather than queue, a forecast of an old frame is worth little; the
# latest-frame slots do the dropping. The reader keeps a few samples so that a burst (a bad
# sample right behind a good frame) reaches the callbacks instead of evicting the good frame
# before the executor takes it.
SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT
)
OUTPUT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
LAYOUT_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
WARN_EVERY_S = 5.0  # a repeated input problem is logged at most this often (all are counted)
JOIN_TIMEOUT_S = 10.0
SPIN_TIMEOUT_S = 0.5  # how often the main loop checks whether a managed node has finished


class Forecasting:
    """forecast_node's work, mixed into a plain or a managed rclpy node: while started, the
    engine, the outputs, /diagnostics and the worker; while active, frames are forecast."""

    settings: NodeSettings
    started = False
    active = False  # an inactive node counts the frames that arrive and forecasts none
    finished = False  # the main loop ends once set (a managed node that was shut down)

    def start(self) -> None:
        """Open the engine, create the outputs and the diagnostics timer, start the worker."""
        settings = self.settings
        self.engine = open_engine(settings.model_dir, settings.engine)
        self.forecaster = Forecaster(self.engine, settings.forecaster)
        model = self.engine.config
        self.palette = packing.palette_array(model.head.palette, model.head.num_classes)
        cameras = [c.name for c in settings.cameras]
        self.stats = NodeStats(cameras)
        self.spacing = {c: SpacingCheck(self.forecaster.gate_settings) for c in cameras}
        self.sizes = {c: FrameSizes() for c in cameras}
        self.frames = LatestFrames()
        self.layouts: dict[str, dict[str, Any]] = {}
        self.warned: dict[str, float] = {}  # problem -> when it was last logged
        self.publishers_: dict[str, dict[str, Any]] = {}
        for camera in settings.cameras:
            create = partial(self.output_publisher, camera.namespace)
            self.publishers_[camera.name] = {
                "futures": create(Image, topics.FUTURES),
                "confidence": create(Image, topics.CONFIDENCE),
                "uncertainty": create(Image, topics.UNCERTAINTY),
                "layout": create(String, topics.LAYOUT, LAYOUT_QOS),
                "depth": create(Image, topics.DEPTH) if self.forecaster.has_depth else None,
                "visualization": create(Image, topics.VISUALIZATION)
                if settings.visualization
                else None,
            }
        self.camera_subscriptions: list[Any] = []
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self.diagnostics_timer = self.create_timer(
            settings.diagnostics_period,
            self.on_diagnostics_timer,
            clock=Clock(clock_type=ClockType.STEADY_TIME),  # keeps reporting when /clock stops
        )
        self.worker = threading.Thread(target=self.run_worker, name="forecast_worker")
        self.worker.start()
        self.started = True
        routes = ", ".join(
            f"{c.topic} ({c.transport}) -> {self.resolve_topic_name(c.namespace)}"
            for c in settings.cameras
        )
        self.get_logger().info(
            f"forecasting K={settings.forecaster.num_hypotheses} x T={settings.forecaster.horizon}"
            f" with {model.name}, {self.engine.placement}: {routes}"
        )

    def activate(self) -> None:
        """Subscribe to the cameras (on the first activation) and forecast what arrives."""
        if not self.camera_subscriptions:
            for camera in self.settings.cameras:
                kind = CompressedImage if camera.transport == "compressed" else Image
                self.camera_subscriptions.append(
                    self.create_subscription(
                        kind,
                        camera.topic,
                        partial(self.on_image, camera.name, kind),
                        SENSOR_QOS,
                        raw=True,
                    )
                )
        self.active = True

    def stop(self) -> None:
        """Stop the worker (after its current batch), remove subscriptions, outputs and timer,
        and free the engine."""
        if not self.started:
            return
        self.active = self.started = False
        self.frames.close()
        self.worker.join(JOIN_TIMEOUT_S)
        if self.worker.is_alive():
            self.get_logger().warning(f"worker still busy after {JOIN_TIMEOUT_S:.0f} s")
        for subscription in self.camera_subscriptions:
            self.destroy_subscription(subscription)
        for publishers in self.publishers_.values():
            for publisher in publishers.values():
                if publisher is not None:
                    self.destroy_publisher(publisher)
        self.destroy_publisher(self.diagnostics_publisher)
        self.destroy_timer(self.diagnostics_timer)
        del self.forecaster, self.engine  # the last references to the inference sessions

    def on_image(self, camera: str, kind: type, raw: bytes) -> None:
        """Serialized camera message -> checked frame in the camera's latest-frame slot; never
        blocks on inference."""
        self.stats.count(camera, RECEIVED)
        if not self.active:
            self.stats.count(camera, INACTIVE)
            return
        try:
            frame = receive(raw, kind)
        except InputRejected as err:
            self.drop(camera, dropped(err.cause), str(err))
            return
        if frame.normalised:
            self.stats.count(camera, NORMALISED)
        spacing = self.spacing[camera]
        if (problem := spacing.observe(frame.stamp_ns)) is not None:
            self.get_logger().warning(f"camera {camera}: {problem}")
        self.stats.set_problem(camera, spacing.text)
        if self.frames.put(camera, frame):
            self.stats.count(camera, STALE)

    def output_publisher(
        self, namespace: str, kind: type, name: str, qos: QoSProfile = OUTPUT_QOS
    ) -> Any:
        """A publisher of output `name` (topics.FUTURES...) under a camera's namespace."""
        return self.create_publisher(kind, topics.output(namespace, name), qos)

    def on_diagnostics_timer(self) -> None:
        """Counters and stage times of the last period -> /diagnostics."""
        engine = {
            "backend": self.engine.backend,
            "model": self.engine.config.name,
            "K": str(self.settings.forecaster.num_hypotheses),
            "T": str(self.settings.forecaster.horizon),
            **{f"provider: {graph}": p for graph, p in self.engine.providers.items()},
        }
        cameras = {c.name: self.resolve_topic_name(c.topic) for c in self.settings.cameras}
        msg = DiagnosticArray(status=self.stats.report(cameras, engine, self.active))
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(msg)

    def run_worker(self) -> None:
        """Worker thread: batches of latest frames -> Forecaster -> published outputs."""
        while (batch := self.frames.take()) is not None:
            try:
                self.forecast(batch)
            except Exception as err:  # the worker outlives one bad batch
                if not self.context.ok():
                    return  # shutting down: publishers are gone
                for camera in batch:
                    self.stats.count(camera, FAILED)
                self.warn(
                    f"{FAILED}: {type(err).__name__}",
                    f"forecast failed: {type(err).__name__}: {err}",
                    self.get_logger().error,
                )

    def forecast(self, batch: dict[str, Received]) -> None:
        """Decode and check each camera's frame, run one batched step, publish the results."""
        start = time.perf_counter()
        frames, sources = [], []
        for camera, frame in batch.items():
            rgb = self.decode(camera, frame.msg)
            if rgb is not None:
                frames.append(FrameInput(camera, frame.stamp_ns / 1e9, rgb))
                sources.append((frame.header, rgb))
        self.stats.record(CONVERT, time.perf_counter() - start)
        if not frames:
            return
        results = self.forecaster.process(frames)
        self.stats.forecaster_stats(self.forecaster.stats)
        for forecast, (header, rgb) in zip(results, sources, strict=True):
            if forecast is not None:
                self.publish(forecast, header, rgb)
        ahead = self.forecaster.encode_ahead()  # after publishing: off the next frame's latency
        if ahead:
            self.stats.record(f"{FORECASTER}encode ahead", ahead)

    def decode(self, camera: str, msg: Image | CompressedImage) -> np.ndarray | None:
        """RGB uint8 of a camera message; None (logged and counted) if it cannot be used."""
        try:
            rgb = decode_image_message(msg, self.settings.max_input_pixels)
        except ImageDecodeError as err:
            self.drop(camera, decode_error(err.cause), str(err))
            return None
        sizes = self.sizes[camera]
        if not sizes.admit(rgb.shape[:2]):
            height, width = sizes.expected
            self.drop(
                camera,
                WRONG_SIZE,
                f"a {rgb.shape[1]}x{rgb.shape[0]} frame, the stream is {width}x{height} (a new "
                f"size is adopted after {ADOPT_SIZE_AFTER} in a row)",
            )
            return None
        return rgb

    def drop(self, camera: str, cause: str, text: str) -> None:
        """Count a dropped frame under `cause`; log it at most every WARN_EVERY_S per cause."""
        self.stats.count(camera, cause)
        self.warn(f"{camera}: {cause}", f"camera {camera}: {cause}: {text}")

    def warn(self, problem: str, text: str, log: Callable[[str], Any] | None = None) -> None:
        """Log at most every WARN_EVERY_S per problem, so that a new problem shows at once."""
        now = time.monotonic()
        if now - self.warned.get(problem, -WARN_EVERY_S) >= WARN_EVERY_S:
            self.warned[problem] = now
            (log or self.get_logger().warning)(text)

    def publish(self, forecast: Forecast, header: Header, rgb: np.ndarray) -> None:
        """One forecast -> layout (when it changed), confidence, uncertainty, depth, futures,
        mosaic."""
        start = time.perf_counter()
        camera = forecast.stream_id
        publishers = self.publishers_[camera]
        layout = self.layout(forecast, rgb.shape[:2])
        messages: list[tuple[Callable[[Any], None], Any]] = []
        if layout != self.layouts.get(camera):
            self.layouts[camera] = layout
            messages.append((publishers["layout"].publish, String(data=json.dumps(layout))))
        messages += [
            (publishers["confidence"].publish, packing.confidence_message(forecast, header)),
            (publishers["uncertainty"].publish, packing.uncertainty_message(forecast, header)),
        ]
        if publishers["depth"] is not None:
            messages.append((publishers["depth"].publish, packing.depth_message(forecast, header)))
        messages.append((publishers["futures"].publish, packing.futures_message(forecast, header)))
        if publishers["visualization"] is not None:
            mosaic = packing.visualization_message(forecast, rgb, self.palette, header)
            messages.append((publishers["visualization"].publish, mosaic))
        packed = time.perf_counter()
        for publish, msg in messages:
            publish(msg)
        done = time.perf_counter()
        self.stats.record(PACK, packed - start)
        self.stats.record(PUBLISH, done - packed)
        for stage, seconds in forecast.timings.items():
            self.stats.record(f"{FORECASTER}{stage}", seconds)
        now = self.get_clock().now()
        stamp = Time.from_msg(header.stamp, clock_type=now.clock_type)
        self.stats.record(LATENCY, (now - stamp).nanoseconds * 1e-9)
        self.stats.count(camera, PUBLISHED)

    def layout(self, forecast: Forecast, source_size: tuple[int, int]) -> dict[str, Any]:
        """The futures/layout body for this camera's current frame size."""
        model = self.engine.config
        k, t, h, w = forecast.classes.shape
        return make_layout(
            camera=forecast.stream_id,
            num_hypotheses=k,
            horizon=t,
            tile_size=(h, w),
            step_seconds=self.forecaster.frame_interval,
            class_names=model.head.class_names,
            palette=self.palette.tolist(),
            encoding=packing.class_encoding(forecast.classes.dtype),
            crop=self.settings.forecaster.crop,
            source_size=source_size,
            depth=self.forecaster.has_depth,
            confidence=self.forecaster.confidence_source,
        )


class ForecastNode(Forecasting, Node):
    """Subscribes to the cameras, publishes their futures, layout, visualization, diagnostics."""

    def __init__(self, argv: list[str] = ()) -> None:
        super().__init__("forecast_node")
        self.settings = read_settings(self, argv)
        self.start()
        self.activate()


def read_settings(node: Node, argv: list[str]) -> NodeSettings:
    """The node's parameters, declared and validated against the command line argv it was
    started with; names it does not know are logged."""
    settings = declare_and_read(node, argv)
    if settings.log_level:
        node.get_logger().set_level(get_logging_severity_from_string(settings.log_level))
    for name in undeclared_overrides(node):
        node.get_logger().warning(f"parameter {name!r} is not a forecast_node parameter")
    node.get_logger().debug(f"settings: {settings}")
    return settings


def run(make_node: Callable[[list[str]], Forecasting], args: list[str] | None) -> int:
    """Create the node from the command line's parameters and spin it until SIGINT or SIGTERM
    (exit 0); exit 2 on a bad parameter, 1 on a model that cannot load."""
    argv = sys.argv if args is None else args
    logger = rclpy.logging.get_logger("forecast_node")
    try:
        check_arguments(argv)
        rclpy.init(args=argv)
    except (ParameterError, RuntimeError) as err:  # rcl's RCLError is a RuntimeError
        logger.fatal(f"cannot start: {str(err).splitlines()[0]}")
        return 2
    try:
        node = make_node(argv)
    except ParameterError as err:
        logger.fatal(str(err))
        rclpy.try_shutdown()
        return 2
    except ParameterException as err:  # rclpy's own parameters (use_sim_time)
        logger.fatal(f"invalid parameter: {err}")
        rclpy.try_shutdown()
        return 2
    except (ModelDirError, OSError, RuntimeError, ValueError) as err:
        logger.fatal(f"cannot load the model: {err}")
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while node.context.ok() and not node.finished:
            executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_stop_signals()
        node.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def ignore_stop_signals() -> None:
    """From here on SIGINT and SIGTERM are ignored: a second Ctrl-C, or the signal a terminal
    or launch sends the whole process group, must not cut the worker and rclpy off halfway."""
    while True:
        try:
            rclpy.uninstall_signal_handlers()  # they would chain to KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            return
        except KeyboardInterrupt:  # a signal that came before the handlers were replaced
            continue


def main(args: list[str] | None = None) -> int:
    """forecast_node [--ros-args ...]"""
    return run(ForecastNode, args)


if __name__ == "__main__":
    sys.exit(main())
