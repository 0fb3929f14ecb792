"""The node's counters and stage times, and their /diagnostics report.

Callbacks (executor thread) and the inference worker write; the diagnostics timer reads. Counts
are totals since start; rates and latencies cover the last period.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

# Counter keys of a camera (the Forecaster adds "gated", "reset: <reason>", "forecasts").
RECEIVED = "frames received"
PUBLISHED = "forecasts published"
STALE = "dropped: stale"  # replaced in its slot by a newer frame before inference took it
WRONG_SIZE = "dropped: wrong size"
DECODE_ERROR = "dropped: decode error"  # + " (<kind>)"
FAILED = "dropped: inference error"
INACTIVE = "dropped: inactive"  # a managed node that is not active forecasts nothing
DROPPED = "dropped: "  # prefix of every drop; all but STALE, INACTIVE mean bad input or a failure
NORMALISED = "stamp: nanosec normalised"  # kept, the outputs carry the normalised stamp
LATENCY = "stamp to publish"  # ROS time at publication - header stamp


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
            values[f"{stage} mean ms"] = f"{ms.mean():.2f}"
            values[f"{stage} p95 ms"] = f"{np.percentile(ms, 95):.2f}"
            values[f"{stage} max ms"] = f"{ms.max():.2f}"
        statuses.append(
            DiagnosticStatus(
                level=DiagnosticStatus.OK,
                name="deltaworld: engine",
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
        "input rate (Hz)": f"{recent[RECEIVED] / period:.2f}",
        "forecast rate (Hz)": f"{recent[PUBLISHED] / period:.2f}",
        RECEIVED: totals[RECEIVED],
        PUBLISHED: totals[PUBLISHED],
        STALE: totals[STALE],
        "dropped: gated": totals["gated"],
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
        name=f"deltaworld: camera {name}",
        message=message,
        hardware_id=name,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )
