"""`deltaworld export --int8` on the embedded default model: the decoder's int8 graph keeps
forecasts within the stated bound (>= 99 % of forecast class pixels equal to float32's on
held-out worlds, same noise), or it is not kept."""

from __future__ import annotations

import shutil

import onnx
import pytest

from deltaworld_ros.export import int8
from deltaworld_ros.export.int8 import AGREEMENT_BOUND, AccuracyError, add_int8
from deltaworld_ros.model.store import ModelDirError, default_model_dir, read_manifest
from deltaworld_ros.runtime.engine import EngineOptions, graph_file
from deltaworld_ros.runtime.ort_engine import OrtEngine


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    directory = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(default_model_dir(), directory)
    return directory, add_int8(directory)


def test_the_int8_decoder_keeps_forecasts_within_the_bound(quantized):
    directory, agreement = quantized
    assert agreement.forecasts >= 16
    assert agreement.class_pixels >= AGREEMENT_BOUND
    assert agreement.current_pixels == 1.0, "the frame's own segmentation never decodes"
    assert agreement.feature_error < 0.03
    manifest = read_manifest(directory)  # every file, the int8 graph too, matches its hash
    assert manifest.has(graph_file("decoder", "int8"))
    recorded = manifest.provenance["int8"]["agreement"]
    assert recorded["forecast_class_pixels"] == agreement.class_pixels
    graph = onnx.load(str(directory / graph_file("decoder", "int8"))).graph
    assert "MatMulInteger" in {n.op_type for n in graph.node}
    options = EngineOptions(providers=("cpu",), strict_providers=True, precision="int8")
    engine = OrtEngine(directory, options)
    assert engine.files["decoder"] == "onnx/int8/decoder.onnx"
    assert engine.files["encoder"] == "onnx/encoder.onnx"


def test_a_quantization_outside_the_bound_is_not_kept(quantized, tmp_path, monkeypatch):
    copy = tmp_path / "model"
    shutil.copytree(quantized[0], copy)
    monkeypatch.setattr(int8, "AGREEMENT_BOUND", 1.0001)  # no quantization can reach it
    with pytest.raises(AccuracyError, match="not kept"):
        add_int8(copy, worlds=1, frames=6)
    manifest = read_manifest(copy)
    assert not manifest.has(graph_file("decoder", "int8"))
    assert not (copy / "onnx" / "int8").exists()
    with pytest.raises(ModelDirError, match="--int8"):
        OrtEngine(copy, EngineOptions(providers=("cpu",), precision="int8"))
