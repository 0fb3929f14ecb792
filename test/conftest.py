"""Shared test helpers: the parity fixtures of ../shared and the tiny model built from them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(
    os.environ.get(
        "DELTAWORLD_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    )
)

ROOT = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).parent / "colcon"

# Deterministic, comparable numbers: the fixtures were made with one thread.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fixture_arrays() -> dict[str, np.ndarray]:
    path = FIXTURES / "deltatok_parity_tiny.npz"
    if not path.is_file():
        pytest.fail(f"parity fixtures not found at {path}; set DELTAWORLD_FIXTURES")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """`deltaworld export --preset tiny --fp16`: fp32 and fp16 ONNX graphs + manifest of a
    random-weight model (the node and launch tests' model)."""
    out = tmp_path_factory.mktemp("model") / "tiny"
    subprocess.run(
        [sys.executable, "-m", "deltaworld_ros.cli", "export", "--preset", "tiny", "--fp16",
         "--skip-check", "--out", str(out)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


@pytest.fixture
def domain(request) -> int:
    """A ROS_DOMAIN_ID of this test's own (see harness.domain_id)."""
    from deltaworld_ros.tools.harness import domain_id

    return domain_id(request.node.name)


def module_state(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    return {
        k[len(prefix) + 1 :]: torch.from_numpy(v)
        for k, v in arrays.items()
        if k.startswith(prefix + "/")
    }


@pytest.fixture(scope="session")
def tiny_model(fixture_arrays):
    """The fixture's random-weight tiny model, loaded through the package's own loader."""
    from deltaworld_ros.model.config import tiny
    from deltaworld_ros.model.loading import fit_state_dict
    from deltaworld_ros.model.world_model import WorldModel

    model = WorldModel(tiny()).eval()
    for module, prefix in (
        (model.backbone, "backbone"),
        (model.tokenizer, "tokenizer"),
        (model.world, "predictor"),
        (model.seg_head, "seghead"),
        (model.depth_head, "depthhead"),
    ):
        state = module_state(fixture_arrays, prefix)
        if prefix == "predictor":
            state = {f"predictor.{k}": v for k, v in state.items()}
        fit_state_dict(module, state, prefix)
    return model


def assert_close(got, ref, name: str = "", rel: float = 1e-4) -> None:
    """The fixture README's tolerance: max|got - ref| <= rel * max(1, max|ref|)."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    err = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    bound = rel * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
    assert err <= bound, f"{name}: max abs error {err:.3g} > {bound:.3g}"


@pytest.fixture(scope="session")
def colcon_workspace(tmp_path_factory) -> Path:
    """A workspace with this package in src/, built by `colcon build` (install/ beside it)."""
    workspace = tmp_path_factory.mktemp("colcon")
    shutil.copytree(
        ROOT,
        workspace / "src" / "deltaworld_ros",
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "install", "log", "results", "*.egg-info", "__pycache__"
        ),
    )
    result = subprocess.run(
        [str(COLCON), "build", "--packages-select", "deltaworld_ros"],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return workspace
