"""ONNX export of the fixture's tiny model, and both engines against the reference numbers.

Tolerances: float32 graphs 1e-4 * max(1, max|ref|) (the fixtures'); the float16 variants
1e-2 * max(1, max|ref|). The tiny model is exported once per module (about 20 s on 2 cores).
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import assert_close

from deltaworld_ros.errors import UsageError
from deltaworld_ros.export.check import ParityError, check_graph
from deltaworld_ros.export.exporter import export_model
from deltaworld_ros.model.config import tiny
from deltaworld_ros.model.loading import save_weights
from deltaworld_ros.model.store import ModelDirError, read_manifest, write_manifest
from deltaworld_ros.model.world_model import WorldModel
from deltaworld_ros.runtime.engine import (
    GRAPHS,
    EngineOptions,
    dynamic_axes,
    graph_file,
    open_engine,
)
from deltaworld_ros.runtime.ort_engine import OrtEngine, ProviderError
from deltaworld_ros.runtime.postprocess import softmax
from deltaworld_ros.runtime.providers import provider_problem
from deltaworld_ros.runtime.torch_engine import TorchEngine
from deltaworld_ros.train.scorer import add_scorer

B, T, K, N, C = 2, 5, 3, 16, 64
FP16 = 1e-2


@pytest.fixture(scope="module")
def scored_model(tiny_model):
    """The fixture model with a learned scorer (random weights): every graph a model can have."""
    model = copy.deepcopy(tiny_model)
    torch.manual_seed(0)
    add_scorer(model)
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(scored_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_model")
    save_weights(scored_model, directory)
    write_manifest(directory, scored_model.cfg, {"source": "shared fixtures, random weights"})
    export_model(scored_model, directory, read_manifest(directory).provenance, fp16=True)
    return directory


@pytest.fixture(scope="module", params=["onnxruntime", "onnxruntime-fp16", "torch"])
def engine(request, model_dir):
    if request.param == "torch":
        return TorchEngine(model_dir)
    precision = "fp16" if request.param.endswith("fp16") else "fp32"
    options = EngineOptions(providers=("cpu",), strict_providers=True, precision=precision)
    return OrtEngine(model_dir, options)


def close(engine, got, ref, name):
    assert_close(got, ref, name, rel=FP16 if engine.precision == "fp16" else 1e-4)


def test_the_manifest_pins_every_graph_and_records_the_export(model_dir):
    manifest = read_manifest(model_dir)
    for graph in GRAPHS:
        assert manifest.has(graph_file(graph)) and manifest.has(graph_file(graph, "fp16"))
    export = manifest.provenance["export"]
    assert manifest.provenance["source"] == "shared fixtures, random weights"
    assert export["torch"] == torch.__version__ and export["onnx"] == onnx.__version__
    assert (
        export["parity"]["decoder/fp32"]["max_error"] <= export["parity"]["decoder/fp32"]["bound"]
    )


def test_batch_context_hypotheses_and_steps_axes_are_symbolic(model_dir, scored_model):
    for graph in GRAPHS:
        proto = onnx.load(str(model_dir / graph_file(graph)))
        axes = dynamic_axes(scored_model.cfg, graph)
        for value in proto.graph.input:
            dims = value.type.tensor_type.shape.dim
            assert dims[0].dim_param, f"{graph}.{value.name} has a fixed batch"
            for axis, name in axes[value.name].items():
                assert dims[axis].dim_param, f"{graph}.{value.name} has a fixed {name}"


@pytest.mark.parametrize("batch", [1, 2, 6])
def test_backbone_matches_the_fixture(engine, fixture_arrays, batch):
    frames = fixture_arrays["inputs/frames_uint8"].reshape(B * T, 3, 64, 64)[:batch]
    y = engine.backbone(frames.astype(np.float32))
    close(engine, y, fixture_arrays["out/backbone/y"].reshape(B * T, N, C)[:batch], "y")


@pytest.mark.parametrize("batch", [1, 2, 6])
def test_predictor_and_decoder_match_the_fixture(engine, fixture_arrays, batch):
    w = "out/world/single"
    z_hat = engine.predictor(*(fixture_arrays[f"{w}/{k}"][:batch] for k in
                             ("queries", "kv", "pos_q", "pos_k")))  # fmt: skip
    close(engine, z_hat, fixture_arrays[f"{w}/z_hat"][:batch], "z_hat")
    x = np.repeat(fixture_arrays["out/backbone/y"][:, 3], K, 0)[:batch]
    y_hat = engine.decoder(fixture_arrays[f"{w}/z_hat"][:batch], x)
    close(engine, y_hat, fixture_arrays[f"{w}/y_hat"][:batch], "y_hat")


def test_encoder_and_head_match_the_fixture(engine, fixture_arrays):
    y = fixture_arrays["out/backbone/y"]
    z = engine.encoder(y[:, 1], y[:, 2])
    close(engine, z[:, 0], fixture_arrays["out/tokenizer/encode_x_y1_y_y2"], "encode")
    logits = engine.head(y.reshape(B * T, N, C))
    close(engine, logits, fixture_arrays["out/heads/seg_logits_gt"].reshape(B * T, 5, 4, 4), "seg")


def test_depth_matches_the_fixture(engine, fixture_arrays):
    y = fixture_arrays["out/backbone/y"].reshape(B * T, N, C)
    depth = engine.depth(y)
    close(engine, depth, fixture_arrays["out/heads/depth_gt"].reshape(B * T, 1, 4, 4), "depth")


@pytest.mark.parametrize(("k", "steps", "context"), [(1, 1, 1), (8, 3, 4), (20, 5, 9)])
def test_the_scorer_matches_its_torch_module(engine, scored_model, k, steps, context):
    """Any K, T and context length; confidences (softmax of the logits) sum to 1."""
    gen = torch.Generator().manual_seed(k)
    inputs = [torch.randn(*shape, generator=gen) for shape in
              ((2, k, steps, C), (2, context, C), (2, k, steps, N, C), (2, N, C))]  # fmt: skip
    with torch.no_grad():
        ref = scored_model.scorer(*inputs).numpy()
    got = engine.scorer(*(t.numpy() for t in inputs))
    assert got.shape == (2, k)
    assert_close(got, ref, "scorer")  # float32 in every precision (FP32_ONLY)
    assert softmax(got).sum(1) == pytest.approx(1.0, abs=1e-6)


def test_rollout_grows_the_context(engine, fixture_arrays):
    """The reference rollout: context 3, then 4 tokens, K = 3 hypotheses of 2 clips (batch 6)."""
    r = "out/world/rollout"
    x = np.repeat(fixture_arrays[f"{r}/ctx"][:, -1], K, 0)
    preds = []
    for step, length in enumerate((3, 4)):
        context = fixture_arrays[f"{r}/kv_step{step}"]  # the fixture's name for the context
        assert context.shape[1] == length
        z_hat = engine.predictor(fixture_arrays[f"{r}/queries"][step], context,
                               fixture_arrays[f"{r}/pos_q"][step],
                               fixture_arrays[f"{r}/pos_k_step{step}"])  # fmt: skip
        close(engine, z_hat[:, 0], fixture_arrays[f"{r}/z_hat"][step], f"z_hat step {step}")
        x = engine.decoder(z_hat, x)
        preds.append(x)
    got = np.stack(preds, 1).reshape(B, K, 2, N, C)
    close(engine, got, fixture_arrays[f"{r}/preds"], "preds")


def test_engines_report_where_they_run(engine):
    assert set(engine.providers) == set(GRAPHS)
    expected = "torch:cpu" if engine.backend == "torch" else "CPUExecutionProvider"
    assert set(engine.providers.values()) == {expected}
    assert engine.learned_query is None  # the fixture model samples noise queries


def test_strict_refuses_a_provider_that_is_not_there(model_dir):
    with pytest.raises(ProviderError, match="CoreMLExecutionProvider: not in this onnxruntime"):
        OrtEngine(
            model_dir,
            EngineOptions(providers=("CoreMLExecutionProvider",), strict_providers=True),
        )


def test_strict_never_falls_back_to_the_cpu(model_dir):
    """Here CUDA is either absent, listed but failing (no GPU), or really there."""
    try:
        engine = OrtEngine(model_dir, EngineOptions(providers=("cuda",), strict_providers=True))
    except ProviderError as err:
        assert "CUDAExecutionProvider" in str(err)
    else:
        assert set(engine.providers.values()) == {"CUDAExecutionProvider"}


def test_without_strict_an_unavailable_provider_falls_back_and_says_so(model_dir, caplog):
    caplog.set_level(logging.INFO, "deltaworld_ros")
    engine = OrtEngine(model_dir, EngineOptions(providers=("CoreMLExecutionProvider", "cpu")))
    assert set(engine.providers.values()) == {"CPUExecutionProvider"}
    assert engine.placement in caplog.text
    assert engine.placement.startswith(f"onnxruntime {ort.__version__} on CPUExecutionProvider")
    assert "; skipped CoreMLExecutionProvider: not in this onnxruntime build" in engine.placement


def test_a_gpu_that_is_not_there_is_refused_by_name(model_dir):
    """Here the CUDA provider is not in the build; on a machine with one GPU, GPU 1 is not there."""
    options = EngineOptions(device="cuda:1", providers=("cuda",), strict_providers=True)
    why = provider_problem("CUDAExecutionProvider", 1)
    if why is None:  # a machine with two GPUs
        assert set(OrtEngine(model_dir, options).providers.values()) == {"CUDAExecutionProvider"}
        return
    with pytest.raises(ProviderError, match=re.escape(f"CUDAExecutionProvider: {why}")):
        OrtEngine(model_dir, options)


def test_device_cpu_runs_on_the_cpu_alone_and_refuses_gpu_providers(model_dir):
    engine = OrtEngine(model_dir, EngineOptions(device="cpu"))
    assert set(engine.providers.values()) == {"CPUExecutionProvider"}
    assert engine.skipped == {}  # TensorRT and CUDA were not even tried
    with pytest.raises(UsageError, match=r"device cpu but providers \['CUDAExecutionProvider'\]"):
        OrtEngine(model_dir, EngineOptions(device="cpu", providers=("cuda", "cpu")))


QUIET_START = """
import logging, sys
from deltaworld_ros.runtime.engine import EngineOptions
from deltaworld_ros.runtime.ort_engine import OrtEngine, ProviderError
from deltaworld_ros.runtime.postprocess import softmax
from deltaworld_ros.runtime.providers import provider_problem
logging.basicConfig(level=logging.INFO, format="%(message)s")
engine = OrtEngine(sys.argv[1])  # the default: tensorrt, cuda, cpu
for gpu in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
    print("PROBLEM", gpu, provider_problem(gpu))
