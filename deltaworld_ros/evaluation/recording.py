"""Reading the bags an evaluation scores: the input bag's topics, and what `deltaworld replay`
recorded of the node (its forecasts, layout and diagnostics, and the replay's own summary,
whose type is defined here so that the replay writes what the evaluator reads)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..io.bags import bag_topics, read_messages
from ..io.images import stamp_ns
from ..ros import topics
from ..ros.diagnostics import read_report, stage_summary
from ..ros.futures import decode_futures, parse_layout


class EvalError(UsageError):
    """An input the evaluation cannot work with; the message says which and how to fix it."""


@dataclass
class ReplaySummary:
    """What a replay did; its JSON is the recording's last message, on topics.REPLAY_STATS."""

    mode: str  # "fast" or "rate <R>"
    frames_published: int
    unreadable_messages: int
    forecasts_received: int
    awaited_fast: int  # --fast: frames whose forecast was waited for
    timeouts_fast: int  # --fast: of those, no forecast within --timeout
    round_trip_mean_ms: float | None  # publish -> forecast received
    round_trip_p95_ms: float | None
    wall_s: float
    input_bag_damage: list[str]
    stopped_by: str | None  # "interrupted", or the error that ended the replay early
    recorded: dict[str, int]  # topic -> messages recorded

    def as_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class NodeDiagnostics:
    """The node's own /diagnostics in a recording."""

    reports: int
    cameras: dict[str, dict[str, str]]  # each camera's last values: totals since the start
    engine: dict[str, str]  # the last engine status
    stage_ms: dict[str, dict[str, float]]  # stage -> mean of the periods' means, worst p95


@dataclass
class Published:
    """One forecast as the node published it."""

    classes: np.ndarray  # (K, T, h, w)
    confidence: np.ndarray  # (K,)


@dataclass
class Recording:
    """What `deltaworld replay` recorded of the node."""

    published: dict[int, list[Published]]  # header stamp (ns) -> forecasts in published order
    layout: dict[str, Any]  # the futures layout
    replay: ReplaySummary | None  # None: the recording has no replay summary
    node: NodeDiagnostics


def topics_of(bag: Path, what: str) -> dict[str, str]:
    """A bag's topics and their message types; EvalError when it cannot be read."""
    try:
        return bag_topics(bag)
    except FileNotFoundError as err:
        raise EvalError(str(err)) from err
    except Exception as err:  # rosbags raises its own errors for unreadable metadata
        raise EvalError(f"cannot read the {what} {bag}: {err}") from err


def read_published(bag: Path, futures_topic: str, notes: list[str]) -> Recording:
    """The node's forecasts, layout and diagnostics in a bag recorded by `deltaworld replay`."""
    confidence_topic = topics.beside(futures_topic, topics.CONFIDENCE)
    layout_topic = topics.beside(futures_topic, topics.LAYOUT)
    recorded = topics_of(bag, "predictions bag")
    for topic, why in ((futures_topic, "the forecasts"), (layout_topic, "K, T and step")):
        if topic not in recorded:
            listing = ", ".join(f"{t} ({m})" for t, m in recorded.items()) or "none"
            raise EvalError(
                f"{topic} ({why}) is not in the predictions bag {bag}; it has: {listing}. "
                "Record the node with `deltaworld replay --record` (pass --futures-topic if the "
                "node publishes under another name)"
            )
    everything = (futures_topic, confidence_topic, layout_topic, topics.REPLAY_STATS,
                  topics.DIAGNOSTICS)  # fmt: skip
    futures: dict[int, list[Any]] = {}  # header stamp -> messages (a looping bag repeats stamps)
    confidences: dict[int, list[Any]] = {}
    layout_msg = None
    replay = None
    diagnostics: list[Any] = []
    for message in read_messages(bag, [t for t in everything if t in recorded], damage=notes):
        if message.topic == layout_topic:
            layout_msg = message.msg
        elif message.topic == topics.REPLAY_STATS:
            replay = ReplaySummary(**json.loads(message.msg.data))
        elif message.topic == topics.DIAGNOSTICS:
            diagnostics.append(message.msg)
        else:
            target = futures if message.topic == futures_topic else confidences
            target.setdefault(stamp_ns(message.msg.header), []).append(message.msg)
    if layout_msg is None:
        raise EvalError(f"no message on {layout_topic} in {bag}: cannot cut the futures tiles")
    layout = parse_layout(layout_msg)
    if confidence_topic not in recorded:
        notes.append(
            f"{confidence_topic} was not recorded: every hypothesis is scored with equal "
            "confidence, so the confidence quality numbers say nothing"
        )
    published: dict[int, list[Published]] = {}
    failures: Counter = Counter()
    uniform = np.full(int(layout["K"]), 1 / int(layout["K"]), np.float32)
    for stamp, messages in futures.items():
        paired = confidences.get(stamp, [])
        for i, msg in enumerate(messages):
            confidence_msg = paired[i] if i < len(paired) else None
            if confidence_msg is None and confidence_topic in recorded:
                failures["no confidence message of the same stamp"] += 1
                continue
            try:
                classes, confidence = decode_futures(msg, confidence_msg, layout)
            except ValueError as err:
                failures[str(err)] += 1
                continue
            confidence = uniform if confidence is None else confidence
            published.setdefault(stamp, []).append(Published(classes, confidence))
    for reason, count in failures.items():
        notes.append(f"{count} published forecast(s) not scored: {reason}")
    return Recording(published, layout, replay, node_diagnostics(diagnostics))


def node_diagnostics(messages: list[Any]) -> NodeDiagnostics:
    """The node's totals (its last report of each camera and of the engine) and its stage
    times: per stage the mean of the periods' means and the worst period's p95, in ms."""
    reports = [read_report(m) for m in messages]
    cameras: dict[str, dict[str, str]] = {}
    engine: dict[str, str] = {}
    for report in reports:
        cameras.update(report.cameras)
        engine = report.engine or engine
    return NodeDiagnostics(len(reports), cameras, engine, stage_summary(reports))
