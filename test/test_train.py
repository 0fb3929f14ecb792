"""Training: every stage resumes exactly from its checkpoint and lowers its loss; the command
trains from the synth world, a rosbag2 and a video, in one process or two DDP processes."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from deltaworld_ros.errors import DeltaworldError, UsageError
from deltaworld_ros.export.exporter import export_model
from deltaworld_ros.model.config import HeadConfig, tiny
from deltaworld_ros.model.store import load_model, read_manifest
from deltaworld_ros.model.world_model import WorldModel
from deltaworld_ros.runtime.engine import EngineOptions
from deltaworld_ros.runtime.ort_engine import OrtEngine
from deltaworld_ros.synth import CLASS_NAMES, PALETTE, WorldConfig, render_sequence
from deltaworld_ros.train import cli
from deltaworld_ros.train import scorer as sc
from deltaworld_ros.train import stages as st
from deltaworld_ros.train.data import SynthData, synth_store
from deltaworld_ros.train.loop import StageSettings, read_checkpoint, train_stage
from deltaworld_ros.train.pipeline import STAGES, baseline_predictor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup():
    """A tiny model on 64x64 synth clips, with frozen features and tokens for stages (b)-(e)."""
    base = tiny()  # with the layer-scale init of the `small` preset, as trained from scratch
    cfg = replace(
        base,
        head=HeadConfig(CLASS_NAMES, tuple(map(tuple, PALETTE.tolist()))),
        tokenizer=replace(base.tokenizer, layer_scale_init=0.1),
        predictor=replace(base.predictor, layer_scale_init=0.1),
    )
    store = synth_store(
        SynthData(num_clips=6, clip_length=8, world=WorldConfig(64, 64)), progress=False
    )
    torch.manual_seed(0)
    model = WorldModel(cfg)
    for module in (model.backbone, model.tokenizer, model.world, model.seg_head):
        st.init_weights(module)
    features = st.compute_features(model.backbone, store.rgb)
    black = st.black_features(model)
    tokens = st.compute_tokens(model.tokenizer, features, black, store.prev)
    return cfg, store, model, features, black, tokens


def stage_parts(name: str, setup, batch: int = 4):
    """A fresh copy of the stage's module (same initial weights every call) and its sampler."""
    cfg, store, model, features, black, tokens = setup
    model = copy.deepcopy(model)
    weights = st.class_weights(store.labels, cfg.head.num_classes)
    if name == "backbone":
        torch.manual_seed(1)  # the temporary probe's init
        return st.BackboneStage(
            model.backbone, cfg.head.num_classes, weights
        ), st.labelled_frames_sampler(store, batch)
    if name == "seg_head":
        return (
            st.SegHeadStage(model.seg_head, cfg.grid, weights),
            st.feature_label_sampler(store, features, batch),
        )
    if name == "depth_head":
        torch.manual_seed(3)  # the new head's init
        st.add_depth_head(model)
        return (
            st.DepthHeadStage(model.depth_head, cfg.grid),
            st.feature_depth_sampler(store, features, batch),
        )
    if name == "tokenizer":
        return tokenizer_parts(model, cfg, store, features, black, weights, batch)
    if name == "scorer":
        torch.manual_seed(4)  # the new scorer's init
        sc.add_scorer(model)
        examples = sc.build_examples(
            model, store, features, tokens, 3, 12, torch.Generator().manual_seed(0)
        )
        sc.standardise(model.scorer, examples)
        return sc.ScorerStage(model.scorer), sc.examples_sampler(examples, batch)
    world = model.world if name == "world" else baseline_predictor(cfg)
    if name == "baseline":
        torch.manual_seed(2)
        st.init_weights(world)
    return st.WorldStage(world, 8), st.sequence_sampler(store, tokens, 5, batch)


def tokenizer_parts(model, cfg, store, features, black, weights, batch):
    """The tokenizer stage as the command builds it: the frozen seg head's term and rollouts."""
    stage = st.TokenizerStage(
        model.tokenizer,
        segment=st.frozen_segmenter(model.seg_head, cfg.grid),
        class_weights=weights,
    )
    return stage, st.pair_sampler(store, features, black, batch, rollout_clips=2)


