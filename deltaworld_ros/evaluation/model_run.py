"""The model on a recording's frames: the streaming Forecaster told the true stamps of the frames
that came next, and the pairs of consecutive kept frames that DeltaTok's probes measure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..model.probes import TokenProbe, partner_pairs, probe_tokens
from ..model.store import ModelDirError, load_model, read_manifest
from ..ros.share import package_model_dir
from ..runtime.engine import EngineOptions, largest_batch, open_engine
from ..runtime.forecaster import Forecast, Forecaster, ForecasterConfig, FrameInput, StreamOverrides
from ..runtime.postprocess import kernel_density_confidence
from .frames import KeptFrame
from .recording import EvalError
from .results import ModelInfo


class ModelRun:
    """The Forecaster over one image topic (`stream`), K hypotheses of T steps; the features of
    every frame kept for the scorers and probes, its stage times for the latency table."""

    def __init__(
        self,
        model_dir: Path | None,
        stream: str,
        num_hypotheses: int,
        horizon: int,
        engine: EngineOptions,
        seed: int = 0,
    ) -> None:
        model_dir = Path(model_dir) if model_dir else package_model_dir()
        try:
            manifest = read_manifest(model_dir)
            sized = replace(engine, max_batch=largest_batch(num_hypotheses, horizon, 1))
            engine = open_engine(model_dir, sized)
        except (ModelDirError, OSError, ValueError) as err:
            raise EvalError(f"cannot open the model {model_dir}: {err}") from err
        config = ForecasterConfig(
            num_hypotheses=num_hypotheses, horizon=horizon, seed=seed, keep_features=True
        )
        self.forecaster = Forecaster(engine, config)
        self.stream = stream
        self.horizon = horizon
        self.info = ModelInfo(
            dir=str(model_dir),
            name=manifest.config.name,
            backend=engine.backend,
            providers=dict(engine.providers),
            provenance=manifest.provenance,
        )
        self.timings: list[dict[str, float]] = []

    def forecast(self, frame: KeptFrame, futures: list[KeptFrame]) -> Forecast | None:
        """The Forecaster on this frame, told the true stamps of the frames that came next
        (the nominal grid past the end of the segment)."""
        stamp = frame.stamp_ns / 1e9
        interval = self.forecaster.frame_interval
        future = [f.stamp_ns / 1e9 for f in futures]
        future += [stamp + interval * s for s in range(len(future) + 1, self.horizon + 1)]
        forecast = self.forecaster.process(
            [FrameInput(self.stream, stamp, frame.rgb)],
            {self.stream: StreamOverrides(future_stamps=future)},
        )[0]
        if forecast is not None:
            self.timings.append(forecast.timings)
        return forecast

    def kernel_density(self, forecast: Forecast) -> np.ndarray | None:
        """The kernel density of a forecast's rows, when its confidence is the learned
        scorer's (scored side by side); None otherwise."""
        if not self.forecaster.has_scorer:
            return None
        k = self.forecaster.config.num_hypotheses
        return kernel_density_confidence(forecast.delta_tokens.reshape(k, -1))


class TokenPairs:
    """The pairs of DeltaTok's token probes: consecutive kept frames of one segment, their
    features; a uniform sample of at most `limit` pairs over the whole recording."""

    def __init__(self, limit: int = 256, seed: int = 0) -> None:
        self.limit = limit
        self.rng = np.random.default_rng(seed)
        self.pairs: list[tuple[np.ndarray, np.ndarray, int]] = []  # previous, current, segment
        self.seen = 0
        self.previous: tuple[int, int, np.ndarray] | None = None  # index, segment, features

    def add(self, index: int, segment: int, features: np.ndarray) -> None:
        last = self.previous
        if last is not None and last[0] == index - 1 and last[1] == segment:
            self.seen += 1
            pair = (last[2], features, segment)
            if len(self.pairs) < self.limit:
                self.pairs.append(pair)
            elif (slot := int(self.rng.integers(self.seen))) < self.limit:
                self.pairs[slot] = pair
        self.previous = (index, segment, features)

    def probe(self, model_dir: Path) -> TokenProbe | None:
        """None when no segment has two pairs (a pair needs another of its own segment)."""
        streams = np.array([segment for *_, segment in self.pairs])
        if len(streams) == len(np.unique(streams)):
            return None
        x = torch.from_numpy(np.stack([p for p, _, _ in self.pairs]))
        y = torch.from_numpy(np.stack([c for _, c, _ in self.pairs]))
        partner = partner_pairs(streams, self.rng)
        return probe_tokens(load_model(model_dir).tokenizer, x.float(), y.float(), partner)
