"""`deltaworld eval`: score K-hypothesis forecasts on a rosbag2, offline or as the node published.

Offline (default) the streaming Forecaster runs over the bag's image topic at the recorded
header stamps, one frame every `frame_interval` of header time (the frames its gate keeps),
and each forecast's future stamps are the stamps of the frames that really came next: step s
is scored against the s-th next kept frame. With --predictions the forecasts the node
published (recorded by `deltaworld replay`) are scored instead, matched to the input frames by
header stamp, step s against the kept frame nearest to stamp + s * step.

Targets are the label topic when the bag has one, otherwise the model's own segmentation of
the frame that really came: a pseudo-label score, which measures forecasting against the
model's present-tense perception, not segmentation quality. A model with a depth head also
gets its depth futures scored (AbsRel, RMSE per step; from the offline run) against a depth
topic (--depth-topic, 32FC1 metres) or the model's own depth of the frame that came.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from deltaworld_ros.arguments import at_least
from deltaworld_ros.errors import UsageError
from deltaworld_ros.evaluation.confidence import ConfidenceQuality
from deltaworld_ros.evaluation.metrics import (
    IGNORE,
    confusion,
    depth_errors,
    feature_error,
    iou_per_class,
    mean_iou,
)
from deltaworld_ros.evaluation.report import summary_text, write_report
from deltaworld_ros.io.bags import (
    IMAGE,
    IMAGE_TYPES,
    BagFrame,
    bag_topics,
    message_count,
    read_images,
    read_messages,
)
from deltaworld_ros.io.images import stamp_ns
from deltaworld_ros.model.config import generic_classes
from deltaworld_ros.model.probes import TokenProbe, partner_pairs, probe_tokens
from deltaworld_ros.model.store import ModelDirError, load_model, read_manifest
from deltaworld_ros.ros import topics
from deltaworld_ros.ros.diagnostics import read_report, stage_summary
from deltaworld_ros.ros.futures import decode_float_image, decode_futures, parse_layout
from deltaworld_ros.ros.share import package_model_dir
from deltaworld_ros.runtime.arguments import (
    add_engine_arguments,
    add_forecast_arguments,
    engine_options,
)
from deltaworld_ros.runtime.engine import EngineOptions, largest_batch, open_engine
from deltaworld_ros.runtime.forecaster import (
    Forecast,
    Forecaster,
    ForecasterConfig,
    FrameInput,
    StreamOverrides,
)
from deltaworld_ros.runtime.gate import GATED, STAMP_BACKWARDS, GateSettings
from deltaworld_ros.runtime.intake import WRONG_SIZE, CameraGate
from deltaworld_ros.runtime.postprocess import disagreement, kernel_density_confidence

BASELINES = ("most_confident", "best_of_k", "mean_of_k", "copy_last", "copy_last_target")
LABEL_WORDS = ("label", "semantic", "segmentation")  # how --label-topic auto finds labels


# --------------------------------------------------------------------------------------------
# Scoring: forecasts wait for the frames they predicted, then every step is scored.


@dataclass
class _Pending:
    index: int  # kept-frame index the forecast was made at
    stamp_ns: int  # its header stamp
    confidence: np.ndarray  # (K,)
    hypotheses: np.ndarray  # (K, T, ...) class maps or depth (h, w), or features (N, C)
    last: np.ndarray | None  # copy-last prediction: the present frame's map / features
    last_target: np.ndarray | None  # the present frame's own target (copy-last of the target)
    targets: list[int | None]  # kept-frame index each step is scored against
    errors: dict[int, np.ndarray] = field(default_factory=dict)  # step -> (K,) error
    kernel: np.ndarray | None = None  # (K,) the kernel density beside a learned confidence


class _Scorer:
    """Pending forecasts; `observe` scores every step that targets the observed frame."""

    def __init__(self, horizon: int, num_hypotheses: int) -> None:
        self.horizon = horizon
        self.pending: list[_Pending] = []
        self.quality = ConfidenceQuality(horizon, num_hypotheses)
        self.kernel_quality = ConfidenceQuality(horizon, num_hypotheses)  # beside a scorer
        self.horizon_s: list[list[float]] = [[] for _ in range(horizon)]
        self.forecasts = 0

    def forecast(self, entry: _Pending) -> None:
        self.pending.append(entry)
        self.forecasts += 1

    def observe(self, index: int, stamp_ns: int, target: np.ndarray | None) -> None:
        """Score the steps of pending forecasts that predicted kept frame `index`."""
        if target is not None:
            for entry in self.pending:
                for step, wanted in enumerate(entry.targets):
                    if wanted == index:
                        errors = self._score(entry, step, target)
                        if errors is not None:
                            entry.errors[step] = errors
                            self.quality.add(step, entry.confidence, errors)
                            if entry.kernel is not None:
                                self.kernel_quality.add(step, entry.kernel, errors)
                            self.horizon_s[step].append((stamp_ns - entry.stamp_ns) / 1e9)
        self.flush(index)

    def flush(self, index: int | None = None) -> None:
        """Close forecasts whose targets are all at or before `index` (all when None)."""
        keep = []
        for entry in self.pending:
            wanted = [t for t in entry.targets if t is not None]
            if index is not None and wanted and max(wanted) > index:
                keep.append(entry)
            elif entry.errors:
                mean = np.mean([entry.errors[s] for s in sorted(entry.errors)], axis=0)
                self.quality.add(None, entry.confidence, mean)
                if entry.kernel is not None:
                    self.kernel_quality.add(None, entry.kernel, mean)
        self.pending = keep

    def _score(self, entry: _Pending, step: int, target: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError


class ClassMapScorer(_Scorer):
    """mIoU per step of the most confident, best-of-K (oracle per frame), all K pooled, and
    copy-last; confidence quality on the per-frame class error 1 - mIoU."""

    def __init__(self, horizon: int, num_hypotheses: int, num_classes: int) -> None:
        super().__init__(horizon, num_hypotheses)
        self.num_classes = num_classes
        self.matrices = {
            name: np.zeros((horizon, num_classes, num_classes), np.int64) for name in BASELINES
        }
        self.present = np.zeros((num_classes, num_classes), np.int64)  # frame's own segmentation

    def ensure(self, target: np.ndarray) -> None:
        """Grow the matrices to the target's classes (labels may use ids past the model's)."""
        grow = int(target[target != IGNORE].max(initial=0)) + 1 - self.num_classes
        if grow > 0:
            pad = ((0, grow), (0, grow))
            self.present = np.pad(self.present, pad)
            for name, m in self.matrices.items():
                self.matrices[name] = np.pad(m, ((0, 0), *pad))
            self.num_classes += grow

    def observe(self, index: int, stamp_ns: int, target: np.ndarray | None) -> None:
        if target is not None:
            self.ensure(target)
        super().observe(index, stamp_ns, target)

    def score_present(self, classes: np.ndarray, target: np.ndarray) -> None:
        self.ensure(target)
        """The segmentation of the frame itself against its label (a ceiling for forecasts)."""
        self.present += confusion(resize_nearest(classes, target.shape), target, self.num_classes)

    def _score(self, entry: _Pending, step: int, target: np.ndarray) -> np.ndarray | None:
        c = self.num_classes
        maps = resize_nearest(entry.hypotheses[:, step], target.shape)  # (K, H, W)
        matrices = np.stack([confusion(m, target, c) for m in maps])  # (K, C, C)
        if not matrices[0].any():
            return None  # no labelled pixel
        errors = 1.0 - np.array([mean_iou(m) for m in matrices])
        best = int(np.argmin(errors))
        top = int(np.argmax(entry.confidence))
        self.matrices["most_confident"][step] += matrices[top]
        self.matrices["best_of_k"][step] += matrices[best]
        self.matrices["mean_of_k"][step] += matrices.sum(0)
        for name, last in (("copy_last", entry.last), ("copy_last_target", entry.last_target)):
            if last is not None:
                last = resize_nearest(last, target.shape)
                self.matrices[name][step] += confusion(last, target, c)
        return errors

    def summary(self) -> list[dict[str, Any]]:
        steps = []
        for s in range(self.horizon):
            miou = {
                name: _finite(mean_iou(m[s])) for name, m in self.matrices.items() if m[s].any()
            }
            per_class = iou_per_class(self.matrices["most_confident"][s])
            steps.append(
                {
                    "step": s + 1,
                    "horizon_s": _mean(self.horizon_s[s]),
                    "scored": len(self.horizon_s[s]),
                    "miou": miou,
                    "iou_most_confident_per_class": [_finite(v) for v in per_class],
                    "confidence": self.quality.summary(s),
                }
            )
        return steps


class FeatureScorer(_Scorer):
    """Feature MSE per step of best-of-K, mean-of-K (a random hypothesis), the most confident
    and copy-last (the present frame's features); confidence quality on the same error."""

    def __init__(self, horizon: int, num_hypotheses: int) -> None:
        super().__init__(horizon, num_hypotheses)
        self.values: dict[str, list[list[float]]] = {
            name: [[] for _ in range(horizon)]
            for name in ("best_of_k", "mean_of_k", "most_confident", "copy_last")
        }

    def _score(self, entry: _Pending, step: int, target: np.ndarray) -> np.ndarray:
        errors = feature_error(entry.hypotheses[:, step], target)  # (K,)
        self.values["best_of_k"][step].append(float(errors.min()))
        self.values["mean_of_k"][step].append(float(errors.mean()))
        self.values["most_confident"][step].append(float(errors[np.argmax(entry.confidence)]))
        if entry.last is not None:
            self.values["copy_last"][step].append(float(feature_error(entry.last, target)))
        return errors

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "step": s + 1,
                "horizon_s": _mean(self.horizon_s[s]),
                "scored": len(self.horizon_s[s]),
                "feature_mse": {n: _mean(v[s]) for n, v in self.values.items() if v[s]},
                "confidence": self.quality.summary(s),
            }
            for s in range(self.horizon)
        ]


