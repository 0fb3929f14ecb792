"""The graphs behind one small interface; ONNX Runtime and torch are two backends of it.

Every call takes and returns float32 numpy arrays with a leading batch axis that packs
streams (cameras x crops) and hypotheses, so that one frame costs one call per graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import UsageError
from ..model.config import ModelConfig
from .threads import passive_openmp

GRAPHS = ("backbone", "encoder", "predictor", "decoder", "head", "depth", "scorer")
OPTIONAL_GRAPHS = ("depth",)  # a model with a depth head; exports before it lack the graph
# The ONNX interface of each graph: input names in call order, and the output's name. "kv" is
# the predictor's context tokens, under the name exported graphs (and model dirs) carry.
INPUTS = {
    "backbone": ("pixels",),
    "encoder": ("x", "y"),
    "predictor": ("queries", "kv", "pos_q", "pos_k"),
    "decoder": ("z", "x"),
    "head": ("y",),
    "depth": ("y",),
    "scorer": ("tokens", "context", "features", "present"),
}
OUTPUTS = {"backbone": "y", "encoder": "z", "predictor": "z_hat", "decoder": "y_hat",
           "head": "logits", "depth": "depth", "scorer": "score"}  # fmt: skip


INT8_GRAPHS = ("decoder",)  # quantized by `deltaworld export --int8`; the rest stay float32


BACKENDS = ("onnxruntime", "torch")
PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "torch": ("fp32", "fp16", "bf16")}


@dataclass(frozen=True)
class EngineOptions:
    """How and where the graphs run: forecast_node's engine parameters and every command's
    engine flags, carried whole to either backend."""

    backend: str = "onnxruntime"  # or "torch"
    # "" = the backend's choice (torch: cpu; onnxruntime: its providers on GPU 0),
    # "cpu", "cuda" or "cuda:N" (onnxruntime: its GPU providers on GPU N)
    device: str = ""
    precision: str = "fp32"  # fp32, fp16, int8 (onnxruntime), bf16 (torch)
    threads: int | None = None  # CPU threads of the engine; None: the runtime's default
    providers: tuple[str, ...] | None = None  # onnxruntime's, by preference; None: the default
    strict_providers: bool = False  # refuse to run anywhere but on the listed providers
    max_batch: int = 64  # largest batch a graph sees (largest_batch); TensorRT's profiles

    def validate(self) -> None:
        """UsageError naming the option, the value and what it may be."""
        if self.backend not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS[self.backend]:
            raise UsageError(
                f"precision {self.precision!r} does not run on {self.backend}; use one of "
                f"{', '.join(PRECISIONS[self.backend])} (int8: onnxruntime, bf16: torch)"
            )
        if self.device and re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is None:
            raise UsageError(f"device must be cpu, cuda or cuda:<index>, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1 (or unset), got {self.threads}")
        if self.max_batch < 1:
            raise UsageError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.strict_providers and not self.providers:
            raise UsageError("strict providers need the providers they hold to; list them")

    @property
    def device_index(self) -> int:
        """The GPU of cuda:N (0 for cuda, the backend's choice and cpu)."""
        return int(self.device.partition(":")[2] or 0)


def largest_batch(num_hypotheses: int, horizon: int, streams: int) -> int:
    """The largest batch a Forecaster sends through one graph: the head and the depth head
    see every stream's K x T forecasts and its present frame in one call."""
    return streams * (num_hypotheses * horizon + 1)


def graph_shapes(cfg: ModelConfig) -> dict[str, dict[str, tuple[int | str, ...]]]:
    """Each graph's inputs and output as the engine feeds and reads them, by name: "B" is the
    batch axis, "L" the context length, "K" the hypotheses and "T" the steps of a forecast
    (all dynamic in the graphs); the other sizes follow from the config."""
    h, w = cfg.image_size
    n, c, d = cfg.num_patches, cfg.token_size, cfg.predictor.hidden_size
    return {
        "backbone": {"pixels": ("B", 3, h, w), "y": ("B", n, c)},
        "encoder": {"x": ("B", n, c), "y": ("B", n, c), "z": ("B", 1, c)},
        "predictor": {"queries": ("B", 1, d), "kv": ("B", "L", c), "pos_q": ("B", 1),
                      "pos_k": ("B", "L"), "z_hat": ("B", 1, c)},
        "decoder": {"z": ("B", 1, c), "x": ("B", n, c), "y_hat": ("B", n, c)},
        "head": {"y": ("B", n, c), "logits": ("B", cfg.head.num_classes, *cfg.grid)},
        "depth": {"y": ("B", n, c), "depth": ("B", 1, *cfg.grid)},
        "scorer": {"tokens": ("B", "K", "T", c), "context": ("B", "L", c),
                   "features": ("B", "K", "T", n, c), "present": ("B", n, c),
                   "score": ("B", "K")},
    }  # fmt: skip


def dynamic_axes(cfg: ModelConfig, graph: str) -> dict[str, dict[int, str]]:
    """The named (dynamic) axes of each input of a graph: {input: {axis: "B" | "L" | ...}}."""
    shapes = graph_shapes(cfg)[graph]
    return {
        name: {axis: size for axis, size in enumerate(shapes[name]) if isinstance(size, str)}
        for name in INPUTS[graph]
    }


def graph_file(graph: str, precision: str = "fp32") -> str:
    """Path of a graph inside a model directory: onnx/<graph>.onnx, onnx/fp16/<graph>.onnx,
    onnx/int8/decoder.onnx (the other graphs of the int8 precision are the float32 ones)."""
    if precision == "fp16":
        return f"onnx/fp16/{graph}.onnx"
    if precision == "int8" and graph in INT8_GRAPHS:
        return f"onnx/int8/{graph}.onnx"
    return f"onnx/{graph}.onnx"


class Engine(Protocol):
    """One method per graph, named after it; a model without a depth head has no depth graph."""

    config: ModelConfig
    backend: str  # "onnxruntime" or "torch"
    providers: dict[str, str]  # graph -> the provider / device it really runs on (those it has)
    placement: str  # one line: runtime, where it runs, and why other providers were skipped
    learned_query: np.ndarray | None  # (D,) for the deterministic baseline, else None
    precision: str  # "fp32", "fp16", "int8" (onnxruntime) or "bf16" (torch)

    def backbone(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 pixel values 0..255 -> features y (B, N, C)."""

    def encoder(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """previous features x (B, N, C), current y (B, N, C) -> delta token z (B, 1, C)."""

    def predictor(
        self, queries: np.ndarray, context: np.ndarray, pos_q: np.ndarray, pos_k: np.ndarray
    ) -> np.ndarray:
        """queries (B, 1, D), context tokens (B, L, C), their times pos_q (B, 1) and
        pos_k (B, L) in seconds -> predicted token (B, 1, C)."""

    def decoder(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """token z (B, 1, C), reference features x (B, N, C) -> predicted features (B, N, C)."""

    def head(self, y: np.ndarray) -> np.ndarray:
        """features (B, N, C) -> class logits on the patch grid (B, classes, h, w)."""

    def depth(self, y: np.ndarray) -> np.ndarray:
        """features (B, N, C) -> depth in metres on the patch grid (B, 1, h, w)."""

    def scorer(
        self, tokens: np.ndarray, context: np.ndarray, features: np.ndarray, present: np.ndarray
    ) -> np.ndarray:
        """sampled tokens (B, K, T, C), context tokens (B, L, C), decoded features
        (B, K, T, N, C), last context frame's features (B, N, C) -> calibrated logits (B, K):
        softmax over K is the confidence (model/scorer.py)."""


def open_engine(model_dir: str | Path, options: EngineOptions | None = None) -> Engine:
    """An engine on a verified model directory, set up as `options` say (None: the defaults)."""
    options = options or EngineOptions()
    options.validate()
    if options.backend == "onnxruntime":
        from .ort_engine import OrtEngine

        return OrtEngine(model_dir, options)
    passive_openmp()
    from .torch_engine import TorchEngine

    return TorchEngine(model_dir, options)
