"""The inference graphs as small torch modules with named inputs, and their ONNX export.

Each wrapper's forward signature names the ONNX inputs; every graph has a dynamic batch axis,
the predictor also a dynamic context length, the scorer dynamic hypotheses and steps too. The
exporter is torch.export-based (`dynamo=True`): it traces with symbolic sizes, so nothing is
specialised to the example batch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..model.world_model import WorldModel
from ..runtime.engine import INPUTS, OUTPUTS, dynamic_axes

OPSET = 18  # LayerNormalization is native (>= 17); SDPA decomposes into MatMul/Softmax


class Backbone(nn.Module):
    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float 0..255 -> y (B, N, C); preprocessing is inside."""
        return self.backbone(pixels)


class Encoder(nn.Module):
    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.tokenizer = model.tokenizer

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y (B, N, C) -> z (B, 1, C)."""
        return self.tokenizer.encode(x, y)


class Predictor(nn.Module):
    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.predictor = model.world.predictor

    def forward(
        self, queries: torch.Tensor, kv: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor
    ) -> torch.Tensor:
        """queries (B, 1, D), context tokens kv (B, L, C), pos_q (B, 1), pos_k (B, L) seconds
        -> (B, 1, C). The argument names are the graph's input names (engine.INPUTS)."""
        return self.predictor(queries, kv, pos_q, pos_k)


class Decoder(nn.Module):
    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.tokenizer = model.tokenizer

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """z (B, 1, C), x (B, N, C) -> y_hat (B, N, C)."""
        return self.tokenizer.decode(z, x)


class Head(nn.Module):
    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.seg_head = model.seg_head
        self.grid = model.cfg.grid

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y (B, N, C) -> logits (B, classes, h, w) on the patch grid."""
        return self.seg_head(y, self.grid)


class Depth(nn.Module):
    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.depth_head = model.depth_head
        self.grid = model.cfg.grid

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y (B, N, C) -> depth (B, 1, h, w) in metres on the patch grid."""
        return self.depth_head(y, self.grid)


class Scorer(nn.Module):
    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.scorer = model.scorer

    def forward(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor,
        features: torch.Tensor,
        present: torch.Tensor,
    ) -> torch.Tensor:
        """tokens (B, K, T, C), context (B, L, C), features (B, K, T, N, C), present (B, N, C)
        -> calibrated logits (B, K)."""
        return self.scorer(tokens, context, features, present)


@dataclass(frozen=True)
class GraphSpec:
    name: str
    wrapper: Callable[[WorldModel], nn.Module]

    @property
    def inputs(self) -> tuple[str, ...]:
        return INPUTS[self.name]

    @property
    def output(self) -> str:
        return OUTPUTS[self.name]


SPECS = {
    name: GraphSpec(name, wrapper)
    for name, wrapper in (
        ("backbone", Backbone),
        ("encoder", Encoder),
        ("predictor", Predictor),
        ("decoder", Decoder),
        ("head", Head),
        ("depth", Depth),
        ("scorer", Scorer),
    )
}


def graph_names(model: WorldModel) -> list[str]:
    """The graphs this model has (head, depth and scorer only with their modules)."""
    parts = {"head": model.seg_head, "depth": model.depth_head, "scorer": model.scorer}
    return [g for g in SPECS if parts.get(g, model) is not None]


def example_inputs(
    model: WorldModel, graph: str, batch: int, context: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random inputs in each graph's working range (features ~ unit scale, stamps in seconds).
    The scorer's hypotheses and steps change with the batch (K = batch + 4, T = batch % 3 + 1),
    so that the cases of a parity check differ from the export's sizes in every dynamic axis."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    n, c, d = cfg.num_patches, cfg.token_size, cfg.predictor.hidden_size
    length = context or cfg.context_length

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    if graph == "backbone":
        h, w = cfg.image_size
        return (torch.rand(batch, 3, h, w, generator=gen) * 255,)
    if graph in ("encoder", "decoder"):
        first = randn(batch, n, c) if graph == "encoder" else randn(batch, 1, c)
        return first, randn(batch, n, c)
    if graph == "predictor":
        jitter = torch.rand(batch, length + 1, generator=gen) * 0.2 * cfg.frame_interval
        stamps = torch.arange(length + 1) * cfg.frame_interval + jitter  # (B, L + 1) s
        queries = randn(batch, 1, d) * cfg.backbone.initializer_range
        return queries, randn(batch, length, c), stamps[:, length:], stamps[:, :length]
    if graph in ("head", "depth"):
        return (randn(batch, n, c),)
    if graph == "scorer":
        k, steps = batch + 4, batch % 3 + 1
        features = randn(batch, k, steps, n, c)
        return randn(batch, k, steps, c), randn(batch, length, c), features, randn(batch, n, c)
    raise ValueError(f"unknown graph {graph!r}; graphs: {list(SPECS)}")


def export_graph(model: WorldModel, graph: str, path: Path) -> None:
    """torch.onnx.export of one graph with a dynamic batch (and context length)."""
    spec = SPECS[graph]
    module = spec.wrapper(model).eval()
    dims = {name: torch.export.Dim(name, min=1) for name in ("B", "L", "K", "T")}
    dynamic = {
        name: {axis: dims[size] for axis, size in axes.items()}
        for name, axes in dynamic_axes(model.cfg, graph).items()
    }
    args = example_inputs(model, graph, batch=2, context=max(2, model.cfg.context_length))
    path.parent.mkdir(parents=True, exist_ok=True)
    chatter = io.StringIO()  # the exporter prints its progress; shown only when it fails
    try:
        with _quiet(chatter), torch.no_grad():
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=list(spec.inputs),
                output_names=[spec.output],
                opset_version=OPSET,
                verbose=False,
            )
    except Exception:
        sys.stderr.write(chatter.getvalue())
        raise
    program.save(str(path))


@contextlib.contextmanager
def _quiet(sink: io.StringIO):
    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level
    torch_onnx.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping ..."
    try:
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx.setLevel(level)
