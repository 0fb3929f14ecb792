"""Score K-hypothesis forecasts on a rosbag2, offline or as the node published them.

Offline (default) the streaming Forecaster runs over the bag's image topic at the recorded
header stamps, one frame every `frame_interval` of header time (the frames its gate keeps),
and each forecast's future stamps are the stamps of the frames that really came next: step s
is scored against the s-th next kept frame. With --predictions the forecasts the node
published (recorded by `deltaworld replay`) are scored instead, matched to the input frames by
header stamp, step s against the kept frame nearest to stamp + s * step (sources.py).

Targets are the label topic when the bag has one, otherwise the model's own segmentation of
the frame that really came: a pseudo-label score, which measures forecasting against the
model's present-tense perception, not segmentation quality. A model with a depth head also
gets its depth futures scored (AbsRel, RMSE per step; from the offline run) against a depth
topic (--depth-topic, 32FC1 metres) or the model's own depth of the frame that came.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..io.bags import IMAGE, IMAGE_TYPES, message_count, read_images
from ..model.config import generic_classes
from ..ros import topics
from ..runtime.engine import EngineOptions
from ..runtime.forecaster import Forecast, ForecasterConfig
from ..runtime.gate import STAMP_BACKWARDS, GateSettings
from ..runtime.intake import CameraGate
from ..runtime.postprocess import disagreement
from .frames import FrameStats, KeptFrame, keep_frames, with_futures
from .labels import LabelStream, choose_label_topic, read_depth
from .model_run import ModelRun, TokenPairs
from .recording import EvalError, Recording, read_published, topics_of
from .results import (
    ClassMaps,
    Depth,
    Evaluation,
    Example,
    Features,
    FrameCounts,
    Latency,
    Metrics,
    Target,
    TokenScores,
)
from .scoring import (
    ClassMapScorer,
    DepthScorer,
    FeatureScorer,
    Pending,
    confidence_summary,
    kernel_density,
    reliability,
)
from .sources import ForecastSource, OfflineForecasts, RecordedForecasts, SourceForecast, pad

PSEUDO_LABELS = (
    "the bag has no label topic: forecasts are scored against the model's own segmentation of "
    "the frame that really came (a pseudo-label score: it measures forecasting, not "
    "segmentation quality)"
)


@dataclass
class EvalOptions:
    bag: Path
    image_topic: str
    label_topic: str | None = "auto"  # "auto": the bag's label topic if it has one; None: none
    depth_topic: str | None = None  # 32FC1 depth in metres; None: the model's own depth
    model_dir: Path | None = None  # None: the default model
    num_hypotheses: int = ForecasterConfig.num_hypotheses  # K of the offline run
    horizon: int = ForecasterConfig.horizon  # T of the offline run
    predictions: Path | None = None  # a bag recorded by `deltaworld replay`
    futures_topic: str = topics.DEFAULT_FUTURES
    engine: EngineOptions = field(default_factory=EngineOptions)
    seed: int = 0
    examples: int = 3
    progress: bool = True
    with_model: bool = False  # --predictions: the model runs too (own segmentation, probes)


def evaluate(options: EvalOptions) -> Evaluation:
    """Read the bag, run or read the forecasts, score every step; see the module docstring."""
    return Evaluator(options).run()


class Evaluator:
    """One evaluation: the inputs it resolved at the start, and the scores it accumulates."""

    def __init__(self, options: EvalOptions) -> None:
        self.options = options
        recorded = topics_of(options.bag, "input bag")
        image_types = {t: m for t, m in recorded.items() if m in IMAGE_TYPES}
        if options.image_topic not in image_types:
            listing = ", ".join(f"{t} ({m})" for t, m in image_types.items()) or "none"
            what = (
                "is not an image topic" if options.image_topic in recorded else "is not in the bag"
            )
            raise EvalError(
                f"--image-topic {options.image_topic} {what} {options.bag}; its image topics "
                f"are: {listing}"
            )
        self.notes: list[str] = []
        self.label_topic = choose_label_topic(
            options.label_topic, options.bag, options.image_topic, image_types
        )
        self.labels = (
            LabelStream(read_images(options.bag, self.label_topic, labels=True, damage=self.notes))
            if self.label_topic
            else None
        )
        if options.depth_topic and recorded.get(options.depth_topic) != IMAGE:
            raise EvalError(
                f"--depth-topic {options.depth_topic} is not a {IMAGE} topic of {options.bag}"
            )
        self.depth_labels = (
            LabelStream(read_depth(options.bag, options.depth_topic, self.notes))
            if options.depth_topic
            else None
        )
        self.recording: Recording | None = None
        if options.predictions is not None:
            self.recording = read_published(options.predictions, options.futures_topic, self.notes)
            layout = self.recording.layout
            num_hypotheses, horizon = int(layout["K"]), int(layout["T"])
        else:
            num_hypotheses, horizon = options.num_hypotheses, options.horizon
        self.horizon = horizon
        # The model runs for offline forecasts, and for pseudo-labels of the node's forecasts.
        self.run_model: ModelRun | None = None
        if options.predictions is None or not self.label_topic or options.with_model:
            self.run_model = ModelRun(
                options.model_dir, options.image_topic, num_hypotheses, horizon, options.engine,
                options.seed,
            )  # fmt: skip
            forecaster = self.run_model.forecaster
            head = forecaster.engine.config.head
            self.interval_s = forecaster.frame_interval
            names, palette = list(head.class_names), head.palette
        else:
            self.interval_s = float(layout["step_seconds"])
            names, palette = list(layout.get("class_names", [])), layout.get("palette", [])
        self.source: ForecastSource = (
            OfflineForecasts(self.run_model)
            if self.recording is None
            else RecordedForecasts(
                self.recording, options.futures_topic, options.predictions, self.interval_s
            )
        )
        self.model_classes = (names, np.array(palette, np.uint8).reshape(-1, 3))
        self.classes = ClassMapScorer(horizon, num_hypotheses, max(len(names), 1))
        self.features = FeatureScorer(horizon, num_hypotheses) if self.run_model else None
        self.depth = (
            DepthScorer(horizon, num_hypotheses)
            if self.run_model is not None and self.run_model.forecaster.has_depth
            else None
        )
        self.stats = FrameStats()
        self.examples: dict[int, Example] = {}  # part of the bag -> its example
        self.token_pairs = TokenPairs(seed=options.seed)
        self.first_stamp: int | None = None
        self.unlabelled = 0  # kept frames without a label of the same header stamp
        self.total = 0  # messages on the image topic

    def run(self) -> Evaluation:
        options = self.options
        # the Forecaster's gate, or (forecasts read from a recording) the node's default one
        gate = CameraGate(
            self.run_model.forecaster.gate_settings
            if self.run_model
            else GateSettings(self.interval_s)
        )
        frames = read_images(options.bag, options.image_topic, damage=self.notes)
        kept = keep_frames(frames, gate, self.stats)
        total = self.total = message_count(options.bag, options.image_topic)
        with tqdm(total=total, unit="msg", desc="eval", disable=not options.progress) as bar:
            for frame, futures in with_futures(kept, self.horizon):
                bar.update(frame.message + 1 - bar.n)
                self.step(frame, futures)
            bar.update(total - bar.n)
        if self.stats.messages < total:
            self.notes.append(
                f"{total - self.stats.messages} of {total} messages on {options.image_topic} "
                "could not be read from the damaged bag; the scores cover the frames before "
                "and after the damage"
            )
        for scorer in (self.classes, self.features, self.depth):
            if scorer is not None:
                scorer.flush()
        examples = [
            self.examples[part]
            for part in sorted(self.examples)
            if all(t is not None for t in self.examples[part].targets[1:])
        ]
        class_names, palette = complete_classes(*self.model_classes, self.classes.num_classes)
        return Evaluation(self.metrics(class_names), examples, class_names, palette)

    def step(self, frame: KeptFrame, futures: list[KeptFrame]) -> None:
        """One kept frame: score what predicted it, then take the forecast made at it."""
        self.first_stamp = frame.stamp_ns if self.first_stamp is None else self.first_stamp
        run = self.run_model.forecast(frame, futures) if self.run_model is not None else None
        label = self.labels.get(frame.stamp_ns, frame.log_ns) if self.labels is not None else None
        if self.labels is not None:
            target = label
            self.unlabelled += label is None
        else:
            target = run.current_classes if run is not None else None
        if label is not None and run is not None:
            self.classes.score_present(run.current_classes, label)
        self.classes.observe(frame.index, frame.stamp_ns, target)
        following = pad([f.index for f in futures], self.horizon)
        if run is not None:
            self.token_pairs.add(frame.index, frame.segment, run.current_features)
            self.features.observe(frame.index, frame.stamp_ns, run.current_features)
            self.features.forecast(
                Pending(frame.index, frame.stamp_ns, run.confidence, run.features,
                        run.current_features, None, following,
                        kernel=self.run_model.kernel_density(run))
            )  # fmt: skip
        if self.depth is not None:
            self.score_depth(frame, following, run)
        for example in self.examples.values():
            for i, wanted in enumerate(example.indices):
                if wanted == frame.index:
                    example.targets[i] = target
        forecast = self.source.take(frame, futures, run)
        if forecast is None:
            return
        present = run.current_classes if run is not None else None
        self.classes.forecast(
            Pending(frame.index, frame.stamp_ns, forecast.confidence, forecast.hypotheses,
                    present, target, [f.index if f else None for f in forecast.targets],
                    kernel=forecast.kernel)
        )  # fmt: skip
        self.offer_example(frame, forecast.targets, target, forecast, present)

    def offer_example(
        self,
        frame: KeptFrame,
        chosen: list[KeptFrame | None],
        target: np.ndarray | None,
        forecast: SourceForecast,
        present: np.ndarray | None,
    ) -> None:
        """Per equal part of the bag, the forecast whose hypotheses disagree most."""
        parts = self.options.examples
        if not parts or None in chosen:
            return
        part = min(frame.message * parts // self.total, parts - 1)
        spread = float(disagreement(forecast.hypotheses).mean())
        held = self.examples.get(part)
        if held is None or spread > held.disagreement:
            self.examples[part] = Example(
                stamp_s=frame.stamp_ns / 1e9,
                offset_s=(frame.stamp_ns - self.first_stamp) / 1e9,
                frames=[frame.rgb] + [f.rgb for f in chosen],
                targets=[target] + [None] * self.horizon,
                indices=[frame.index] + [f.index for f in chosen],
                hypotheses=forecast.hypotheses,
                confidence=forecast.confidence,
                horizon_s=[0.0] + [(f.stamp_ns - frame.stamp_ns) / 1e9 for f in chosen],
                present=present,
                disagreement=spread,
            )

    def score_depth(self, frame: KeptFrame, following: list[int | None], run: Forecast | None):
        """Score the depth futures that predicted this frame, then take the one made at it."""
        if self.depth_labels is not None:
            target = self.depth_labels.get(frame.stamp_ns, frame.log_ns)
        else:
            target = run.current_depth if run is not None else None
        self.depth.observe(frame.index, frame.stamp_ns, target)
        if run is not None:
            self.depth.forecast(
                Pending(frame.index, frame.stamp_ns, run.confidence, run.depth,
                        run.current_depth, None, following)
            )  # fmt: skip

    def token_scores(self, notes: list[str]) -> TokenScores | None:
        """DeltaTok's token reliance and identity ratio on consecutive kept frames (the
        definitions: model/probes.py); None with a note when they cannot be measured."""
        if self.run_model is None:
            return None
        probe = self.token_pairs.probe(Path(self.run_model.info.dir))
        if probe is None:
            notes.append("token probes omitted: no run of 3 consecutive kept frames")
            return None
        return TokenScores(probe, self.token_pairs.seen)

    def metrics(self, class_names: list[str]) -> Metrics:
        """Everything the report shows."""
        options, stats, notes = self.options, self.stats, self.notes
        offline = self.source.mode == "offline"
        if self.label_topic:
            target = Target("labels", self.label_topic)
        else:
            target = Target("pseudo-labels", None, PSEUDO_LABELS)
        if stats.undecodable:
            notes.append(
                f"{stats.undecodable} of {stats.messages} frame(s) could not be decoded; they "
                "were skipped and the scores cover the good frames"
            )
        for reason, count in stats.restarts.items():
            extra = " (does the bag loop?)" if reason == STAMP_BACKWARDS else ""
            notes.append(
                f"{reason}{extra}: {count} time(s); the Forecaster restarted its history each "
                "time and forecasts are scored only against frames of their own segment"
            )
        if self.labels is not None and self.labels.errors:
            notes.append(f"{self.labels.errors} label message(s) could not be decoded, not used")
        if self.unlabelled:
            notes.append(
                f"{self.unlabelled} of {stats.kept} kept frame(s) have no label of the same "
                f"header stamp on {self.label_topic}; forecasts of them are not scored"
            )
        if self.features is None:
            notes.append(
                "feature metrics omitted: the node publishes class maps, not features "
                "(run `deltaworld eval` without --predictions for them)"
            )
        elif not offline:
            notes.append(
                "feature metrics come from an offline run of the model on the same frames (the "
                "node publishes no features); class-map metrics are the node's"
            )
        class_steps = self.classes.summary()
        scored = sum(s.scored for s in class_steps)
        if not scored:
            notes.append("no forecast could be scored (see the frame counts)")
        run = self.run_model
        frames = FrameCounts(
            messages=stats.messages,
            decoded=stats.messages - stats.undecodable,
            undecodable=stats.undecodable,
            decode_errors=dict(stats.errors.most_common(5)),
            kept=stats.kept,
            gated=stats.gated,
            wrong_size=stats.wrong_size,
            restarts=dict(stats.restarts),
            forecaster={k: dict(v) for k, v in run.forecaster.stats.items()} if run else None,
        )
        metrics = Metrics(
            mode=self.source.mode,
            forecasts_from=self.source.forecasts_from,
            bag=str(options.bag),
            image_topic=options.image_topic,
            target=target,
            model=run.info if run else None,
            K=self.source.num_hypotheses,
            T=self.source.horizon,
            frame_interval_s=self.interval_s,
            seed=options.seed if run else None,
            frames=frames,
            scored=scored > 0,
            class_maps=ClassMaps(
                forecasts=self.classes.forecasts,
                class_names=class_names,
                steps=class_steps,
                confidence_source=self.source.confidence_source,
                rollout_confidence=confidence_summary(self.classes.quality, None),
                reliability=reliability(self.classes.quality),
                present_miou=self.classes.present_miou(),
                kernel_density=kernel_density(self.classes),
            ),
            latency_ms=latency(run.timings if run else [], stats.read_s, self.recording),
            notes=notes,
            predictions=self.source.matching(),
        )
        if self.depth is not None:
            depth_target = (
                Target("labels", options.depth_topic)
                if self.depth_labels is not None
                else Target(
                    "pseudo-labels", None, "the model's own depth of the frame that really came"
                )
            )
            metrics.depth = Depth(
                source=OfflineForecasts.forecasts_from,
                target=depth_target,
                error="AbsRel = mean |d - d*| / d*; RMSE in metres; over valid target pixels",
                steps=self.depth.summary(),
                rollout_confidence=confidence_summary(self.depth.quality, None),
            )
        if self.recording is not None:
            metrics.replay = self.recording.replay
            metrics.node = self.recording.node
        metrics.tokens = self.token_scores(notes)
        if self.features is not None:
            metrics.features = Features(
                source=OfflineForecasts.forecasts_from,
                error="mean squared error over patches and channels",
                steps=self.features.summary(),
                confidence_source=self.run_model.forecaster.confidence_source,
                rollout_confidence=confidence_summary(self.features.quality, None),
                reliability=reliability(self.features.quality),
                kernel_density=kernel_density(self.features),
            )
        return metrics


def complete_classes(
    names: list[str], palette: np.ndarray, count: int
) -> tuple[list[str], np.ndarray]:
    """Names and colours for `count` classes; label ids past the model's get generic ones."""
    generic_names, generic_palette = generic_classes(count)
    names = names + list(generic_names[len(names) :])
    palette = np.concatenate([palette, np.array(generic_palette, np.uint8)[len(palette) :]])
    return names, palette


def latency(
    timings: list[dict[str, float]], read_s: list[float], recording: Recording | None
) -> dict[str, Latency]:
    """Per stage in ms: mean, median and 95th percentile of this run's stages (reading the
    bag; the offline Forecaster's), and the node's own stage times and the replay's round trip
    (mean and p95) when its recording is scored."""
    stages = {"eval: read+decode": read_s}
    for stage in dict.fromkeys(k for t in timings for k in t):
        stages[f"offline: {stage}"] = [t.get(stage, 0.0) for t in timings]
    out = {
        stage: Latency(
            mean=1e3 * float(np.mean(v)),
            p95=1e3 * float(np.percentile(v, 95)),
            p50=1e3 * float(np.percentile(v, 50)),
            count=len(v),
        )
        for stage, v in stages.items()
        if v
    }
    if recording is not None:
        out.update(
            {stage: Latency(v["mean"], v["p95"]) for stage, v in recording.node.stage_ms.items()}
        )
        replay = recording.replay
        if replay is not None and replay.round_trip_mean_ms is not None:
            out["replay: publish -> forecast received"] = Latency(
                replay.round_trip_mean_ms, replay.round_trip_p95_ms
            )
    return out
