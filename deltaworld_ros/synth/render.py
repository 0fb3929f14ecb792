"""Rendering: the camera's crop of the layout raster, agent sprites, lighting and sensor nuisance.

The nuisance (sensor noise, camera shake, gain flicker) is kept well below the change that
agents and a moving camera make from frame to frame, and `WorldConfig.nuisance` scales it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .agents import BranchEvent
from .sprites import BODIES, heading_bin, sprite

DRAW_ORDER = {"car": 0, "bus": 0, "cyclist": 1, "pedestrian": 2}
SHAKE_M = {"static": 0.015, "vehicle": 0.04}  # camera shake, metres on the ground (std)
FLICKER = 0.002  # frame-to-frame gain flicker (std, relative)


@dataclass
class Frame:
    rgb: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8 class ids
    depth: np.ndarray  # (H, W) float32 camera z-depth, metres
    stamp_s: float  # header time: index / fps + jitter (relative to the stream start)
    index: int  # step on the nominal 1/fps grid; dropped frames leave gaps
    branch_events: list[BranchEvent] = field(default_factory=list)  # since the previous frame


class Renderer:
    """Mixin of StreetWorld: turns the current state into a Frame."""

    def _init_lighting(self) -> None:
        rng, cfg = self.render_rng, self.config
        gain = rng.uniform(0.72, 1.2) * rng.uniform(0.93, 1.07, 3)
        yy, xx = np.mgrid[0 : cfg.height, 0 : cfg.width].astype(np.float32)
        r2 = ((yy - cfg.height / 2) / cfg.height) ** 2 + ((xx - cfg.width / 2) / cfg.width) ** 2
        vignette = 1 - rng.uniform(0, 0.5) * r2
        self.gain_map = (vignette[..., None] * gain[None, None, :]).astype(np.float32)
        self.noise_sigma = float(rng.uniform(0.5, 1.5))
        self.start_offset_s = float(rng.uniform(0, 1 / cfg.fps))

    def render(self) -> Frame:
        """The current state as seen by the camera (does not advance time)."""
        cfg, view, bg, rng = self.config, self.view, self.background, self.render_rng
        ppm = cfg.ppm
        jit = SHAKE_M[cfg.camera] * cfg.nuisance * ppm  # camera shake, canvas px
        bx = self.cam_x * ppm + rng.normal(0, jit)
        by = self.cam_y * ppm + rng.normal(0, jit)
        gh, gw = view.canvas_shape
        r0 = int(round(by - view.north_far_m * ppm))
        c0 = int(round(bx - view.east_max_m * ppm)) % bg.width_px
        lab = bg.labels[r0 : r0 + gh, c0 : c0 + gw].copy()
        rgb = bg.rgb[r0 : r0 + gh, c0 : c0 + gw].copy()
        hgt = bg.height_dm[r0 : r0 + gh, c0 : c0 + gw].copy()
        self._draw_agents(lab, rgb, hgt, r0, c0)
        flat = view.flat_index
        labels = lab.ravel()[flat]
        colour = rgb.reshape(-1, 3)[flat].astype(np.float32)
        colour *= self.gain_map
        colour *= 1 + rng.normal(0, FLICKER) * cfg.nuisance
        noise = _noise_bank(cfg.height, cfg.width)[rng.integers(8)]
        colour += noise * (self.noise_sigma * cfg.nuisance)
        np.clip(colour, 0, 255, out=colour)
        depth = view.ground_depth * (1 - hgt.ravel()[flat] * (0.1 / view.model.height_m))
        stamp = self.index / cfg.fps + self.start_offset_s + rng.normal(0, cfg.stamp_jitter_s)
        nominal = self.index / cfg.fps + self.start_offset_s
        stamp = min(max(stamp, nominal - 0.4 / cfg.fps), nominal + 0.4 / cfg.fps)  # keeps order
        events = [e for e in self.events if self._emitted < e.step <= self.index]
        self._emitted = self.index
        return Frame(
            colour.astype(np.uint8),
            labels,
            depth.astype(np.float32),
            float(stamp),
            self.index,
            events,
        )

    def _draw_agents(
        self, lab: np.ndarray, rgb: np.ndarray, hgt: np.ndarray, r0: int, c0: int
    ) -> None:
        ppm, period = self.config.ppm, self.background.width_px
        gh, gw = lab.shape
        sun = self.background.sun
        for a in sorted(self.agents, key=lambda a: DRAW_ORDER[a.kind]):
            if a.mode == "inactive":
                continue
            col = (a.x + a.ox) * ppm - c0
            col = (col + period / 2) % period - period / 2
            row = (a.y + a.oy) * ppm - r0
            body = BODIES[a.kind]
            spr = sprite(a.kind, a.colour, heading_bin(a.heading), ppm)
            rad = spr.radius
            if not (-rad - 8 < row < gh + rad + 8 and -rad - 8 < col < gw + rad + 8):
                continue
            top, left = int(round(row)) - rad, int(round(col)) - rad
            sh = (int(round(sun[1] * body.height * ppm)), int(round(sun[0] * body.height * ppm)))
            region = _clip(top + sh[0], left + sh[1], spr.mask.shape, lab.shape)
            if region is not None:
                dst, src = region
                shade = rgb[dst]
                m = spr.mask[src]
                shade[m] = (shade[m] * 0.62).astype(np.uint8)
            region = _clip(top, left, spr.mask.shape, lab.shape)
            if region is None:
                continue
            dst, src = region
            m = spr.mask[src]
            lab[dst][m] = body.cls
            rgb[dst][m] = spr.rgb[src][m]
            hgt[dst][m] = int(body.height * 10)


def _clip(
    top: int, left: int, shape: tuple[int, int], bounds: tuple[int, int]
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Destination and source windows of a sprite at (top, left) clipped to the canvas."""
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + shape[0], bounds[0]), min(left + shape[1], bounds[1])
    if r1 <= r0 or c1 <= c0:
        return None
    dst = (slice(r0, r1), slice(c0, c1))
    src = (slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))
    return dst, src


_NOISE: dict[tuple[int, int], np.ndarray] = {}


def _noise_bank(height: int, width: int) -> np.ndarray:
    """Eight fixed frames of unit Gaussian sensor noise, (8, H, W, 3) float32."""
    if (height, width) not in _NOISE:
        rng = np.random.default_rng(0xC0FFEE)
        _NOISE[(height, width)] = rng.standard_normal((8, height, width, 3), dtype=np.float32)
    return _NOISE[(height, width)]
