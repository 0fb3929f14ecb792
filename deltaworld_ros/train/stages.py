"""The training stages of a model: what each one trains, on what batches, with which loss.

(a) backbone   a small DINOv3 ViT learns the world's labels through a temporary linear head
               that predicts the classes of 2x2-pixel cells of each patch (so features keep
               sub-patch layout); then it is frozen and plays the vision foundation model.
(b) seg_head   the published SegHead (BatchNorm + 1x1 conv) on the frozen features.
(b') depth_head the published DepthHead (BatchNorm + 1x1 conv over 256 depth bins) on the
               frozen features, L1 of log depth against the world's depth (synth data only).
(c) tokenizer  DeltaTok on feature pairs (y_prev, y_cur) with random time strides (and some
               black -> frame anchor pairs), log-cosh loss, RoPE rescale augmentation.
(d) world      DeltaWorld best-of-many on offline-tokenised clips (anchor + deltas) at their
               header times: S candidate noise queries per target, only the best is trained.
(e) baseline   the same predictor with one learned query and no sampling (deterministic).
(f) scorer     the learned confidence (scorer.py). Their order and needs: pipeline.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.config import ModelConfig
from ..model.deltatok import DeltaTok, log_cosh
from ..model.deltaworld import DeltaWorld
from ..model.dinov3 import DINOv3
from ..model.heads import DepthHead, SegHead, to_grid
from ..model.probes import TokenProbe, partner_pairs, probe_tokens
from ..model.world_model import WorldModel
from .data import FrameStore


def init_weights(module: nn.Module, std: float | None = 0.02) -> None:
    """ViT-style initialisation for training from scratch (truncated normal, zero bias).

    std None scales each layer by its fan-in (1 / sqrt(fan_in)): at the small preset's width a
    fixed 0.02 starts every residual branch near zero, and a signal that must cross several
    of them (the delta token, from the encoder's input to the decoder's output) starts at ~0.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            fan_in = m.weight[0].numel()
            nn.init.trunc_normal_(m.weight, std=fan_in**-0.5 if std is None else std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02 if std is None else std)
    if isinstance(module, DINOv3):
        for p in (module.embeddings.cls_token, module.embeddings.register_tokens):
            nn.init.trunc_normal_(p, std=0.02 if std is None else std)


def class_weights(labels: np.ndarray, num_classes: int, power: float = 0.5) -> torch.Tensor:
    """Inverse-frequency ** power weights (rare agents count more), mean 1 over seen classes."""
    counts = np.bincount(labels.reshape(-1), minlength=num_classes)[:num_classes].astype(np.float64)
    seen = counts > 0
    w = np.zeros(num_classes)
    w[seen] = (counts[seen] / counts.sum()) ** -power
    w[seen] = np.minimum(w[seen] / w[seen].mean(), 10.0)
    return torch.tensor(w, dtype=torch.float32)


# ---------------------------------------------------------------------------- stage modules


class BackboneStage(nn.Module):
    """Backbone + temporary linear head over sub-patch cells; cross-entropy on the labels."""

    def __init__(self, backbone: DINOv3, num_classes: int, weights: torch.Tensor, cells: int = 4):
        super().__init__()
        self.backbone = backbone
        self.cells = cells  # cells per patch side
        self.probe = nn.Linear(backbone.cfg.hidden_size, num_classes * cells * cells)
        init_weights(self.probe)
        backbone.embeddings.mask_token.requires_grad_(False)  # unused: DDP wants every grad
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor):
        y = self.backbone(pixels)  # (B, N, C)
        p = self.backbone.cfg.patch_size
        grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
        logits = F.pixel_shuffle(to_grid(self.probe(y), grid), self.cells)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, weight=self.weights)
        return loss, {"pixel_acc": (logits.argmax(1) == labels).float().mean()}


class SegHeadStage(nn.Module):
    """The published SegHead on frozen features; logits upsampled to the label size."""

    def __init__(self, head: SegHead, grid: tuple[int, int], weights: torch.Tensor) -> None:
        super().__init__()
        self.head = head
        self.grid = grid
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, features: torch.Tensor, labels: torch.Tensor):
        logits = self.head(features, self.grid, labels.shape[-2:])
        loss = F.cross_entropy(logits, labels, weight=self.weights)
        return loss, {"pixel_acc": (logits.argmax(1) == labels).float().mean()}


