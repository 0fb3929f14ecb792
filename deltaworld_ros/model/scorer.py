"""The learned confidence: a logit per hypothesis, from what the rollout already computed.

Best-of-many training gives the K sampled futures no likelihood. The scorer learns which of
them tends to land closest to the truth from:
- the decoded features of every step: how far each hypothesis sits from the mean of the K
  (under a squared loss the hypothesis nearest the predictive mean is expected to be closest),
  and how much it changes the scene per step (mean and worst patch);
- its sampled delta tokens: their size and their offset from the other hypotheses' tokens;
- the context tokens: how much the scene was changing before (the size of the deltas).
Every descriptor is averaged over the steps and also taken at the last one, so the same
network serves any horizon T and any number of hypotheses K. A small MLP maps them to a
logit; a temperature fitted on held-out clips makes softmax(logits) calibrated.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ScorerConfig

EPS = 1e-6


def descriptors(
    tokens: torch.Tensor, context: torch.Tensor, features: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """tokens (B, K, T, C), context (B, L, C), features (B, K, T, N, C) decoded per step,
    present (B, N, C) the last context frame's features -> (B, K, ScorerConfig.input_size(C)).
    """
    b, k = tokens.shape[:2]
    spread = (features - features.mean(1, keepdim=True)).square().mean(-1)  # (B, K, T, N)
    before = torch.cat((present[:, None, None].expand(b, k, 1, -1, -1), features[:, :, :-1]), 2)
    change = (features - before).square().mean(-1)  # (B, K, T, N)
    offset = tokens - tokens.mean(1, keepdim=True)  # (B, K, T, C)
    per_step = torch.stack(
        (
            spread.mean(-1),
            spread.amax(-1),
            change.mean(-1),
            change.amax(-1),
            offset.square().mean(-1),
            tokens.square().mean(-1),
        ),
        -1,
    )
    per_step = (per_step + EPS).log()  # (B, K, T, STEP_DESCRIPTORS)
    per_step = torch.cat((per_step, per_step - per_step.mean(1, keepdim=True)), -1)
    moving = (context.square().mean(-1) + EPS).log()  # (B, L)
    scene = torch.stack((moving[:, -1], moving.mean(1)), -1)[:, None].expand(b, k, -1)
    return torch.cat((per_step.mean(2), per_step[:, :, -1], scene, offset.mean(2)), -1)


class Scorer(nn.Module):
    """descriptors -> standardised -> MLP -> logit / temperature, per hypothesis."""

    def __init__(self, cfg: ScorerConfig, token_size: int) -> None:
        super().__init__()
        width = cfg.input_size(token_size)
        self.register_buffer("shift", torch.zeros(width))  # set from the training data
        self.register_buffer("scale", torch.ones(width))
        h = cfg.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(width, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, 1)
        )
        self.log_temperature = nn.Parameter(torch.zeros(()))  # fitted on held-out clips

    def raw_logits(self, x: torch.Tensor) -> torch.Tensor:
        """descriptors (B, K, F) -> logits before the temperature (B, K)."""
        return self.mlp((x - self.shift) / self.scale)[..., 0]

    def forward(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor,
        features: torch.Tensor,
        present: torch.Tensor,
    ) -> torch.Tensor:
        """(see descriptors) -> calibrated logits (B, K); softmax over K = the confidence."""
        x = descriptors(tokens, context, features, present)
        return self.raw_logits(x) * torch.exp(-self.log_temperature)