try:
    OrtEngine(sys.argv[1], EngineOptions(providers=("cuda",), strict_providers=True))
except ProviderError as err:
    print("STRICT", err)
"""


def test_the_default_providers_start_quietly_and_say_why_in_one_line(model_dir):
    """Without a GPU (here) TensorRT and CUDA are skipped with their reason in one line, and
    onnxruntime prints none of its provider errors; strict mode names the reason. With a GPU
    the first usable provider runs."""
    run = subprocess.run([sys.executable, "-c", QUIET_START, str(model_dir)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "onnxruntime::" not in run.stderr and "EP Error" not in run.stderr, run.stderr
    problems = dict(line.split(" ", 2)[1:] for line in run.stdout.splitlines()
                    if line.startswith("PROBLEM"))  # fmt: skip
    placement = [line for line in run.stderr.splitlines() if line.startswith("onnxruntime ")]
    assert len(placement) == 1, run.stderr
    usable = [p for p, why in problems.items() if why == "None"] + ["CPUExecutionProvider"]
    assert placement[0].startswith(f"onnxruntime {ort.__version__} on {usable[0]}")
    for provider, why in problems.items():
        assert (f"skipped {provider}: {why}" in placement[0]) == (why != "None")
    if problems["CUDAExecutionProvider"] != "None":
        assert (
            f"STRICT execution provider(s) requested with strict=True cannot run here: "
            f"CUDAExecutionProvider: {problems['CUDAExecutionProvider']}" in run.stdout
        )


def test_a_tampered_graph_is_refused_before_any_session(model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    path = copy / graph_file("decoder")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    created = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: created.append(a))
    with pytest.raises(ModelDirError, match="decoder.onnx does not match"):
        OrtEngine(copy, EngineOptions(providers=("cpu",)))
    assert not created
    (copy / graph_file("decoder")).unlink()
    with pytest.raises(ModelDirError, match="decoder.onnx is listed in manifest.json but missing"):
        open_engine(copy, EngineOptions(providers=("cpu",)))


def test_a_model_dir_without_graphs_says_how_to_export(tiny_model, tmp_path):
    save_weights(tiny_model, tmp_path)
    write_manifest(tmp_path, tiny_model.cfg, {})
    with pytest.raises(ModelDirError, match="deltaworld export --model-dir"):
        OrtEngine(tmp_path, EngineOptions(providers=("cpu",)))


def test_a_model_with_a_scorer_but_no_scorer_graph_says_how_to_export(model_dir, tmp_path):
    shutil.copytree(model_dir, tmp_path / "model")
    manifest = read_manifest(tmp_path / "model")
    (tmp_path / "model" / graph_file("scorer")).unlink()
    write_manifest(tmp_path / "model", manifest.config, manifest.provenance)
    with pytest.raises(ModelDirError, match="no onnx/scorer.onnx.*deltaworld export"):
        OrtEngine(tmp_path / "model", EngineOptions(providers=("cpu",)))


def test_the_deterministic_baseline_exposes_its_learned_query(model_dir, tiny_model, tmp_path):
    """The graphs do not depend on q_embed: reuse the exported ones with a use_bom=False model."""
    cfg = tiny()
    baseline = WorldModel(replace(cfg, predictor=replace(cfg.predictor, use_bom=False)))
    baseline.load_state_dict(tiny_model.state_dict(), strict=False)
    save_weights(baseline, tmp_path)
    shutil.copytree(model_dir / "onnx", tmp_path / "onnx")
    write_manifest(tmp_path, baseline.cfg, {})
    expected = baseline.world.q_embed.weight[0].detach().numpy()
    for backend in ("onnxruntime", "torch"):
        engine = open_engine(tmp_path, EngineOptions(backend=backend, device="cpu"))
        np.testing.assert_array_equal(engine.learned_query, expected)


def test_a_graph_off_its_torch_module_fails_loudly(model_dir, tiny_model):
    off = WorldModel(tiny_model.cfg).eval()
    off.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        off.seg_head.head.bias += 0.01
    with pytest.raises(ParityError, match=r"head .*max \|onnx - torch\| = .* exceeds the toler"):
        check_graph(off, "head", model_dir / graph_file("head"))
