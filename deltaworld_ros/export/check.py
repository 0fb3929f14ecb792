"""Parity of every exported graph with its torch module, at several batch sizes and contexts.

Tolerance: max|onnx - torch| <= rel * max(1, max|torch|), rel = 1e-4 for float32 graphs
(the fixtures' tolerance) and 1e-2 for the float16 variants against the float32 module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..errors import DeltaworldError
from ..model.world_model import WorldModel
from ..runtime.ort_engine import session_options
from .graphs import SPECS, example_inputs

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


class ParityError(DeltaworldError):
    """An exported graph whose outputs differ from its torch module beyond the tolerance."""


@dataclass
class Parity:
    graph: str
    precision: str
    batch: int
    context: int | None
    max_error: float
    bound: float


def cases(model: WorldModel, graph: str) -> list[tuple[int, int | None]]:
    """(batch, context) pairs: two batch sizes (1 catches a graph specialised to B > 1); the
    predictor (and the scorer, which reads the context) also at a single token and at the
    longest context of a rollout."""
    if graph not in ("predictor", "scorer"):
        return [(1, None), (3, None)]
    ctx = model.cfg.context_length
    return [(1, ctx), (3, ctx), (2, 1), (5, ctx + 3)]


def check_graph(
    model: WorldModel, graph: str, path: Path, precision: str = "fp32", seed: int = 0
) -> list[Parity]:
    """Run the ONNX file (CPU) and the torch module on the same random inputs; raise
    ParityError naming the graph, the case, the error and the tolerance."""
    spec = SPECS[graph]
    module = spec.wrapper(model).eval()
    sess = ort.InferenceSession(str(path), session_options(None), ["CPUExecutionProvider"])
    rel = TOLERANCE[precision]
    results = []
    for i, (batch, context) in enumerate(cases(model, graph)):
        inputs = example_inputs(model, graph, batch, context, seed=seed + i)
        with torch.no_grad():
            ref = module(*inputs).numpy()
        (got,) = sess.run(None, {n: t.numpy() for n, t in zip(spec.inputs, inputs, strict=True)})
        if got.shape != ref.shape:
            raise ParityError(
                f"{graph} ({path}): output shape {got.shape} != torch {ref.shape} at batch {batch}"
                f", context {context}"
            )
        err = float(np.abs(got.astype(np.float64) - ref).max())
        bound = rel * max(1.0, float(np.abs(ref).max()))
        if not err <= bound:  # also catches NaN
            raise ParityError(
                f"{graph} ({path}, {precision}): max |onnx - torch| = {err:.3g} exceeds the "
                f"tolerance {bound:.3g} ({rel:g} * max(1, max|torch|)) at batch {batch}"
                + (f", context {context}" if context else "")
            )
        results.append(Parity(graph, precision, batch, context, err, bound))
    return results