class DepthHeadStage(nn.Module):
    """The published DepthHead on frozen features: L1 of log depth between the prediction
    (upsampled bilinearly) and the target clamped to the head's range, over pixels with depth."""

    def __init__(self, head: DepthHead, grid: tuple[int, int]) -> None:
        super().__init__()
        self.head = head
        self.grid = grid

    def forward(self, features: torch.Tensor, depth: torch.Tensor):
        pred = self.head(features, self.grid)  # (B, 1, h, w) metres
        pred = F.interpolate(pred, size=depth.shape[-2:], mode="bilinear", align_corners=False)
        valid = torch.isfinite(depth) & (depth > 0)
        target = depth[valid].clamp(self.head.bins[0], self.head.bins[-1])
        pred = pred[:, 0][valid]
        loss = (pred.log() - target.log()).abs().mean()
        return loss, {"abs_rel": ((pred - target).abs() / target).mean().detach()}


def add_depth_head(model: WorldModel) -> ModelConfig:
    """Give a model without one a freshly initialised DepthHead; its config says so."""
    cfg = model.cfg
    model.cfg = replace(cfg, head=replace(cfg.head, with_depth=True))
    head = cfg.head
    model.depth_head = DepthHead(cfg.token_size, head.depth_bins, head.min_depth, head.max_depth)
    init_weights(model.depth_head)
    return model.cfg


