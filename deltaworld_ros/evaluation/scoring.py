"""Scoring: each forecast waits for the frames it predicted, then every step is scored against
what came (class maps, features, depth), beside the baselines, with how well the confidence
ranked the K hypotheses."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .confidence import ConfidenceQuality
from .metrics import (
    IGNORE,
    confusion,
    depth_errors,
    feature_error,
    iou_per_class,
    mean_iou,
)
from .results import (
    BASELINES,
    ClassMapStep,
    ConfidenceSummary,
    DepthStep,
    FeatureStep,
    KernelDensity,
    ReliabilityBin,
)


@dataclass
class Pending:
    """A forecast waiting for the frames it predicted."""

    index: int  # kept-frame index the forecast was made at
    stamp_ns: int  # its header stamp
    confidence: np.ndarray  # (K,)
    hypotheses: np.ndarray  # (K, T, ...) class maps or depth (h, w), or features (N, C)
    last: np.ndarray | None  # copy-last prediction: the present frame's map / features
    last_target: np.ndarray | None  # the present frame's own target (copy-last of the target)
    targets: list[int | None]  # kept-frame index each step is scored against
    errors: dict[int, np.ndarray] = field(default_factory=dict)  # step -> (K,) error
    kernel: np.ndarray | None = None  # (K,) the kernel density beside a learned confidence


def confidence_summary(quality: ConfidenceQuality, step: int | None) -> ConfidenceSummary:
    """Of one step's errors, or of whole rollouts (step None: with their calibration)."""
    summary = quality.summary(step)
    if step is None and summary["forecasts"]:
        summary |= quality.calibration()
    return ConfidenceSummary(**summary)


def reliability(quality: ConfidenceQuality) -> list[ReliabilityBin]:
    return [ReliabilityBin(**b) for b in quality.reliability()]


def kernel_density(scorer: Scorer) -> KernelDensity | None:
    """The kernel density's quality on the same rollouts, where it was scored beside a learned
    confidence."""
    quality = scorer.kernel_quality
    if not quality.rows[None]:
        return None
    return KernelDensity(confidence_summary(quality, None), reliability(quality))


class Scorer:
    """Pending forecasts; `observe` scores every step that targets the observed frame."""

    def __init__(self, horizon: int, num_hypotheses: int) -> None:
        self.horizon = horizon
        self.pending: list[Pending] = []
        self.quality = ConfidenceQuality(horizon, num_hypotheses)
        self.kernel_quality = ConfidenceQuality(horizon, num_hypotheses)  # beside a scorer
        self.horizon_s: list[list[float]] = [[] for _ in range(horizon)]
        self.forecasts = 0

    def forecast(self, entry: Pending) -> None:
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

    def _score(self, entry: Pending, step: int, target: np.ndarray) -> np.ndarray | None:
        """Step `step` of `entry` against `target`: the K hypotheses' errors (None: nothing
        to score in this target)."""
        raise NotImplementedError


class ClassMapScorer(Scorer):
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
        """The segmentation of the frame itself against its label (a ceiling for forecasts)."""
        self.ensure(target)
        self.present += confusion(resize_nearest(classes, target.shape), target, self.num_classes)

    def _score(self, entry: Pending, step: int, target: np.ndarray) -> np.ndarray | None:
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

    def summary(self) -> list[ClassMapStep]:
        return [
            ClassMapStep(
                step=s + 1,
                horizon_s=_mean(self.horizon_s[s]),
                scored=len(self.horizon_s[s]),
                miou={
                    name: _finite(mean_iou(m[s])) for name, m in self.matrices.items() if m[s].any()
                },
                iou_most_confident_per_class=[
                    _finite(v) for v in iou_per_class(self.matrices["most_confident"][s])
                ],
                confidence=confidence_summary(self.quality, s),
            )
            for s in range(self.horizon)
        ]

    def present_miou(self) -> float | None:
        """The segmentation of the present frames against their labels (score_present)."""
        return _finite(mean_iou(self.present)) if self.present.any() else None


class FeatureScorer(Scorer):
    """Feature MSE per step of best-of-K, mean-of-K (a random hypothesis), the most confident
    and copy-last (the present frame's features); confidence quality on the same error."""

    def __init__(self, horizon: int, num_hypotheses: int) -> None:
        super().__init__(horizon, num_hypotheses)
        self.values: dict[str, list[list[float]]] = {
            name: [[] for _ in range(horizon)]
            for name in ("best_of_k", "mean_of_k", "most_confident", "copy_last")
        }

    def _score(self, entry: Pending, step: int, target: np.ndarray) -> np.ndarray:
        errors = feature_error(entry.hypotheses[:, step], target)  # (K,)
        self.values["best_of_k"][step].append(float(errors.min()))
        self.values["mean_of_k"][step].append(float(errors.mean()))
        self.values["most_confident"][step].append(float(errors[np.argmax(entry.confidence)]))
        if entry.last is not None:
            self.values["copy_last"][step].append(float(feature_error(entry.last, target)))
        return errors

    def summary(self) -> list[FeatureStep]:
        return [
            FeatureStep(
                step=s + 1,
                horizon_s=_mean(self.horizon_s[s]),
                scored=len(self.horizon_s[s]),
                feature_mse={n: _mean(v[s]) for n, v in self.values.items() if v[s]},
                confidence=confidence_summary(self.quality, s),
            )
            for s in range(self.horizon)
        ]


class DepthScorer(Scorer):
    """Depth AbsRel and RMSE per step of the most confident, best-of-K (by AbsRel), mean-of-K
    and copy-last (the present frame's depth); confidence quality on AbsRel."""

    NAMES = ("most_confident", "best_of_k", "mean_of_k", "copy_last")

    def __init__(self, horizon: int, num_hypotheses: int) -> None:
        super().__init__(horizon, num_hypotheses)
        self.values = {
            metric: {name: [[] for _ in range(horizon)] for name in self.NAMES}
            for metric in ("abs_rel", "rmse")
        }

    def _score(self, entry: Pending, step: int, target: np.ndarray) -> np.ndarray | None:
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

    def summary(self) -> list[DepthStep]:
        return [
            DepthStep(
                step=s + 1,
                horizon_s=_mean(self.horizon_s[s]),
                scored=len(self.horizon_s[s]),
                **{
                    metric: {n: _mean(v[s]) for n, v in values.items() if v[s]}
                    for metric, values in self.values.items()
                },
                confidence=confidence_summary(self.quality, s),
            )
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
