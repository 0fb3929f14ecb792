"""What a synthetic street stream looks like: image size, camera, clock, density, nuisance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .camera import CameraModel

CameraMode = Literal["static", "vehicle"]
MAX_PPM = 24.0  # large images (e.g. 480x640 for benchmarks) keep the layout raster < 100 MB


@dataclass(frozen=True)
class WorldConfig:
    """Image size, camera, clock and agent density of a synthetic street stream.

    The defaults are sized for a model with 8-pixel patches at 96x96: the camera sits low
    enough that a car covers several patches and a (drawn larger than life) pedestrian about
    one, and the raster follows the camera, so a canvas pixel is about an image pixel.
    """

    height: int = 128
    width: int = 128
    camera: CameraMode = "static"
    fps: float = 10.0
    camera_height_m: float = 14.0
    pitch_deg: float = 75.0
    vfov_deg: float = 45.0
    stamp_jitter_s: float = 0.004
    drop_prob: float = 0.03
    vehicles_per_junction: float = 6.0
    cyclists_per_junction: float = 1.5
    pedestrians_per_junction: float = 9.0
    parked_fraction: float = 0.5  # share of parking slots occupied at the start
    bus_prob: float = 0.1
    pull_out_rate: float = 0.006  # per parked car and step
    ego_decision_rate: float = 0.04  # moving camera: chance per step of a new ego decision
    nuisance: float = 1.0  # scales sensor noise, camera shake and gain flicker (0: clean)
    layout_pool: int = 16  # sample_clip draws street layouts from this many (cached) seeds

    def __post_init__(self) -> None:
        if self.camera not in ("static", "vehicle"):
            raise ValueError(f"camera must be 'static' or 'vehicle', got {self.camera!r}")
        if self.height < 16 or self.width < 16:
            raise ValueError(f"image size must be at least 16x16, got {self.height}x{self.width}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not 0 <= self.drop_prob < 1:
            raise ValueError(f"drop_prob must be in [0, 1), got {self.drop_prob}")
        if self.camera_height_m <= 0:
            raise ValueError(f"camera_height_m must be > 0, got {self.camera_height_m}")
        if self.nuisance < 0:
            raise ValueError(f"nuisance must be >= 0, got {self.nuisance}")

    @property
    def camera_model(self) -> CameraModel:
        return CameraModel(self.camera_height_m, self.pitch_deg, self.vfov_deg)

    @property
    def ppm(self) -> float:
        """Raster pixels per metre: the image scale at the centre of the view, so one canvas
        pixel is about one image pixel at any image size and camera height."""
        focal = (self.height / 2) / math.tan(math.radians(self.vfov_deg) / 2)
        centre_depth = self.camera_height_m / math.sin(math.radians(self.pitch_deg))
        return min(focal / centre_depth, MAX_PPM)