def test_tokenizer_rollouts_are_consecutive_frames_and_the_head_stays_frozen(setup, tmp_path):
    cfg, store, model, features, black, _ = setup
    model = copy.deepcopy(model)
    weights = st.class_weights(store.labels, cfg.head.num_classes)
    stage, sample = tokenizer_parts(model, cfg, store, features, black, weights, batch=4)
    *_, rollouts = sample(torch.Generator().manual_seed(0))
    assert rollouts.shape == (2, 4, *features.shape[1:])
    for run in rollouts:  # S + 1 consecutive kept frames of one clip
        index = [int(torch.nonzero((features == f).all(-1).all(-1))[0]) for f in run]
        rows = [r for r in store.clips if set(index) <= set(r.tolist())]
        assert rows and np.diff([rows[0].tolist().index(i) for i in index]).tolist() == [1, 1, 1]
    head = copy.deepcopy(model.seg_head.state_dict())
    tok = copy.deepcopy(model.tokenizer.state_dict())
    settings = StageSettings(steps=2, batch_size=4, lr=1e-3, warmup=1)
    train_stage("tokenizer", stage, sample, settings, tmp_path, progress=False)
    assert all(torch.equal(v, model.seg_head.state_dict()[k]) for k, v in head.items())
    assert not all(torch.equal(v, model.tokenizer.state_dict()[k]) for k, v in tok.items())
    assert not model.seg_head.training  # BatchNorm statistics untouched


def losses(log: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, log.read_text().splitlines())]


@pytest.mark.parametrize("name", STAGES)
def test_stage_resumes_from_its_checkpoint_exactly(name, setup, tmp_path):
    settings = StageSettings(steps=6, batch_size=4, lr=1e-3, warmup=2, log_every=1)
    module, sample = stage_parts(name, setup)
    train_stage(name, module, sample, settings, tmp_path / "once", progress=False)

    module, sample = stage_parts(name, setup)
    paused = train_stage(
        name, module, sample, settings, tmp_path / "twice", stop_at=3, progress=False
    )
    ckpt = tmp_path / "twice" / name / "checkpoint.pt"
    assert paused.steps == 3 and read_checkpoint(ckpt)["step"] == 3
    module, sample = stage_parts(name, setup)  # a new process: fresh weights, fresh optimizer
    resumed = train_stage(name, module, sample, settings, tmp_path / "twice", progress=False)
    assert resumed.steps == 6
    state = read_checkpoint(ckpt)
    assert state["step"] == 6
    # AdamW counted all six steps: its state came back from the checkpoint, not from zero
    assert all(float(s["step"]) == 6 for s in state["optimizer"]["state"].values())
    once = losses(tmp_path / "once" / name / "metrics.jsonl")
    twice = losses(tmp_path / "twice" / name / "metrics.jsonl")
    assert [s for s, _ in twice] == [1, 2, 3, 4, 5, 6]
    # same weights, optimizer moments, schedule and random streams: the same losses
    np.testing.assert_allclose([v for _, v in twice], [v for _, v in once], rtol=1e-5)


def fixed_batch_loss(module, batch) -> float:
    """The stage loss on one fixed batch, with the same random draws (RoPE scale, candidates)."""
    torch.manual_seed(0)
    module.train()
    with torch.no_grad():
        return float(module(*batch)[0])


@pytest.mark.parametrize("name", STAGES)
def test_a_short_run_lowers_the_loss(name, setup, tmp_path):
    module, sample = stage_parts(name, setup, batch=8)
    batch = sample(torch.Generator().manual_seed(123))
    before = fixed_batch_loss(module, batch)
    settings = StageSettings(steps=30, batch_size=8, lr=3e-3, warmup=3, log_every=5)
    train_stage(name, module, sample, settings, tmp_path, progress=False)
    after = fixed_batch_loss(module, batch)
    # the tokenizer starts at the copy-the-previous-frame error and removes a few % in 30 steps
    assert after < (0.98 if name == "tokenizer" else 0.9) * before, (before, after)


def _train(tmp_path: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    quick = [
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--candidates",
        "4",
        "--clip-length",
        "6",
        "--no-progress",
        "--threads",
        "1",
        "--work-dir",
        str(tmp_path / "work"),
        "--min-token-reliance",
        "0",
    ]
    return cli.run(parser.parse_args([*quick, *argv]))


@pytest.fixture(scope="module")
def synth_frames():
    return render_sequence(WorldConfig(64, 64), seed=5, num_frames=24)


def test_train_from_a_rosbag_with_labels_then_from_a_video(synth_frames, tmp_path):
    from deltaworld_ros.io.bags import ImageBagWriter
    from deltaworld_ros.io.video import write_video

    seq = synth_frames
    bag = tmp_path / "bag"
    with ImageBagWriter(bag) as writer:
        for rgb, labels, stamp in zip(seq.rgb, seq.labels, seq.stamps_s):
            ns = int(round((100 + stamp) * 1e9))
            writer.write_image("/cam/image", ns, rgb, "rgb8")
            writer.write_image("/cam/labels", ns, labels, "mono8")
    out = tmp_path / "from_bag"
    assert (
        _train(
            tmp_path,
            "--bag",
            str(bag),
            "--image-topic",
            "/cam/image",
            "--label-topic",
            "/cam/labels",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "w1"),
        )
        == 0
    )
    manifest = read_manifest(out)
    assert manifest.config.frame_interval == pytest.approx(0.1, abs=0.01)  # median stamp gap
    assert manifest.provenance["data"]["kind"] == "rosbag2"
    assert manifest.config.head.class_names == CLASS_NAMES
    assert set(manifest.provenance["stages"]) == set(STAGES) - {"depth_head"}  # no depth
    assert not manifest.config.head.with_depth
    load_model(out)

    video = tmp_path / "clip.mp4"
    write_video(video, seq.rgb, fps=10)
    out2 = tmp_path / "from_video"
    assert (
        _train(
            tmp_path,
            "--video",
            str(video),
            "--init-model",
            str(out),
            "--frame-interval",
            "0.2",
            "--stages",
            "tokenizer,world,baseline",
            "--out",
            str(out2),
            "--work-dir",
            str(tmp_path / "w2"),
        )
        == 0
    )
    manifest2 = read_manifest(out2)
    assert manifest2.config.frame_interval == pytest.approx(0.2)
    assert manifest2.provenance["data"]["kind"] == "video"
    assert set(manifest2.provenance["stages"]) == {"tokenizer", "world", "baseline"}
    before, after = load_model(out), load_model(out2)
    assert torch.equal(before.backbone.norm.weight, after.backbone.norm.weight)  # kept
    assert not torch.equal(before.tokenizer.norm.weight, after.tokenizer.norm.weight)  # trained


