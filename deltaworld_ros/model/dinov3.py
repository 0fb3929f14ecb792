"""DINOv3 ViT backbone (the frozen vision foundation model), HF `DINOv3ViTModel` layout."""

from __future__ import annotations

import torch
from torch import nn

from .config import BackboneConfig
from .layers import Block, patch_rope


class Embeddings(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c))  # unused at inference; in the files
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, c))
        self.patch_embeddings = nn.Conv2d(3, c, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embeddings(pixels).flatten(2).transpose(1, 2)  # (B, N, C) row-major
        b = patches.shape[0]
        prefix = torch.cat((self.cls_token, self.register_tokens), dim=1).expand(b, -1, -1)
        return torch.cat((prefix, patches), dim=1)


class Encoder(nn.Module):
    """Holds `layer` so keys read `model.layer.N.*` as in transformers 5."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            Block(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps)
            for _ in range(cfg.num_layers)
        )


class DINOv3(nn.Module):
    """uint8-valued pixels (B, 3, H, W) as float -> final-normed patch features (B, N, C)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.model = Encoder(cfg)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.register_buffer(
            "mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, pixels_u8: torch.Tensor) -> torch.Tensor:
        """The reference processor: u8 * f32(1/255), then ImageNet mean/std; no resize."""
        return (
            pixels_u8.float() * torch.tensor(1 / 255, dtype=torch.float32) - self.mean
        ) / self.std

    def forward(self, pixels_u8: torch.Tensor) -> torch.Tensor:
        return self.features(self.preprocess(pixels_u8))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, H, W) -> patch features (B, N, C)."""
        p = self.cfg.patch_size
        grid_h, grid_w = pixels.shape[-2] // p, pixels.shape[-1] // p
        head_dim = self.cfg.hidden_size // self.cfg.num_heads
        cos, sin = patch_rope(grid_h, grid_w, head_dim, self.cfg.rope_theta)
        x = self.embeddings(pixels)
        for layer in self.model.layer:
            x = layer(x, cos, sin)
        return self.norm(x)[:, 1 + self.cfg.num_register_tokens :]
