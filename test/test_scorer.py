"""The learned confidence end to end: the tiny export gets a scorer from `deltaworld train
--init-model M --stages scorer` on synth clips, `deltaworld export` checks its graph's parity,
both backends rank the K by it, and forecast_node publishes rows sorted by it over DDS, saying
so in the layout and timing it in /diagnostics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sensor_msgs.msg import Image
from std_msgs.msg import String
from test_node import Camera, K, T, base_params, engine_values, forecast_node, stamp, stream

from deltaworld_ros.cli import main
from deltaworld_ros.model.config import tiny
from deltaworld_ros.model.loading import save_weights
from deltaworld_ros.model.store import load_model, read_manifest, write_manifest
from deltaworld_ros.model.world_model import WorldModel
from deltaworld_ros.ros.futures import decode_futures
from deltaworld_ros.ros.node import LAYOUT_QOS, OUTPUT_QOS
from deltaworld_ros.runtime.bench import synthetic_streams
from deltaworld_ros.runtime.engine import EngineOptions, open_engine
from deltaworld_ros.runtime.forecaster import Forecaster, ForecasterConfig, FrameInput
from deltaworld_ros.runtime.postprocess import kernel_density_confidence


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random-weight model directory (weights and manifest)."""
    directory = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = WorldModel(tiny())
    save_weights(model, directory)
    write_manifest(directory, model.cfg, {"source": "random weights"})
    return directory


@pytest.fixture(scope="module")
def scored_dir(model_dir, tmp_path_factory):
    """The tiny model with a scorer trained on a few synth clips, exported (the parity of
    every graph, the scorer's too, is test_export's)."""
    root = tmp_path_factory.mktemp("scored")
    out = root / "model"
    argv = ["train", "--init-model", str(model_dir), "--stages", "scorer", "--clips", "4",
            "--clip-length", "6", "--stride", "1", "--steps", "scorer=40",
            "--batch-size", "scorer=8",
            "--scorer-contexts", "24", "--threads", "1", "--no-progress",
            "--work-dir", str(root / "work"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert main(["export", "--model-dir", str(out), "--skip-check"]) == 0
    return out


def test_the_scorer_stage_adds_a_scorer_and_keeps_every_other_part(model_dir, scored_dir):
    manifest = read_manifest(scored_dir)
    assert manifest.config.scorer.enabled and not read_manifest(model_dir).config.scorer.enabled
    assert manifest.has("weights/scorer.safetensors") and manifest.has("onnx/scorer.onnx")
    stage = manifest.provenance["stages"]["scorer"]
    assert stage["steps"] == 40 and np.isfinite(stage["final_loss"])
    before, after = load_model(model_dir), load_model(scored_dir)
    for name in ("backbone", "tokenizer", "world", "seg_head", "depth_head"):  # kept
        old, new = getattr(before, name).state_dict(), getattr(after, name).state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old), name
    assert float(after.scorer.log_temperature) != 0.0  # fitted on the held-out clips


def forecasts(model_dir, backend: str) -> list:
    engine = open_engine(model_dir, EngineOptions(backend=backend, providers=("cpu",)))
    forecaster = Forecaster(engine, ForecasterConfig(num_hypotheses=6, horizon=3, seed=3))
    assert forecaster.confidence_source == "learned scorer"
    frames = synthetic_streams(1, engine.config.image_size, cycle=6)[0]
    step = engine.config.frame_interval
    out = [
        forecaster.process([FrameInput("cam", 1 + i * step, f)])[0] for i, f in enumerate(frames)
    ]
    return [f for f in out if f is not None]


def test_both_backends_rank_the_hypotheses_by_the_scorer(scored_dir):
    ort, torch_ = forecasts(scored_dir, "onnxruntime"), forecasts(scored_dir, "torch")
    assert len(ort) == len(torch_) >= 3
    differs_from_kernel = False
    for a, b in zip(ort, torch_, strict=True):
        # the rollouts differ by float rounding over three decoder passes; rows come sorted
        np.testing.assert_allclose(a.confidence, b.confidence, atol=2e-3)
        assert a.confidence.sum() == pytest.approx(1, abs=1e-5)
        assert np.all(np.diff(a.confidence) <= 0)  # rows sorted, most confident first
        assert "scorer" in a.timings
        kernel = kernel_density_confidence(a.delta_tokens.reshape(6, -1))
        differs_from_kernel |= not np.allclose(kernel, a.confidence, atol=1e-3)
    assert differs_from_kernel


def test_the_node_publishes_rows_sorted_by_the_learned_confidence(tmp_path, domain, scored_dir):
    with forecast_node(tmp_path, domain, base_params(scored_dir)) as (node, probe):
        probe.subscribe(Image, "/deltaworld/futures", OUTPUT_QOS)
        probe.subscribe(Image, "/deltaworld/futures/confidence", OUTPUT_QOS)
        probe.subscribe(String, "/deltaworld/futures/layout", LAYOUT_QOS)
        camera = Camera(probe, "/image", "camera_optical_frame")

        def reported() -> bool:
            return len(
                probe.received("/deltaworld/futures")
            ) >= 3 and "forecaster: scorer mean ms" in engine_values(probe)

        stream(node, [camera], reported, 60)
        layout = json.loads(probe.received("/deltaworld/futures/layout")[-1].data)
        confidences = {stamp(m): m for m in probe.received("/deltaworld/futures/confidence")}
        futures = probe.received("/deltaworld/futures")[:3]
        engine = engine_values(probe)
    assert layout["confidence"] == "learned scorer"
    assert engine["provider: scorer"] == "CPUExecutionProvider"
    assert float(engine["forecaster: scorer mean ms"]) >= 0
    for msg in futures:
        classes, conf = decode_futures(msg, confidences[stamp(msg)], layout)
        assert classes.shape[:2] == (K, T)
        assert conf.sum() == pytest.approx(1, abs=1e-5) and np.all(np.diff(conf) <= 0)


def test_eval_scores_the_kernel_density_beside_the_learned_confidence(scored_dir, tmp_path):
    bag = tmp_path / "bag"
    assert main(["synth", "--out", str(bag), "--frames", "10", "--size", "64x64"]) == 0
    out = tmp_path / "report"
    argv = ["eval", "--backend", "torch", "--no-progress", "--bag", str(bag), "--image-topic",
            "/camera/image_raw", "--model-dir", str(scored_dir), "--num-hypotheses", "3",
            "--horizon", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for part in (metrics["class_maps"], metrics["features"]):
        assert part["confidence_source"] == "learned scorer"
        kernel = part["kernel_density"]["rollout_confidence"]
        assert kernel["forecasts"] == part["rollout_confidence"]["forecasts"] > 0
        assert kernel["ece"] is not None
    assert "kernel density" in (out / "report.md").read_text()