def test_a_depth_head_is_trained_onto_a_model_and_exported(tmp_path):
    """`--init-model M --stages depth_head`: the frozen backbone's features learn the world's
    depth; the model keeps its other weights, gains with_depth, and exports a depth graph."""
    first, second = tmp_path / "m1", tmp_path / "m2"
    assert _train(tmp_path, "--clips", "4", "--stages", "backbone,seg_head", "--out",
                  str(first)) == 0  # fmt: skip
    assert not read_manifest(first).config.head.with_depth
    assert _train(tmp_path, "--clips", "4", "--init-model", str(first), "--stages", "depth_head",
                  "--steps", "depth_head=10", "--out", str(second)) == 0  # fmt: skip
    manifest = read_manifest(second)
    assert manifest.config.head.with_depth and set(manifest.provenance["stages"]) >= {"depth_head"}
    before, after = load_model(first), load_model(second)
    assert torch.equal(before.seg_head.head.weight, after.seg_head.head.weight)
    assert after.depth_head is not None
    export_model(after, second, manifest.provenance, check=False)
    engine = OrtEngine(second, EngineOptions(device="cpu"))
    depth = engine.depth(np.zeros((1, after.cfg.num_patches, after.cfg.token_size), np.float32))
    assert depth.shape == (1, 1, *after.cfg.grid) and "depth" in engine.providers


def test_stages_needing_labels_or_a_backbone_say_so(synth_frames, tmp_path):
    from deltaworld_ros.io.video import write_video

    video = tmp_path / "clip.mp4"
    write_video(video, synth_frames.rgb, fps=10)
    with pytest.raises(UsageError, match="needs labels"):
        _train(tmp_path, "--video", str(video), "--out", str(tmp_path / "m"))
    with pytest.raises(UsageError, match="needs depth"):
        _train(tmp_path, "--video", str(video), "--stages", "depth_head", "--out", str(tmp_path))
    with pytest.raises(UsageError, match="needs a trained backbone"):
        _train(
            tmp_path, "--video", str(video), "--stages", "tokenizer", "--out", str(tmp_path / "m")
        )


def test_ddp_two_gloo_processes_train_to_completion(tmp_path):
    out, work = tmp_path / "model", tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "deltaworld_ros.train.cli",
        "--preset",
        "tiny",
        "--clips",
        "8",
        "--clip-length",
        "6",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--candidates",
        "4",
        "--threads",
        "1",
        "--no-progress",
        "--min-token-reliance",
        "0",
        "--out",
        str(out),
        "--work-dir",
        str(work),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = read_manifest(out)
    assert all(
        s["processes"] == 2 and s["steps"] == 3 for s in manifest.provenance["stages"].values()
    )
    assert manifest.provenance["data"]["world_size"] == 2
    # each process rendered its own half of the clips
    assert len(list((work / "data").glob("synth-*-r*of2.npz"))) == 2
    load_model(out)


def test_the_tokenizer_check_stops_a_run_whose_token_is_ignored(tmp_path):
    """A 3-step tokenizer has not learnt to use its token: the check names the camera groups'
    reliance and the fix, and no model directory is written."""
    out = tmp_path / "m"
    with pytest.raises(DeltaworldError, match=r"ignores its delta token \(token reliance static"):
        _train(tmp_path, "--clips", "4", "--out", str(out), "--min-token-reliance", "5")
    assert not (out / "manifest.json").exists()
