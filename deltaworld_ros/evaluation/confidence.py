"""How well a confidence over K hypotheses knows which one lands closest to the truth.

Per forecast: the error of the most confident hypothesis against a random one (the mean of the
K) and the best one, how often the most confident is the best (chance: 1/K), the Spearman rank
correlation of confidence and error; pooled: a reliability diagram (the confidence of a
hypothesis against how often hypotheses of that confidence were the best) and the expected
calibration error. `deltaworld eval` and `deltaworld evaluate-world` report these for the
model's confidence and, beside a learned scorer, for the kernel density.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import spearman

RELIABILITY_BINS = 8  # equal-count bins of the reliability diagram
CALIBRATION_BINS = 10  # equal-width bins of the expected calibration error


def reliability_bins(confidence: np.ndarray, hit: np.ndarray) -> list[dict[str, float]]:
    """Confidence in equal-count bins vs the share of hits (the hypothesis was the best)."""
    edges = np.unique(np.quantile(confidence, np.linspace(0, 1, RELIABILITY_BINS + 1)))
    last = max(len(edges) - 2, 0)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, last)
    return [
        {
            "confidence": float(confidence[which == b].mean()),
            "best_rate": float(hit[which == b].mean()),
            "count": int((which == b).sum()),
        }
        for b in np.unique(which)
    ]


def expected_calibration_error(confidence: np.ndarray, hit: np.ndarray) -> float | None:
    """sum over equal-width confidence bins of (share of samples) x |mean confidence - hit
    rate|: 0 when a confidence of c means the hypothesis is the best c of the time."""
    if not len(confidence):
        return None
    which = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    gaps = [
        (which == b).mean() * abs(confidence[which == b].mean() - hit[which == b].mean())
        for b in np.unique(which)
    ]
    return float(sum(gaps))


class ConfidenceQuality:
    """How the confidence ranks hypotheses by error: per step and over whole rollouts."""

    def __init__(self, horizon: int, num_hypotheses: int) -> None:
        self.rows: dict[int | None, list[dict[str, float]]] = {s: [] for s in range(horizon)}
        self.rows[None] = []  # whole rollouts: error averaged over the scored steps
        self.by_rank = {s: np.zeros(num_hypotheses) for s in range(horizon)}
        self.rank_counts = {s: 0 for s in range(horizon)}
        self.pairs: list[tuple[float, float]] = []  # (confidence, share of "is the best")

    def add(self, step: int | None, confidence: np.ndarray, errors: np.ndarray) -> None:
        order = np.argsort(-confidence, kind="stable")
        errors = errors[order]
        confidence = confidence[order]
        is_best = errors <= errors.min()
        self.rows[step].append(
            {
                "most_confident": float(errors[0]),
                "random": float(errors.mean()),
                "best": float(errors.min()),
                "top_is_best": float(is_best[0]),
                "top_confidence": float(confidence[0]),
                "chance": float(is_best.mean()),
                "spearman": spearman(confidence, errors),
            }
        )
        if step is None:
            share = is_best / is_best.sum()
            self.pairs.extend(zip(confidence.tolist(), share.tolist(), strict=True))
        elif len(errors) == len(self.by_rank[step]):
            self.by_rank[step] += errors
            self.rank_counts[step] += 1

    def summary(self, step: int | None) -> dict[str, Any]:
        rows = self.rows[step]
        if not rows:
            return {"forecasts": 0}
        out: dict[str, Any] = {"forecasts": len(rows)}
        for key in rows[0]:
            values = np.array([r[key] for r in rows])
            finite = values[np.isfinite(values)]
            out[key] = float(finite.mean()) if len(finite) else None
        if step is not None and self.rank_counts[step]:
            out["error_by_rank"] = (self.by_rank[step] / self.rank_counts[step]).tolist()
        return out

    def reliability(self) -> list[dict[str, float]]:
        """Confidence in quantile bins vs how often a hypothesis of that bin was the best."""
        if not self.pairs:
            return []
        conf, best = np.array(self.pairs).T
        return reliability_bins(conf, best)

    def calibration(self) -> dict[str, float | None]:
        """Expected calibration errors of whole rollouts (see expected_calibration_error):
        over every hypothesis, and of the most confident one alone (top-label)."""
        if not self.pairs:
            return {"ece": None, "ece_most_confident": None}
        conf, best = np.array(self.pairs).T
        top_conf = np.array([r["top_confidence"] for r in self.rows[None]])
        top_best = np.array([r["top_is_best"] for r in self.rows[None]])
        return {
            "ece": expected_calibration_error(conf, best),
            "ece_most_confident": expected_calibration_error(top_conf, top_best),
        }
