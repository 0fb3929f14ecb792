"""Export every graph of a model into <dir>/onnx/, check parity, and pin it all in the manifest.

The graphs are written to a staging folder and checked there; only a passing export replaces
<dir>/onnx/ and rewrites manifest.json, so a failed export leaves a working model dir as it was.
"""

from __future__ import annotations

import logging
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from ..errors import DeltaworldError
from ..model.store import Manifest, write_manifest
from ..model.world_model import WorldModel
from ..runtime.engine import dynamic_axes
from .check import TOLERANCE, Parity, check_graph
from .fp16 import KEEP_FP32, to_float16
from .graphs import OPSET, SPECS, export_graph, graph_names

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
# the predictor's time RoPE turns seconds into angles of hundreds of radians; the scorer takes
# logs of squared feature differences far below float16's smallest normal number
FP32_ONLY = ("predictor", "scorer")


class ExportError(DeltaworldError):
    """An export that produced a graph with the wrong interface."""


def export_model(
    model: WorldModel,
    directory: str | Path,
    provenance: dict[str, Any],
    fp16: bool = False,
    check: bool = True,
) -> tuple[Manifest, list[Parity]]:
    """Write onnx/{graph}.onnx (+ onnx/fp16/) into `directory`, check them, rewrite the manifest.

    `directory` must already hold the model's weights/ (save_weights) so the manifest pins both.
    """
    directory = Path(directory)
    model = model.eval()
    staging = directory / ".onnx-staging"
    shutil.rmtree(staging, ignore_errors=True)
    parity: list[Parity] = []
    try:
        for graph in graph_names(model):
            path = staging / f"{graph}.onnx"
            log.info("exporting %s -> %s", graph, path)
            export_graph(model, graph, path)
            _check_interface(model, graph, path)
            if check:
                parity += check_graph(model, graph, path)
            if fp16:
                half = staging / "fp16" / f"{graph}.onnx"
                half.parent.mkdir(exist_ok=True)
                if graph in FP32_ONLY:
                    shutil.copyfile(path, half)
                else:
                    onnx.save(to_float16(onnx.load(str(path))), str(half))
                if check:
                    parity += check_graph(model, graph, half, precision="fp16")
        shutil.rmtree(directory / ONNX_DIR, ignore_errors=True)
        staging.rename(directory / ONNX_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    provenance = {
        **provenance,
        "export": {
            "exporter": f"torch.onnx.export(dynamo=True), opset {OPSET}",
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["deltaworld", *sys.argv[1:]]),
            "fp16": (
                f"optional; float16 weights/activations, {sorted(KEEP_FP32)} in float32, "
                f"{list(FP32_ONLY)} kept float32"
                if fp16
                else None
            ),
            "parity": _parity_summary(parity) if check else "skipped (--skip-check)",
        },
    }
    return write_manifest(directory, model.cfg, provenance), parity


def _check_interface(model: WorldModel, graph: str, path: Path) -> None:
    """Every input's dynamic axes (batch, context, hypotheses, steps) must be symbolic."""
    spec = SPECS[graph]
    proto = onnx.load(str(path), load_external_data=False)
    names = [i.name for i in proto.graph.input]
    if names != list(spec.inputs) or [o.name for o in proto.graph.output] != [spec.output]:
        raise ExportError(
            f"{graph}: exported inputs {names} / outputs {[o.name for o in proto.graph.output]}, "
            f"expected {list(spec.inputs)} -> {spec.output}"
        )
    dynamic = dynamic_axes(model.cfg, graph)
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        axes = tuple(dynamic[value.name])
        fixed = [a for a in axes if not dims[a].dim_param]
        if fixed:
            raise ExportError(
                f"{graph}: input {value.name!r} was specialised to size "
                f"{[dims[a].dim_value for a in fixed]} on axes {fixed}; expected dynamic axes"
            )


def _parity_summary(parity: list[Parity]) -> dict[str, Any]:
    """Per graph and precision: the worst error and its bound over all checked cases."""
    summary: dict[str, Any] = {
        "tolerance": {k: f"{v:g} * max(1, max|torch|)" for k, v in TOLERANCE.items()}
    }
    for p in parity:
        key = f"{p.graph}/{p.precision}"
        if key not in summary or p.max_error > summary[key]["max_error"]:
            summary[key] = {"max_error": p.max_error, "bound": p.bound}
    return summary
