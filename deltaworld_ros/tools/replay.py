"""`deltaworld replay`: play a bag's camera topic into ROS and record what the node publishes.

The image messages go out unchanged (Image or CompressedImage, header stamps as recorded),
each preceded by /clock at its log time, so a node started with use_sim_time:=true lives on
the bag's timeline. The node's outputs are subscribed with their publishers' QoS and written
into a new rosbag2 that `deltaworld eval --predictions` scores.

Pacing. The node keeps only the newest frame (best effort, keep-last 1) while it computes, so
frames that arrive faster than it forecasts are lost. `--rate R` plays at R x the recorded
rate and counts what was lost; `--fast` plays as fast as the node keeps up: a frame that the
node will forecast (by its gate: one frame per forecast step of header time, after the
warm-up) is followed by a wait for its forecast; a frame it will gate is sent without waiting.

A damaged input bag is played up to the damage and on after it where the storage allows
(io.bags); the recording is always closed into a readable bag with what was received, also
on Ctrl-C and on errors, and its statistics say what was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from tqdm import tqdm

from deltaworld_ros.errors import UsageError
from deltaworld_ros.evaluation.recording import ReplaySummary
from deltaworld_ros.io.bags import (
    IMAGE_TYPES,
    TYPESTORE,
    ImageBagWriter,
    bag_messages,
    message_count,
    open_bag,
)
from deltaworld_ros.io.images import stamp_ns
from deltaworld_ros.ros.futures import parse_layout
from deltaworld_ros.ros.topics import (
    CONFIDENCE,
    DEFAULT_FUTURES,
    DIAGNOSTICS,
    FUTURES,
    LAYOUT,
    REPLAY_STATS,
    UNCERTAINTY,
    beside,
)
from deltaworld_ros.runtime.forecaster import ForecasterConfig
from deltaworld_ros.runtime.gate import GateSettings
from deltaworld_ros.runtime.intake import CameraGate

DEFAULT_TOPICS = (
    *(beside(DEFAULT_FUTURES, output) for output in (FUTURES, CONFIDENCE, LAYOUT, UNCERTAINTY)),
    DIAGNOSTICS,
)


class ReplayError(UsageError):
    """The replay cannot start or run; the message says why and what to do."""


@dataclass
class ReplayOptions:
    bag: Path
    image_topic: str
    record: Path
    publish_topic: str | None = None  # where to publish the frames; None: image_topic
    rate: float = 1.0
    fast: bool = False
    topics: tuple[str, ...] = DEFAULT_TOPICS
    futures_topic: str = DEFAULT_FUTURES  # what --fast waits for, and the latency is measured on
    settle: float = 1.0  # s to keep recording after the last frame
    wait: float = 60.0  # s to wait for the node to come up
    timeout: float = 10.0  # s to wait for one forecast in --fast
    step: float | None = None  # the node's forecast step (s); None: from its first layout
    storage: str = "mcap"
    max_frames: int | None = None
    progress: bool = True


@dataclass
class _Frame:
    log_ns: int
    stamp_ns: int
    shape: tuple[int, int] | None  # (height, width) of a raw Image; None when compressed
    data: bytes  # CDR, as rmw publishes it


@dataclass
class ReplayStats:
    frames_published: int = 0
    unreadable_messages: int = 0
    forecasts_received: int = 0
    awaited: int = 0  # --fast: frames whose forecast was waited for
    timeouts: int = 0  # --fast: of those, no forecast within --timeout
    latency_s: list[float] = field(default_factory=list)  # publish -> forecast received
    messages_recorded: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    damage: list[str] = field(default_factory=list)  # what of the input bag could not be read
    stopped_by: str | None = None  # "interrupted", or the error that ended the replay early

    def summary(self, options: ReplayOptions) -> ReplaySummary:
        latency = np.array(self.latency_s) * 1e3
        return ReplaySummary(
            mode="fast" if options.fast else f"rate {options.rate:g}",
            frames_published=self.frames_published,
            unreadable_messages=self.unreadable_messages,
            forecasts_received=self.forecasts_received,
            awaited_fast=self.awaited,
            timeouts_fast=self.timeouts,
            round_trip_mean_ms=float(latency.mean()) if len(latency) else None,
            round_trip_p95_ms=float(np.percentile(latency, 95)) if len(latency) else None,
            wall_s=self.wall_s,
            input_bag_damage=self.damage,
            stopped_by=self.stopped_by,
            recorded=dict(self.messages_recorded),
        )


class Recorder:
    """Subscribes to the node's outputs with their publishers' QoS; writes every message into
    the output bag at the replay's clock, and tells the player which forecasts came back."""

    def __init__(self, node: Node, writer: ImageBagWriter, futures_topic: str) -> None:
        self.node = node
        self.writer = writer
        self.futures_topic = futures_topic
        self.clock_ns = 0  # log time of what is recorded: the bag time last played
        self.lock = threading.Condition()
        self.forecast_stamps: dict[int, float] = {}  # header stamp -> monotonic time received
        self.forecasts = 0  # futures messages received (a looping bag repeats stamps)
        self.counts: dict[str, int] = {}
        self.subscriptions: dict[str, Any] = {}
        self.layout: dict[str, Any] | None = None  # the node's latched futures layout
        self.closed = False  # set before the bag closes: late callbacks write nothing

    def try_subscribe(self, topic: str) -> bool:
        """Subscribe once the topic has a publisher (its type and QoS are known then)."""
        if topic in self.subscriptions:
            return True
        publishers = self.node.get_publishers_info_by_topic(topic)
        if not publishers:
            return False
        msgtype = publishers[0].topic_type
        best_effort = any(
            p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in publishers
        )
        latched = all(
            p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in publishers
        )
        qos = QoSProfile(
            depth=100,
            reliability=ReliabilityPolicy.BEST_EFFORT
            if best_effort
            else ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
        )
        self.subscriptions[topic] = self.node.create_subscription(
            message_class(msgtype),
            topic,
            functools.partial(self._on_message, topic, msgtype),
            qos,
            raw=True,
        )
        self.counts[topic] = 0
        return True

    def _on_message(self, topic: str, msgtype: str, raw: bytes) -> None:
        """Any recorded output: written at the current bag time; a forecast wakes the player."""
        msg = TYPESTORE.deserialize_cdr(raw, msgtype)
        with self.lock:
            if self.closed:
                return
            self.writer.write_raw_message(topic, msgtype, msg, self.clock_ns)
            self.counts[topic] += 1
            if topic == self.futures_topic:
                self.forecast_stamps[stamp_ns(msg.header)] = time.monotonic()
                self.forecasts += 1
            elif topic == beside(self.futures_topic, LAYOUT):
                self.layout = parse_layout(msg)
            self.lock.notify_all()

    def wait_quiet(self, quiet: float, limit: float) -> None:
        """Until no forecast came for `quiet` seconds (at most `limit` + `quiet` seconds)."""
        end = time.monotonic() + limit
        with self.lock:
            while True:
                count = self.forecasts
                self.lock.wait_for(lambda n=count: self.forecasts != n, quiet)
                if self.forecasts == count or time.monotonic() > end:
                    return

    def wait_forecast(self, stamp: int, since: float, timeout: float) -> bool:
        """Until a forecast of header `stamp` arrives that was received after `since`."""
        with self.lock:
            return self.lock.wait_for(
                lambda: self.forecast_stamps.get(stamp, -np.inf) >= since, timeout
            )


