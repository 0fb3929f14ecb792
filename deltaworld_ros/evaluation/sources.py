"""Where the scored forecasts come from: the model run offline on the bag's frames, or the node's
messages recorded by `deltaworld replay`. Both answer `take(frame, futures, run)` with the
forecast made at a kept frame and the kept frame each of its steps is scored against."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..runtime.forecaster import Forecast
from .frames import KeptFrame
from .model_run import ModelRun
from .recording import Recording


@dataclass
class SourceForecast:
    hypotheses: np.ndarray  # (K, T, h, w) class maps
    confidence: np.ndarray  # (K,)
    targets: list[KeptFrame | None]  # the kept frame each step is scored against
    kernel: np.ndarray | None = None  # (K,) the kernel density beside a learned confidence


class ForecastSource(Protocol):
    mode: str  # "offline" or "predictions"
    forecasts_from: str  # for the report
    confidence_source: str  # "learned scorer" or "kernel density"
    num_hypotheses: int
    horizon: int

    def take(
        self, frame: KeptFrame, futures: list[KeptFrame], run: Forecast | None
    ) -> SourceForecast | None:
        """The forecast made at `frame` (None: none); `futures` are the kept frames that came
        next in its segment, `run` the model's own forecast at it (None: no model runs)."""

    def matching(self) -> dict[str, int] | None:
        """How forecasts and frames were paired (None: by construction)."""


class OfflineForecasts:
    """The model's forecasts, each step scored against the kept frame that came next."""

    mode = "offline"
    forecasts_from = "offline Forecaster run"

    def __init__(self, run: ModelRun) -> None:
        self.run = run
        forecaster = run.forecaster
        self.num_hypotheses = forecaster.config.num_hypotheses
        self.horizon = forecaster.config.horizon
        self.confidence_source = forecaster.confidence_source

    def take(
        self, frame: KeptFrame, futures: list[KeptFrame], run: Forecast | None
    ) -> SourceForecast | None:
        if run is None:
            return None
        targets = pad(futures, self.horizon)
        return SourceForecast(run.classes, run.confidence, targets, self.run.kernel_density(run))

    def matching(self) -> None:
        return None


class RecordedForecasts:
    """The node's published forecasts, matched to the input frames by header stamp; step s is
    scored against the kept frame nearest to stamp + s * step."""

    mode = "predictions"

    def __init__(self, recording: Recording, futures_topic: str, bag: Path, step_s: float):
        self.forecasts_from = f"node messages on {futures_topic} in {bag}"
        self.num_hypotheses = int(recording.layout["K"])
        self.horizon = int(recording.layout["T"])
        self.confidence_source = recording.layout.get("confidence", "not in the node's layout")
        self.step_s = step_s
        self.queues = {stamp: deque(forecasts) for stamp, forecasts in recording.published.items()}
        self.matched: Counter = Counter()

    def take(
        self, frame: KeptFrame, futures: list[KeptFrame], run: Forecast | None
    ) -> SourceForecast | None:
        queue = self.queues.get(frame.stamp_ns)
        if not queue:
            self.matched["input frames the node did not forecast"] += 1
            return None
        published = queue.popleft()
        self.matched["forecasts matched to input frames"] += 1
        targets = nearest_futures(frame, futures, self.step_s, self.horizon)
        return SourceForecast(published.classes, published.confidence, targets)

    def matching(self) -> dict[str, int]:
        unmatched = sum(len(q) for q in self.queues.values())
        if unmatched:
            self.matched["published forecasts with no input frame of that stamp"] = unmatched
        return dict(self.matched)


def pad(items: list, length: int) -> list:
    return items + [None] * (length - len(items))


def nearest_futures(
    frame: KeptFrame, futures: list[KeptFrame], step_s: float, horizon: int
) -> list[KeptFrame | None]:
    """For each step of a published forecast (frame stamp + s * step), the kept frame nearest
    to that time, if one lies within half a step of it."""
    chosen: list[KeptFrame | None] = []
    for s in range(1, horizon + 1):
        expected = frame.stamp_ns + s * step_s * 1e9
        near = min(futures, key=lambda f: abs(f.stamp_ns - expected), default=None)
        ok = near is not None and abs(near.stamp_ns - expected) <= 0.5 * step_s * 1e9
        chosen.append(near if ok else None)
    return chosen
