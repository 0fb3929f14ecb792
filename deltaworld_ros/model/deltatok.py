"""DeltaTok: one continuous token for the change of the feature map between two frames."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TokenizerConfig
from .layers import Block, patch_rope


class DeltaTok(nn.Module):
    """encode(previous features x, current features y) -> z; decode(z, x) -> reconstructed y."""

    def __init__(self, cfg: TokenizerConfig, grid: tuple[int, int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = grid
        c = cfg.hidden_size

        def blocks(count: int) -> nn.ModuleList:
            return nn.ModuleList(
                Block(c, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps,
                      cfg.layer_scale_init, deltatok=True)
                for _ in range(count)
            )  # fmt: skip

        self.z_embed = nn.Embedding(1, c)
        self.xy_embed = nn.Embedding(2, c)
        self.encoder_blocks = blocks(cfg.num_encoder_layers)
        self.decoder_blocks = blocks(cfg.num_decoder_layers)
        self.norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)

    def rope(self, rescale: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        head_dim = self.cfg.hidden_size // self.cfg.num_heads
        return patch_rope(*self.grid, head_dim, self.cfg.rope_theta, rescale)

    def sample_rope_rescale(self) -> torch.Tensor:
        """Training augmentation: one log-uniform factor in [1/2, 2] per forward call."""
        return torch.exp(torch.empty(()).uniform_(-math.log(2), math.log(2)))

    def encode(
        self, x: torch.Tensor, y: torch.Tensor, rescale: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """x, y (B, N, C) -> delta token z (B, 1, C)."""
        cos, sin = self.rope(rescale)
        cos, sin = torch.cat((cos, cos)), torch.cat((sin, sin))  # x and y share patch positions
        z = self.z_embed.weight.expand(x.shape[0], 1, -1)
        h = torch.cat((z, x + self.xy_embed.weight[0], y + self.xy_embed.weight[1]), dim=1)
        for block in self.encoder_blocks:
            h = block(h, cos, sin)
        return self.norm(h[:, :1])

    def decode(
        self,
        z: torch.Tensor,
        x: torch.Tensor,
        rescale: float | torch.Tensor = 1.0,
        token_bias: float = 0.0,
    ) -> torch.Tensor:
        """z (B, 1, C), x (B, N, C) -> predicted features (B, N, C); no final norm.

        `token_bias` (training only) is added to every attention logit of the token: a
        curriculum that makes a freshly initialised decoder listen to its one token among N
        patches before it has learnt to by itself.
        """
        cos, sin = self.rope(rescale)
        h = torch.cat((z, x), dim=1)
        bias = None
        if token_bias:
            bias = torch.zeros(1, h.shape[1], dtype=h.dtype, device=h.device)
            bias[0, 0] = token_bias
        for block in self.decoder_blocks:
            h = block(h, cos, sin, bias)
        return h[:, 1:]

    def forward_train(
        self, y_prev: torch.Tensor, y_cur: torch.Tensor, rescale: float | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct y_cur from y_prev through one token; returns (y_hat, log-cosh loss)."""
        if rescale is None:
            rescale = self.sample_rope_rescale() if self.training else 1.0
        y_hat = self.decode(self.encode(y_prev, y_cur, rescale), y_prev, rescale)
        return y_hat, log_cosh(y_hat - y_cur)


def log_cosh(d: torch.Tensor, dim: tuple[int, ...] | None = None) -> torch.Tensor:
    """mean(log cosh d) over `dim` (all by default), overflow-free: |d| + softplus(-2|d|) - ln 2."""
    a = d.abs()
    value = a + nn.functional.softplus(-2 * a) - math.log(2)
    return value.mean() if dim is None else value.mean(dim=dim)


def tokenize_offline(tokenizer: DeltaTok, y: torch.Tensor, black: torch.Tensor) -> torch.Tensor:
    """Clip features y (B, T, N, C) -> delta tokens (B, T, C); token 0 is the anchor from black."""
    b, t, n, c = y.shape
    x = torch.cat((black.expand(b, 1, n, c), y[:, :-1]), dim=1)  # [black, y_0 .. y_{T-2}]
    z = tokenizer.encode(x.reshape(b * t, n, c), y.reshape(b * t, n, c))
    return z.reshape(b, t, c)
