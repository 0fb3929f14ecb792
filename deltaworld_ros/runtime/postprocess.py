"""From sampled tokens and logits to what planners read: class maps, confidence, disagreement."""

from __future__ import annotations

import numpy as np


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) interpolation weights of torch's bilinear resize with align_corners=False."""
    src = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    src = np.clip(src, 0, None)  # torch clamps negative source coordinates to the first pixel
    lo = np.minimum(np.floor(src).astype(int), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = (src - lo).astype(np.float32)
    matrix = np.zeros((size_out, size_in), np.float32)
    np.add.at(matrix, (np.arange(size_out), lo), 1 - frac)
    np.add.at(matrix, (np.arange(size_out), hi), frac)
    return matrix


def kernel_density_confidence(samples: np.ndarray) -> np.ndarray:
    """Training-free confidence of K samples (K, D): Gaussian kernel density of each sample
    among the others (bandwidth: the median pairwise distance), normalised to sum to 1.

    Best-of-many training gives no likelihood; samples that many others agree with sit in a
    mode of the predictive distribution, isolated ones in its tails.
    """
    k = samples.shape[0]
    if k == 1:
        return np.ones(1, np.float32)
    x = samples.astype(np.float64)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    off_diagonal = d2[~np.eye(k, dtype=bool)]
    bandwidth2 = np.median(off_diagonal)
    if not np.isfinite(bandwidth2) or bandwidth2 <= 0:
        return np.full(k, 1 / k, np.float32)  # identical samples: nothing to prefer
    density = np.exp(-d2 / bandwidth2)
    np.fill_diagonal(density, 0)
    density = density.sum(1) + 1e-12
    return (density / density.sum()).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32 (a scorer's logits -> confidences summing to 1)."""
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return (shifted / shifted.sum(-1, keepdims=True)).astype(np.float32)


def disagreement(maps: np.ndarray) -> np.ndarray:
    """Per-pixel share of hypotheses off the per-pixel mode: (K, T, h, w) -> (T, h, w)."""
    k = maps.shape[0]
    counts = np.stack([(maps == c).sum(0) for c in np.unique(maps)])  # (classes present, T, h, w)
    return (1 - counts.max(0) / k).astype(np.float32)