class DepthScorer(_Scorer):
    """Depth AbsRel and RMSE per step of the most confident, best-of-K (by AbsRel), mean-of-K
    and copy-last (the present frame's depth); confidence quality on AbsRel."""

    NAMES = ("most_confident", "best_of_k", "mean_of_k", "copy_last")

    def __init__(self, horizon: int, num_hypotheses: int) -> None:
        super().__init__(horizon, num_hypotheses)
        self.values = {
            metric: {name: [[] for _ in range(horizon)] for name in self.NAMES}
            for metric in ("abs_rel", "rmse")
        }

    def _score(self, entry: _Pending, step: int, target: np.ndarray) -> np.ndarray | None:
        abs_rel, rmse = depth_errors(resize_nearest(entry.hypotheses[:, step], target.shape),
                                     target)  # fmt: skip
        if np.isnan(abs_rel).all():
            return None  # no valid target pixel
        best, top = int(np.argmin(abs_rel)), int(np.argmax(entry.confidence))
        for metric, errors in (("abs_rel", abs_rel), ("rmse", rmse)):
            values = self.values[metric]
            values["most_confident"][step].append(float(errors[top]))
            values["best_of_k"][step].append(float(errors[best]))
            values["mean_of_k"][step].append(float(errors.mean()))
        if entry.last is not None:
            last = depth_errors(resize_nearest(entry.last, target.shape), target)
            for metric, error in zip(("abs_rel", "rmse"), last, strict=True):
                self.values[metric]["copy_last"][step].append(float(error))
        return abs_rel

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "step": s + 1,
                "horizon_s": _mean(self.horizon_s[s]),
                "scored": len(self.horizon_s[s]),
                **{
                    metric: {n: _mean(v[s]) for n, v in values.items() if v[s]}
                    for metric, values in self.values.items()
                },
                "confidence": self.quality.summary(s),
            }
            for s in range(self.horizon)
        ]


