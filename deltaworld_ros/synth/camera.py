"""An oblique pinhole camera over the ground plane, precomputed as one gather per frame.

The world is rasterised top-down ("canvas", rows = south, columns = east). A camera at
`height_m` above its base point, pitched `pitch_deg` below the horizon and looking north,
sees a trapezoid of ground; `View` stores, for every output pixel, which canvas pixel it
sees, so rendering a frame is one `take` per channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class CameraModel:
    """Mounting of the camera: height above ground, pitch below the horizon, vertical FOV."""

    height_m: float
    pitch_deg: float
    vfov_deg: float


@dataclass(frozen=True)
class View:
    """Per-pixel ground lookup for one image size and raster resolution."""

    height: int
    width: int
    ppm: float  # canvas pixels per metre
    model: CameraModel
    focal_px: float
    north_far_m: float  # ground distance (north of the base point) seen by the top row
    east_max_m: float  # half width of the ground seen by the top row
    canvas_shape: tuple[int, int]  # (rows, cols) of the canvas the view reads
    flat_index: np.ndarray  # (H, W) int index into the flattened canvas
    ground_depth: np.ndarray  # (H, W) float32 camera z-depth of the ground, metres

    def project(self, east_m: np.ndarray, north_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground points relative to the camera base -> pixel (u, v), float."""
        phi = math.radians(self.model.pitch_deg)
        h = self.model.height_m
        z = north_m * math.cos(phi) + h * math.sin(phi)
        u = self.width / 2 + self.focal_px * east_m / z
        v = self.height / 2 + self.focal_px * (h * math.cos(phi) - north_m * math.sin(phi)) / z
        return u, v


@lru_cache(maxsize=16)
def make_view(height: int, width: int, ppm: float, model: CameraModel) -> View:
    """Precompute the canvas lookup of a (height, width) image."""
    phi = math.radians(model.pitch_deg)
    focal = (height / 2) / math.tan(math.radians(model.vfov_deg) / 2)
    xc = (np.arange(width) + 0.5 - width / 2) / focal  # (W,)
    yc = (np.arange(height) + 0.5 - height / 2) / focal  # (H,)
    denom = math.sin(phi) + yc * math.cos(phi)
    if denom.min() <= 0:
        raise ValueError(f"camera sees the horizon: pitch {model.pitch_deg} deg is too shallow")
    scale = model.height_m / denom  # (H,) ray length factor == camera z-depth on the ground
    north = scale * (math.cos(phi) - yc * math.sin(phi))  # (H,)
    east = scale[:, None] * xc[None, :]  # (H, W)
    north_far, east_max = float(north.max()), float(np.abs(east).max())
    rows = np.rint((north_far - north) * ppm).astype(np.int64)
    cols = np.rint((east + east_max) * ppm).astype(np.int64)
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    flat = rows[:, None] * shape[1] + cols
    depth = np.broadcast_to(scale[:, None], (height, width)).astype(np.float32)
    return View(height, width, ppm, model, focal, north_far, east_max, shape, flat, depth)
