"""The closed-form FLOP model of every graph (2 FLOPs per multiply-add: matmuls, convolutions
and attention), and an engine that counts the FLOPs of the calls it passes on from their
input shapes."""

from __future__ import annotations

import numpy as np

from ..model.config import ModelConfig
from .engine import GRAPHS, Engine


def _block(tokens: int, dim: int, hidden: int, heads: int, deltatok: bool) -> int:
    """One self-attention layer over `tokens`: q,k,v,o projections, QK^T and AV, the MLP
    (GELU: 2 matmuls, SwiGLU: 3), DeltaTok's per-head gate."""
    projections = 4 * 2 * tokens * dim * dim
    attention = 2 * 2 * tokens * tokens * dim
    mlp = (3 if deltatok else 2) * 2 * tokens * dim * hidden
    gate = 2 * tokens * dim * heads if deltatok else 0
    return projections + attention + mlp + gate


def graph_flops(cfg: ModelConfig, graph: str, context: int | None = None, steps: int = 1) -> int:
    """FLOPs of one batch row of a graph; the predictor's depend on its context length. A row
    of the scorer is one hypothesis of `steps` steps: its descriptors over the decoded
    features (spread around the mean of the K, change per step) and its MLP."""
    n, c = cfg.num_patches, cfg.token_size
    bb, tok, pr = cfg.backbone, cfg.tokenizer, cfg.predictor
    if graph == "backbone":
        tokens = 1 + bb.num_register_tokens + n
        patchify = 2 * n * c * 3 * bb.patch_size**2
        layer = _block(tokens, c, bb.intermediate_size, bb.num_heads, deltatok=False)
        return patchify + bb.num_layers * layer
    if graph in ("encoder", "decoder"):
        tokens, layers = (
            (1 + 2 * n, tok.num_encoder_layers)
            if graph == "encoder"
            else (1 + n, tok.num_decoder_layers)
        )
        return layers * _block(tokens, c, tok.intermediate_size, tok.num_heads, deltatok=True)
    if graph == "predictor":
        length = context or cfg.context_length
        d = pr.hidden_size
        layer = (
            2 * d * d  # q
            + 2 * length * c * 2 * d  # kv, recomputed for every hypothesis row
            + 2 * 2 * length * d  # QK^T and AV for one query
            + 2 * d * d  # out
            + 2 * 2 * d * pr.mlp_ratio * d  # MLP
        )
        return pr.num_layers * layer + 2 * d * c  # + head to token size
    if graph == "head":
        return 2 * n * c * cfg.head.num_classes
    if graph == "depth":  # 1x1 conv to the bins, then the expectation over them
        return 2 * n * c * cfg.head.depth_bins + 2 * n * cfg.head.depth_bins
    if graph == "scorer":
        width, hidden = cfg.scorer.input_size(c), cfg.scorer.hidden_size
        return steps * 2 * 3 * n * c + 2 * (width * hidden + hidden * hidden + hidden)
    raise ValueError(f"unknown graph {graph!r}")


def frame_flops(cfg: ModelConfig, k: int, horizon: int, context: int) -> dict[str, int]:
    """Steady-state FLOPs per stream-frame: one backbone pass, the new delta plus the re-encoded
    anchor, K x T predictor and decoder rows (context growing by one token per step), and the
    heads (segmentation, depth) on K x T forecasts + the current frame, the scorer's K rows."""
    return {
        "backbone": graph_flops(cfg, "backbone"),
        "encoder": 2 * graph_flops(cfg, "encoder"),
        "predictor": k * sum(graph_flops(cfg, "predictor", context + t) for t in range(horizon)),
        "decoder": k * horizon * graph_flops(cfg, "decoder"),
        "head": (k * horizon + 1) * graph_flops(cfg, "head") if cfg.head.num_classes else 0,
        "depth": (k * horizon + 1) * graph_flops(cfg, "depth") if cfg.head.with_depth else 0,
        "scorer": k * graph_flops(cfg, "scorer", steps=horizon) if cfg.scorer.enabled else 0,
    }


class CountingEngine:
    """Delegates to an engine and adds up the FLOPs of every call from its input shapes."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine
        self.config = engine.config
        self.backend = engine.backend
        self.providers = engine.providers
        self.placement = engine.placement
        self.learned_query = engine.learned_query
        self.precision = engine.precision
        self.flops: dict[str, int] = dict.fromkeys(GRAPHS, 0)

    def _count(self, graph: str, rows: int, context: int | None = None, steps: int = 1) -> None:
        self.flops[graph] += rows * graph_flops(self.config, graph, context, steps)

    def backbone(self, pixels: np.ndarray) -> np.ndarray:
        self._count("backbone", len(pixels))
        return self.inner.backbone(pixels)

    def encoder(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        self._count("encoder", len(x))
        return self.inner.encoder(x, y)

    def predictor(self, queries, context, pos_q, pos_k) -> np.ndarray:
        self._count("predictor", len(queries), context.shape[1])
        return self.inner.predictor(queries, context, pos_q, pos_k)

    def decoder(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        self._count("decoder", len(z))
        return self.inner.decoder(z, x)

    def head(self, y: np.ndarray) -> np.ndarray:
        self._count("head", len(y))
        return self.inner.head(y)

    def depth(self, y: np.ndarray) -> np.ndarray:
        self._count("depth", len(y))
        return self.inner.depth(y)

    def scorer(self, tokens, context, features, present) -> np.ndarray:
        self._count("scorer", tokens.shape[0] * tokens.shape[1], steps=tokens.shape[2])
        return self.inner.scorer(tokens, context, features, present)

    def take(self) -> dict[str, int]:
        counted, self.flops = self.flops, dict.fromkeys(GRAPHS, 0)
        return counted
