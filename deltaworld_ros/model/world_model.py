"""All networks of one model, built from a ModelConfig."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .deltatok import DeltaTok
from .deltaworld import DeltaWorld
from .dinov3 import DINOv3
from .heads import DepthHead, SegHead
from .scorer import Scorer

# Module name -> the file it is stored in (see loading.py); the scorer is this package's own.
MODULES = ("backbone", "tokenizer", "world", "seg_head", "depth_head", "scorer")


class WorldModel(nn.Module):
    """backbone (frozen VFM), tokenizer (DeltaTok), world (DeltaWorld predictor), heads, and
    the optional learned confidence (scorer)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.backbone.hidden_size != cfg.tokenizer.hidden_size:
            raise ValueError(
                f"tokenizer hidden_size {cfg.tokenizer.hidden_size} must equal the backbone's "
                f"{cfg.backbone.hidden_size}: DeltaTok works on the backbone features"
            )
        c = cfg.token_size
        self.backbone = DINOv3(cfg.backbone)
        self.tokenizer = DeltaTok(cfg.tokenizer, cfg.grid)
        self.world = DeltaWorld(cfg.predictor, c, cfg.backbone.initializer_range)
        self.seg_head = SegHead(c, cfg.head.num_classes) if cfg.head.num_classes else None
        self.depth_head = (
            DepthHead(c, cfg.head.depth_bins, cfg.head.min_depth, cfg.head.max_depth)
            if cfg.head.with_depth
            else None
        )
        self.scorer = Scorer(cfg.scorer, c) if cfg.scorer.enabled else None

    def black_features(self) -> torch.Tensor:
        """Features of the all-black uint8 frame, the x of the anchor token: (1, N, C)."""
        h, w = self.cfg.image_size
        device = self.backbone.norm.weight.device
        return self.backbone(torch.zeros(1, 3, h, w, device=device))