class TokenizerStage(nn.Module):
    """DeltaTok reconstruction of y_cur from y_prev through one token, made to use the token.

    What keeps the decoder from learning a fixed map of y_prev that ignores the token:
    - the loss is normalised per pair by that pair's own change (log-cosh of copying y_prev),
      so pairs with a small change (a static camera) count as much as a moving camera's;
    - a training-only head predicts the pair's change map (log of the per-patch squared
      change) from the token alone, which makes the token carry where the change is;
    - a curriculum: the encoder and that head train alone first, then the decoder attends to
      the token with an extra logit bias that fades out (see token_bias);
    - no RoPE rescale augmentation (it costs a small model its positions).
    What makes the decoded features forecasts the head can read:
    - `segment` (the frozen seg head, grid logits): decoded features must segment as the true
      ones do (cross-entropy against the head's own classes of y_cur, so no labels are needed);
      the feature loss alone is met by a blur that the head reads as background;
    - rollouts: short chains of consecutive frames decoded on the decoder's own output with the
      true tokens, as a forecast is rolled out; trained on its single-step inputs only, the
      decoder drifts from its second step on.
    Batches come as pairs of pairs of one stream (2i, 2i + 1), so token reliance (error with
    the other pair's token / own error) is logged on them at every step.
    """

    def __init__(
        self,
        tokenizer: DeltaTok,
        change_weight: float = 0.5,
        token_bias_steps: int = 0,
        encoder_warmup_steps: int = 0,
        segment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        class_weights: torch.Tensor | None = None,
        segment_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.change_weight = change_weight
        # a plain callable, not a submodule: the head stays frozen, in eval mode, unsaved
        self.segment = segment
        self.segment_weight = segment_weight
        self.register_buffer("class_weights", class_weights, persistent=False)
        # the decoder's attention bias towards the token: log(N) (the token weighs as much as
        # all patches together) at the start, linearly down to 0 after token_bias_steps
        self.token_bias_steps = token_bias_steps
        # first the encoder alone learns tokens that predict the change map; a decoder trained
        # from the start on uninformative tokens learns to ignore the token and never unlearns it
        self.encoder_warmup_steps = encoder_warmup_steps
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))  # checkpointed
        c, n = tokenizer.cfg.hidden_size, tokenizer.grid[0] * tokenizer.grid[1]
        self.change_head = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, n))
        init_weights(self.change_head)

    def token_bias(self) -> float:
        step = int(self.steps_done) - self.encoder_warmup_steps
        if not self.training or step >= self.token_bias_steps:
            return 0.0
        start = math.log(self.tokenizer.grid[0] * self.tokenizer.grid[1])
        return start * (1 - max(step, 0) / self.token_bias_steps)

    def _decoding_loss(self, y_hat: torch.Tensor, y_prev: torch.Tensor, y_cur: torch.Tensor):
        """Log-cosh of the decoded features normalised per pair by that pair's change (identity
        pairs against the batch's typical change), plus the segmentation term; (B, N, C) each."""
        error = log_cosh(y_hat - y_cur, dim=(-2, -1))  # (B,)
        copy = log_cosh(y_prev - y_cur, dim=(-2, -1)).detach()
        loss = (error / (copy + 0.1 * copy.mean() + 1e-6)).mean()
        if self.segment is None:
            return loss, torch.zeros(())
        with torch.no_grad():
            classes = self.segment(y_cur).argmax(1)  # (B, h, w) what the head sees in the truth
        segmentation = F.cross_entropy(self.segment(y_hat), classes, weight=self.class_weights)
        return loss + self.segment_weight * segmentation, segmentation.detach()

    def forward(
        self,
        y_prev: torch.Tensor,
        y_cur: torch.Tensor,
        delta: torch.Tensor,
        rollouts: torch.Tensor | None = None,
    ):
        """delta (B,) bool: the pair is two frames of a stream (not an anchor nor identity);
        rollouts (R, S + 1, N, C): consecutive frames of R clips, decoded S steps on the
        decoder's own output (gradient through each step's decoder, not across steps)."""
        tok = self.tokenizer
        bias = self.token_bias()
        z = tok.encode(y_prev, y_cur)
        y_hat = tok.decode(z, y_prev, token_bias=bias)
        reconstruction, segmentation = self._decoding_loss(y_hat, y_prev, y_cur)
        if rollouts is not None:
            x, steps = rollouts[:, 0], rollouts.shape[1] - 1
            for step in range(1, steps + 1):
                prev, cur = rollouts[:, step - 1], rollouts[:, step]
                x = tok.decode(tok.encode(prev, cur), x.detach(), token_bias=bias)
                reconstruction = reconstruction + self._decoding_loss(x, prev, cur)[0] / steps
        change = (y_cur - y_prev).square().mean(-1)  # (B, N)
        target = torch.log1p(change / change.mean().clamp_min(1e-6))
        change_loss = F.mse_loss(self.change_head(z[:, 0]), target)
        decoding = float(int(self.steps_done) >= self.encoder_warmup_steps or not self.training)
        loss = decoding * reconstruction + self.change_weight * change_loss
        with torch.no_grad():
            own = (y_hat - y_cur).square().mean(dim=(-2, -1))
            # reliance on the frame pairs of the batch whose partner is one too
            both = (delta[0::2] & delta[1::2]).repeat_interleave(2)
            swapped_z = z.view(-1, 2, 1, z.shape[-1]).flip(1).reshape(z.shape)[both]
            swapped = tok.decode(swapped_z, y_prev[both], token_bias=bias) - y_cur[both]
            metrics = {
                "explained": 1 - own.mean() / (y_prev - y_cur).square().mean().clamp_min(1e-12),
                "token_reliance": swapped.square().mean() / own[both].mean().clamp_min(1e-12),
                "change_loss": change_loss.detach(),
                "segmentation": segmentation,
                "token_bias": torch.tensor(bias),
            }
        if self.training:
            self.steps_done += 1
        return loss, metrics


class WorldStage(nn.Module):
    """Best-of-many (or, for the baseline, the one learned query) on delta-token clips."""

    def __init__(self, world: DeltaWorld, num_candidates: int) -> None:
        super().__init__()
        self.world = world
        self.num_candidates = num_candidates

    def forward(self, z: torch.Tensor, t: torch.Tensor):
        out = self.world.best_of_many(z, t, num_candidates=self.num_candidates)
        if self.world.q_embed is not None:  # the baseline: no candidates
            return out.loss, {}
        # how much better the kept candidate is than an average one
        gain = out.candidate_losses.mean(-1) - out.candidate_losses.min(-1).values
        return out.loss, {"best_of_many_gain": gain.mean()}


