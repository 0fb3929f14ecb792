"""(f) scorer: the learned confidence, trained after the world stage on the same clips.

For each context window of a clip the frozen predictor samples K hypotheses and rolls them
out `horizon` steps through the frozen decoder; each hypothesis' error is its feature MSE to
the clip's true future, averaged over the steps. The scorer's descriptors of every rollout
(model/scorer.py) are computed once and cached (`<work-dir>/scorer/examples-r<rank>.pt`), so
the stage's steps train only the small MLP:
- loss: cross-entropy of the closest hypothesis (the best-of-K target) plus a listwise term
  towards softmax(-standardised error) (the whole ranking, not only its winner);
- the temperature is fitted at the same steps on clips held out from that loss (every
  HELD_OUT_EVERY-th clip), by the cross-entropy of their closest hypothesis alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.config import ModelConfig
from ..model.deltaworld import rollout
from ..model.scorer import Scorer, descriptors
from ..model.world_model import WorldModel
from .data import FrameStore
from .stages import TokenCache, init_weights

HYPOTHESES = 12  # K per context while training; the descriptors are relative to the K
HELD_OUT_EVERY = 5  # every 5th clip fits the temperature only
RANKING_SHARPNESS = 2.0  # listwise target softmax(-sharpness * standardised error)


def add_scorer(model: WorldModel) -> ModelConfig:
    """Give a model without one a freshly initialised scorer; its config says so."""
    model.cfg = replace(model.cfg, scorer=replace(model.cfg.scorer, enabled=True))
    model.scorer = Scorer(model.cfg.scorer, model.cfg.token_size)
    init_weights(model.scorer)
    return model.cfg


@dataclass
class ScorerExamples:
    """Per context window: the scorer's descriptors of K rollouts and their errors."""

    x: torch.Tensor  # (M, K, F)
    errors: torch.Tensor  # (M, K) feature MSE to the true future, mean over the steps
    held_out: torch.Tensor  # (M,) bool: the window's clip fits the temperature only

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"x": self.x, "errors": self.errors, "held_out": self.held_out}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ScorerExamples:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(data["x"], data["errors"], data["held_out"])


def context_windows(store: FrameStore, length: int, limit: int) -> np.ndarray:
    """(W, 2) [clip, first frame] of up to `limit` windows of `length` frames, spread evenly
    over every clip and start."""
    m, t = store.clips.shape
    if length > t:
        raise ValueError(
            f"the scorer needs {length} frames per window (context + horizon), clips have {t}"
        )
    every = np.stack(np.meshgrid(np.arange(m), np.arange(t - length + 1), indexing="ij"), -1)
    every = every.reshape(-1, 2)
    pick = np.linspace(0, len(every) - 1, min(limit, len(every))).round().astype(int)
    return every[np.unique(pick)]


@torch.no_grad()
def build_examples(
    model: WorldModel,
    store: FrameStore,
    features: torch.Tensor,
    tokens: TokenCache,
    horizon: int,
    contexts: int,
    generator: torch.Generator,
    batch: int = 32,
) -> ScorerExamples:
    """Roll out HYPOTHESES noise queries on up to `contexts` windows of the store's clips."""
    ctx, k = model.cfg.context_length, HYPOTHESES
    windows = context_windows(store, ctx + horizon, contexts)
    xs, errors = [], []
    for i in range(0, len(windows), batch):
        clip, start = windows[i : i + batch].T
        frames = store.clips[clip[:, None], start[:, None] + np.arange(ctx + horizon)]
        index = torch.from_numpy(frames)
        z = torch.cat((tokens.anchor[index[:, :1]], tokens.delta[index[:, 1:ctx]]), 1)
        times = store.stamps[frames]
        times = torch.from_numpy(times - times[:, :1]).float()
        present = features[index[:, ctx - 1]]  # (B, N, C)
        queries = model.world.sample_queries(horizon, len(clip) * k, 1, generator=generator)
        out = rollout(
            model.world, model.tokenizer, z, times[:, :ctx], present, times[:, ctx:], queries
        )
        truth = features[index[:, ctx:]]  # (B, T, N, C)
        errors.append((out.preds - truth[:, None]).square().mean((-3, -2, -1)))  # (B, K)
        xs.append(descriptors(out.z_hat, z, out.preds, present))
    held_out = torch.from_numpy(windows[:, 0] % HELD_OUT_EVERY == HELD_OUT_EVERY - 1)
    return ScorerExamples(torch.cat(xs), torch.cat(errors), held_out)


def examples_sampler(examples: ScorerExamples, batch_size: int):
    """A batch of training windows and one of held-out windows: (x, errors, x, errors)."""
    train = torch.nonzero(~examples.held_out)[:, 0]
    held = torch.nonzero(examples.held_out)[:, 0]
    if not len(held) or not len(train):
        train = held = torch.arange(len(examples.errors))  # too few clips to hold any out

    def sample(generator: torch.Generator):
        a = train[torch.randint(len(train), (batch_size,), generator=generator)]
        b = held[torch.randint(len(held), (batch_size,), generator=generator)]
        return examples.x[a], examples.errors[a], examples.x[b], examples.errors[b]

    return sample


def standardise(scorer: Scorer, examples: ScorerExamples) -> None:
    """The scorer's input shift and scale from the training windows' descriptors."""
    x = examples.x.reshape(-1, examples.x.shape[-1])
    scorer.shift.copy_(x.mean(0))
    scorer.scale.copy_(x.std(0).clamp_min(1e-4))


class ScorerStage(nn.Module):
    """Cross-entropy of the closest hypothesis + listwise ranking; temperature on held-out."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(
        self, x: torch.Tensor, errors: torch.Tensor, held_x: torch.Tensor, held_errors: torch.Tensor
    ):
        logits = self.scorer.raw_logits(x)  # (B, K)
        best = errors.argmin(1)
        spread = errors.std(1, keepdim=True).clamp_min(1e-8)
        standardised = (errors - errors.mean(1, keepdim=True)) / spread
        target = torch.softmax(-RANKING_SHARPNESS * standardised, 1)
        ranking = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
        loss = F.cross_entropy(logits, best) + ranking
        with torch.no_grad():
            held_logits = self.scorer.raw_logits(held_x)
        calibrated = held_logits * torch.exp(-self.scorer.log_temperature)
        held_best = held_errors.argmin(1)
        calibration = F.cross_entropy(calibrated, held_best)
        top = held_logits.argmax(1)
        metrics = {
            "top1": (logits.argmax(1) == best).float().mean().detach(),
            "held_out_top1": (top == held_best).float().mean(),
            "held_out_error_ratio": held_errors.gather(1, top[:, None]).mean() / held_errors.mean(),
            "held_out_nll": calibration.detach(),
            "temperature": torch.exp(self.scorer.log_temperature).detach(),
        }
        return loss + calibration, metrics
