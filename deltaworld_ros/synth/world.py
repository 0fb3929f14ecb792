"""The procedural street world: agents that branch at random, a camera, and its frames.

Futures are genuinely multimodal: a vehicle decides to go straight, turn left or right (and
whether to stop and wait first) when it reaches a junction box; a pedestrian at a corner
decides then whether to cross (after waiting or not) or walk on; a parked car pulls out at a
random moment; the moving camera's own car brakes, speeds up or changes lane. Nothing in the
past reveals these choices. Every decision is logged as a `BranchEvent`, so an evaluator
knows where the ground truth branched.

All behaviour randomness comes from `StreetWorld.rng`; `fork(seed)` copies the world and
re-seeds only that generator, which gives alternative futures of one identical past.

The parts live in their own modules: vehicles, pedestrians, ego (camera), render; this one
joins them into `StreetWorld` and cuts streams into clips.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .agents import Agent, BranchEvent
from .camera import View, make_view
from .config import WorldConfig
from .ego import CameraRig
from .layout import Background, Street, build_background
from .pedestrians import PedestrianTraffic
from .render import Frame, Renderer
from .vehicles import VehicleTraffic

STREET = Street()


@dataclass
class Clip:
    """Consecutive frames of one stream, stacked."""

    rgb: np.ndarray  # (T, H, W, 3) uint8
    labels: np.ndarray  # (T, H, W) uint8
    depth: np.ndarray  # (T, H, W) float32
    stamps_s: np.ndarray  # (T,) float64
    indices: np.ndarray  # (T,) int64 grid steps
    branched: np.ndarray  # (T,) bool: a visible agent decided within +-branch_window steps
    events: list[list[BranchEvent]]  # per frame, as in Frame.branch_events

    def __len__(self) -> int:
        return len(self.stamps_s)


class StreetWorld(VehicleTraffic, PedestrianTraffic, CameraRig, Renderer):
    """A street layout with agents and a camera; `step()` yields the next (non-dropped) frame."""

    def __init__(self, config: WorldConfig, seed: int, layout_seed: int | None = None) -> None:
        self.config = config
        self.street = STREET
        self.view: View = make_view(config.height, config.width, config.ppm, config.camera_model)
        pad = self.view.canvas_shape[1] + 1
        self.background: Background = build_background(
            self.street, config.ppm, seed if layout_seed is None else layout_seed, pad
        )
        self.rng = np.random.default_rng([seed, 1])  # behaviour: forked for alternative futures
        self.render_rng = np.random.default_rng([seed, 2])  # stamps, drops, jitter, noise
        self.index = 0
        self.events: list[BranchEvent] = []
        self._emitted = -1
        self._next_id = 0
        self._init_camera()
        self._init_lighting()
        self.agents: list[Agent] = []
        self._init_vehicles()
        self._init_pedestrians()

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _wrap_dx(self, dx: float) -> float:
        w = self.street.width_m
        return (dx + w / 2) % w - w / 2

    def _log(self, a: Agent, decision: str) -> None:
        self.events.append(
            BranchEvent(a.kind, a.id, decision, self.index, self.visible(a.x, a.y, 8))
        )

    def advance(self, steps: int = 1) -> None:
        """Simulate `steps` ticks of 1/fps without rendering."""
        dt = 1.0 / self.config.fps
        for _ in range(steps):
            self.index += 1
            self._move_camera(dt)
            self._gaps()
            for a in list(self.agents):
                if a.kind == "pedestrian":
                    self._walk(a, dt)
                elif a.mode == "parked":
                    self._maybe_pull_out(a)
                elif a.mode == "inactive":
                    self._respawn_vehicle(a)
                else:
                    self._drive(a, dt)

    def step(self, stride: int = 1) -> Frame:
        """Advance `stride` ticks (more when the sensor drops a frame) and render."""
        self.advance(stride)
        while self.render_rng.random() < self.config.drop_prob:
            self.advance(stride)
        return self.render()

    def frames(self, n: int, stride: int = 1) -> Iterator[Frame]:
        for _ in range(n):
            yield self.step(stride)

    def fork(self, seed: int) -> StreetWorld:
        """A copy with the same past and a re-seeded behaviour generator (another future)."""
        other = copy.deepcopy(self)
        other.rng = np.random.default_rng([seed, 3])
        return other


def _collect(world: StreetWorld, length: int, stride: int, branch_window: int) -> Clip:
    frames = list(world.frames(length, stride))
    world.advance(branch_window * stride)  # decisions just after the last frame count too
    steps = np.array([e.step for e in world.events if e.visible], np.int64)
    indices = np.array([f.index for f in frames], np.int64)
    window = branch_window * stride
    branched = (np.abs(indices[:, None] - steps[None, :]) <= window).any(1)
    return Clip(
        rgb=np.stack([f.rgb for f in frames]),
        labels=np.stack([f.labels for f in frames]),
        depth=np.stack([f.depth for f in frames]),
        stamps_s=np.array([f.stamp_s for f in frames], np.float64),
        indices=indices,
        branched=branched,
        events=[f.branch_events for f in frames],
    )


def render_sequence(
    config: WorldConfig, seed: int, num_frames: int, branch_window: int = 4
) -> Clip:
    """`num_frames` consecutive frames of the world `seed` (with its jitter and drops)."""
    return _collect(StreetWorld(config, seed), num_frames, 1, branch_window)


def sample_clip(
    rng: np.random.Generator,
    config: WorldConfig,
    length: int,
    stride: int = 1,
    burn_in: tuple[int, int] = (5, 40),
    branch_window: int = 4,
) -> Clip:
    """A training clip from a fresh random world state, every `stride`-th tick.

    The layout comes from a pool of `config.layout_pool` cached layouts, the agents, camera,
    lighting and noise are fresh; a random burn-in puts agents mid-scene.
    """
    world = StreetWorld(
        config, int(rng.integers(2**31)), layout_seed=int(rng.integers(config.layout_pool))
    )
    world.advance(int(rng.integers(burn_in[0], burn_in[1] + 1)))
    return _collect(world, length, stride, branch_window)
