"""The five graphs behind one small interface; ONNX Runtime and torch are two backends of it.

Every call takes and returns float32 numpy arrays with a leading batch axis that packs
streams (cameras x crops) and hypotheses, so that one frame costs one call per graph.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..model.config import ModelConfig

GRAPHS = ("backbone", "encoder", "predictor", "decoder", "head")


class Engine(Protocol):
    config: ModelConfig
    backend: str  # "onnxruntime" or "torch"
    providers: dict[str, str]  # graph -> the provider / device it really runs on
    learned_query: np.ndarray | None  # (D,) for the deterministic baseline, else None

    def backbone(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 pixel values 0..255 -> features y (B, N, C)."""

    def encode(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """previous features x (B, N, C), current y (B, N, C) -> delta token z (B, 1, C)."""

    def predict(
        self, queries: np.ndarray, kv: np.ndarray, pos_q: np.ndarray, pos_k: np.ndarray
    ) -> np.ndarray:
        """queries (B, 1, D), history kv (B, L, C), pos_q (B, 1), pos_k (B, L) s -> (B, 1, C)."""

    def decode(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """token z (B, 1, C), reference features x (B, N, C) -> predicted features (B, N, C)."""

    def head(self, y: np.ndarray) -> np.ndarray:
        """features (B, N, C) -> class logits on the patch grid (B, classes, h, w)."""
