"""Task heads on a feature grid: semantic segmentation and depth (the published layout)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def to_grid(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(M, N, C) row-major patches -> (M, C, h, w)."""
    m, _, c = features.shape
    return features.transpose(1, 2).reshape(m, c, *grid)


class SegHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.head = nn.Conv2d(dim, num_classes, 1)

    def forward(
        self, features: torch.Tensor, grid: tuple[int, int], out_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(M, N, C) -> logits (M, classes, h, w), bilinearly upsampled to out_size if given."""
        logits = self.head(self.bn(to_grid(features, grid)))
        if out_size is not None and tuple(out_size) != tuple(grid):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits


class DepthHead(nn.Module):
    def __init__(
        self, dim: int, num_bins: int = 256, min_depth: float = 1e-3, max_depth: float = 80.0
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.head = nn.Conv2d(dim, num_bins, 1)
        self.register_buffer(
            "bins", torch.linspace(min_depth, max_depth, num_bins), persistent=False
        )

    def forward(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(M, N, C) -> depth (M, 1, h, w): expectation over bins of relu(logits) + 0.1."""
        p = F.relu(self.head(self.bn(to_grid(features, grid)))) + 0.1
        p = p / p.sum(1, keepdim=True)
        return torch.einsum("mkhw,k->mhw", p, self.bins)[:, None]
