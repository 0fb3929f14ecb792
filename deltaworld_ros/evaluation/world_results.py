"""Typed results of `deltaworld evaluate-world`, the targets of the method and their tables.

One `SeedSetResult` per held-out seed set; a target row reads its value off each set, so that
the table shows the mean, the spread between the sets (max - min) and whether every set met it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from ..model.probes import TokenProbe

SHORT_LABELS = {
    "copy_last": "copy-last",
    "baseline": "baseline",
    "feature_mean": "mean of K",
    "best_of_k": "best-of-K",
    "oracle": "oracle",
}
METHOD_LABELS = {  # HorizonScores field -> row label
    "copy_last": "copy-last (own segmentation of the present)",
    "baseline": "deterministic baseline",
    "feature_mean": "DeltaWorld mean (head on the feature average of the K)",
    "single": "DeltaWorld single hypothesis (expected score of one of the K)",
    "best_of_k": "DeltaWorld best-of-K (lowest feature loss)",
    "oracle": "*seg head on the true future features (oracle)*",
}


@dataclass
class Score:
    """One method at one horizon: mIoU (0..1) over one confusion matrix, feature MSE."""

    miou: float
    feature_loss: float
    iou_per_class: dict[str, float | None]


@dataclass
class HorizonScores:
    step: int
    oracle: Score
    copy_last: Score
    baseline: Score
    feature_mean: Score
    single: Score
    best_of_k: Score

    def method(self, name: str) -> Score:
        return getattr(self, name)


@dataclass
class Covered:
    """A method's mode coverage on the branched cases."""

    absolute: float | None  # share of branched cases with agent IoU >= the threshold
    relative: float | None  # the same share among the cases the oracle covers


@dataclass
class Coverage:
    oracle: float | None  # share of branched cases the head on the true features covers
    copy_last: Covered
    baseline: Covered
    feature_mean: Covered
    best_of_k: Covered


@dataclass
class ConfidenceScores:
    """One confidence source over some cases (see DEFINITIONS["confidence"] of world.py)."""

    cases: int
    top_is_best: float | None  # share of cases whose most confident hypothesis is the best
    chance: float | None  # 1/K (more with ties)
    most_confident_error: float | None  # mean feature loss of the most confident
    random_error: float | None  # of a random hypothesis (the mean of the K)
    best_error: float | None  # of the best of the K
    spearman: float | None  # mean over cases of Spearman(confidence, error)
    ece: float | None  # expected calibration error, every hypothesis
    ece_most_confident: float | None  # the same of the most confident alone
    reliability: list[dict[str, float]]  # equal-count bins: confidence vs best rate

    @property
    def top_over_chance(self) -> float | None:
        return _ratio(self.top_is_best, self.chance)

    @property
    def error_ratio(self) -> float | None:
        return _ratio(self.most_confident_error, self.random_error)

    @property
    def best_ratio(self) -> float | None:
        return _ratio(self.best_error, self.random_error)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


@dataclass
class CameraResult:
    """Everything measured on one camera ("static", "vehicle") or on both ("all")."""

    camera: str
    cases: int
    branched_cases: int
    horizons: list[HorizonScores]
    branched: HorizonScores | None  # last horizon step, branched cases only
    diversity: float | None  # decoded patches off the per-patch mode of the K, branched cases
    diversity_all_cases: float | None
    coverage: Coverage
    tokens: TokenProbe | None  # per camera only
    # "<source>, all" / "<source>, branched" -> scores; sources: kernel density, learned scorer
    confidence: dict[str, ConfidenceScores]

    def at(self, step: int) -> HorizonScores:
        return next(h for h in self.horizons if h.step == step)


@dataclass
class SeedSetResult:
    first_seed: int
    last_seed: int
    cameras: list[CameraResult]  # static, vehicle, all

    def camera(self, name: str) -> CameraResult:
        return next(c for c in self.cameras if c.camera == name)


