"""int8 decoder: dynamic quantization of its MatMuls, kept only within a stated accuracy bound.

The decoder runs K x T times per frame (2/3 of a CPU forecast step). Its MatMul weights become
int8 per output channel and its activations are quantized per call; LayerNorm, softmax and the
rest stay float32. Quantization errors compound over the T decoder passes of a rollout, so the
bound is checked on whole forecasts: the int8 and float32 models see the same frames of
held-out synthetic worlds with the same noise, and their forecast class maps must agree on
>= AGREEMENT_BOUND of the pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DeltaworldError
from ..model.store import read_manifest, write_manifest
from ..runtime.engine import INT8_GRAPHS, EngineOptions, graph_file
from ..runtime.forecaster import Forecaster, ForecasterConfig, FrameInput
from ..runtime.ort_engine import OrtEngine
from ..synth import WorldConfig, render_sequence

log = logging.getLogger(__name__)

AGREEMENT_BOUND = 0.99  # share of forecast class pixels equal to the float32 model's
HELD_OUT_SEED = 1_000_000_000  # train.data.HELD_OUT_SEED_BASE: worlds no model trained on


class AccuracyError(DeltaworldError):
    """A quantized model whose forecasts leave the stated bound."""


@dataclass(frozen=True)
class Agreement:
    class_pixels: float  # share of forecast class pixels equal to float32's
    current_pixels: float  # same for the segmentation of the frame itself
    feature_error: float  # RMS(int8 - fp32) / RMS(fp32) of the predicted features
    forecasts: int

    def passed(self) -> bool:
        return self.class_pixels >= AGREEMENT_BOUND


def quantize_graph(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])  # fmt: skip


def measure_agreement(
    model_dir: Path,
    worlds: int = 2,
    frames: int = 12,
    k: int = ForecasterConfig.num_hypotheses,
    horizon: int = ForecasterConfig.horizon,
) -> Agreement:
    """Forecasts of the int8 and float32 graphs over `frames` frames of `worlds` held-out
    worlds (K hypotheses, T steps, same noise)."""
    engines = [
        OrtEngine(model_dir, EngineOptions(providers=("cpu",), strict_providers=True, precision=p))
        for p in ("fp32", "int8")
    ]
    h, w = engines[0].config.image_size
    same = total = same_now = total_now = 0
    err2 = ref2 = 0.0
    count = 0
    for world in range(worlds):
        clip = render_sequence(WorldConfig(height=h, width=w), HELD_OUT_SEED + world, frames)
        step = engines[0].config.frame_interval
        config = ForecasterConfig(num_hypotheses=k, horizon=horizon, seed=world,
                                  keep_features=True)  # fmt: skip
        forecasters = [Forecaster(e, config) for e in engines]
        for i, rgb in enumerate(clip.rgb):
            ref, got = (f.process([FrameInput("cam", i * step, rgb)])[0] for f in forecasters)
            if ref is None:
                continue
            count += 1
            ref_classes = ref.classes[np.argsort(ref.order)]  # sampling order on both sides
            got_classes = got.classes[np.argsort(got.order)]
            same += int((ref_classes == got_classes).sum())
            total += ref_classes.size
            same_now += int((ref.current_classes == got.current_classes).sum())
            total_now += ref.current_classes.size
            ref_f = ref.features[np.argsort(ref.order)]
            got_f = got.features[np.argsort(got.order)]
            err2 += float(((got_f - ref_f) ** 2).sum())
            ref2 += float((ref_f**2).sum())
    return Agreement(same / total, same_now / total_now, float(np.sqrt(err2 / ref2)), count)


def add_int8(model_dir: str | Path, worlds: int = 2, frames: int = 12) -> Agreement:
    """Write onnx/int8/ for INT8_GRAPHS of an exported model dir, pin it in the manifest, and
    keep it only if its forecasts stay within the bound (else remove it and raise)."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    for graph in INT8_GRAPHS:
        quantize_graph(manifest.path(graph_file(graph)), manifest.path(graph_file(graph, "int8")))
    int8 = {"quantization": f"dynamic int8 MatMuls (per channel) of {list(INT8_GRAPHS)}"}
    provenance = {**manifest.provenance, "int8": int8}
    write_manifest(model_dir, manifest.config, provenance)
    agreement = measure_agreement(model_dir, worlds, frames)
    int8["agreement"] = {
        "forecast_class_pixels": agreement.class_pixels,
        "current_class_pixels": agreement.current_pixels,
        "relative_feature_error": agreement.feature_error,
        "bound": f"forecast class pixels >= {AGREEMENT_BOUND}",
        "frames": f"{agreement.forecasts} forecasts, K=8 T=3, held-out synthetic worlds",
    }
    if not agreement.passed():
        for graph in INT8_GRAPHS:
            manifest.path(graph_file(graph, "int8")).unlink()
        manifest.path(graph_file(INT8_GRAPHS[0], "int8")).parent.rmdir()
        write_manifest(model_dir, manifest.config, manifest.provenance)
        raise AccuracyError(
            f"int8 forecasts agree with float32 on {agreement.class_pixels:.2%} of class pixels, "
            f"below the bound {AGREEMENT_BOUND:.0%}; onnx/int8/ was not kept"
        )
    write_manifest(model_dir, manifest.config, provenance)
    return agreement
