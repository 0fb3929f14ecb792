"""Engine pieces that need no exported graphs: the torch backend's precisions, provider names,
the factory's errors, and the TensorRT shape profiles (no GPU here to run them); the
onnxruntime path on the embedded model without torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close

from deltaworld_ros.errors import UsageError
from deltaworld_ros.model.config import tiny
from deltaworld_ros.model.store import ModelDirError
from deltaworld_ros.runtime.engine import GRAPHS, INPUTS, EngineOptions, largest_batch, open_engine
from deltaworld_ros.runtime.ort_engine import (
    _trt_profiles,
    provider_name,
    provider_options,
    requested_providers,
)
from deltaworld_ros.runtime.torch_engine import TorchEngine


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_torch_engine_stays_near_the_fixture(
    tiny_model, fixture_arrays, precision
):
    engine = TorchEngine(tiny_model, EngineOptions(backend="torch", precision=precision))
    frames = fixture_arrays["inputs/frames_uint8"][0].astype(np.float32)
    y = engine.backbone(frames)
    assert y.dtype == np.float32
    assert_close(y, fixture_arrays["out/backbone/y"][0], "y", rel=3e-2)
    w = "out/world/single"
    z_hat = engine.predictor(*(fixture_arrays[f"{w}/{k}"] for k in
                             ("queries", "kv", "pos_q", "pos_k")))  # fmt: skip
    assert_close(z_hat, fixture_arrays[f"{w}/z_hat"], "z_hat", rel=3e-2)


def test_provider_short_names():
    assert provider_name("cuda") == "CUDAExecutionProvider"
    assert provider_name("TensorRT") == "TensorrtExecutionProvider"
    assert provider_name("OpenVINOExecutionProvider") == "OpenVINOExecutionProvider"
    with pytest.raises(UsageError, match="unknown execution provider 'gpu'"):
        provider_name("gpu")


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (EngineOptions(backend="tensorflow"), "backend must be one of onnxruntime, torch"),
        (EngineOptions(backend="torch", precision="int8"), "precision 'int8' does not run on"),
        (EngineOptions(precision="bf16"), "precision 'bf16' does not run on onnxruntime"),
        (EngineOptions(device="gpu1"), "device must be cpu, cuda or cuda:<index>, got 'gpu1'"),
        (EngineOptions(threads=0), "threads must be >= 1"),
        (EngineOptions(strict_providers=True), "strict providers need the providers"),
    ],
)
def test_engine_options_are_refused_by_name(tmp_path, options, refusal):
    with pytest.raises(UsageError, match=re.escape(refusal)):
        open_engine(tmp_path, options)


def test_a_missing_model_is_refused_by_either_backend(tmp_path):
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(ModelDirError, match="no manifest.json"):
            open_engine(tmp_path, EngineOptions(backend=backend))


def test_tensorrt_profiles_cover_batch_and_context():
    profiles = _trt_profiles(tiny(), "predictor", max_batch=64)
    assert profiles["trt_profile_min_shapes"] == "queries:1x1x128,kv:1x1x64,pos_q:1x1,pos_k:1x1"
    assert profiles["trt_profile_max_shapes"] == (
        "queries:64x1x128,kv:64x12x64,pos_q:64x1,pos_k:64x12"
    )
    assert _trt_profiles(tiny(), "backbone", 8)["trt_profile_opt_shapes"] == "pixels:2x3x64x64"
    for graph in GRAPHS:  # every graph a model can have gets its profiles
        assert _trt_profiles(tiny(), graph, 8)["trt_profile_max_shapes"].startswith(
            INPUTS[graph][0] + ":8x"
        )


def test_the_gpu_of_the_device_reaches_the_gpu_providers(tiny_model, tmp_path, monkeypatch):
    """cuda:1 is GPU 1 for CUDA and TensorRT; TensorRT's profiles reach the largest batch of
    K=8, T=3 on two streams (the heads see K x T forecasts + the present frame per stream)."""
    monkeypatch.setenv("HOME", str(tmp_path))  # TensorRT's engine cache
    options = EngineOptions(device="cuda:1", max_batch=largest_batch(8, 3, 2))
    wanted = requested_providers(options)
    assert wanted == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    built = {p: provider_options(p, options, tiny_model.cfg, "head") for p in wanted}
    n, c = tiny_model.cfg.num_patches, tiny_model.cfg.token_size
    assert built["CUDAExecutionProvider"] == {"device_id": 1}
    assert built["TensorrtExecutionProvider"]["device_id"] == 1
    assert built["TensorrtExecutionProvider"]["trt_profile_max_shapes"] == f"y:50x{n}x{c}"
    assert built["CPUExecutionProvider"] == {}
    default = provider_options("CUDAExecutionProvider", EngineOptions(), tiny_model.cfg, "head")
    assert default == {"device_id": 0}


def test_the_onnxruntime_engine_runs_forecasts_without_importing_torch():
    """torch costs about 200 MiB of resident memory that the onnxruntime path never needs."""
    script = (
        "import sys, numpy as np\n"
        "from deltaworld_ros.model.store import default_model_dir\n"
        "from deltaworld_ros.runtime.engine import EngineOptions, open_engine\n"
        "from deltaworld_ros.runtime.forecaster import Forecaster, FrameInput\n"
        "engine = open_engine(default_model_dir(), EngineOptions(device='cpu'))\n"
        "forecaster = Forecaster(engine)\n"
        "frame = np.zeros((60, 80, 3), np.uint8)\n"
        "done = [forecaster.process([FrameInput('cam', i * 0.2, frame)])[0] for i in range(3)]\n"
        "forecaster.encode_ahead()\n"
        "print(done[-1] is not None, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_loading_the_pip_cuda_libraries_is_quiet_and_returns_what_it_missed():
    """onnxruntime's own loader prints each CUDA library it cannot find; here its text is
    returned instead (no NVIDIA wheels here; on a GPU machine with them nothing is missed)."""
    script = (
        "import json, sys\n"
        "from deltaworld_ros.runtime.providers import load_pip_cuda_libraries\n"
        "sys.stderr.write(json.dumps(load_pip_cuda_libraries()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "", out.stdout
    missed = json.loads(out.stderr.strip().splitlines()[-1])
    assert missed == "" or "libcu" in missed
