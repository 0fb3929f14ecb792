"""Scores of forecast class maps and features, and of the confidence over hypotheses.

Conventions: class maps are integer arrays, `IGNORE` (255) in a target marks pixels without a
label; mIoU follows mmseg (IoU per class = intersection / union, mean over the classes whose
union is not empty); feature error is the mean squared error over patches and channels;
depth error is AbsRel (mean |d - d*| / d*) and RMSE (metres) over the pixels with a valid
target depth (finite, > 0).
"""

from __future__ import annotations

import numpy as np

IGNORE = 255


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) pixel counts, rows = target class, columns = predicted class; IGNORE and
    out-of-range target pixels are left out, predictions past the class count go to no column."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = (t >= 0) & (t < num_classes) & (t != IGNORE) & (p >= 0) & (p < num_classes)
    counts = np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """(C,) IoU from a confusion matrix; NaN for classes neither present nor predicted."""
    intersection = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    """mIoU of a confusion matrix; NaN when it counts no pixel."""
    iou = iou_per_class(matrix)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def feature_error(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean squared error over the last two axes (patches N, channels C): (..., N, C) -> (...)."""
    diff = pred.astype(np.float64) - target.astype(np.float64)
    return (diff * diff).mean((-2, -1))


def depth_errors(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AbsRel and RMSE of depth maps (..., H, W) against one target (H, W), over the target's
    valid pixels: (...), (...); NaN where the target has none."""
    valid = np.isfinite(target) & (target > 0)
    truth = target[valid].astype(np.float64)
    diff = pred[..., valid].astype(np.float64) - truth
    if not truth.size:
        nan = np.full(pred.shape[:-2], np.nan)
        return nan, nan
    return (np.abs(diff) / truth).mean(-1), np.sqrt((diff * diff).mean(-1))


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant (no ranking to compare)."""
    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def patch_majority(labels: np.ndarray, grid: tuple[int, int], num_classes: int) -> np.ndarray:
    """Label maps (..., H, W) -> (..., h, w): the majority class of each patch of the grid."""
    height, width = labels.shape[-2:]
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"labels {height}x{width} do not split into a {h}x{w} patch grid")
    cells = labels.reshape(*labels.shape[:-2], h, height // h, w, width // w)
    counts = np.stack([(cells == c).sum((-3, -1)) for c in range(num_classes)])
    return counts.argmax(0)
