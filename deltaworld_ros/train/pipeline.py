"""The stages of `deltaworld train` as one table: in order, what each trains, on which data,
after which stages, and the module and batches it trains.

| stage      | needs data | after              | trains on                                    |
|------------|------------|--------------------|----------------------------------------------|
| backbone   | labels     |                    | frames + labels                              |
| seg_head   | labels     | backbone           | frozen features + labels                     |
| depth_head | depth      | backbone           | frozen features + depth (added to a model)   |
| tokenizer  |            | backbone           | frozen feature pairs                         |
| world      |            | tokenizer          | frozen token clips                           |
| baseline   |            | tokenizer          | frozen token clips                           |
| scorer     |            | world              | rollouts of the frozen predictor and decoder |

"after": the part that stage trains must be trained in this run or come from --init-model.
The frozen caches (features, tokens) are computed once, when a stage first needs them, and
forgotten when the part they come from is trained again.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..model.config import ModelConfig
from ..model.deltaworld import DeltaWorld
from ..model.world_model import WorldModel
from . import scorer as sc
from . import stages as st
from .data import FrameStore
from .loop import Distributed, Sampler, StageSettings, checkpoint_path, read_checkpoint

BASELINE_FILE = "weights/world_baseline.safetensors"
FROM_INIT_MODEL = ("backbone", "seg_head", "tokenizer", "world")  # parts of a model directory


def baseline_predictor(cfg: ModelConfig) -> DeltaWorld:
    """The deterministic baseline: the predictor with one learned query."""
    return DeltaWorld(
        replace(cfg.predictor, use_bom=False), cfg.token_size, cfg.backbone.initializer_range
    )


@dataclass
class Session:
    """What the stages of one run share: the model, the data, the frozen caches."""

    model: WorldModel
    baseline: DeltaWorld
    store: FrameStore
    args: argparse.Namespace
    dist: Distributed
    trained: set[str] = field(default_factory=set)  # stages whose part holds trained weights
    _features: torch.Tensor | None = None
    _black: torch.Tensor | None = None
    _tokens: st.TokenCache | None = None
    _weights: torch.Tensor | None = None

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    def features(self) -> torch.Tensor:
        """Frozen backbone features of every frame (F, N, C)."""
        if self._features is None:
            self._features = st.compute_features(self.model.backbone, self.store.rgb)
            self._black = st.black_features(self.model)
        return self._features

    def black(self) -> torch.Tensor:
        self.features()
        return self._black

    def tokens(self) -> st.TokenCache:
        """Anchor and delta token of every frame."""
        if self._tokens is None:
            self._tokens = st.compute_tokens(
                self.model.tokenizer, self.features(), self.black(), self.store.prev
            )
        return self._tokens

    def class_weights(self) -> torch.Tensor:
        """Inverse-frequency class weights of the labels (ones without labels)."""
        if self._weights is None:
            labels, n = self.store.labels, self.cfg.head.num_classes
            self._weights = torch.ones(n) if labels is None else st.class_weights(labels, n)
        return self._weights

    def forget(self, stage: str) -> None:
        """Drop the caches computed from the part `stage` has just changed."""
        if stage == "backbone":
            self._features = self._black = self._tokens = None
        elif stage == "tokenizer":
            self._tokens = None


@dataclass(frozen=True)
class Stage:
    name: str
    module: Callable[[Session, StageSettings], nn.Module]  # to train, or to load a checkpoint
    sampler: Callable[[Session, StageSettings], Sampler]
    needs: tuple[str, ...] = ()  # data the FrameStore must hold: "labels", "depth"
    after: tuple[str, ...] = ()  # stages whose part it builds on
    # a part a model may lack: (is it missing?, add it to the model and return the new config)
    optional: tuple[Callable[[WorldModel], bool], Callable[[WorldModel], ModelConfig]] | None = None


def _tokenizer_stage(session: Session, s: StageSettings) -> nn.Module:
    """A tokenizer from --init-model is fine-tuned without the curriculum of a fresh one; a
    trained seg head teaches it to decode what the head reads as the truth."""
    model, cfg, trained = session.model, session.cfg, session.trained
    fine_tune = "tokenizer" in trained
    return st.TokenizerStage(
        model.tokenizer,
        change_weight=2.0,
        encoder_warmup_steps=0 if fine_tune else int(0.12 * s.steps),
        token_bias_steps=0 if fine_tune else int(0.28 * s.steps),
        segment=st.frozen_segmenter(model.seg_head, cfg.grid) if "seg_head" in trained else None,
        class_weights=session.class_weights(),
    )


def _sequences(session: Session, s: StageSettings) -> Sampler:
    length = session.cfg.context_length + session.args.horizon
    return st.sequence_sampler(session.store, session.tokens(), length, s.batch_size)


def _scorer_examples(session: Session, s: StageSettings) -> Sampler:
    """Rollouts of the frozen predictor, cached per process in the work dir; the scorer's
    input standardisation is set from them."""
    args, dist = session.args, session.dist
    path = args.work_dir / "scorer" / f"examples-r{dist.rank}.pt"
    if path.is_file():
        examples = sc.ScorerExamples.load(path)
    else:
        generator = torch.Generator().manual_seed(args.seed * 1019 + dist.rank)
        examples = sc.build_examples(
            session.model, session.store, session.features(), session.tokens(),
            args.horizon, args.scorer_contexts, generator,
        )  # fmt: skip
        examples.save(path)
    sc.standardise(session.model.scorer, examples)
    return sc.examples_sampler(examples, s.batch_size)


PIPELINE = (
    Stage(
        "backbone",
        lambda ses, s: st.BackboneStage(
            ses.model.backbone, ses.cfg.head.num_classes, ses.class_weights()
        ),
        lambda ses, s: st.labelled_frames_sampler(ses.store, s.batch_size),
        needs=("labels",),
    ),
    Stage(
        "seg_head",
        lambda ses, s: st.SegHeadStage(ses.model.seg_head, ses.cfg.grid, ses.class_weights()),
        lambda ses, s: st.feature_label_sampler(ses.store, ses.features(), s.batch_size),
        needs=("labels",),
        after=("backbone",),
    ),
    Stage(
        "depth_head",
        lambda ses, s: st.DepthHeadStage(ses.model.depth_head, ses.cfg.grid),
        lambda ses, s: st.feature_depth_sampler(ses.store, ses.features(), s.batch_size),
        needs=("depth",),
        after=("backbone",),
        optional=(lambda m: m.depth_head is None, st.add_depth_head),
    ),
    Stage(
        "tokenizer",
        _tokenizer_stage,
        lambda ses, s: st.pair_sampler(
            ses.store, ses.features(), ses.black(), s.batch_size, rollout_clips=s.batch_size // 4
        ),
        after=("backbone",),
    ),
    Stage(
        "world",
        lambda ses, s: st.WorldStage(ses.model.world, ses.args.candidates),
        _sequences,
        after=("tokenizer",),
    ),
    Stage(
        "baseline",
        lambda ses, s: st.WorldStage(ses.baseline, 1),
        _sequences,
        after=("tokenizer",),
    ),
    Stage(
        "scorer",
        lambda ses, s: sc.ScorerStage(ses.model.scorer),
        _scorer_examples,
        after=("world",),
        optional=(lambda m: m.scorer is None, sc.add_scorer),
    ),
)
STAGES = tuple(stage.name for stage in PIPELINE)


def finished(work_dir: Path, name: str) -> bool:
    """Whether an earlier run in this work dir trained (some of) the stage."""
    path = checkpoint_path(work_dir, name)
    return path.is_file() and read_checkpoint(path)["step"] >= 1


def check_ready(stage: Stage, session: Session, trained: set[str]) -> None:
    """SystemExit naming what the stage lacks: data, or a part trained before it."""
    store = session.store
    for need in stage.needs:
        if getattr(store, need) is None:
            hint = {
                "labels": "give --label-topic, or leave it out with --stages and --init-model",
                "depth": "which the synth world renders; leave it out of --stages",
            }[need]
            raise UsageError(
                f"stage {stage.name} needs {need}, which {store.source['kind']} data lacks: {hint}"
            )
    for before in stage.after:
        if before not in trained:
            raise UsageError(
                f"stage {stage.name} needs a trained {before}: run the {before} stage "
                f"or pass --init-model DIR"
            )


def requested_stages(text: str | None, has_depth: bool) -> list[str]:
    """--stages as a list in pipeline order; all (depth_head where the data has depth) by
    default."""
    if text is None:
        return [s for s in STAGES if has_depth or s != "depth_head"]
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise UsageError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    return [s for s in STAGES if s in names]
