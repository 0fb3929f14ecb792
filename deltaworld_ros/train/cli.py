"""`deltaworld train`: train a model's stages, each resumable, and write a model directory.

    deltaworld train --out models/default                      # the default model, synth world
    deltaworld train --bag run.mcap --image-topic /cam/image --label-topic /cam/labels --out M
    deltaworld train --video drive.mp4 --init-model models/default --out M   # (c)-(e) only
    python -m torch.distributed.run --nproc_per_node 2 -m deltaworld_ros.train.cli --out M

Stages run in the order of pipeline.PIPELINE: backbone, seg_head, depth_head (where the data
has depth: the synth world), tokenizer, world, baseline, scorer. A stage whose checkpoint in
--work-dir is complete is loaded, not retrained, so re-running the same command after an
interruption continues where it stopped.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared, busy CPU spinning threads make
# every step several times slower. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..arguments import run_command, size
from ..errors import DeltaworldError, UsageError
from ..model.config import HeadConfig, ModelConfig, preset
from ..model.loading import load_module_file, save_weights
from ..model.probes import MIN_TOKEN_RELIANCE, TokenProbe
from ..model.store import load_model, read_manifest, write_manifest
from ..model.world_model import WorldModel
from ..synth import WorldConfig
from . import stages as st
from .data import (
    FrameStore,
    SynthData,
    bag_store,
    cached_synth_store,
    clip_groups,
    synth_head_classes,
    video_store,
)
from .loop import (
    Distributed,
    StageSettings,
    checkpoint_path,
    init_distributed,
    load_stage_weights,
    train_stage,
)
from .pipeline import (
    BASELINE_FILE,
    FROM_INIT_MODEL,
    PIPELINE,
    STAGES,
    Session,
    baseline_predictor,
    check_ready,
    finished,
    requested_stages,
)

# Tuned for the default model (`small` preset) on a 2-core CPU; see the README, "Training".
DEFAULTS: dict[str, StageSettings] = {
    "backbone": StageSettings(steps=1500, batch_size=32, lr=1e-3),
    "seg_head": StageSettings(steps=600, batch_size=64, lr=2e-3, weight_decay=0.0),
    "depth_head": StageSettings(steps=600, batch_size=64, lr=2e-3, weight_decay=0.0),
    "tokenizer": StageSettings(steps=2500, batch_size=16, lr=1e-3),
    "world": StageSettings(steps=1500, batch_size=32, lr=5e-4),
    "baseline": StageSettings(steps=1500, batch_size=32, lr=5e-4),
    "scorer": StageSettings(steps=1500, batch_size=64, lr=2e-3),
}


def _stage_values(text: str, kind: type) -> dict[str, Any]:
    """'backbone=100,world=50' or '50' (every stage) -> {stage: value}; UsageError otherwise."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, given, value = part.partition("=")
        stages = [name] if given else list(STAGES)
        if given and name not in STAGES:
            raise UsageError(f"unknown stage {name!r} in {text!r}; stages: {', '.join(STAGES)}")
        try:
            parsed = kind(value if given else part)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise UsageError(f"{part!r} in {text!r}: not {what}") from None
        out.update(dict.fromkeys(stages, parsed))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=Path("models/default"),
        help="model directory to write (weights/, manifest.json)",
    )
    out.add_argument(
        "--work-dir",
        type=Path,
        default=Path("results/train"),
        help="checkpoints, metrics logs and the frame cache (default results/train)",
    )
    out.add_argument(
        "--fresh",
        action="store_true",
        help="delete the work dir's checkpoints first instead of resuming",
    )

    data = parser.add_argument_group("data (default: the procedural street world)")
    data.add_argument("--bag", type=Path, help="rosbag2 to train on")
    data.add_argument("--image-topic", help="image topic of --bag")
    data.add_argument("--label-topic", help="label topic (mono8 class ids) of --bag, for (a)/(b)")
    data.add_argument(
        "--class-names",
        help="comma-separated class names of the bag's labels (default: the synth world's)",
    )
    data.add_argument("--video", type=Path, help="video file to train on (no labels)")
    data.add_argument(
        "--frame-interval",
        type=float,
        help="seconds between kept frames (synth default: stride / fps; "
        "bag/video default: the median stamp difference)",
    )
    data.add_argument(
        "--clips",
        type=int,
        default=SynthData.num_clips,
        help=f"synth training clips (default {SynthData.num_clips})",
    )
    data.add_argument(
        "--clip-length",
        type=int,
        default=SynthData.clip_length,
        help=f"kept frames per clip (default {SynthData.clip_length})",
    )
    data.add_argument(
        "--stride",
        type=int,
        default=SynthData.stride,
        help=f"synth world ticks per kept frame (default {SynthData.stride})",
    )
    data.add_argument(
        "--vehicle-fraction",
        type=float,
        default=SynthData.vehicle_fraction,
        help="share of synth clips from a moving camera",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="small", help="size preset (default small)")
    model.add_argument(
        "--image-size", type=size, help="HxW the networks run at (default: preset's)"
    )
    model.add_argument(
        "--init-model",
        type=Path,
        help="start from this model directory (stages not trained keep its weights)",
    )

    train = parser.add_argument_group("stages")
    train.add_argument(
        "--stages",
        help=f"comma-separated subset of {','.join(STAGES)} (default all; depth_head only "
        "where the data has depth)",
    )
    train.add_argument("--steps", default="", help="'N' or 'stage=N,...' (default: tuned table)")
    train.add_argument("--batch-size", default="", help="'B' or 'stage=B,...'")
    train.add_argument("--lr", default="", help="'X' or 'stage=X,...'")
    train.add_argument(
        "--candidates",
        type=int,
        default=128,
        help="best-of-many noise candidates per target (paper: 256; default 128)",
    )
    train.add_argument(
        "--horizon",
        type=int,
        default=3,
        help="rollout steps the predictor is trained for (default 3)",
    )
    train.add_argument(
        "--scorer-contexts",
        type=int,
        default=1024,
        help="context windows the scorer stage rolls out (K=12 hypotheses each; default 1024)",
    )
    train.add_argument("--seed", type=int, default=0, help="initialisation, sampling, world seeds")
    train.add_argument(
        "--min-token-reliance",
        type=float,
        default=MIN_TOKEN_RELIANCE,
        help="stop after the tokenizer stage when decoding with another frame's token is "
        f"not this much worse than with its own (default {MIN_TOKEN_RELIANCE}; 0: never)",
    )
    train.add_argument("--threads", type=int, default=2, help="torch threads per process")
    train.add_argument(
        "--stop-at", type=int, help="pause every stage after this step (resume by running again)"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")


def _settings(args: argparse.Namespace) -> dict[str, StageSettings]:
    steps = _stage_values(args.steps, int)
    batch = _stage_values(args.batch_size, int)
    lr = _stage_values(args.lr, float)
    out = {}
    for name, base in DEFAULTS.items():
        s = replace(
            base,
            steps=steps.get(name, base.steps),
            batch_size=batch.get(name, base.batch_size),
            lr=lr.get(name, base.lr),
        )
        out[name] = replace(
            s,
            warmup=min(s.warmup, max(1, s.steps // 10)),
            log_every=min(s.log_every, s.steps),
            checkpoint_every=min(s.checkpoint_every, s.steps),
        )
    return out


def _load_data(args: argparse.Namespace, cfg: ModelConfig, dist: Distributed) -> FrameStore:
    progress = not args.no_progress and dist.main
    if args.bag:
        if not args.image_topic:
            raise UsageError("--bag needs --image-topic")
        return bag_store(
            args.bag,
            args.image_topic,
            cfg.image_size,
            args.clip_length,
            args.frame_interval,
            args.label_topic,
        )
    if args.video:
        return video_store(args.video, cfg.image_size, args.clip_length, args.frame_interval)
    h, w = cfg.image_size
    spec = SynthData(
        num_clips=args.clips,
        clip_length=args.clip_length,
        stride=args.stride,
        vehicle_fraction=args.vehicle_fraction,
        seed=args.seed,
        world=WorldConfig(height=h, width=w),
    )
    if args.frame_interval and abs(args.frame_interval - spec.frame_interval) > 1e-9:
        raise UsageError(
            f"--frame-interval {args.frame_interval} s disagrees with the synth world's "
            f"{spec.stride} ticks / {spec.world.fps} fps = {spec.frame_interval} s; set --stride"
        )
    return cached_synth_store(spec, args.work_dir / "data", dist.rank, dist.world_size, progress)


def _model_config(args: argparse.Namespace) -> tuple[ModelConfig, Path | None]:
    if args.init_model:
        cfg = read_manifest(args.init_model).config
        if args.image_size and tuple(args.image_size) != cfg.image_size:
            raise UsageError(
                f"--image-size {args.image_size} differs from {args.init_model}'s {cfg.image_size}"
            )
        return cfg, args.init_model
    cfg = preset(args.preset, args.image_size)
    if args.bag and args.class_names:
        names = tuple(n.strip() for n in args.class_names.split(","))
        from ..model.config import generic_classes

        palette = generic_classes(len(names))[1]
    else:
        names, palette = synth_head_classes()
    return replace(cfg, head=HeadConfig(names, palette)), None


def _initial_model(
    cfg: ModelConfig, init_dir: Path | None, seed: int
) -> tuple[WorldModel, torch.nn.Module]:
    """The model and the baseline predictor: from --init-model, or freshly initialised."""
    torch.manual_seed(seed)
    model = WorldModel(cfg)
    baseline = baseline_predictor(cfg)
    for module in (model.backbone, model.world, baseline, model.seg_head):
        st.init_weights(module)
    st.init_weights(model.tokenizer, std=None)  # the token must cross its layers from step 0
    if init_dir is not None:
        model = load_model(init_dir)
        if (init_dir / BASELINE_FILE).is_file():
            load_module_file(baseline, init_dir / BASELINE_FILE)
    return model, baseline


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    dist = init_distributed()
    requested_stages(args.stages, has_depth=True)  # unknown names fail before any work
    settings = _settings(args)
    if args.fresh and dist.main:
        for name in STAGES:
            checkpoint_path(args.work_dir, name).unlink(missing_ok=True)
            (args.work_dir / name / "metrics.jsonl").unlink(missing_ok=True)
        for examples in (args.work_dir / "scorer").glob("examples-r*.pt"):
            examples.unlink()
    dist.barrier()

    cfg, init_dir = _model_config(args)
    model, baseline = _initial_model(cfg, init_dir, args.seed)
    t0 = time.perf_counter()
    store = _load_data(args, cfg, dist)
    model.cfg = replace(model.cfg, frame_interval=store.frame_interval)
    data_seconds = time.perf_counter() - t0
    requested = requested_stages(args.stages, store.depth is not None)
    if dist.main:
        print(
            f"data: {len(store.rgb)} frames in {len(store.clips)} clips of {store.clip_length} "
            f"at {store.frame_interval:.3f} s ({data_seconds:.0f} s) from {store.source['kind']}",
            flush=True,
        )
    session = Session(model, baseline, store, args, dist)
    trained = session.trained
    trained.update(FROM_INIT_MODEL if init_dir is not None else ())
    results: dict[str, dict[str, Any]] = {}
    for stage in PIPELINE:
        name, s = stage.name, settings[stage.name]
        done = finished(args.work_dir, name)
        if stage.optional is not None and stage.optional[0](model) and (name in requested or done):
            stage.optional[1](model)
        if name not in requested:
            if done:
                load_stage_weights(stage.module(session, s), args.work_dir, name)
                trained.add(name)
                session.forget(name)
            continue
        check_ready(stage, session, trained)
        module, sample = stage.module(session, s), stage.sampler(session, s)
        result = train_stage(
            name, module, sample, s, args.work_dir, dist, args.seed, args.stop_at,
            not args.no_progress,
        )  # fmt: skip
        trained.add(name)
        session.forget(name)
        results[name] = {
            **asdict(result),
            "batch_size": s.batch_size,
            "lr": s.lr,
            "processes": dist.world_size,
        }
        if dist.main:
            print(
                f"{name}: {result.steps} steps, loss {result.first_loss:.4f} -> "
                f"{result.final_loss:.4f}, {result.seconds:.0f} s",
                flush=True,
            )
        if name == "tokenizer":
            results[name]["token_probe"] = _check_tokenizer(
                model, store, session.features(), dist, args.min_token_reliance
            )
    if dist.main:
        _write_model_dir(args, model.cfg, model, baseline, store, results, data_seconds)
    dist.barrier()
    return 0


def _check_tokenizer(
    model: WorldModel, store: FrameStore, features: torch.Tensor, dist: Distributed, minimum: float
) -> dict[str, dict[str, float]]:
    """Token reliance and identity error per camera; stops training when the token is ignored."""
    mine = st.probe_store_tokens(model.tokenizer, store, features, clip_groups(store))
    groups: dict[str, list[TokenProbe]] = {}
    for probes in dist.gather(mine):
        for group, probe in probes.items():
            groups.setdefault(group, []).append(probe)
    pooled = {group: TokenProbe.pooled(probes) for group, probes in sorted(groups.items())}
    if dist.main:
        for group, p in pooled.items():
            print(
                f"tokenizer check, {group}: token reliance {p.reliance:.2f}, identity error / "
                f"copy-last {p.identity_ratio:.3f}, explained {p.explained:.2f} "
                f"({p.pairs} pairs)",
                flush=True,
            )
    ignored = {g: p.reliance for g, p in pooled.items() if p.reliance < minimum}
    if ignored:
        what = ", ".join(f"{g} {r:.2f}" for g, r in ignored.items())
        raise DeltaworldError(
            f"the tokenizer ignores its delta token (token reliance {what}; "
            f"needs >= {minimum}): a pair decodes as well with another frame's token as with "
            "its own, so forecasts cannot differ. Train the tokenizer longer (--steps "
            "tokenizer=N --fresh), check that consecutive kept frames really change "
            "(--frame-interval), or pass --min-token-reliance 0 to keep it anyway."
        )
    return {group: p.as_dict() for group, p in pooled.items()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _write_model_dir(args, cfg, model, baseline, store, results, data_seconds) -> None:
    out: Path = args.out
    stale = out / "onnx"
    if stale.is_dir():
        shutil.rmtree(stale)
        print(f"removed {stale}: its graphs no longer match the weights (run deltaworld export)")
    save_weights(model, out)
    save_file(
        {k: v.contiguous() for k, v in baseline.state_dict().items()}, str(out / BASELINE_FILE)
    )
    provenance = {
        "command": "deltaworld train "
        + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["train"] else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "seed": args.seed,
        "data": {
            **store.source,
            "frames": len(store.rgb),
            "clips": len(store.clips),
            "data_seconds": round(data_seconds, 1),
        },
        "stages": results,
        "best_of_many_candidates": args.candidates,
        "horizon": args.horizon,
        "baseline": BASELINE_FILE,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
    }
    previous = out / "manifest.json"
    if previous.is_file():  # keep the record of stages not retrained in this run
        old = json.loads(previous.read_text()).get("provenance", {}).get("stages", {})
        provenance["stages"] = {**old, **results}
    write_manifest(out, cfg, provenance)
    print(f"wrote {out}", flush=True)


if (
    __name__ == "__main__"
):  # torchrun entry: python -m torch.distributed.run ... -m deltaworld_ros.train.cli
    description = __doc__.splitlines()[0]
    sys.exit(run_command("deltaworld train", description, sys.modules[__name__], sys.argv[1:]))
