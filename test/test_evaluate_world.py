"""evaluate-world on a tiny model, and the shipped default model's directory."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_eval import ignore_the_token

from deltaworld_ros.errors import UsageError
from deltaworld_ros.evaluation import world as evaluate_world
from deltaworld_ros.evaluation import world_results
from deltaworld_ros.model.config import HeadConfig, tiny
from deltaworld_ros.model.loading import save_weights
from deltaworld_ros.model.store import default_model_dir, load_model, read_manifest, write_manifest
from deltaworld_ros.model.world_model import WorldModel
from deltaworld_ros.synth import CLASS_NAMES, PALETTE
from deltaworld_ros.train import stages as st
from deltaworld_ros.train.data import SynthData
from deltaworld_ros.train.pipeline import BASELINE_FILE, STAGES, baseline_predictor
from deltaworld_ros.train.scorer import add_scorer


def synth_head() -> HeadConfig:
    return HeadConfig(CLASS_NAMES, tuple(map(tuple, PALETTE.tolist())))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random-weight tiny model laid out like a trained one (baseline and scorer included)."""
    directory = tmp_path_factory.mktemp("tiny_model")
    cfg = replace(tiny(), head=synth_head(), frame_interval=0.2)
    torch.manual_seed(0)
    model = WorldModel(cfg)
    baseline = baseline_predictor(cfg)
    for module in (model.backbone, model.tokenizer, model.world, model.seg_head, baseline):
        st.init_weights(module)
    cfg = add_scorer(model)
    save_weights(model, directory)
    save_file(baseline.state_dict(), str(directory / BASELINE_FILE))
    provenance = {
        "data": {
            "kind": "synth",
            "seed": 0,
            "num_clips": 10,
            "stride": 2,
            "vehicle_fraction": 0.5,
            "world": {"fps": 10.0},
        },
        "baseline": BASELINE_FILE,
    }
    write_manifest(directory, cfg, provenance)
    return directory


