"""A model directory is validated as a whole at load: manifest schema and types, the config's
sizes and hash, every graph's inputs and outputs against the config, ONNX files that parse.
Each tampering below but one keeps the sha256 checks happy (the tampered file or config is
re-hashed) and must end, for the node and every command that opens a model, in one line
naming the file and the field.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from deltaworld_ros.cli import main as deltaworld
from deltaworld_ros.io.bags import ImageBagWriter
from deltaworld_ros.model.store import MANIFEST, ModelDirError, config_sha256, sha256
from deltaworld_ros.ros.node import main as forecast_node
from deltaworld_ros.runtime.engine import EngineOptions, open_engine
from deltaworld_ros.tools.bench_node import main as bench_node
from deltaworld_ros.tools.harness import write_params


def edit_manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def tamper(model: Path) -> None:
        body = json.loads((model / MANIFEST).read_text())
        body = change(body) or body
        (model / MANIFEST).write_text(json.dumps(body))

    return tamper


def edit_config(path: str, value: object, rehash: bool = True) -> Callable[[Path], None]:
    """Set config.<path>; with `rehash`, config_sha256 is updated to match, as a deliberate
    editor would."""
    *parents, key = path.split(".")

    def change(body: dict) -> None:
        node = body["config"]
        for parent in parents:
            node = node[parent]
        node[key] = value
        if rehash:
            body["config_sha256"] = config_sha256(body["config"])

    return edit_manifest(change)


def replace_graph(model: Path) -> None:
    """onnx/head.onnx is not protobuf, and the manifest is re-hashed to match."""
    (model / "onnx" / "head.onnx").write_bytes(b"this is not an onnx graph\n" * 40)
    edit_manifest(lambda body: body["files"].update({"onnx/head.onnx": sha256(
        model / "onnx" / "head.onnx")}))(model)  # fmt: skip


# name -> (tampering, what the one line must say); the tiny model is 64x64, patch 16.
TAMPERINGS = {
    "top level is a list": (
        edit_manifest(lambda body: [body]),
        "manifest.json: the top level must be an object with format, config, files, got list",
    ),
    "config field of the wrong type": (
        edit_config("backbone.hidden_size", "64"),
        "manifest.json: config.backbone.hidden_size must be an integer, got '64'",
    ),
    "config list of the wrong length": (
        edit_config("image_size", [64]),
        "manifest.json: config.image_size must be a list of 2 items, got [64]",
    ),
    "config edited after the model was written": (
        edit_config("frame_interval", 0.5, rehash=False),
        "manifest.json: config does not match its config_sha256",
    ),
    "config sizes that cannot build": (
        edit_config("context_length", 1),
        "manifest.json: config.context_length is 1, expected >= 2",
    ),
    "graph inputs disagree with the config": (
        edit_config("image_size", [128, 128]),
        "backbone.onnx: pixels has shape ['B', 3, 64, 64] but the config of manifest.json "
        "implies ['B', 3, 128, 128]",
    ),
    "onnx file that is not protobuf": (
        replace_graph,
        "head.onnx is not a graph onnxruntime can load (InvalidProtobuf",
    ),
}
MANIFEST_LEVEL = [name for name in TAMPERINGS if "graph" not in name and "onnx" not in name]


def tampered_copy(name: str, model_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the tiny model with tampering `name`, and the text its error must hold."""
    tamper, expected = TAMPERINGS[name]
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    tamper(copy)
    return copy, expected


@pytest.fixture(params=list(TAMPERINGS))
def tampered(request, model_dir, tmp_path) -> tuple[Path, str]:
    return tampered_copy(request.param, model_dir, tmp_path)


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bag") / "frames"
    with ImageBagWriter(path) as writer:
        for i in range(4):
            writer.write_image("/camera/image", (i + 1) * 10**8, np.full((64, 64, 3), i, np.uint8),
                               "rgb8")  # fmt: skip
    return path


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_the_engine_refuses_it(tampered):
    model, expected = tampered
    with pytest.raises(ModelDirError) as caught:
        open_engine(model, EngineOptions(device="cpu"))
    assert expected in str(caught.value)
    assert str(model) in str(caught.value)


def test_the_node_exits_1_with_one_line(tampered, tmp_path, capfd, monkeypatch, domain):
    model, expected = tampered
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    params = write_params(tmp_path / "p.yaml", {"model_dir": str(model), "providers": ["cpu"]})
    code = forecast_node(["forecast_node", "--ros-args", "--params-file", str(params)])
    line = one_line(capfd.readouterr().err)
    assert code == 1 and "cannot load the model" in line and expected in line


def test_bench_exits_2_with_one_line(tampered, capsys):
    model, expected = tampered
    assert deltaworld(["bench", "--model-dir", str(model), "--device", "cpu", "--frames", "2"]) == 2
    assert expected in one_line(capsys.readouterr().err)


def test_eval_exits_2_with_one_line(tampered, bag, tmp_path, capsys):
    model, expected = tampered
    args = ["eval", "--bag", str(bag), "--image-topic", "/camera/image", "--model-dir", str(model),
            "--out", str(tmp_path / "report"), "--no-progress"]  # fmt: skip
    assert deltaworld(args) == 2
    line = one_line(capsys.readouterr().err)
    assert expected in line


@pytest.fixture(params=MANIFEST_LEVEL)
def tampered_manifest(request, model_dir, tmp_path) -> tuple[Path, str]:
    """Tamperings that the commands which read weights, not graphs, meet too."""
    return tampered_copy(request.param, model_dir, tmp_path)


def test_export_exits_2_with_one_line(tampered_manifest, tmp_path, capsys):
    model, expected = tampered_manifest
    assert deltaworld(["export", "--model-dir", str(model), "--out", str(tmp_path / "out")]) == 2
    assert expected in one_line(capsys.readouterr().err)


def test_evaluate_world_exits_2_with_one_line(tampered_manifest, tmp_path, capsys):
    model, expected = tampered_manifest
    args = ["evaluate-world", "--model-dir", str(model), "--out", str(tmp_path / "out")]
    assert deltaworld(args) == 2
    assert expected in one_line(capsys.readouterr().err)


def test_bench_node_exits_2_with_one_line(tampered_manifest, tmp_path, capsys):
    model, expected = tampered_manifest
    assert bench_node(["--model-dir", str(model), "--out", str(tmp_path / "node.json")]) == 2
    assert expected in one_line(capsys.readouterr().err)


def test_demo_exits_2_with_one_line(tampered_manifest, tmp_path, capsys):
    """(A graph tampering reaches the demo as the node's own one-line exit.)"""
    model, expected = tampered_manifest
    assert deltaworld(["demo", "--model-dir", str(model), "--out", str(tmp_path / "demo")]) == 2
    assert expected in one_line(capsys.readouterr().err)