def resize_nearest(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of class or depth maps (..., h, w) -> (..., H, W)."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    rows = (np.arange(size[0]) * h) // size[0]
    cols = (np.arange(size[1]) * w) // size[1]
    return maps[..., rows[:, None], cols[None, :]]


def _mean(values: Iterable[float]) -> float | None:
    values = np.array(list(values), np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


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


# --------------------------------------------------------------------------------------------
# Frames: the ones the Forecaster's gate keeps, in segments between history restarts.


@dataclass
class KeptFrame:
    index: int  # position among kept frames
    message: int  # position among the topic's messages
    stamp_ns: int  # header stamp
    log_ns: int  # when it was recorded
    rgb: np.ndarray  # (H, W, 3) uint8
    segment: int  # increases at every history restart


@dataclass
class FrameStats:
    messages: int = 0
    undecodable: int = 0
    errors: Counter = field(default_factory=Counter)  # decode error -> count
    gated: int = 0
    wrong_size: int = 0  # a lone frame of another size, dropped as the node drops it
    kept: int = 0
    restarts: Counter = field(default_factory=Counter)  # reason -> count
    read_s: list[float] = field(default_factory=list)  # bag read + decode, per message


def keep_frames(frames: Iterable[Any], gate: CameraGate, stats: FrameStats) -> Iterator[KeptFrame]:
    """Decoded frames (io.bags.BagFrame) that `gate` keeps, numbered, with a new segment at
    every restart. Undecodable frames are counted in `stats` and skipped."""
    segment = index = 0
    source = iter(frames)
    while True:
        start = time.perf_counter()
        frame = next(source, None)
        if frame is None:
            return
        stats.read_s.append(time.perf_counter() - start)
        stats.messages += 1
        if frame.image is None:
            stats.undecodable += 1
            stats.errors[frame.error] += 1
            continue
        verdict = gate.admit(frame.stamp_ns / 1e9, frame.image.shape[:2])
        if verdict.restart is not None:
            stats.restarts[verdict.restart] += 1
            segment += 1
        if verdict.drop == WRONG_SIZE:
            stats.wrong_size += 1
        if not verdict.kept:
            stats.gated += verdict.drop == GATED
            continue
        stats.kept += 1
        yield KeptFrame(
            index, stats.messages - 1, frame.stamp_ns, frame.log_time_ns, frame.image, segment
        )
        index += 1


def with_futures(
    kept: Iterable[KeptFrame], horizon: int
) -> Iterator[tuple[KeptFrame, list[KeptFrame]]]:
    """Each kept frame with the (up to) `horizon` kept frames that came next in its segment."""
    window: deque[KeptFrame] = deque()

    def pop() -> tuple[KeptFrame, list[KeptFrame]]:
        head = window.popleft()
        return head, [f for f in window if f.segment == head.segment]

    for frame in kept:
        window.append(frame)
        if len(window) > horizon:
            yield pop()
    while window:
        yield pop()


# --------------------------------------------------------------------------------------------
# Forecast sources: the offline Forecaster, or the node's recorded messages.


@dataclass
class Published:
    """One forecast as the node published it."""

    classes: np.ndarray  # (K, T, h, w)
    confidence: np.ndarray  # (K,)


@dataclass
class Example:
    """One forecast with what really came, for the report's mosaics."""

    stamp_s: float  # header stamp of the present frame
    offset_s: float  # seconds since the first frame of the bag
    frames: list[np.ndarray | None]  # RGB: the present frame, then the frame of each step
    targets: list[np.ndarray | None]  # the same frames' labels / pseudo-labels
    indices: list[int | None]  # kept-frame index of each of them
    hypotheses: np.ndarray  # (K, T, h, w)
    confidence: np.ndarray  # (K,)
    horizon_s: list[float | None]  # seconds from the present to each step's frame
    present: np.ndarray | None  # the model's own segmentation of the present frame (copy-last)
    disagreement: float  # share of the hypotheses' pixels off the per-pixel mode of the K


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    examples: list[Example]
    class_names: list[str]
    palette: np.ndarray  # (classes, 3) uint8


class EvalError(UsageError):
    """An input the evaluation cannot work with; the message says which and how to fix it."""


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
        topics = _bag_topics(options.bag, "input bag")
        image_types = {t: m for t, m in topics.items() if m in IMAGE_TYPES}
        if options.image_topic not in image_types:
            listing = ", ".join(f"{t} ({m})" for t, m in image_types.items()) or "none"
            what = "is not an image topic" if options.image_topic in topics else "is not in the bag"
            raise EvalError(
                f"--image-topic {options.image_topic} {what} {options.bag}; its image topics "
                f"are: {listing}"
            )
        self.notes: list[str] = []
        self.label_topic = _label_topic(options, image_types)
        self.labels = (
            LabelStream(read_images(options.bag, self.label_topic, labels=True, damage=self.notes))
            if self.label_topic
            else None
        )
        if options.depth_topic and topics.get(options.depth_topic) != IMAGE:
            raise EvalError(
                f"--depth-topic {options.depth_topic} is not a {IMAGE} topic of {options.bag}"
            )
        self.depth_labels = (
            LabelStream(read_depth(options.bag, options.depth_topic, self.notes))
            if options.depth_topic
            else None
        )
        self.recording = None
        self.published: dict[int, deque[Published]] = {}
        if options.predictions is not None:
            self.recording = read_published(options.predictions, options.futures_topic, self.notes)
            self.published = {k: deque(v) for k, v in self.recording.published.items()}
            layout = self.recording.layout
            self.num_hypotheses, self.horizon = int(layout["K"]), int(layout["T"])
        else:
            self.num_hypotheses, self.horizon = options.num_hypotheses, options.horizon
        # The model runs for offline forecasts, and for pseudo-labels of the node's forecasts.
        self.forecaster: Forecaster | None = None
        self.model_info: dict[str, Any] = {}
        if options.predictions is None or not self.label_topic or options.with_model:
            self.forecaster, self.model_info = _open_forecaster(
                options, self.num_hypotheses, self.horizon
            )
            model = self.forecaster.engine.config
            self.interval_s = self.forecaster.frame_interval
            names, palette = list(model.head.class_names), model.head.palette
        else:
            self.interval_s = float(layout["step_seconds"])
            names, palette = list(layout.get("class_names", [])), layout.get("palette", [])
        self.model_classes = (names, np.array(palette, np.uint8).reshape(-1, 3))
        self.classes = ClassMapScorer(self.horizon, self.num_hypotheses, max(len(names), 1))
        self.features = (
            FeatureScorer(self.horizon, self.num_hypotheses) if self.forecaster else None
        )
        self.depth = (
            DepthScorer(self.horizon, self.num_hypotheses)
            if self.forecaster is not None and self.forecaster.has_depth
            else None
        )
        self.stats = FrameStats()
        self.timings: list[dict[str, float]] = []
        self.matched: Counter = Counter()
        self.examples: dict[int, Example] = {}  # part of the bag -> its example
        self.token_pairs = TokenPairs(seed=options.seed)
        self.first_stamp: int | None = None
        self.unlabelled = 0  # kept frames without a label of the same header stamp

    def run(self) -> Evaluation:
        options = self.options
        # the Forecaster's gate, or (forecasts read from a recording) the node's default one
        gate = CameraGate(
            self.forecaster.gate_settings if self.forecaster else GateSettings(self.interval_s)
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
        self.classes.flush()
        for scorer in (self.features, self.depth):
            if scorer is not None:
                scorer.flush()
        unmatched = sum(len(q) for q in self.published.values())
        if unmatched:
            self.matched["published forecasts with no input frame of that stamp"] = unmatched
        examples = [
            self.examples[part]
            for part in sorted(self.examples)
            if all(t is not None for t in self.examples[part].targets[1:])
        ]
        self.class_names, self.palette = _complete_classes(
            *self.model_classes, self.classes.num_classes
        )
        return Evaluation(self.metrics(), examples, self.class_names, self.palette)

    def step(self, frame: KeptFrame, futures: list[KeptFrame]) -> None:
        """One kept frame: score what predicted it, then take the forecast made at it."""
        self.first_stamp = frame.stamp_ns if self.first_stamp is None else self.first_stamp
        offline = self._offline(frame, futures) if self.forecaster is not None else None
        label = self.labels.get(frame.stamp_ns, frame.log_ns) if self.labels is not None else None
        if self.labels is not None:
            target = label
            self.unlabelled += label is None
        else:
            target = offline.current_classes if offline is not None else None
        if label is not None and offline is not None:
            self.classes.score_present(offline.current_classes, label)
        self.classes.observe(frame.index, frame.stamp_ns, target)
        if offline is not None:
            self.token_pairs.add(frame.index, frame.segment, offline.current_features)
            self.features.observe(frame.index, frame.stamp_ns, offline.current_features)
            self.features.forecast(
                _Pending(
                    frame.index,
                    frame.stamp_ns,
                    offline.confidence,
                    offline.features,
                    offline.current_features,
                    None,
                    _pad([f.index for f in futures], self.horizon),
                    kernel=self._kernel(offline),
                )
            )
        if self.depth is not None:
            self.score_depth(frame, futures, offline)
        for example in self.examples.values():
            for i, wanted in enumerate(example.indices):
                if wanted == frame.index:
                    example.targets[i] = target

        if self.options.predictions is not None:
            queue = self.published.get(frame.stamp_ns)
            node = queue.popleft() if queue else None
            if node is None:
                self.matched["input frames the node did not forecast"] += 1
                return
            self.matched["forecasts matched to input frames"] += 1
            chosen = _nearest_futures(frame, futures, self.interval_s, self.horizon)
            hypotheses, confidence = node.classes, node.confidence
        elif offline is not None:
            chosen = _pad(futures, self.horizon)
            hypotheses, confidence = offline.classes, offline.confidence
        else:
            return
        self.classes.forecast(
            _Pending(
                frame.index,
                frame.stamp_ns,
                confidence,
                hypotheses,
                offline.current_classes if offline is not None else None,
                target,
                [f.index if f is not None else None for f in chosen],
                kernel=self._kernel(offline) if self.options.predictions is None else None,
            )
        )
        self._offer_example(frame, chosen, target, hypotheses, confidence, offline)

    def _offer_example(
        self,
        frame: KeptFrame,
        chosen: list[KeptFrame | None],
        target: np.ndarray | None,
        hypotheses: np.ndarray,
        confidence: np.ndarray,
        offline: Forecast | None,
    ) -> None:
        """Per equal part of the bag, the forecast whose hypotheses disagree most."""
        if not self.options.examples or None in chosen:
            return
        part = min(frame.message * self.options.examples // self.total, self.options.examples - 1)
        spread = float(disagreement(hypotheses).mean())
        held = self.examples.get(part)
        if held is None or spread > held.disagreement:
            self.examples[part] = Example(
                stamp_s=frame.stamp_ns / 1e9,
                offset_s=(frame.stamp_ns - self.first_stamp) / 1e9,
                frames=[frame.rgb] + [f.rgb for f in chosen],
                targets=[target] + [None] * self.horizon,
                indices=[frame.index] + [f.index for f in chosen],
                hypotheses=hypotheses,
                confidence=confidence,
                horizon_s=[0.0] + [(f.stamp_ns - frame.stamp_ns) / 1e9 for f in chosen],
                present=offline.current_classes if offline is not None else None,
                disagreement=spread,
            )

    def _token_probe(self, notes: list[str]) -> dict[str, float] | None:
        """DeltaTok's token reliance and identity ratio on consecutive kept frames (the
        definitions: model/probes.py); None with a note when they cannot be measured."""
        if self.forecaster is None:
            return None
        probe = self.token_pairs.probe(Path(self.model_info["dir"]))
        if probe is None:
            notes.append("token probes omitted: no run of 3 consecutive kept frames")
            return None
        return probe.as_dict() | {"pairs_in_recording": self.token_pairs.seen}

    def score_depth(
        self, frame: KeptFrame, futures: list[KeptFrame], offline: Forecast | None
    ) -> None:
        """Score the depth futures that predicted this frame, then take the one made at it."""
        if self.depth_labels is not None:
            target = self.depth_labels.get(frame.stamp_ns, frame.log_ns)
        else:
            target = offline.current_depth if offline is not None else None
        self.depth.observe(frame.index, frame.stamp_ns, target)
        if offline is not None:
            self.depth.forecast(
                _Pending(frame.index, frame.stamp_ns, offline.confidence, offline.depth,
                         offline.current_depth, None, _pad([f.index for f in futures],
                                                           self.horizon))
            )  # fmt: skip

    def _confidence_source(self) -> str:
        """Where the scored forecasts' confidence comes from (the node's layout says it)."""
        if self.recording is not None:
            return self.recording.layout.get("confidence", "not in the node's layout")
        return self.forecaster.confidence_source

    def _kernel(self, offline: Forecast) -> np.ndarray | None:
        """The kernel density of an offline forecast's rows, when its confidence is the
        learned scorer's (scored side by side); None otherwise."""
        if not self.forecaster.has_scorer:
            return None
        return kernel_density_confidence(offline.delta_tokens.reshape(self.num_hypotheses, -1))

    def _offline(self, frame: KeptFrame, futures: list[KeptFrame]) -> Forecast | None:
        """The Forecaster on this frame, told the true stamps of the frames that came next
        (the nominal grid past the end of the segment)."""
        stamp = frame.stamp_ns / 1e9
        future = [f.stamp_ns / 1e9 for f in futures]
        future += [stamp + self.interval_s * s for s in range(len(future) + 1, self.horizon + 1)]
        stream = self.options.image_topic
        forecast = self.forecaster.process(
            [FrameInput(stream, stamp, frame.rgb)],
            {stream: StreamOverrides(future_stamps=future)},
        )[0]
        if forecast is not None:
            self.timings.append(forecast.timings)
        return forecast

    def metrics(self) -> dict[str, Any]:
        """Everything the report shows, as plain JSON."""
        options, stats, notes = self.options, self.stats, self.notes
        offline = options.predictions is None
        if self.label_topic:
            target = {"kind": "labels", "topic": self.label_topic}
        else:
            target = {
                "kind": "pseudo-labels",
                "topic": None,
                "meaning": "the bag has no label topic: forecasts are scored against the "
                "model's own segmentation of the frame that really came (a pseudo-label score: "
                "it measures forecasting, not segmentation quality)",
            }
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
        scored = sum(s["scored"] for s in class_steps)
        if not scored:
            notes.append("no forecast could be scored (see the frame counts)")
        frames: dict[str, Any] = {
            "messages": stats.messages,
            "decoded": stats.messages - stats.undecodable,
            "undecodable": stats.undecodable,
            "decode_errors": dict(stats.errors.most_common(5)),
            "kept": stats.kept,
            "gated": stats.gated,
            "wrong_size": stats.wrong_size,
            "restarts": dict(stats.restarts),
        }
        if self.forecaster is not None:
            frames["forecaster"] = {k: dict(v) for k, v in self.forecaster.stats.items()}
        present = self.classes.present
        metrics: dict[str, Any] = {
            "mode": "offline" if offline else "predictions",
            "forecasts_from": "offline Forecaster run"
            if offline
            else f"node messages on {options.futures_topic} in {options.predictions}",
            "bag": str(options.bag),
            "image_topic": options.image_topic,
            "target": target,
            "model": self.model_info,
            "K": self.num_hypotheses,
            "T": self.horizon,
            "frame_interval_s": self.interval_s,
            "seed": options.seed if self.forecaster is not None else None,
            "frames": frames,
            "scored": scored > 0,
            "class_maps": {
                "forecasts": self.classes.forecasts,
                "class_names": self.class_names,
                "steps": class_steps,
                **_confidence(self.classes, self._confidence_source()),
                "present_miou": _finite(mean_iou(present)) if present.any() else None,
            },
            "latency_ms": _latency(self.timings, stats.read_s, self.recording),
            "notes": notes,
        }
        if self.depth is not None:
            metrics["depth"] = {
                "source": "offline Forecaster run",
                "target": {"kind": "labels", "topic": self.options.depth_topic}
                if self.depth_labels is not None
                else {"kind": "pseudo-labels", "meaning": "the model's own depth of the frame "
                      "that really came"},
                "error": "AbsRel = mean |d - d*| / d*; RMSE in metres; over valid target pixels",
                "steps": self.depth.summary(),
                "rollout_confidence": self.depth.quality.summary(None),
            }  # fmt: skip
        if self.recording is not None:
            metrics["predictions"] = dict(self.matched)
            metrics["replay"] = self.recording.replay
            metrics["node"] = self.recording.node
        metrics["tokens"] = self._token_probe(notes)
        if self.features is not None:
            metrics["features"] = {
                "source": "offline Forecaster run",
                "error": "mean squared error over patches and channels",
                "steps": self.features.summary(),
                **_confidence(self.features, self.forecaster.confidence_source),
            }
        return metrics


def _confidence(scorer: _Scorer, source: str) -> dict[str, Any]:
    """Confidence quality of whole rollouts: the forecasts' own, and the kernel density's
    beside a learned scorer."""
    out = {
        "confidence_source": source,
        "rollout_confidence": scorer.quality.summary(None) | scorer.quality.calibration(),
        "reliability": scorer.quality.reliability(),
    }
    if scorer.kernel_quality.rows[None]:
        kernel = scorer.kernel_quality
        out["kernel_density"] = {
            "rollout_confidence": kernel.summary(None) | kernel.calibration(),
            "reliability": kernel.reliability(),
        }
    return out


@dataclass
class Recording:
    """What `deltaworld replay` recorded of the node."""

    published: dict[int, list[Published]]  # header stamp (ns) -> forecasts in published order
    layout: dict[str, Any]  # the futures layout
    replay: dict[str, Any]  # the replay's statistics (topics.REPLAY_STATS)
    node: dict[str, Any]  # the node's own /diagnostics: counters, stage times


def read_published(bag: Path, futures_topic: str, notes: list[str]) -> Recording:
    """The node's forecasts, layout and diagnostics in a bag recorded by `deltaworld replay`."""
    confidence_topic = topics.beside(futures_topic, topics.CONFIDENCE)
    layout_topic = topics.beside(futures_topic, topics.LAYOUT)
    recorded = _bag_topics(bag, "predictions bag")
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
    wanted = [t for t in everything if t in recorded]
    futures: dict[int, list[Any]] = {}  # header stamp -> messages (a looping bag repeats stamps)
    confidences: dict[int, list[Any]] = {}
    layout_msg = None
    replay: dict[str, Any] = {}
    diagnostics: list[Any] = []
    for message in read_messages(bag, wanted, damage=notes):
        if message.topic == layout_topic:
            layout_msg = message.msg
        elif message.topic == topics.REPLAY_STATS:
            replay = json.loads(message.msg.data)
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


def node_diagnostics(messages: list[Any]) -> dict[str, Any]:
    """The node's totals (its last report of each camera, and of the engine) and its stage
    times: per stage the mean of the periods' means and the worst period's p95, in ms."""
    reports = [read_report(m) for m in messages]
    cameras: dict[str, dict[str, str]] = {}
    engine: dict[str, str] = {}
    for report in reports:
        cameras.update(report.cameras)
        engine = report.engine or engine
    return {"reports": len(messages), "cameras": cameras, "engine": engine,
            "stage_ms": stage_summary(reports)}  # fmt: skip


def _bag_topics(bag: Path, what: str) -> dict[str, str]:
    try:
        return bag_topics(bag)
    except FileNotFoundError as err:
        raise EvalError(str(err)) from err
    except Exception as err:  # rosbags raises its own errors for unreadable metadata
        raise EvalError(f"cannot read the {what} {bag}: {err}") from err


def _label_topic(options: EvalOptions, image_types: dict[str, str]) -> str | None:
    """The label topic to score against: the given one, or with "auto" the bag's Image topic
    named like labels (none: score against pseudo-labels)."""
    if options.label_topic in (None, "", "none"):
        return None
    if options.label_topic != "auto":
        if options.label_topic not in image_types:
            listing = ", ".join(image_types) or "none"
            raise EvalError(
                f"--label-topic {options.label_topic} is not an image topic of {options.bag}; "
                f"its image topics are: {listing} (or pass --label-topic none)"
            )
        return options.label_topic
    candidates = [
        t
        for t, m in image_types.items()
        if m == IMAGE and t != options.image_topic and any(w in t for w in LABEL_WORDS)
    ]
    return candidates[0] if len(candidates) == 1 else None


def read_depth(bag: Path, topic: str, damage: list[str]) -> Iterator[BagFrame]:
    """A 32FC1 depth topic (metres) as frames; an undecodable message has image=None; damage
    in the bag is noted in `damage` (see io.bags.bag_messages)."""
    for message in read_messages(bag, [topic], damage):
        msg = message.msg
        try:
            depth, error = decode_float_image(msg), None
        except ValueError as err:
            depth, error = None, str(err)
        yield BagFrame(stamp_ns(msg.header), msg.header.frame_id, depth, error,
                       message.log_time_ns)  # fmt: skip


class LabelStream:
    """Labels (class ids or depth) read alongside the frames: the label of the frame's header
    stamp among those recorded within `window_s` of it. A long bag never sits in memory, and
    in a looping bag each lap finds its own labels."""

    def __init__(self, source: Iterator[BagFrame], window_s: float = 2.0) -> None:
        self.source = source
        self.window_ns = int(window_s * 1e9)
        self.buffer: deque[Any] = deque()  # io.bags.BagFrame, in log-time order
        self.errors = 0  # undecodable label messages
        self.done = False

    def get(self, stamp_ns: int, log_ns: int) -> np.ndarray | None:
        while not self.done and (
            not self.buffer or self.buffer[-1].log_time_ns <= log_ns + self.window_ns
        ):
            label = next(self.source, None)
            if label is None:
                self.done = True
            elif label.image is None:
                self.errors += 1
            else:
                self.buffer.append(label)
        while self.buffer and self.buffer[0].log_time_ns < log_ns - self.window_ns:
            self.buffer.popleft()
        for label in self.buffer:
            if label.stamp_ns == stamp_ns:
                self.buffer.remove(label)
                return label.image
        return None


def _open_forecaster(
    options: EvalOptions, num_hypotheses: int, horizon: int
) -> tuple[Forecaster, dict[str, Any]]:
    model_dir = Path(options.model_dir) if options.model_dir else package_model_dir()
    try:
        manifest = read_manifest(model_dir)
        sized = replace(options.engine, max_batch=largest_batch(num_hypotheses, horizon, 1))
        engine = open_engine(model_dir, sized)
    except (ModelDirError, OSError, ValueError) as err:
        raise EvalError(f"cannot open the model {model_dir}: {err}") from err
    config = ForecasterConfig(
        num_hypotheses=num_hypotheses, horizon=horizon, seed=options.seed, keep_features=True
    )
    info = {
        "dir": str(model_dir),
        "name": manifest.config.name,
        "backend": engine.backend,
        "providers": dict(engine.providers),
        "provenance": manifest.provenance,
    }
    return Forecaster(engine, config), info


def _complete_classes(
    names: list[str], palette: np.ndarray, count: int
) -> tuple[list[str], np.ndarray]:
    """Names and colours for `count` classes; label ids past the model's get generic ones."""
    generic_names, generic_palette = generic_classes(count)
    names = names + list(generic_names[len(names) :])
    palette = np.concatenate([palette, np.array(generic_palette, np.uint8)[len(palette) :]])
    return names, palette


def _pad(items: list[Any], length: int) -> list[Any]:
    return items + [None] * (length - len(items))


def _nearest_futures(
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


def _latency(
    timings: list[dict[str, float]], read_s: list[float], recording: Recording | None
) -> dict[str, dict[str, float]]:
    """Per stage in ms: mean, median and 95th percentile of this run's stages (reading the
    bag; the offline Forecaster's), and the node's own stage times and the replay's round trip
    (mean and p95) when its recording is scored."""
    stages = {"eval: read+decode": read_s}
    for stage in dict.fromkeys(k for t in timings for k in t):
        stages[f"offline: {stage}"] = [t.get(stage, 0.0) for t in timings]
    out = {
        stage: {
            "mean": 1e3 * float(np.mean(v)),
            "p50": 1e3 * float(np.percentile(v, 50)),
            "p95": 1e3 * float(np.percentile(v, 95)),
            "count": len(v),
        }
        for stage, v in stages.items()
        if v
    }
    if recording is not None:
        out.update(recording.node["stage_ms"])
        replay = recording.replay
        if replay.get("round_trip_mean_ms") is not None:
            out["replay: publish -> forecast received"] = {
                "mean": replay["round_trip_mean_ms"],
                "p95": replay["round_trip_p95_ms"],
            }
    return out


# --------------------------------------------------------------------------------------------
# Command line.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", required=True, type=Path, help="rosbag2 (sqlite3 or mcap)")
    parser.add_argument("--image-topic", required=True, help="Image or CompressedImage topic")
    parser.add_argument(
        "--label-topic",
        default="auto",
        help="class-id Image topic to score against; 'auto' (default): the bag's topic named "
        "like labels, if exactly one; 'none': pseudo-labels (the model's own segmentation)",
    )
    parser.add_argument(
        "--depth-topic",
        help="32FC1 depth Image topic (metres) to score depth futures against; default: the "
        "model's own depth of the frame that came (a model with a depth head)",
    )
    parser.add_argument(
        "--model-dir", type=Path, help="model directory (default: the embedded one)"
    )
    add_engine_arguments(parser)
    parser.add_argument("--out", type=Path, help="report directory (default: <bag>_eval)")
    add_forecast_arguments(parser)  # of the offline run; --predictions: the node's
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the offline run")
    parser.add_argument(
        "--predictions",
        type=Path,
        help="bag recorded by `deltaworld replay`: score the node's published forecasts",
    )
    parser.add_argument(
        "--futures-topic",
        default=topics.DEFAULT_FUTURES,
        help="the node's futures topic in --predictions (its /confidence and /layout beside it)",
    )
    parser.add_argument(
        "--with-model",
        action="store_true",
        help="with --predictions and labels: run the model on the frames too (its own "
        "segmentation of the present, copy-last, feature errors and token probes)",
    )
    parser.add_argument(
        "--examples", type=at_least(0), default=3, help="example mosaics in the report (0: none)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    options = EvalOptions(
        bag=args.bag,
        image_topic=args.image_topic,
        label_topic=args.label_topic,
        depth_topic=args.depth_topic,
        model_dir=args.model_dir,
        num_hypotheses=args.num_hypotheses,
        horizon=args.horizon,
        predictions=args.predictions,
        futures_topic=args.futures_topic,
        engine=engine_options(args),
        seed=args.seed,
        examples=args.examples,
        progress=not args.no_progress,
        with_model=args.with_model,
    )
    out = args.out or args.bag.with_name(args.bag.name.rstrip("/") + "_eval")
    evaluation = evaluate(options)
    paths = write_report(out, evaluation)
    print(summary_text(evaluation.metrics))
    print(f"report: {paths['markdown']} (+ {paths['html'].name}, metrics.json, figures)")
    return 0 if evaluation.metrics["scored"] else 1