def evaluate(tmp_path, model_dir, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    evaluate_world.add_arguments(parser)
    args = parser.parse_args(
        [
            "--model-dir",
            str(model_dir),
            "--out",
            str(tmp_path),
            "--sequences",
            "2",
            "--frames",
            "10",
            "--num-hypotheses",
            "3",
            "--threads",
            "1",
            *extra,
        ]
    )
    return evaluate_world.run(args)


def test_evaluate_world_writes_the_table_and_metrics(tiny_model_dir, tmp_path):
    assert evaluate(tmp_path, tiny_model_dir, "--seed-sets", "2") == 0
    table = (tmp_path / "table.md").read_text()
    for label in world_results.METHOD_LABELS.values():
        assert f"| {label} |" in table
    assert "| token reliance, static camera | >= 1.3 |" in table
    assert "branched: a case whose future branched at patch level" in table
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ctx = tiny().context_length
    cases = len(range(ctx - 1, 10 - 3, 2))  # a case every 2nd frame
    assert [s["first_seed"] for s in metrics["seed_sets"]] == [1_000_000_000, 1_000_000_002]
    for seed_set in metrics["seed_sets"]:
        cameras = {c["camera"]: c for c in seed_set["cameras"]}
        assert set(cameras) == {"static", "vehicle", "all"}
        assert cameras["all"]["cases"] == 2 * cases  # one world per camera
        assert cameras["static"]["tokens"]["pairs"] == 9 and cameras["all"]["tokens"] is None
        for camera in cameras.values():
            for h in camera["horizons"]:
                for method in evaluate_world.METHODS:
                    assert 0 <= h[method]["miou"] <= 1 and h[method]["feature_loss"] >= 0
                # the oracle pick is never worse in features than the average hypothesis
                assert h["best_of_k"]["feature_loss"] <= h["single"]["feature_loss"] * 1.0001
    rows = {row["measure"]: row for row in metrics["targets"]}
    assert len(rows["token reliance, vehicle camera"]["values"]) == 2
    assert len(rows["Spearman(confidence, error) (learned scorer), all cases"]["values"]) == 2
    assert metrics["all_targets_met"] is False  # random weights: the oracle is far below 70
    assert rows["seg head on the true features, mIoU"]["passed"] is False
    branched = sum(c["branched_cases"] for s in metrics["seed_sets"] for c in s["cameras"])
    assert (tmp_path / "figure.png").exists() == (branched > 0)  # drawn when a case branched


def test_evaluate_world_draws_the_branched_case_its_hypotheses_disagree_most_on(
    tiny_model_dir, tmp_path
):
    """Longer worlds: agents reach their branching points, and the figure shows one."""
    args = ("--seed-sets", "1", "--sequences", "4", "--frames", "30")
    assert evaluate(tmp_path, tiny_model_dir, *args) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    (seed_set,) = metrics["seed_sets"]
    assert {c["camera"]: c for c in seed_set["cameras"]}["all"]["branched_cases"] > 0
    with Image.open(tmp_path / "figure.png") as figure:
        assert figure.format == "PNG" and min(figure.size) > 100


def test_evaluate_world_puts_the_learned_confidence_beside_the_kernel_density(
    tiny_model_dir, tmp_path
):
    """Both sources on the same cases: what the most confident hypothesis is worth against a
    random and the best one, Spearman, calibration and the reliability diagram."""
    assert evaluate(tmp_path, tiny_model_dir, "--num-hypotheses", "5") == 0
    table = (tmp_path / "table.md").read_text()
    assert "### Confidence, both cameras" in table
    assert "| measure | kernel density, all (all) | learned scorer, all (all) |" in table
    assert (tmp_path / "reliability.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    everything = {c["camera"]: c for c in metrics["seed_sets"][0]["cameras"]}["all"]
    assert {"kernel density, all", "learned scorer, all"} <= set(everything["confidence"])
    for scores in everything["confidence"].values():
        assert 0 <= scores["top_is_best"] <= 1 and 1 / 5 <= scores["chance"] <= 1  # ties
        assert scores["best_error"] <= scores["most_confident_error"] + 1e-9
        assert scores["best_error"] <= scores["random_error"] + 1e-9
        assert -1 <= scores["spearman"] <= 1 and 0 <= scores["ece"] <= 1
        assert sum(b["count"] for b in scores["reliability"]) == 5 * scores["cases"]


def tokenless_copy(model_dir, out_dir):
    """The model with its DeltaTok decoder made the identity (test_eval.ignore_the_token)."""
    model = ignore_the_token(load_model(model_dir))
    manifest = read_manifest(model_dir)
    save_weights(model, out_dir)
    for name in manifest.files:
        if not (out_dir / name).exists():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / name).write_bytes((model_dir / name).read_bytes())
    write_manifest(out_dir, manifest.config, manifest.provenance)
    return out_dir


def test_a_tokenizer_that_ignores_its_token_scores_as_copy_last(tiny_model_dir, tmp_path):
    """Known values: reliance 1 and identity ratio 0 on both cameras; all K hypotheses are the
    present features, so diversity is 0 and every forecast scores exactly as copy-last."""
    model_dir = tokenless_copy(tiny_model_dir, tmp_path / "model")
    assert evaluate(tmp_path / "out", model_dir, "--seed-sets", "1", "--frames", "12") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    (seed_set,) = metrics["seed_sets"]
    for camera in seed_set["cameras"]:
        if camera["camera"] != "all":
            tokens = camera["tokens"]
            assert tokens["token_reliance"] == pytest.approx(1.0, abs=1e-9)
            assert tokens["identity_ratio"] == pytest.approx(0.0, abs=1e-9)
            assert tokens["own_error"] == pytest.approx(tokens["copy_error"], rel=1e-6)
        assert camera["diversity_all_cases"] == 0.0
        for h in camera["horizons"]:
            copy = h["copy_last"]
            for method in ("baseline", "feature_mean", "single", "best_of_k"):
                assert h[method]["miou"] == copy["miou"], method
                assert h[method]["feature_loss"] == pytest.approx(copy["feature_loss"], rel=1e-5)
    rows = {row["measure"]: row for row in metrics["targets"]}
    assert rows["token reliance, static camera"]["values"] == [pytest.approx(1.0, abs=1e-9)]
    assert rows["token reliance, static camera"]["passed"] is False
    assert rows["mean of K - copy-last, mIoU, vehicle camera"]["values"] == [0.0]
    assert rows["identity error / copy-last error, vehicle camera"]["passed"] is True


def score(model, sampled, truth_features, branched):
    """score_cases on made-up forecasts whose labels are the head's map of the true features."""
    size = (16, 16)
    truth = evaluate_world.class_maps(model, truth_features, size)
    present = truth_features[:, 0]
    errors = (sampled - truth_features[:, None]).square().mean((-2, -1)).mean(-1)  # (W, K)
    oracle = np.eye(sampled.shape[1])[errors.argmin(1).numpy()]  # all on the best hypothesis
    forecasts = evaluate_world.Forecasts(present, present[:, None].repeat(1, 3, 1, 1), sampled,
                                         truth_features, {"oracle pick": oracle})  # fmt: skip
    tally = evaluate_world.Tally(model.cfg.head.num_classes)
    evaluate_world.score_cases(model, tally, truth, forecasts, branched)
    return evaluate_world.camera_result("all", tally, None)


@torch.no_grad()
def test_scores_of_forecasts_with_known_values(tiny_model_dir):
    model = load_model(tiny_model_dir)
    n, c = model.cfg.num_patches, model.cfg.token_size
    torch.manual_seed(0)
    truth = torch.randn(4, 3, n, c)  # 4 cases, 3 steps
    branched = np.array([True, True, False, True])
    # K identical hypotheses: no diversity, and their feature average is each of them
    same = torch.randn(4, 1, 3, n, c).repeat(1, 5, 1, 1, 1)
    result = score(model, same, truth, branched)
    picked = result.confidence["oracle pick, all"]
    assert picked.top_is_best == 1 and picked.most_confident_error == picked.best_error
    assert result.diversity == 0.0 and result.diversity_all_cases == 0.0
    for h in result.horizons:
        assert h.feature_mean.miou == h.single.miou == h.best_of_k.miou
        assert h.feature_mean.feature_loss == pytest.approx(h.single.feature_loss, rel=1e-6)
    # the truth among the K: best-of-K is the oracle, coverage relative to the oracle is 1
    mixed = torch.randn(4, 5, 3, n, c)
    mixed[:, 2] = truth
    result = score(model, mixed, truth, branched)
    assert result.branched_cases == 3 and result.cases == 4
    assert result.coverage.oracle == 1.0  # labels are the oracle's own maps
    assert result.coverage.best_of_k.relative == 1.0
    for h in result.horizons:
        assert h.best_of_k.miou == h.oracle.miou == 1.0 and h.best_of_k.feature_loss == 0.0
    assert result.branched.best_of_k.miou == 1.0
    assert result.diversity > 0


def test_a_target_passes_only_when_every_seed_set_meets_it():
    sets = [object(), object()]
    values = iter([1.4, 1.2, 1.4, 1.5, 0.05, None])
    target = world_results.Target("reliance", "", 1.3, True, lambda _: next(values))
    low, high = world_results.target_rows([target, target], sets)
    assert (low.passed, low.spread, low.mean) == (False, pytest.approx(0.2), pytest.approx(1.3))
    assert high.passed and high.target == ">= 1.3"
    at_most = world_results.Target("identity", "", 0.1, False, lambda _: next(values))
    (row,) = world_results.target_rows([at_most], sets)
    assert row.passed is False and row.values == [0.05, None]  # a set without a value fails


def test_evaluate_world_refuses_training_seeds(tiny_model_dir, tmp_path):
    with pytest.raises(UsageError, match="training"):
        evaluate(tmp_path, tiny_model_dir, "--seed", "3")


def test_agent_iou_counts_only_agent_pixels_of_the_right_class():
    car, ped, road = CLASS_NAMES.index("car"), CLASS_NAMES.index("person"), 0
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
    assert cfg.frame_interval == pytest.approx(SynthData().frame_interval)
    prov = manifest.provenance
    assert prov["command"].startswith("deltaworld train")
    assert {"date", "seed", "data", "stages"} <= set(prov)
    # depth_head and scorer: once the default model has them
    added = {"depth_head": cfg.head.with_depth, "scorer": cfg.scorer.enabled}
    for name in (s for s in STAGES if added.get(s, True)):
        stage = prov["stages"][name]
        assert stage["steps"] > 0 and np.isfinite(stage["final_loss"])
    assert manifest.has(BASELINE_FILE)
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
