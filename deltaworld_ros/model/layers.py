"""Transformer pieces shared by the DINOv3 backbone, DeltaTok and the DeltaWorld predictor.

State-dict names follow the published files (HF DINOv3 layer naming), so official
checkpoints load without conversion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def patch_rope(
    grid_h: int, grid_w: int, head_dim: int, theta: float, rescale: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D RoPE table of DINOv3 over patch centres, (N, head_dim) cos and sin.

    `rescale` multiplies the patch-centre coordinates (DeltaTok's training augmentation).
    """
    ys = (torch.arange(grid_h, dtype=torch.float32) + 0.5) / grid_h * 2 - 1
    xs = (torch.arange(grid_w, dtype=torch.float32) + 0.5) / grid_w * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # (N, 2)
    coords = coords * rescale
    inv_freq = 1.0 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)  # (d/4,)
    angles = 2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]  # (N, 2, d/4)
    angles = angles.flatten(1, 2).tile(2)  # (N, d): [y | x] tiled twice
    return torch.cos(angles), torch.sin(angles)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_patch_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the trailing patch tokens of x (B, h, L, d); leading prefix tokens stay."""
    num_prefix = x.shape[-2] - cos.shape[0]
    prefix, patches = x[..., :num_prefix, :], x[..., num_prefix:, :]
    return torch.cat((prefix, patches * cos + rotate_half(patches) * sin), dim=-2)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, length, c = x.shape
    return x.view(b, length, num_heads, c // num_heads).transpose(1, 2)  # (B, h, L, d)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SelfAttention(nn.Module):
    """DINOv3 attention (no key bias); DeltaTok adds qk-norm after RoPE and a per-head gate."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, gate: bool = False):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(head_dim, bias=False) if qk_norm else None
        self.k_norm = nn.LayerNorm(head_dim, bias=False) if qk_norm else None
        self.attn_gate = nn.Linear(dim, num_heads) if gate else None

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`bias` (1, L) is added to every query's attention logit of each key (training only)."""
        q = apply_patch_rope(split_heads(self.q_proj(h), self.num_heads), cos, sin)
        k = apply_patch_rope(split_heads(self.k_proj(h), self.num_heads), cos, sin)
        v = split_heads(self.v_proj(h), self.num_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, h, L, d)
        if self.attn_gate is not None:
            out = out * torch.sigmoid(self.attn_gate(h)).transpose(1, 2).unsqueeze(-1)
        return self.o_proj(merge_heads(out))


class Block(nn.Module):
    """Pre-norm transformer layer with layer scale (the DINOv3 layer, optionally DeltaTok's)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        eps: float,
        layer_scale_init: float = 1.0,
        deltatok: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attention = SelfAttention(dim, num_heads, qk_norm=deltatok, gate=deltatok)
        self.layer_scale1 = LayerScale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, mlp_hidden) if deltatok else GeluMLP(dim, mlp_hidden)
        self.layer_scale2 = LayerScale(dim, layer_scale_init)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x), cos, sin, attention_bias))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


def time_rope(pos: torch.Tensor, rotated: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D RoPE angles over time in seconds, (..., L, rotated/2) cos and sin."""
    half = rotated // 2
    inv_freq = 1.0 / 10 ** torch.linspace(-2, 2, half, dtype=torch.float32)
    angles = (2 * math.pi * pos)[..., None] * inv_freq  # (..., L, half)
    return torch.cos(angles), torch.sin(angles)


def apply_time_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2*half dims of x (B, h, L, d) as two halves; the rest stays."""
    half = cos.shape[-1]
    a, b, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return torch.cat((a * cos - b * sin, a * sin + b * cos, rest), dim=-1)


class CrossAttention(nn.Module):
    """DeltaWorld attention: noise queries attend to the delta-token history; RoPE over time."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, rope_rotated: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.rope_rotated = rope_rotated
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(context_dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        pos_q: torch.Tensor,
        pos_k: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        k, v = self.kv_proj(kv).chunk(2, dim=-1)  # [K | V] halves
        q = apply_time_rope(
            split_heads(self.q_proj(q), self.num_heads), *time_rope(pos_q, self.rope_rotated)
        )
        k = apply_time_rope(split_heads(k, self.num_heads), *time_rope(pos_k, self.rope_rotated))
        out = F.scaled_dot_product_attention(q, k, split_heads(v, self.num_heads), attn_mask=mask)
        return self.out_proj(merge_heads(out))


class PredictorBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_heads: int,
        mlp_hidden: int,
        rope_rotated: int,
        eps: float,
        layer_scale_init: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attention = CrossAttention(dim, context_dim, num_heads, rope_rotated)
        self.layer_scale1 = LayerScale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = GeluMLP(dim, mlp_hidden)
        self.layer_scale2 = LayerScale(dim, layer_scale_init)

    def forward(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        pos_q: torch.Tensor,
        pos_k: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = q + self.layer_scale1(self.attention(self.norm1(q), kv, pos_q, pos_k, mask))
        return q + self.layer_scale2(self.mlp(self.norm2(q)))