def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def image_msgtype(bag: Path, topic: str) -> str:
    """The message type of the bag's image topic; ReplayError listing the image topics."""
    try:
        with open_bag(bag) as reader:
            types = [c.msgtype for c in reader.connections if c.topic == topic]
            images = [
                f"{c.topic} ({c.msgtype})" for c in reader.connections if c.msgtype in IMAGE_TYPES
            ]
    except Exception as err:  # rosbags raises its own errors for unreadable storage
        raise ReplayError(f"cannot read the bag {bag}: {type(err).__name__}: {err}") from err
    if not types or types[0] not in IMAGE_TYPES:
        raise ReplayError(
            f"{topic} is not an image topic of {bag}; its image topics are: "
            f"{', '.join(images) or 'none'}"
        )
    return types[0]


def read_frames(bag: Path, topic: str, msgtype: str, stats: ReplayStats) -> Iterator[_Frame]:
    """The topic's messages as CDR bytes with their log time, header stamp and size; what the
    storage cannot give is noted in stats.damage."""
    with open_bag(bag) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        for _, log_ns, raw in bag_messages(reader, connections, stats.damage):
            try:
                msg = reader.deserialize(raw, msgtype)
                data = bytes(TYPESTORE.serialize_cdr(msg, msgtype))
            except Exception:  # a corrupt record; rosbags raises several kinds
                stats.unreadable_messages += 1
                continue
            shape = (int(msg.height), int(msg.width)) if hasattr(msg, "height") else None
            yield _Frame(log_ns, stamp_ns(msg.header), shape, data)


