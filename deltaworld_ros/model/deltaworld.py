"""DeltaWorld: a predictor that samples K plausible next delta tokens from noise queries."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import PredictorConfig
from .deltatok import DeltaTok
from .layers import PredictorBlock


class Predictor(nn.Module):
    """Cross-attention only: queries (B, Lq, D) read the history kv (B, Lk, C) -> (B, Lq, C)."""

    def __init__(self, cfg: PredictorConfig, token_size: int) -> None:
        super().__init__()
        head_dim = cfg.hidden_size // cfg.num_heads
        if cfg.rope_rotated % 2 or cfg.rope_rotated > head_dim:
            raise ValueError(
                f"predictor rope_rotated must be even and <= head size {head_dim}, "
                f"got {cfg.rope_rotated}"
            )
        self.blocks = nn.ModuleList(
            PredictorBlock(
                cfg.hidden_size, token_size, cfg.num_heads, cfg.hidden_size * cfg.mlp_ratio,
                cfg.rope_rotated, cfg.layer_norm_eps, cfg.layer_scale_init,
            )
            for _ in range(cfg.num_layers)
        )  # fmt: skip
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, token_size)

    def forward(
        self,
        queries: torch.Tensor,
        kv: torch.Tensor,
        pos_q: torch.Tensor,
        pos_k: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = queries
        for block in self.blocks:
            q = block(q, kv, pos_q, pos_k, mask)
        return self.head(self.norm(q))


def smooth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise smooth-L1 with beta 0.1, the DeltaWorld criterion."""
    return F.smooth_l1_loss(pred, target.expand_as(pred), reduction="none", beta=0.1)


def causal_mask(num_targets: int, num_keys: int, repeat: int = 1) -> torch.Tensor:
    """Additive mask: the prediction of target i (1-based) sees keys j < i; rows repeated."""
    target = torch.arange(1, num_targets + 1).repeat_interleave(repeat)[:, None]
    key = torch.arange(num_keys)[None, :]
    return torch.zeros(target.shape[0], num_keys).masked_fill(key >= target, float("-inf"))


@dataclass
class BestOfMany:
    loss: torch.Tensor  # scalar, the training loss
    z_hat: torch.Tensor  # (B, T-1, C)
    candidate_losses: torch.Tensor  # (B, T-1, S)
    best: torch.Tensor  # (B, T-1) index of the kept candidate


class DeltaWorld(nn.Module):
    """The trainable part of the world model: `predictor.*` (+ `q_embed` for the baseline)."""

    def __init__(self, cfg: PredictorConfig, token_size: int, query_scale: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.query_scale = query_scale
        self.predictor = Predictor(cfg, token_size)
        self.q_embed = None if cfg.use_bom else nn.Embedding(1, cfg.hidden_size)

    def sample_queries(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise queries N(0,1) * initializer_range (*shape, D); the baseline: its learned query."""
        if self.q_embed is not None:
            return self.q_embed.weight.expand(*shape, -1)
        draws = torch.randn(*shape, self.cfg.hidden_size, generator=generator)
        return draws.to(self.predictor.head.weight.device) * self.query_scale

    def best_of_many(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        candidates: torch.Tensor | None = None,
        num_candidates: int = 256,
    ) -> BestOfMany:
        """Best-of-many objective on a clip's tokens z (B, T, C) at times t (B, T) seconds.

        Targets are z_1..z_{T-1} (the anchor is context only). Every target gets S candidate
        queries (B, T-1, S, D); a gradient-free pass picks the closest candidate per target and
        only that one is trained, with a causal mask over the context.
        """  # fmt: skip
        b, length, _ = z.shape
        targets, kv = z[:, 1:], z[:, :-1]
        pos_q, pos_k = t[:, 1:], t[:, :-1]
        n = length - 1
        if self.q_embed is not None:  # deterministic baseline: one learned query, no sampling
            queries = self.sample_queries(b, n)
            z_hat = self.predictor(queries, kv, pos_q, pos_k, causal_mask(n, n).to(z))
            loss = smooth_l1(z_hat, targets).mean()
            zero = torch.zeros(b, n, 1, device=z.device)
            return BestOfMany(loss, z_hat, zero, zero[..., 0].long())
        if candidates is None:
            candidates = self.sample_queries(b, n, num_candidates)
        s = candidates.shape[2]
        with torch.no_grad():
            flat = candidates.reshape(b, n * s, -1)  # candidate index fastest
            preds = self.predictor(
                flat, kv, pos_q.repeat_interleave(s, dim=1), pos_k,
                causal_mask(n, n, repeat=s).to(z),
            ).reshape(b, n, s, -1)  # fmt: skip
            cand_losses = smooth_l1(preds, targets[:, :, None]).mean(-1)  # (B, T-1, S)
            best = cand_losses.argmin(-1)
        chosen = torch.gather(
            candidates, 2, best[..., None, None].expand(-1, -1, 1, candidates.shape[-1])
        )
        z_hat = self.predictor(chosen[:, :, 0], kv, pos_q, pos_k, causal_mask(n, n).to(z))
        return BestOfMany(smooth_l1(z_hat, targets).mean(), z_hat, cand_losses, best)


@dataclass
class Rollout:
    preds: torch.Tensor  # (B, K, T, N, C) decoded future features per hypothesis and step
    z_hat: torch.Tensor  # (B, K, T, C) sampled delta tokens


def rollout(
    world: DeltaWorld,
    tokenizer: DeltaTok,
    context: torch.Tensor,
    t_context: torch.Tensor,
    x: torch.Tensor,
    t_future: torch.Tensor,
    queries: torch.Tensor,
) -> Rollout:
    """Roll K hypotheses T steps ahead, each on its own predictions.

    context (B, L, C): anchor + deltas; t_context (B, L) s; x (B, N, C): features of the last
    context frame; t_future (B, T) s; queries (T, B*K, 1, D), batch-major rows (b*K + k).
    """
    b, n, c = x.shape
    steps, bk = queries.shape[0], queries.shape[1]
    k = bk // b
    kv = context.repeat_interleave(k, dim=0)  # (B*K, L, C)
    pos_k = t_context.repeat_interleave(k, dim=0)
    x = x.repeat_interleave(k, dim=0)  # (B*K, N, C)
    preds, tokens = [], []
    for step in range(steps):
        pos_q = t_future[:, step : step + 1].repeat_interleave(k, dim=0)  # (B*K, 1)
        z_hat = world.predictor(queries[step], kv, pos_q, pos_k)  # (B*K, 1, C)
        x = tokenizer.decode(z_hat, x)
        kv = torch.cat((kv, z_hat), dim=1)
        pos_k = torch.cat((pos_k, pos_q), dim=1)
        preds.append(x)
        tokens.append(z_hat[:, 0])
    return Rollout(
        torch.stack(preds, 1).reshape(b, k, steps, n, c),
        torch.stack(tokens, 1).reshape(b, k, steps, c),
    )


def best_of_k(preds: torch.Tensor, target_last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the hypothesis closest to the truth at the LAST step: losses (B, K), index (B,)."""
    losses = smooth_l1(preds[:, :, -1], target_last[:, None]).mean(dim=(-2, -1))
    return losses, losses.argmin(1)
