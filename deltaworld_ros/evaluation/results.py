"""What `deltaworld eval` found, as types: the evaluator fills them, the report reads them, and
metrics.json is their plain JSON (`plain`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np

from ..model.probes import TokenProbe
from .recording import NodeDiagnostics, ReplaySummary

BASELINES = ("most_confident", "best_of_k", "mean_of_k", "copy_last", "copy_last_target")


@dataclass
class Target:
    """What the forecasts are scored against."""

    kind: str  # "labels" or "pseudo-labels"
    topic: str | None = None  # the label topic (labels)
    meaning: str | None = None  # what a pseudo-label score measures

    @property
    def labels(self) -> bool:
        return self.kind == "labels"


@dataclass
class ConfidenceSummary:
    """How the confidence ranked the K hypotheses by their error, averaged over forecasts."""

    forecasts: int = 0
    most_confident: float | None = None  # error of the most confident hypothesis
    random: float | None = None  # mean error over the K: a random pick
    best: float | None = None
    top_is_best: float | None = None  # share of forecasts whose most confident was the best
    top_confidence: float | None = None  # the most confident hypothesis' confidence
    chance: float | None = None  # the same for a random pick
    spearman: float | None = None  # rank correlation of confidence and error
    error_by_rank: list[float] | None = None  # mean error of the k-th most confident (a step)
    ece: float | None = None  # expected calibration error over every hypothesis (rollouts)
    ece_most_confident: float | None = None  # the same of the most confident alone (rollouts)


@dataclass
class ReliabilityBin:
    confidence: float  # mean confidence of the bin's hypotheses
    best_rate: float  # how often one of them was the best
    count: int


@dataclass
class KernelDensity:
    """The kernel density's confidence quality on the same forecasts, beside a learned scorer."""

    rollout_confidence: ConfidenceSummary
    reliability: list[ReliabilityBin]


@dataclass
class ClassMapStep:
    step: int  # 1 = the first horizon step
    horizon_s: float | None  # mean seconds from the present to the frame scored
    scored: int
    miou: dict[str, float | None]  # baseline (BASELINES) -> mIoU
    iou_most_confident_per_class: list[float | None]
    confidence: ConfidenceSummary


@dataclass
class FeatureStep:
    step: int
    horizon_s: float | None
    scored: int
    feature_mse: dict[str, float | None]  # baseline -> mean squared error
    confidence: ConfidenceSummary


@dataclass
class DepthStep:
    step: int
    horizon_s: float | None
    scored: int
    abs_rel: dict[str, float | None]  # baseline -> AbsRel
    rmse: dict[str, float | None]  # baseline -> RMSE in metres
    confidence: ConfidenceSummary


@dataclass
class ClassMaps:
    forecasts: int
    class_names: list[str]
    steps: list[ClassMapStep]
    confidence_source: str  # "learned scorer" or "kernel density" (the node's layout says it)
    rollout_confidence: ConfidenceSummary  # over whole rollouts
    reliability: list[ReliabilityBin]
    present_miou: float | None  # the model's segmentation of the present frame vs its label
    kernel_density: KernelDensity | None = None  # beside a learned scorer


@dataclass
class Features:
    source: str
    error: str
    steps: list[FeatureStep]
    confidence_source: str
    rollout_confidence: ConfidenceSummary
    reliability: list[ReliabilityBin]
    kernel_density: KernelDensity | None = None


@dataclass
class Depth:
    source: str
    target: Target
    error: str
    steps: list[DepthStep]
    rollout_confidence: ConfidenceSummary


@dataclass
class FrameCounts:
    messages: int  # on the image topic
    decoded: int
    undecodable: int
    decode_errors: dict[str, int]  # the most frequent errors
    kept: int  # by the gate: one per forecast step of header time
    gated: int
    wrong_size: int  # a lone frame of another size, dropped as the node drops it
    restarts: dict[str, int]  # reason -> history restarts
    forecaster: dict[str, dict[str, int]] | None = None  # the offline Forecaster's counters


@dataclass
class ModelInfo:
    dir: str
    name: str
    backend: str
    providers: dict[str, str]
    provenance: dict[str, Any]


@dataclass
class Latency:
    """One stage's time per frame in ms (p50 and count where this run measured it)."""

    mean: float
    p95: float
    p50: float | None = None
    count: int | None = None


@dataclass
class TokenScores:
    """DeltaTok's probes on consecutive kept frames (model/probes.py)."""

    probe: TokenProbe
    pairs_in_recording: int

    def as_dict(self) -> dict[str, float]:
        return self.probe.as_dict() | {"pairs_in_recording": self.pairs_in_recording}


@dataclass
class Metrics:
    mode: str  # "offline" or "predictions"
    forecasts_from: str
    bag: str
    image_topic: str
    target: Target
    model: ModelInfo | None
    K: int
    T: int
    frame_interval_s: float
    seed: int | None  # of the offline run's noise
    frames: FrameCounts
    scored: bool
    class_maps: ClassMaps
    latency_ms: dict[str, Latency]
    notes: list[str]
    depth: Depth | None = None
    features: Features | None = None
    tokens: TokenScores | None = None
    predictions: dict[str, int] | None = None  # how the node's forecasts matched the frames
    replay: ReplaySummary | None = None
    node: NodeDiagnostics | None = None


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
    metrics: Metrics
    examples: list[Example]
    class_names: list[str]  # the model's, and generic names for label ids past them
    palette: np.ndarray  # (classes, 3) uint8


def plain(value: Any) -> Any:
    """Results as JSON values: dataclasses as objects (or their own `as_dict`)."""
    if hasattr(value, "as_dict"):
        return plain(value.as_dict())
    if is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
