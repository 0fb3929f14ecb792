"""The node's counters and stage times, their /diagnostics report, and its reader.

Callbacks (executor thread) and the inference worker write; the diagnostics timer reads. Counts
are totals since start; rates and latencies cover the last period. The names of statuses,
counters and stage keys are defined here and nowhere else: `read_report` turns a
DiagnosticArray (rclpy's or rosbags') back into them for the tools and the evaluator.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

STATUS_PREFIX = "deltaworld: "
ENGINE_STATUS = f"{STATUS_PREFIX}engine"
CAMERA_STATUS = f"{STATUS_PREFIX}camera "  # + the camera's name

# Counter keys of a camera (the Forecaster adds "gated", "reset: <reason>", "forecasts").
RECEIVED = "frames received"
PUBLISHED = "forecasts published"
DROPPED = "dropped: "  # prefix of every drop; all but STALE, INACTIVE mean bad input or a failure
STALE = f"{DROPPED}stale"  # replaced in its slot by a newer frame before inference took it
GATED = f"{DROPPED}gated"  # between two forecast steps of header time (the Forecaster's gate)
WRONG_SIZE = f"{DROPPED}wrong size"
DECODE_ERROR = f"{DROPPED}decode error"  # + " (<kind>)": see decode_error
FAILED = f"{DROPPED}inference error"
INACTIVE = f"{DROPPED}inactive"  # a managed node that is not active forecasts nothing
NORMALISED = "stamp: nanosec normalised"  # kept, the outputs carry the normalised stamp
INPUT_RATE = "input rate (Hz)"
FORECAST_RATE = "forecast rate (Hz)"

# Stages timed per frame; the engine status carries "<stage> <statistic> ms" of each.
CONVERT = "node: convert"  # message -> RGB
PACK = "node: pack"  # forecast -> messages
PUBLISH = "node: publish"
NODE_STAGES = (CONVERT, PACK, PUBLISH)
FORECASTER = "forecaster: "  # + a Forecaster stage (Forecast.timings), or "encode ahead"
LATENCY = "stamp to publish"  # ROS time at publication - header stamp
STAGE_STATISTICS = ("mean", "p95", "max")


def dropped(cause: str) -> str:
    """The counter of frames dropped for `cause` (an input check's, e.g. "bad stamp (zero)")."""
    return f"{DROPPED}{cause}"


def decode_error(kind: str) -> str:
    """The counter of frames dropped because they could not be decoded, by kind."""
    return f"{DECODE_ERROR} ({kind})"


def stage_key(stage: str, statistic: str) -> str:
    return f"{stage} {statistic} ms"


class NodeStats:
    """Thread-safe counters per camera and per-stage timings (seconds) of the last period."""

    def __init__(self, cameras: list[str]) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter] = {camera: Counter() for camera in cameras}
        self._forecaster: dict[str, Counter] = {}
        self._times: dict[str, list[float]] = defaultdict(list)
        self._last_counts: dict[str, Counter] = {camera: Counter() for camera in cameras}
        self._problems: dict[str, str | None] = {camera: None for camera in cameras}
        self._last_time = time.monotonic()

    def count(self, camera: str, key: str) -> None:
        with self._lock:
            self._counts[camera][key] += 1

    def set_problem(self, camera: str, text: str | None) -> None:
        """Why this camera's settings make forecasting unlikely now (None: they do not)."""
        with self._lock:
            self._problems[camera] = text

    def record(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._times[stage].append(seconds)

    def forecaster_stats(self, stats: dict[str, Counter]) -> None:
        """A copy of Forecaster.stats (gated frames, resets), taken on the worker thread."""
        snapshot = {camera: Counter(counts) for camera, counts in stats.items()}
        with self._lock:
            self._forecaster = snapshot

    def report(
        self, cameras: dict[str, str], engine: dict[str, str], active: bool = True
    ) -> list[DiagnosticStatus]:
        """One status per camera (cameras: name -> input topic) and one for the engine;
        rates and stage times over the period since the last report, which starts a new one."""
        now = time.monotonic()
        with self._lock:
            period = max(now - self._last_time, 1e-9)
            counts = {c: self._counts[c] + self._forecaster.get(c, Counter()) for c in cameras}
            last, self._last_counts = self._last_counts, counts
            times, self._times = self._times, defaultdict(list)
            self._last_time = now
            problems = dict(self._problems)
        statuses = [
            _camera_status(
                name, topic, counts[name], counts[name] - last[name], period, problems[name], active
            )
            for name, topic in cameras.items()
        ]
        values = dict(engine)
        for stage, samples in sorted(times.items()):
            ms = np.asarray(samples) * 1e3
            statistics = (ms.mean(), np.percentile(ms, 95), ms.max())
            for statistic, value in zip(STAGE_STATISTICS, statistics, strict=True):
                values[stage_key(stage, statistic)] = f"{value:.2f}"
        statuses.append(
            DiagnosticStatus(
                level=DiagnosticStatus.OK,
                name=ENGINE_STATUS,
                message=f"{engine.get('backend', '')} {engine.get('model', '')}".strip(),
                hardware_id="deltaworld",
                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
            )
        )
        return statuses


def _camera_status(
    name: str,
    topic: str,
    totals: Counter,
    recent: Counter,
    period: float,
    setting: str | None,
    active: bool,
) -> DiagnosticStatus:
    problems = {
        key: n
        for key, n in recent.items()
        if n > 0 and key.startswith(DROPPED) and key not in (STALE, INACTIVE)
    }
    if not active:
        level, message = DiagnosticStatus.OK, f"inactive: {recent[INACTIVE]} frames not forecast"
    elif recent[RECEIVED] == 0:
        level, message = DiagnosticStatus.WARN, f"no frames on {topic} in the last {period:.1f} s"
    elif problems or setting:
        level = DiagnosticStatus.WARN
        counted = [f"{n} {key}" for key, n in sorted(problems.items())]
        message = "; ".join(([setting] if setting else []) + counted)
    else:
        level, message = DiagnosticStatus.OK, "forecasting"
    values = {
        "topic": topic,
        INPUT_RATE: f"{recent[RECEIVED] / period:.2f}",
        FORECAST_RATE: f"{recent[PUBLISHED] / period:.2f}",
        RECEIVED: totals[RECEIVED],
        PUBLISHED: totals[PUBLISHED],
        STALE: totals[STALE],
        GATED: totals["gated"],
        WRONG_SIZE: totals[WRONG_SIZE],
        INACTIVE: totals[INACTIVE],
    }
    values.update(
        {
            k: n
            for k, n in sorted(totals.items())
            if k.startswith((DROPPED, "reset", NORMALISED)) and k not in values
        }
    )
    return DiagnosticStatus(
        level=level,
        name=f"{CAMERA_STATUS}{name}",
        message=message,
        hardware_id=name,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )


# --------------------------------------------------------------------------------------------
# Reading the reports back (tools, the evaluator): rclpy messages or rosbags' alike.


@dataclass
class Report:
    """One /diagnostics message of the node: each status's key/values as published."""

    cameras: dict[str, dict[str, str]] = field(default_factory=dict)  # camera name -> values
    engine: dict[str, str] = field(default_factory=dict)

    def stage_ms(self) -> dict[str, dict[str, float]]:
        """Stage -> {"mean", "p95", "max"} in ms over the report's period."""
        stages: dict[str, dict[str, float]] = defaultdict(dict)
        for key, value in self.engine.items():
            for statistic in STAGE_STATISTICS:
                suffix = stage_key("", statistic)
                if key.endswith(suffix):
                    stages[key.removesuffix(suffix)][statistic] = float(value)
        return dict(stages)


def read_report(array: Any) -> Report:
    """The node's statuses in a DiagnosticArray (other nodes' are left out)."""
    report = Report()
    for status in array.status:
        values = {kv.key: kv.value for kv in status.values}
        if status.name == ENGINE_STATUS:
            report.engine = values
        elif status.name.startswith(CAMERA_STATUS):
            report.cameras[status.name.removeprefix(CAMERA_STATUS)] = values
    return report


def latest_cameras(arrays: Iterable[Any]) -> dict[str, dict[str, str]]:
    """Each camera's values in the last report that has it (totals since the node started)."""
    cameras: dict[str, dict[str, str]] = {}
    for array in arrays:
        cameras.update(read_report(array).cameras)
    return cameras


def stage_summary(reports: Iterable[Report]) -> dict[str, dict[str, float]]:
    """Per stage over many periods: the mean of the periods' means and the worst period's p95
    (ms)."""
    means: dict[str, list[float]] = defaultdict(list)
    p95: dict[str, list[float]] = defaultdict(list)
    for report in reports:
        for stage, values in report.stage_ms().items():
            means[stage].append(values["mean"])
            p95[stage].append(values["p95"])
    return {
        stage: {"mean": float(np.mean(v)), "p95": float(np.max(p95[stage]))}
        for stage, v in means.items()
    }


def counter(values: Mapping[str, str], key: str) -> int:
    """A counter of a camera's values (0 before it was first counted)."""
    return int(values.get(key, 0))