def replay(options: ReplayOptions, domain_id: int | None = None) -> ReplaySummary:
    """Play, record, return the replay's statistics (also written to the recording)."""
    if not Path(options.bag).exists():
        raise ReplayError(f"no rosbag2 at {options.bag}")
    if Path(options.record).exists():  # before ROS starts: nothing to clean up
        raise ReplayError(f"--record {options.record} exists already; choose a new bag path")
    if options.rate <= 0:
        raise ReplayError(f"--rate must be > 0, got {options.rate}")
    msgtype = image_msgtype(options.bag, options.image_topic)
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = Node("deltaworld_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor,), daemon=True)
    spinner.start()
    stats = ReplayStats()
    start = time.monotonic()
    try:
        writer = ImageBagWriter(options.record, storage=options.storage)
        recorder = Recorder(node, writer, options.futures_topic)
        try:
            _play(options, msgtype, node, recorder, stats)
        except KeyboardInterrupt:
            stats.stopped_by = "interrupted"
        except ReplayError:
            raise  # nothing played: the message says what to check
        except Exception as err:  # whatever ends the replay, the recording is kept
            stats.stopped_by = f"{type(err).__name__}: {err}"
        finally:
            summary = _close_recording(recorder, writer, stats, options, start)
    finally:
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
        spinner.join(timeout=5)
    return summary


def _close_recording(
    recorder: Recorder,
    writer: ImageBagWriter,
    stats: ReplayStats,
    options: ReplayOptions,
    start: float,
) -> ReplaySummary:
    """The statistics as the recording's last message, then its index and metadata.yaml."""
    if stats.stopped_by:
        print(f"replay: stopped ({stats.stopped_by}); closing the recording with what came "
              "before", file=sys.stderr)  # fmt: skip
    stats.wall_s = time.monotonic() - start
    with recorder.lock:
        recorder.closed = True
        stats.messages_recorded = dict(recorder.counts)
        summary = stats.summary(options)
        string = TYPESTORE.types["std_msgs/msg/String"](data=summary.as_json())
        writer.write_raw_message(REPLAY_STATS, "std_msgs/msg/String", string, recorder.clock_ns)
    writer.close()
    return summary


def _spin(executor: SingleThreadedExecutor) -> None:
    with contextlib.suppress(ExternalShutdownException):
        executor.spin()


def _play(
    options: ReplayOptions, msgtype: str, node: Node, recorder: Recorder, stats: ReplayStats
) -> None:
    topic = options.publish_topic or options.image_topic
    publisher = node.create_publisher(message_class(msgtype), topic, 10)
    clock = node.create_publisher(Clock, "/clock", 10)
    _wait_for_node(options, topic, publisher, recorder)
    total = message_count(options.bag, options.image_topic)
    if options.max_frames is not None:
        total = min(total, options.max_frames)
    progress = tqdm(total=total, unit="frame", desc="replay", disable=not options.progress)
    pacer = _Pacer(recorder, options.timeout, options.step) if options.fast else None
    sent: dict[int, float] = {}  # header stamp -> monotonic time published
    first_log = first_wall = None
    for frame in read_frames(options.bag, options.image_topic, msgtype, stats):
        if stats.frames_published >= total:
            break
        for output in options.topics:
            recorder.try_subscribe(output)
        if first_log is None:
            first_log, first_wall = frame.log_ns, time.monotonic()
        if pacer is None:
            due = first_wall + (frame.log_ns - first_log) / 1e9 / options.rate
            time.sleep(max(0.0, due - time.monotonic()))
        with recorder.lock:
            recorder.clock_ns = frame.log_ns
        clock_msg = Clock()
        clock_msg.clock.sec, clock_msg.clock.nanosec = divmod(frame.log_ns, 1_000_000_000)
        clock.publish(clock_msg)
        sent[frame.stamp_ns] = time.monotonic()
        publisher.publish(frame.data)
        stats.frames_published += 1
        progress.update(1)
        if pacer is not None:
            pacer.after(frame, sent[frame.stamp_ns], stats)
    progress.close()
    recorder.wait_quiet(options.settle, options.timeout)  # the last forecasts may be computing
    with recorder.lock:
        received = dict(recorder.forecast_stamps)
        stats.forecasts_received = recorder.forecasts
    stats.latency_s = [received[s] - sent[s] for s in received if s in sent]


def _wait_for_node(options: ReplayOptions, topic: str, publisher: Any, recorder: Recorder) -> None:
    """Until the node subscribes to the frames and publishes its outputs (bounded waits)."""
    deadline = time.monotonic() + options.wait
    while publisher.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            raise ReplayError(
                f"nobody subscribed to {topic} within {options.wait:g} s: is forecast_node "
                f"running with its input on {topic} (-r image:={topic}) and the same "
                "ROS_DOMAIN_ID?"
            )
        time.sleep(0.05)
    grace = min(deadline, time.monotonic() + 5.0)  # publishers come up with the subscription
    while not all([recorder.try_subscribe(t) for t in options.topics]):
        if time.monotonic() > grace:
            missing = [t for t in options.topics if t not in recorder.subscriptions]
            print(
                f"replay: no publisher on {', '.join(missing)} yet; recording them if one appears",
                file=sys.stderr,
            )
            break
        time.sleep(0.05)


class _Pacer:
    """--fast: after each frame, wait for its forecast if the node will make one.

    Which frames the node forecasts follows from its gate (one kept frame per forecast step of
    header time; none during the warm-up of a (re)started history). The step comes with the
    node's first layout message (or --step); until then every frame after the first is awaited,
    and one the node gates costs a --timeout.
    """

    def __init__(self, recorder: Recorder, timeout: float, step: float | None) -> None:
        self.recorder = recorder
        self.timeout = timeout
        self.gate = None if step is None else self._new_gate(step)
        self.history: list[_Frame] = []  # frames sent before the gate was known
        self.segment_kept = 0
        self.warmup = ForecasterConfig().min_context  # frames before a history forecasts
        self.silent_wait = 0.1  # after a warm-up frame: about one frame's processing time

    def after(self, frame: _Frame, sent: float, stats: ReplayStats) -> None:
        if self.gate is not None:
            expect = self._admit(frame)
        else:
            self.history.append(frame)
            expect = self._sync()
            if expect is None:
                expect = len(self.history) >= self.warmup
        if not expect:
            time.sleep(self.silent_wait)  # let the node take a warm-up frame before the next
            return
        stats.awaited += 1
        if self.recorder.wait_forecast(frame.stamp_ns, sent, self.timeout):
            self.silent_wait = min(1.0, max(0.02, time.monotonic() - sent))
            if self.gate is None:
                self._sync(wait=1.0)
        else:
            stats.timeouts += 1

    def _admit(self, frame: _Frame) -> bool:
        verdict = self.gate.admit(frame.stamp_ns / 1e9, frame.shape)
        self.segment_kept = (0 if verdict.starts else self.segment_kept) + verdict.kept
        return verdict.kept and self.segment_kept >= self.warmup

    @staticmethod
    def _new_gate(step: float) -> CameraGate:
        return CameraGate(GateSettings(step))  # the node's default tolerance and restart gap

    def _sync(self, wait: float = 0.0) -> bool | None:
        """Build the node's gate once its layout is known and run it over the frames sent so
        far; whether the last of them will be forecast (None: no layout yet)."""
        with self.recorder.lock:
            self.recorder.lock.wait_for(lambda: self.recorder.layout is not None, wait)
            layout = self.recorder.layout
        if layout is None:
            return None
        self.gate = self._new_gate(float(layout["step_seconds"]))
        expect = None
        for frame in self.history:
            expect = self._admit(frame)
        return expect


# --------------------------------------------------------------------------------------------
# Command line.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", required=True, type=Path, help="rosbag2 to play")
    parser.add_argument("--image-topic", required=True, help="the bag's camera topic")
    parser.add_argument(
        "--publish-topic", help="publish the frames under this name (default: --image-topic)"
    )
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=1.0, help="x the recorded rate (default 1)")
    pace.add_argument(
        "--fast", action="store_true", help="as fast as the node forecasts (waits for each)"
    )
    parser.add_argument("--record", required=True, type=Path, help="output rosbag2 to create")
    parser.add_argument(
        "--topics", nargs="+", default=list(DEFAULT_TOPICS), help="outputs to record"
    )
    parser.add_argument(
        "--futures-topic", default=DEFAULT_FUTURES, help="the forecasts (pacing, latency)"
    )
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--settle", type=float, default=1.0, help="s to record after the end")
    parser.add_argument("--wait", type=float, default=60.0, help="s to wait for the node")
    parser.add_argument("--timeout", type=float, default=10.0, help="s per forecast (--fast)")
    parser.add_argument(
        "--step",
        type=float,
        help="the node's forecast step in s (--fast; default: learnt from its first forecast)",
    )
    parser.add_argument("--max-frames", type=int, help="play only the first N frames")
    parser.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID (default: the env's)")
    parser.add_argument("--no-progress", action="store_true")


def options_from(args: argparse.Namespace) -> ReplayOptions:
    topics = tuple(dict.fromkeys([*args.topics, args.futures_topic]))
    return ReplayOptions(
        bag=args.bag,
        image_topic=args.image_topic,
        record=args.record,
        publish_topic=args.publish_topic,
        rate=args.rate,
        fast=args.fast,
        topics=topics,
        futures_topic=args.futures_topic,
        settle=args.settle,
        wait=args.wait,
        timeout=args.timeout,
        step=args.step,
        storage=args.storage,
        max_frames=args.max_frames,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    summary = replay(options, domain_id=args.domain_id)
    print(
        f"recorded {options.record}: {summary.frames_published} frames played "
        f"({summary.mode}), {summary.forecasts_received} forecasts received, "
        f"{summary.timeouts_fast} timeouts; messages per topic: {summary.recorded}"
    )
    for note in summary.input_bag_damage:
        print(f"replay: {note}", file=sys.stderr)
    return 0 if summary.forecasts_received and not summary.stopped_by else 1
