"""evaluate-world on a tiny model, and the shipped default model's directory."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deltaworld_ros.evaluation import world as evaluate_world
from deltaworld_ros.model.config import HeadConfig, tiny
from deltaworld_ros.model.loading import save_weights
from deltaworld_ros.model.store import default_model_dir, load_model, read_manifest, write_manifest
from deltaworld_ros.model.world_model import WorldModel
from deltaworld_ros.synth import CLASS_NAMES, PALETTE
from deltaworld_ros.train import cli
from deltaworld_ros.train import stages as st


def synth_head() -> HeadConfig:
    return HeadConfig(CLASS_NAMES, tuple(map(tuple, PALETTE.tolist())))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random-weight tiny model laid out like a trained one (baseline included)."""
    directory = tmp_path_factory.mktemp("tiny_model")
    cfg = replace(tiny(), head=synth_head(), frame_interval=0.2)
    torch.manual_seed(0)
    model = WorldModel(cfg)
    baseline = cli._baseline(cfg)
    for module in (model.backbone, model.tokenizer, model.world, model.seg_head, baseline):
        st.init_weights(module)
    save_weights(model, directory)
    save_file(baseline.state_dict(), str(directory / cli.BASELINE_FILE))
    provenance = {
        "data": {
            "kind": "synth",
            "seed": 0,
            "num_clips": 10,
            "stride": 2,
            "vehicle_fraction": 0.5,
            "world": {"fps": 10.0},
        },
        "baseline": cli.BASELINE_FILE,
    }
    write_manifest(directory, cfg, provenance)
    return directory


def evaluate(tmp_path, model_dir, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    evaluate_world.add_arguments(parser)
    args = parser.parse_args(
        [
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path),
            "--sequences",
            "2",
            "--frames",
            "10",
            "--k",
            "3",
            "--threads",
            "1",
            *extra,
        ]
    )
    return evaluate_world.run(args)


def test_evaluate_world_writes_the_table_metrics_and_figure(tiny_model_dir, tmp_path):
    assert evaluate(tmp_path, tiny_model_dir) == 0
    table = (tmp_path / "table.md").read_text()
    for row in (
        "copy-last",
        "deterministic baseline",
        "DeltaWorld mean-of-3",
        "DeltaWorld best-of-3",
    ):
        assert f"| {row} |" in table
    assert "Mode coverage: among branched cases" in table
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ctx = tiny().context_length
    assert metrics["counts"]["cases"] == 2 * len(range(ctx - 1, 10 - 3, 2))  # every 2nd frame
    for method in evaluate_world.METHODS:
        for h in evaluate_world.HORIZONS:
            score = metrics["scores"][f"{method}@{h}"]
            assert 0 <= score["miou"] <= 1 and score["feature_loss"] >= 0
    # the oracle pick is never worse in features than the average hypothesis
    for h in evaluate_world.HORIZONS:
        s = metrics["scores"]
        assert s[f"best_of_k@{h}"]["feature_loss"] <= s[f"mean_of_k@{h}"]["feature_loss"] * 1.0001
    assert isinstance(metrics["acceptance"], bool)
    if metrics["counts"]["branched"]:
        assert (tmp_path / "figure.png").stat().st_size > 10_000


def test_evaluate_world_refuses_training_seeds(tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit, match="training"):
        evaluate(tmp_path, tiny_model_dir, "--seed", "3")


def test_agent_iou_counts_only_agent_pixels_of_the_right_class():
    car, ped, road = CLASS_NAMES.index("car"), CLASS_NAMES.index("pedestrian"), 0
    truth = np.array([[car, car, road, road]])
    assert evaluate_world.agent_iou(truth, truth) == 1.0
    assert evaluate_world.agent_iou(np.array([[car, ped, road, car]]), truth) == pytest.approx(
        1 / 3
    )
    assert evaluate_world.agent_iou(np.full_like(truth, road), np.full_like(truth, road)) == 1.0


def test_the_default_model_loads_like_a_published_one_and_its_manifest_checks_out():
    directory = default_model_dir()
    manifest = read_manifest(directory)  # verifies every file's sha256
    cfg = manifest.config
    assert cfg.head.class_names == CLASS_NAMES
    assert np.array_equal(np.array(cfg.head.palette, np.uint8), PALETTE)
    assert cfg.frame_interval == pytest.approx(0.2)
    prov = manifest.provenance
    assert prov["command"].startswith("deltaworld train")
    assert {"date", "seed", "data", "stages"} <= set(prov)
    # depth_head: once the default model is trained with it (cfg.head.with_depth)
    for name in (s for s in st.STAGES if s != st.DEPTH_STAGE or cfg.head.with_depth):
        stage = prov["stages"][name]
        assert stage["steps"] > 0 and np.isfinite(stage["final_loss"])
    assert manifest.has(cli.BASELINE_FILE)
    for module in ("backbone", "tokenizer", "world", "seg_head"):
        assert manifest.has(f"weights/{module}.safetensors")
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert size < 50e6, f"default model is {size / 1e6:.1f} MB"
    model = load_model(directory)
    baseline = evaluate_world.load_baseline(directory, model)
    assert baseline is not None and baseline.q_embed is not None
    with torch.no_grad():
        y = model.backbone(torch.zeros(1, 3, *cfg.image_size))
    assert y.shape == (1, cfg.num_patches, cfg.token_size)