@dataclass(frozen=True)
class Target:
    measure: str
    unit: str
    threshold: float
    at_least: bool  # the value must be >= threshold (else <=)
    value: Callable[[SeedSetResult], float | None]

    def met(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value >= self.threshold if self.at_least else value <= self.threshold


@dataclass
class TargetRow:
    measure: str
    target: str
    values: list[float | None]  # one per seed set
    mean: float | None
    spread: float | None  # max - min over the seed sets
    passed: bool  # every seed set meets the target


@dataclass
class WorldEvaluation:
    model: str
    k: int
    horizons: tuple[int, ...]
    frames: int
    every: int
    sequences_per_set: int
    seed_sets: list[SeedSetResult]
    targets: list[TargetRow]
    definitions: dict[str, str]

    @property
    def all_targets_met(self) -> bool:
        return all(row.passed for row in self.targets)


def _points(a: float, b: float) -> float:
    return 100 * (a - b)


def _last(result: SeedSetResult, camera: str) -> HorizonScores:
    return result.camera(camera).horizons[-1]


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def method_targets(k: int, learned_confidence: bool = False) -> list[Target]:
    """The targets of issue 9 (held-out worlds, last horizon step unless said) and, for a
    model with a learned scorer, of issue 10 (its confidence, all and branched cases)."""

    def reliance(camera: str) -> Callable[[SeedSetResult], float | None]:
        def value(r: SeedSetResult) -> float | None:
            tokens = r.camera(camera).tokens
            return None if tokens is None else tokens.reliance

        return value

    def gain(camera: str, method: str) -> Callable[[SeedSetResult], float | None]:
        def value(r: SeedSetResult) -> float | None:
            last = _last(r, camera)
            return _points(last.method(method).miou, last.copy_last.miou)

        return value

    def identity(r: SeedSetResult) -> float | None:
        tokens = r.camera("vehicle").tokens
        return None if tokens is None else tokens.identity_ratio

    def best_minus_mean(r: SeedSetResult) -> float | None:
        branched = r.camera("all").branched
        if branched is None:
            return None
        return _points(branched.best_of_k.miou, branched.feature_mean.miou)

    targets = [
        Target(
            "seg head on the true features, mIoU",
            "%",
            70,
            True,
            lambda r: 100 * _last(r, "all").oracle.miou,
        ),
        Target("token reliance, static camera", "", 1.3, True, reliance("static")),
        Target("token reliance, vehicle camera", "", 1.3, True, reliance("vehicle")),
        Target("identity error / copy-last error, vehicle camera", "", 0.1, False, identity),
        Target(
            "decoded patches off the per-patch mode of the K, branched cases",
            "%",
            5,
            True,
            lambda r: _percent(r.camera("all").diversity),
        ),
    ]
    for method, label in (("baseline", "deterministic baseline"), ("feature_mean", "mean of K")):
        for camera in ("static", "vehicle"):
            targets.append(
                Target(
                    f"{label} - copy-last, mIoU, {camera} camera",
                    "points",
                    3,
                    True,
                    gain(camera, method),
                )
            )
    targets += [
        Target(
            f"best-of-{k} - mean of K, mIoU, branched cases", "points", 3, True, best_minus_mean
        ),
        Target(
            "mode coverage relative to the true-feature oracle",
            "%",
            40,
            True,
            lambda r: _percent(r.camera("all").coverage.best_of_k.relative),
        ),
    ]
    if learned_confidence:
        targets += confidence_targets("learned scorer")
    return targets


def confidence_targets(source: str) -> list[Target]:
    """Issue 10's targets of a confidence source, on all cases and on the branched ones."""

    def read(cases: str, measure: str) -> Callable[[SeedSetResult], float | None]:
        def value(r: SeedSetResult) -> float | None:
            scores = r.camera("all").confidence.get(f"{source}, {cases}")
            return None if scores is None else getattr(scores, measure)

        return value

    return [
        Target(f"{label} ({source}), {cases} cases", "", threshold, at_least, read(cases, attr))
        for cases in ("all", "branched")
        for label, threshold, at_least, attr in (
            ("most confident is the best / chance", 2.0, True, "top_over_chance"),
            ("error of the most confident / of a random hypothesis", 0.9, False, "error_ratio"),
            ("Spearman(confidence, error)", -0.3, False, "spearman"),
            # top-label: over every hypothesis nearly all confidences sit near 1/K, where
            # any confidence near uniform is calibrated
            ("expected calibration error of the most confident", 0.05, False, "ece_most_confident"),
        )
    ]


def target_rows(targets: list[Target], sets: list[SeedSetResult]) -> list[TargetRow]:
    rows = []
    for t in targets:
        values = [t.value(s) for s in sets]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        rows.append(
            TargetRow(
                measure=t.measure,
                target=f"{'>=' if t.at_least else '<='} {t.threshold:g}{_unit(t.unit)}",
                values=values,
                mean=sum(finite) / len(finite) if finite else None,
                spread=max(finite) - min(finite) if finite else None,
                passed=bool(values) and all(t.met(v) for v in values),
            )
        )
    return rows


def _unit(unit: str) -> str:
    return {"": "", "%": " %", "points": " points"}[unit]


def to_json(obj: Any) -> Any:
    """Results -> plain JSON values (TokenProbe with its derived ratios, NaN -> null)."""
    if isinstance(obj, TokenProbe):
        return obj.as_dict()
    if is_dataclass(obj):
        return {f.name: to_json(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _spread(values: list[float | None], digits: int = 1) -> str:
    """mean, and the range over the seed sets when there are several."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    mean = _fmt(sum(finite) / len(finite), digits)
    if len(values) < 2:
        return mean
    return f"{mean} ({_fmt(min(finite), digits)}..{_fmt(max(finite), digits)})"


def table_markdown(result: WorldEvaluation) -> str:
    sets = result.seed_sets
    last = result.horizons[-1]
    lines = [
        f"### Targets (held-out worlds, K = {result.k}, {last}-step horizon unless said)",
        "",
        "| measure | target | measured: mean (min..max over seed sets) | spread | pass |",
        "|---|---|---|---|---|",
    ]
    for row in result.targets:
        digits = 2 if "reliance" in row.measure or "identity" in row.measure else 1
        lines.append(
            f"| {row.measure} | {row.target} | {_spread(row.values, digits)} "
            f"| {_fmt(row.spread, digits)} | {'pass' if row.passed else 'FAIL'} |"
        )
    lines += [
        "",
        "pass: the target holds in every seed set (a mean that meets it while one set misses "
        f"it fails). All targets met: {'yes' if result.all_targets_met else 'NO'}.",
        "",
        "### mIoU (%) by method, camera and horizon step",
        "",
        "| method | " + " | ".join(f"{cam} {h}-step" for cam in ("static", "vehicle", "all")
                                    for h in result.horizons) + " |",
        "|---|" + "---|" * (3 * len(result.horizons)),
    ]  # fmt: skip
    for method, label in METHOD_LABELS.items():
        cells = [
            _spread([100 * s.camera(cam).at(h).method(method).miou for s in sets])
            for cam in ("static", "vehicle", "all")
            for h in result.horizons
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += [
        "",
        "### Feature loss (MSE to the true future features), all cameras",
        "",
        "| method | " + " | ".join(f"{h}-step" for h in result.horizons) + " |",
        "|---|" + "---|" * len(result.horizons),
    ]
    for method, label in METHOD_LABELS.items():
        if method == "oracle":
            continue
        cells = [
            _spread([s.camera("all").at(h).method(method).feature_loss for s in sets], 4)
            for h in result.horizons
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += [
        "",
        f"### Branched cases ({last}-step)",
        "",
        "| measure | static | vehicle | all |",
        "|---|---|---|---|",
    ]

    def row(label: str, read: Callable[[CameraResult], float | None], digits: int = 1) -> str:
        cells = [_spread([read(s.camera(c)) for s in sets], digits) for c in CAMERA_COLUMNS]
        return f"| {label} | {' | '.join(cells)} |"

    def branched_miou(method: str) -> Callable[[CameraResult], float | None]:
        return lambda c: None if c.branched is None else 100 * c.branched.method(method).miou

    lines += [
        row("branched cases", lambda c: c.branched_cases, 0),
        row("of all cases", lambda c: c.cases, 0),
        row("patches off the per-patch mode of the K, %", lambda c: _percent(c.diversity)),
        row("... all cases, %", lambda c: _percent(c.diversity_all_cases)),
    ]
    for method, name in SHORT_LABELS.items():
        lines.append(row(f"mIoU, {name}", branched_miou(method)))
    lines.append(row("coverage of the oracle, %", lambda c: _percent(c.coverage.oracle)))
    for method, name in SHORT_LABELS.items():
        if method == "oracle":
            continue
        lines += [
            row(
                f"coverage, {name}, %",
                lambda c, m=method: _percent(getattr(c.coverage, m).absolute),
            ),
            row(
                f"coverage, {name}, relative to the oracle, %",
                lambda c, m=method: _percent(getattr(c.coverage, m).relative),
            ),
        ]
    lines += confidence_table(result)
    lines += [
        "",
        "### Token probes (DeltaTok on consecutive frame pairs of the held-out worlds)",
        "",
        "| measure | static | vehicle |",
        "|---|---|---|",
    ]
    for label, attr, digits in (
        ("token reliance (swapped / own error)", "reliance", 3),
        ("identity error / copy-last error", "identity_ratio", 3),
        ("explained (1 - own / copy-last error)", "explained", 3),
        ("copy-last error (MSE)", "copy_error", 4),
        ("pairs", "pairs", 0),
    ):
        cells = [
            _spread(
                [
                    None if s.camera(c).tokens is None else getattr(s.camera(c).tokens, attr)
                    for s in sets
                ],
                digits,
            )
            for c in ("static", "vehicle")
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += [
        "",
        f"{len(sets)} seed sets of {result.sequences_per_set} held-out worlds each (seeds "
        + ", ".join(f"{s.first_seed}..{s.last_seed}" for s in sets)
        + f"; layouts never seen in training), {result.frames} frames per world, a case every "
        f"{result.every} frames. Cells: the mean over the seed sets and, in brackets, the "
        "lowest and highest set.",
        "",
    ]
    lines += [f"- {name}: {text}" for name, text in result.definitions.items()]
    return "\n".join(lines) + "\n"


CAMERA_COLUMNS = ("static", "vehicle", "all")
CONFIDENCE_ROWS = (
    ("most confident is the best, %", lambda c: _percent(c.top_is_best), 1),
    ("chance (1/K), %", lambda c: _percent(c.chance), 1),
    ("error of the most confident / random", lambda c: c.error_ratio, 3),
    ("error of the best / random (the floor)", lambda c: c.best_ratio, 3),
    ("Spearman(confidence, error)", lambda c: c.spearman, 2),
    ("expected calibration error", lambda c: c.ece, 3),
    ("ECE of the most confident", lambda c: c.ece_most_confident, 3),
)


def confidence_table(result: WorldEvaluation) -> list[str]:
    """The confidence sources side by side: both cameras on all and on the branched cases,
    then each camera on all its cases."""
    sets = result.seed_sets
    keys = {key for s in sets for c in s.cameras for key in c.confidence}
    if not keys:
        return []
    sources = sorted({key.rsplit(", ", 1)[0] for key in keys})
    tables = (
        ("both cameras", [("all", f"{src}, {cases}") for cases in ("all", "branched")
                          for src in sources]),
        ("each camera, all cases", [(cam, f"{src}, all") for cam in ("static", "vehicle")
                                    for src in sources]),
    )  # fmt: skip
    lines = []
    for title, columns in tables:
        lines += [
            "",
            f"### Confidence, {title}: which of the K = {result.k} is likely "
            "(feature loss over the steps)",
            "",
            "| measure | " + " | ".join(f"{k} ({cam})" for cam, k in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for label, read, digits in CONFIDENCE_ROWS:
            cells = []
            for camera, key in columns:
                scores = [s.camera(camera).confidence.get(key) for s in sets]
                cells.append(_spread([None if c is None else read(c) for c in scores], digits))
            lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines
