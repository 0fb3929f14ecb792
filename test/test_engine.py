"""Engine pieces that need no exported graphs: the torch backend's precisions, provider names,
the factory's errors, and the TensorRT shape profiles (no GPU here to run them); the
onnxruntime path on the embedded model without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_close

from deltaworld_ros.model.config import tiny
from deltaworld_ros.model.store import ModelDirError
from deltaworld_ros.runtime.engine import GRAPHS, INPUTS, open_engine
from deltaworld_ros.runtime.ort_engine import _trt_profiles, provider_name
from deltaworld_ros.runtime.torch_engine import TorchEngine


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_torch_engine_stays_near_the_fixture(tiny_model, fixture_arrays, dtype):
    engine = TorchEngine(tiny_model, dtype=dtype)
    frames = fixture_arrays["inputs/frames_uint8"][0].astype(np.float32)
    y = engine.backbone(frames)
    assert y.dtype == np.float32
    assert_close(y, fixture_arrays["out/backbone/y"][0], "y", rel=3e-2)
    w = "out/world/single"
    z_hat = engine.predict(*(fixture_arrays[f"{w}/{k}"] for k in
                             ("queries", "kv", "pos_q", "pos_k")))  # fmt: skip
    assert_close(z_hat, fixture_arrays[f"{w}/z_hat"], "z_hat", rel=3e-2)


def test_provider_short_names():
    assert provider_name("cuda") == "CUDAExecutionProvider"
    assert provider_name("TensorRT") == "TensorrtExecutionProvider"
    assert provider_name("OpenVINOExecutionProvider") == "OpenVINOExecutionProvider"
    with pytest.raises(ValueError, match="unknown execution provider 'gpu'"):
        provider_name("gpu")


def test_factory_errors(tmp_path):
    with pytest.raises(ValueError, match="backend must be"):
        open_engine(tmp_path, backend="tensorflow")
    with pytest.raises(ValueError, match="torch precision must be one of"):
        open_engine(tmp_path, backend="torch", precision="int8")
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(ModelDirError, match="no manifest.json"):
            open_engine(tmp_path, backend=backend)


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


def test_the_onnxruntime_engine_runs_forecasts_without_importing_torch():
    """torch costs about 200 MiB of resident memory that the onnxruntime path never needs."""
    script = (
        "import sys, numpy as np\n"
        "from deltaworld_ros.model.store import default_model_dir\n"
        "from deltaworld_ros.runtime.engine import open_engine\n"
        "from deltaworld_ros.runtime.forecaster import Forecaster, FrameInput\n"
        "engine = open_engine(default_model_dir(), providers=['cpu'])\n"
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