def frozen_segmenter(
    head: SegHead, grid: tuple[int, int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The trained seg head as a fixed map features (B, N, C) -> logits (B, classes, h, w) on
    the patch grid, for the tokenizer's segmentation term (gradient to the features only)."""
    head.eval().requires_grad_(False)
    return lambda features: head(features, grid, grid)


# ---------------------------------------------------------------------------- frozen caches


@torch.no_grad()
def compute_features(backbone: DINOv3, rgb: np.ndarray, batch: int = 128) -> torch.Tensor:
    """Frozen backbone features of uint8 frames (F, H, W, 3) -> (F, N, C) float32."""
    backbone.eval()
    out = []
    for i in range(0, len(rgb), batch):
        pixels = torch.from_numpy(rgb[i : i + batch]).permute(0, 3, 1, 2).float()
        out.append(backbone(pixels))
    return torch.cat(out)


@dataclass
class TokenCache:
    """Per frame: the anchor token encode(black, y_f) and the delta encode(y_prev(f), y_f)."""

    anchor: torch.Tensor  # (F, C)
    delta: torch.Tensor  # (F, C); zeros at stream starts (never used there)


@torch.no_grad()
def compute_tokens(
    tokenizer: DeltaTok,
    features: torch.Tensor,
    black: torch.Tensor,
    prev: np.ndarray,
    batch: int = 128,
) -> TokenCache:
    tokenizer.eval()
    f, n, c = features.shape
    anchor, delta = torch.zeros(f, c), torch.zeros(f, c)
    for i in range(0, f, batch):
        y = features[i : i + batch]
        anchor[i : i + batch] = tokenizer.encode(black.expand(len(y), n, c), y)[:, 0]
    has_prev = np.flatnonzero(prev >= 0)
    for i in range(0, len(has_prev), batch):
        idx = torch.from_numpy(has_prev[i : i + batch])
        x = features[torch.from_numpy(prev[idx.numpy()])]
        delta[idx] = tokenizer.encode(x, features[idx])[:, 0]
    return TokenCache(anchor, delta)


# ---------------------------------------------------------------------------- token check


def probe_store_tokens(
    tokenizer: DeltaTok,
    store: FrameStore,
    features: torch.Tensor,
    groups: np.ndarray,
    clips_per_group: int = 32,
) -> dict[str, TokenProbe]:
    """Token reliance and identity error per group of clips (a camera), on consecutive frames
    of up to `clips_per_group` clips of each group; partners are pairs of the same clip."""
    out = {}
    for group in np.unique(groups):
        clips = np.flatnonzero(groups == group)
        clips = clips[np.linspace(0, len(clips) - 1, min(clips_per_group, len(clips))).astype(int)]
        frames = store.clips[clips]  # (M, T)
        prev = torch.from_numpy(frames[:, :-1].reshape(-1))
        cur = torch.from_numpy(frames[:, 1:].reshape(-1))
        stream = np.repeat(np.arange(len(clips)), frames.shape[1] - 1)
        partner = partner_pairs(stream, np.random.default_rng(0))
        out[str(group)] = probe_tokens(tokenizer, features[prev], features[cur], partner)
    return out


# ---------------------------------------------------------------------------- samplers


def _randint(generator: torch.Generator, high: int, size: int) -> np.ndarray:
    return torch.randint(high, (size,), generator=generator).numpy()


def labelled_frames_sampler(store: FrameStore, batch_size: int):
    """Random frames: uint8-valued pixels (B, 3, H, W) float and labels (B, H, W) long."""
    if store.labels is None:
        raise ValueError(
            "this stage needs labels: give --label-topic (bags) or use the synth world"
        )

    def sample(generator: torch.Generator):
        idx = _randint(generator, len(store.rgb), batch_size)
        pixels = torch.from_numpy(store.rgb[idx]).permute(0, 3, 1, 2).float()
        return pixels, torch.from_numpy(store.labels[idx]).long()

    return sample


def feature_label_sampler(store: FrameStore, features: torch.Tensor, batch_size: int):
    def sample(generator: torch.Generator):
        idx = _randint(generator, len(features), batch_size)
        return features[idx], torch.from_numpy(store.labels[idx]).long()

    return sample


def feature_depth_sampler(store: FrameStore, features: torch.Tensor, batch_size: int):
    """Random frames' frozen features (B, N, C) and depth (B, H, W) float32 metres."""

    def sample(generator: torch.Generator):
        idx = _randint(generator, len(features), batch_size)
        return features[idx], torch.from_numpy(store.depth[idx].astype(np.float32))

    return sample


def pair_sampler(
    store: FrameStore,
    features: torch.Tensor,
    black: torch.Tensor,
    batch_size: int,
    max_stride: int = 3,
    anchor_fraction: float = 0.05,
    identity_fraction: float = 0.1,
    rollout_clips: int = 0,
    rollout_steps: int = 3,
):
    """(y_prev, y_cur) of one clip, `stride` kept frames apart: 1 (the model's frame interval)
    for half the pairs, else uniform in 1..max_stride (dropped frames, other rates). Pairs
    2i and 2i + 1 come from the same clip (for the token reliance metric). A small share starts
    from the black frame instead (the anchor of every context), another share repeats the
    current frame (no change must decode to no change). With `rollout_clips`, each batch also
    holds that many runs of rollout_steps + 1 consecutive frames of one clip (R, S + 1, N, C)."""
    m, t = store.clips.shape
    max_stride = max(1, min(max_stride, t - 1))
    rollout_steps = min(rollout_steps, t - 1)
    if batch_size < 2 or batch_size % 2:
        raise ValueError(f"the tokenizer's batch size must be even and >= 2, got {batch_size}")

    def sample(generator: torch.Generator):
        clip = np.repeat(_randint(generator, m, batch_size // 2), 2)
        stride = 1 + _randint(generator, max_stride, batch_size)
        stride[torch.rand(batch_size, generator=generator).numpy() < 0.5] = 1
        start = (torch.rand(batch_size, generator=generator).numpy() * (t - stride)).astype(int)
        cur = features[torch.from_numpy(store.clips[clip, start + stride])]
        prev = features[torch.from_numpy(store.clips[clip, start])]
        kind = torch.rand(batch_size, generator=generator)
        kind[:2] = 1.0  # one pair of frame pairs at least: the reliance metric is defined
        prev[kind < anchor_fraction] = black[0]
        identity = (kind >= anchor_fraction) & (kind < anchor_fraction + identity_fraction)
        prev[identity] = cur[identity]
        pairs = prev, cur, kind >= anchor_fraction + identity_fraction
        if not rollout_clips:
            return pairs
        clip = _randint(generator, m, rollout_clips)
        start = _randint(generator, t - rollout_steps, rollout_clips)
        frames = store.clips[clip[:, None], start[:, None] + np.arange(rollout_steps + 1)]
        return *pairs, features[torch.from_numpy(frames)]

    return sample


def sequence_sampler(store: FrameStore, tokens: TokenCache, length: int, batch_size: int):
    """Token sequences [anchor, deltas...] (B, length, C) of one clip and their times (B, length) s,
    relative to the first frame."""
    m, t = store.clips.shape
    if length > t:
        raise ValueError(f"sequence length {length} exceeds the clip length {t}")

    def sample(generator: torch.Generator):
        clip = _randint(generator, m, batch_size)
        start = _randint(generator, t - length + 1, batch_size)
        frames = store.clips[clip[:, None], start[:, None] + np.arange(length)]  # (B, L)
        frames_t = torch.from_numpy(frames)
        z = torch.cat((tokens.anchor[frames_t[:, :1]], tokens.delta[frames_t[:, 1:]]), dim=1)
        times = store.stamps[frames]
        times = torch.from_numpy(times - times[:, :1]).float()
        return z, times

    return sample


def black_features(model: WorldModel) -> torch.Tensor:
    with torch.no_grad():
        return model.black_features()
