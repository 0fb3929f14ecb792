"""The procedural street world: agents that branch at random, a camera, and its frames.

Futures are genuinely multimodal: a vehicle decides to go straight, turn left or right (and
whether to wait first) only when it reaches a junction's decision point; a pedestrian at a
corner decides then whether to cross (after waiting or not) or walk on; a parked car pulls
out at a random moment. Nothing in the past reveals these choices. Every decision is logged
as a `BranchEvent`, so an evaluator knows where the ground truth branched.

All behaviour randomness comes from `StreetWorld.rng`; `fork(seed)` copies the world and
re-seeds only that generator, which gives alternative futures of one identical past.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from .camera import View, make_view
from .layout import Background, Street, build_background
from .sprites import BODIES, heading_bin, sprite

CameraMode = Literal["static", "vehicle"]
STREET = Street()
LEAD_M = 3.5  # decision point: this far before the junction box (just before the crosswalk)
MERGE_M = 10.0  # length of a parked car's pull-out manoeuvre
DRAW_ORDER = {"car": 0, "bus": 0, "cyclist": 1, "pedestrian": 2}


@dataclass(frozen=True)
class WorldConfig:
    """Image size, camera, clock and agent density of a synthetic street stream."""

    height: int = 128
    width: int = 128
    camera: CameraMode = "static"
    fps: float = 10.0
    stamp_jitter_s: float = 0.004
    drop_prob: float = 0.03
    vehicles_per_junction: float = 4.0
    cyclists_per_junction: float = 1.5
    pedestrians_per_junction: float = 7.0
    parked_fraction: float = 0.5  # share of parking slots occupied at the start
    bus_prob: float = 0.1
    pull_out_rate: float = 0.006  # per parked car and step
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

    @property
    def ppm(self) -> float:
        """Raster pixels per metre: about one canvas pixel per image pixel at any size."""
        return 5.0 * self.width / 128


class BranchEvent(NamedTuple):
    """One random decision of an agent: e.g. ("car", 12, "turn_left", step 40, visible)."""

    kind: str
    agent_id: int
    decision: str
    step: int
    visible: bool


@dataclass
class Frame:
    rgb: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8 class ids
    depth: np.ndarray  # (H, W) float32 camera z-depth, metres
    stamp_s: float  # header time: index / fps + jitter (relative to the stream start)
    index: int  # step on the nominal 1/fps grid; dropped frames leave gaps
    branch_events: list[BranchEvent] = field(default_factory=list)  # since the previous frame


@dataclass
class Sequence:
    rgb: np.ndarray  # (T, H, W, 3) uint8
    labels: np.ndarray  # (T, H, W) uint8
    depth: np.ndarray  # (T, H, W) float32
    stamps_s: np.ndarray  # (T,) float64
    indices: np.ndarray  # (T,) int64 grid steps
    branched: np.ndarray  # (T,) bool: a visible agent decided within +-branch_window steps
    events: list[list[BranchEvent]]  # per frame, as in Frame.branch_events

    def __len__(self) -> int:
        return len(self.stamps_s)


@dataclass
class Agent:
    """A moving or parked road user. Vehicles follow lanes, pedestrians sidewalk lines."""

    id: int
    kind: str
    x: float
    y: float
    dx: float  # unit direction of the current straight path (axis aligned)
    dy: float
    lane: float  # offset of its path to the right of its road's centre line
    v0: float  # desired speed, m/s
    colour: int
    mode: str = "straight"  # straight | maneuver | merge | parked | wait | inactive
    speed: float = 0.0
    heading: float = 0.0
    to_stop: float = math.inf  # distance to the next decision point
    s: float = 0.0  # progress inside a manoeuvre
    wait: int = 0
    turn: int = 0  # -1 left, 0 straight, +1 right
    px: float = 0.0  # manoeuvre start
    py: float = 0.0
    length: float = 0.0
    ox: float = 0.0  # drawing offset (pedestrians spread over the sidewalk)
    oy: float = 0.0


def _rotate(x: float, y: float, angle: float) -> tuple[float, float]:
    c, s = math.cos(angle), math.sin(angle)
    return x * c - y * s, x * s + y * c


def _smoothstep(t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)


class StreetWorld:
    """A street layout with agents and a camera; `step()` yields the next (non-dropped) frame."""

    def __init__(self, config: WorldConfig, seed: int, layout_seed: int | None = None) -> None:
        self.config = config
        self.street = STREET
        self.view: View = make_view(config.height, config.width, config.ppm)
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
        self._init_agents()

    # ---------------------------------------------------------------- setup
    def _init_camera(self) -> None:
        st, rng = self.street, self.render_rng
        centre_north = self.view.model.height_m / math.tan(math.radians(self.view.model.pitch_deg))
        if self.config.camera == "static":
            self.cam_x = st.junction_x(0) + rng.uniform(-8, 8)
            self.cam_y = st.main_y + centre_north + rng.uniform(-3, 3)
            self.cam_speed = 0.0
        else:
            self.cam_x = rng.uniform(0, st.width_m)
            self.cam_y = st.main_y + centre_north - 5 + rng.uniform(-2, 2)
            self.cam_speed = rng.uniform(4, 8)
        self.cam_target = self.cam_speed

    def _init_lighting(self) -> None:
        rng, cfg = self.render_rng, self.config
        gain = rng.uniform(0.72, 1.2) * rng.uniform(0.93, 1.07, 3)
        yy, xx = np.mgrid[0 : cfg.height, 0 : cfg.width].astype(np.float32)
        r2 = ((yy - cfg.height / 2) / cfg.height) ** 2 + ((xx - cfg.width / 2) / cfg.width) ** 2
        vignette = 1 - rng.uniform(0, 0.5) * r2
        self.gain_map = (vignette[..., None] * gain[None, None, :]).astype(np.float32)
        self.noise_sigma = float(rng.uniform(1.5, 5.0))
        self.start_offset_s = float(rng.uniform(0, 1 / cfg.fps))

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _vehicle(self, kind: str) -> Agent:
        rng = self.rng
        v0 = {
            "car": rng.uniform(6, 10),
            "bus": rng.uniform(5, 7.5),
            "cyclist": rng.uniform(3.5, 5.5),
        }
        lane = self.street.lane_w - 0.5 if kind == "cyclist" else self.street.lane_w / 2
        colours = len(BODIES[kind].colours)
        return Agent(
            self._new_id(), kind, 0.0, 0.0, 1.0, 0.0, lane, v0[kind], int(rng.integers(colours))
        )

    def _vehicle_kind(self) -> str:
        return "bus" if self.rng.random() < self.config.bus_prob else "car"

    def _init_agents(self) -> None:
        cfg, st, rng = self.config, self.street, self.rng
        n = st.junctions
        kinds = [self._vehicle_kind() for _ in range(rng.poisson(cfg.vehicles_per_junction * n))]
        kinds += ["cyclist"] * rng.poisson(cfg.cyclists_per_junction * n)
        for kind in kinds:
            a = self._vehicle(kind)
            for _ in range(20):
                self._place_on_road(a)
                if self._clear(a.x, a.y, 9.0, exclude=a):
                    break
            self.agents.append(a)
            a.speed = a.v0 * rng.uniform(0.5, 1)
        self._moving_target = len(kinds)  # pull-outs add traffic, exits take it back to this
        for x, y, dx in self._parking_slots():
            if rng.random() < cfg.parked_fraction:
                self.agents.append(self._parked(x, y, dx))
        for _ in range(rng.poisson(cfg.pedestrians_per_junction * n)):
            self.agents.append(self._pedestrian())

    def _place_on_road(self, a: Agent) -> None:
        st, rng = self.street, self.rng
        if rng.random() < 0.7:  # main road, anywhere outside the junctions
            a.dx, a.dy = (1.0, 0.0) if rng.random() < 0.5 else (-1.0, 0.0)
            k = int(rng.integers(st.junctions))
            gap = st.half_width + LEAD_M + 2
            x = st.junction_x(k) + gap + rng.uniform(0, st.junction_spacing - 2 * gap)
            a.x, a.y = x, st.main_y + a.dx * a.lane
        else:  # a cross street, before or after the junction
            k = int(rng.integers(st.junctions))
            a.dx, a.dy = (0.0, 1.0) if rng.random() < 0.5 else (0.0, -1.0)
            side = 1 if rng.random() < 0.5 else -1
            a.x = st.junction_x(k) - a.dy * a.lane
            a.y = st.main_y + side * rng.uniform(st.half_width + LEAD_M + 2, st.main_y - 4)
        a.mode = "straight"
        a.heading = math.atan2(a.dy, a.dx)
        a.to_stop = self._next_stop(a)

    def _parking_slots(self) -> list[tuple[float, float, float]]:
        st = self.street
        off = st.lane_w + st.park_w / 2
        front = st.half_width + st.sidewalk_w + 3.0
        slots = []
        for k in range(st.junctions):
            for x in np.arange(st.junction_x(k) + front, st.junction_x(k + 1) - front, 6.0):
                slots += [(float(x), st.main_y + off, 1.0), (float(x) + 2, st.main_y - off, -1.0)]
        return slots

    def _parked(self, x: float, y: float, dx: float) -> Agent:
        a = self._vehicle("car")
        a.x, a.y, a.dx, a.dy = x, y, dx, 0.0
        a.lane = self.street.lane_w + self.street.park_w / 2
        a.mode, a.heading = "parked", math.atan2(0.0, dx)
        a.to_stop = self._next_stop(a)
        return a

    def _pedestrian(self) -> Agent:
        st, rng = self.street, self.rng
        a = Agent(
            self._new_id(),
            "pedestrian",
            0.0,
            0.0,
            1.0,
            0.0,
            st.ped_line,
            rng.uniform(1.3, 2.2),
            int(rng.integers(len(BODIES["pedestrian"].colours))),
            mode="walk",
            ox=rng.uniform(-0.7, 0.7),
            oy=rng.uniform(-0.7, 0.7),
        )
        k = int(rng.integers(st.junctions))
        if rng.random() < 0.7:
            a.dx, a.dy = (1.0, 0.0) if rng.random() < 0.5 else (-1.0, 0.0)
            a.x = st.junction_x(k) + rng.uniform(
                st.ped_line + 1, st.junction_spacing - st.ped_line - 1
            )
            a.y = st.main_y + (st.ped_line if rng.random() < 0.5 else -st.ped_line)
        else:
            a.dx, a.dy = (0.0, 1.0) if rng.random() < 0.5 else (0.0, -1.0)
            a.x = st.junction_x(k) + (st.ped_line if rng.random() < 0.5 else -st.ped_line)
            side = 1 if rng.random() < 0.5 else -1
            a.y = st.main_y + side * rng.uniform(st.ped_line + 1, st.main_y - 2)
        a.speed, a.heading = a.v0, math.atan2(a.dy, a.dx)
        a.to_stop = self._next_node(a)
        return a

    # ---------------------------------------------------------------- geometry
    def _next_stop(self, a: Agent) -> float:
        """Distance along a vehicle's straight path to its next junction decision point."""
        st = self.street
        reach = st.half_width + LEAD_M
        if a.dy == 0:  # main road: a junction every junction_spacing, world wraps in x
            along = a.x * a.dx
            stops = np.array([a.dx * st.junction_x(k) - reach for k in range(st.junctions)])
            return float(np.min(np.mod(stops - along - 1e-6, st.width_m)) + 1e-6)
        dist = (a.dy * st.main_y - reach) - a.y * a.dy
        return dist if dist > 1e-6 else math.inf

    def _next_node(self, a: Agent) -> float:
        """Distance along a pedestrian's line to the next sidewalk corner."""
        st, c = self.street, self.street.ped_line
        if a.dy == 0:
            along = a.x * a.dx
            nodes = np.array(
                [a.dx * (st.junction_x(k) + o) for k in range(st.junctions) for o in (-c, c)]
            )
            return float(np.min(np.mod(nodes - along - 1e-6, st.width_m)) + 1e-6)
        ahead = [a.dy * (st.main_y + o) - a.y * a.dy for o in (-c, c)]
        ahead = [d for d in ahead if d > 1e-6]
        return min(ahead) if ahead else math.inf

    def _in_road(self, x: float, y: float) -> bool:
        st = self.street
        dx = abs((x % st.junction_spacing) - st.junction_spacing / 2)
        return abs(y - st.main_y) < st.half_width or dx < st.half_width

    def _wrap_dx(self, dx: float) -> float:
        w = self.street.width_m
        return (dx + w / 2) % w - w / 2

    def _clear(self, x: float, y: float, radius: float, exclude: Agent | None = None) -> bool:
        return not any(
            b is not exclude
            and b.kind != "pedestrian"
            and b.mode != "inactive"
            and math.hypot(self._wrap_dx(b.x - x), b.y - y) < radius
            for b in self.agents
        )

    def visible(self, x: float, y: float, margin_px: float = 0.0) -> bool:
        """Whether the ground point (x, y) (metres) lies in the current camera image."""
        u, v = self.view.project(
            np.float64(self._wrap_dx(x - self.cam_x)), np.float64(self.cam_y - y)
        )
        m = margin_px
        return bool(-m <= u < self.config.width + m and -m <= v < self.config.height + m)

    def agent_pixels(self) -> list[tuple[str, int, float, float]]:
        """(kind, id, u, v) of the agents whose centre is in view, for tests and debugging."""
        out = []
        for a in self.agents:
            if a.mode != "inactive" and self.visible(a.x + a.ox, a.y + a.oy):
                u, v = self.view.project(
                    np.float64(self._wrap_dx(a.x + a.ox - self.cam_x)),
                    np.float64(self.cam_y - a.y - a.oy),
                )
                out.append((a.kind, a.id, float(u), float(v)))
        return out

    # ---------------------------------------------------------------- dynamics
    def _log(self, a: Agent, decision: str) -> None:
        self.events.append(
            BranchEvent(a.kind, a.id, decision, self.index, self.visible(a.x, a.y, 8))
        )

    def _gaps(self) -> None:
        """Free distance ahead of every moving vehicle (to vehicles or pedestrians in its way)."""
        live = [a for a in self.agents if a.mode != "inactive"]
        movers = [a for a in live if a.kind != "pedestrian" and a.mode != "parked"]
        if not movers:
            self._gap_of = {}
            return
        pos = np.array([(a.x, a.y) for a in live])  # (N, 2)
        half = np.array([BODIES[a.kind].length / 2 for a in live])
        ped = np.array([a.kind == "pedestrian" for a in live])
        parked = np.array([a.mode == "parked" for a in live])
        head = np.array([(math.cos(a.heading), math.sin(a.heading)) for a in live])
        rows = np.array(
            [i for i, a in enumerate(live) if a.kind != "pedestrian" and a.mode != "parked"]
        )
        turning = np.array([a.mode == "maneuver" for a in movers])
        rel = pos[None, :, :] - pos[rows, None, :]  # (M, N, 2) from mover i to agent j
        w = self.street.width_m
        rel[..., 0] = (rel[..., 0] + w / 2) % w - w / 2
        h = head[rows]
        along = rel[..., 0] * h[:, None, 0] + rel[..., 1] * h[:, None, 1]
        lateral = np.abs(rel[..., 0] * h[:, None, 1] - rel[..., 1] * h[:, None, 0])
        same_way = h @ head.T > 0.5
        blocking = (along > 0) & (lateral < np.where(ped, 2.2, 1.1)[None, :]) & ~parked[None, :]
        blocking[np.arange(len(rows)), rows] = False
        # inside a junction a vehicle ignores crossing vehicles (the box rule orders them)
        blocking &= ~(turning[:, None] & ~same_way & ~ped[None, :])
        gap = np.where(blocking, along - half[rows, None] - half[None, :], np.inf).min(1)
        self._gap_of = {a.id: float(g) for a, g in zip(movers, gap)}

    def _drive(self, a: Agent, dt: float) -> None:
        """Speed control then motion of one vehicle along straight / manoeuvre / merge paths."""
        target = a.v0
        if a.mode == "maneuver" and a.turn != 0:
            target = min(target, 4.5 if a.kind != "cyclist" else 3.5)
        if a.mode == "wait":
            target = 0.0
        gap = self._gap_of.get(a.id, math.inf)
        target = min(target, max(0.0, gap - 1.5) / 0.8)
        a.speed = (
            max(target, a.speed - 9 * dt) if target < a.speed else min(target, a.speed + 2.5 * dt)
        )
        move = a.speed * dt
        if a.mode == "wait":
            a.wait -= 1
            if a.wait <= 0:
                a.mode = "maneuver"
            return
        if a.mode == "straight":
            if move >= a.to_stop:
                a.x += a.dx * a.to_stop
                a.y += a.dy * a.to_stop
                self._decide_junction(a)
                return
            a.x += a.dx * move
            a.y += a.dy * move
            a.to_stop -= move
        elif a.mode == "maneuver":
            if a.s < LEAD_M <= a.s + move and self._box_busy(a):
                a.s, a.speed = LEAD_M - 1e-3, 0.0
            else:
                a.s += move
            self._maneuver_pose(a)
        elif a.mode == "merge":
            a.s += move
            self._merge_pose(a)
        a.x %= self.street.width_m
        st = self.street
        if a.y < -6 or a.y > st.depth_m + 6:
            self._respawn_vehicle(a)

    def _decide_junction(self, a: Agent) -> None:
        """At the decision point: pick straight / left / right and whether to wait first."""
        rng = self.rng
        probs = (0.5, 0.25, 0.25) if a.dy == 0 else (0.2, 0.4, 0.4)
        a.turn = (0, -1, 1)[rng.choice(3, p=probs)]
        self._log(a, ("straight", "turn_left", "turn_right")[(0, -1, 1).index(a.turn)])
        hw = self.street.half_width
        a.px, a.py, a.s = a.x, a.y, 0.0
        radius = hw - a.lane if a.turn > 0 else hw + a.lane
        a.length = LEAD_M + (2 * hw if a.turn == 0 else radius * math.pi / 2)
        a.mode = "maneuver"
        if rng.random() < 0.25:
            a.mode, a.wait = "wait", int(rng.integers(5, 25))
            self._log(a, "wait")

    def _box_busy(self, a: Agent) -> bool:
        """Another vehicle from a crossing direction is inside the junction box."""
        for b in self.agents:
            if b is a or b.mode != "maneuver" or b.s <= LEAD_M or b.s >= b.length - 1:
                continue
            near = math.hypot(self._wrap_dx(b.px - a.px), b.py - a.py) < 30
            if near and abs(a.dx * b.dx + a.dy * b.dy) < 0.5:
                return True
        return False

    def _maneuver_pose(self, a: Agent) -> None:
        if a.s >= a.length:  # leave the junction on a new straight path
            extra = a.s - a.length
            a.s = a.length
            self._maneuver_pose_at(a, a.length)
            a.dx, a.dy = _rotate(a.dx, a.dy, a.turn * math.pi / 2)
            a.dx, a.dy = float(round(a.dx)), float(round(a.dy))
            a.x += a.dx * extra
            a.y += a.dy * extra
            a.heading = math.atan2(a.dy, a.dx)
            a.mode = "straight"
            a.to_stop = self._next_stop(a)
            return
        self._maneuver_pose_at(a, a.s)

    def _maneuver_pose_at(self, a: Agent, s: float) -> None:
        """Pose at arc length s: the lead-in, then a straight crossing or a quarter circle."""
        if a.turn == 0 or s <= LEAD_M:
            a.x, a.y = a.px + a.dx * s, a.py + a.dy * s
            a.heading = math.atan2(a.dy, a.dx)
            return
        hw = self.street.half_width
        radius = hw - a.lane if a.turn > 0 else hw + a.lane
        ex, ey = a.px + a.dx * LEAD_M, a.py + a.dy * LEAD_M  # box entry
        nx, ny = -a.dy, a.dx  # right of the heading (y grows south)
        cx, cy = ex + nx * a.turn * radius, ey + ny * a.turn * radius
        angle = a.turn * (s - LEAD_M) / radius
        rx, ry = _rotate(ex - cx, ey - cy, angle)
        a.x, a.y = cx + rx, cy + ry
        a.heading = math.atan2(a.dy, a.dx) + angle

    def _merge_pose(self, a: Agent) -> None:
        shift = self.street.park_w / 2 + self.street.lane_w / 2
        nx, ny = -a.dy, a.dx
        if a.s >= MERGE_M:
            a.x = a.px + a.dx * a.s - nx * shift
            a.y = a.py + a.dy * a.s - ny * shift
            a.lane, a.mode = self.street.lane_w / 2, "straight"
            a.heading = math.atan2(a.dy, a.dx)
            a.to_stop = self._next_stop(a)
            return
        t = a.s / MERGE_M
        lat = shift * _smoothstep(t)
        a.x = a.px + a.dx * a.s - nx * lat
        a.y = a.py + a.dy * a.s - ny * lat
        slope = shift * 6 * t * (1 - t) / MERGE_M
        a.heading = math.atan2(a.dy, a.dx) - math.atan(slope)

    def _maybe_pull_out(self, a: Agent) -> None:
        if self.rng.random() >= self.config.pull_out_rate or a.to_stop < MERGE_M + 2:
            return
        lane_y = a.y - a.dx * (self.street.park_w / 2 + self.street.lane_w / 2)
        for b in self.agents:
            if b.kind == "pedestrian" or b.mode == "inactive" or b is a:
                continue
            behind = self._wrap_dx(a.x - b.x) * a.dx
            if b.mode == "parked" and -8 < behind < 0 and abs(b.y - a.y) < 1:
                return  # boxed in by the car parked ahead
            if b.mode != "parked" and -3 < behind < 22 and abs(b.y - lane_y) < 2.5:
                return  # traffic coming: stay parked this step
        self._log(a, "pull_out")
        a.mode, a.px, a.py, a.s, a.speed = "merge", a.x, a.y, 0.0, 0.0
        self._spawn_parked_out_of_view()

    def _spawn_parked_out_of_view(self) -> None:
        taken = [(b.x, b.y) for b in self.agents if b.mode == "parked"]
        free = [
            s
            for s in self._parking_slots()
            if all(abs(self._wrap_dx(s[0] - x)) > 3 or abs(s[1] - y) > 1 for x, y in taken)
            and abs(self._wrap_dx(s[0] - self.cam_x)) > 30
        ]
        if free:
            x, y, dx = free[int(self.rng.integers(len(free)))]
            self.agents.append(self._parked(x, y, dx))

    def _respawn_vehicle(self, a: Agent) -> None:
        """Re-enter from the world's north or south edge on a cross street (out of view)."""
        moving = sum(b.kind != "pedestrian" and b.mode != "parked" for b in self.agents)
        if moving > self._moving_target:
            self.agents.remove(a)
            return
        st, rng = self.street, self.rng
        k = int(rng.integers(st.junctions))
        south = rng.random() < 0.5
        a.dx, a.dy = (0.0, 1.0) if south else (0.0, -1.0)
        a.x = st.junction_x(k) - a.dy * a.lane
        a.y = -5.0 if south else st.depth_m + 5
        if a.kind != "cyclist":
            a.kind = self._vehicle_kind()
        a.mode, a.speed, a.heading = "straight", a.v0, math.atan2(a.dy, a.dx)
        a.to_stop = self._next_stop(a)
        if not self._clear(a.x, a.y, 12.0, exclude=a):
            a.mode = "inactive"

    def _walk(self, a: Agent, dt: float) -> None:
        if a.mode == "wait":
            a.wait -= 1
            if a.wait <= 0:
                a.mode = "walk"
            return
        move = a.speed * dt
        if move >= a.to_stop:
            a.x += a.dx * a.to_stop
            a.y += a.dy * a.to_stop
            self._decide_corner(a)
        else:
            a.x += a.dx * move
            a.y += a.dy * move
            a.to_stop -= move
        a.x %= self.street.width_m
        if a.y < -3 or a.y > self.street.depth_m + 3:
            self._respawn_pedestrian(a)

    def _decide_corner(self, a: Agent) -> None:
        """At a sidewalk corner: walk on, turn the corner, or cross (maybe after waiting)."""
        choice = int(self.rng.integers(3))
        angle = (0.0, -math.pi / 2, math.pi / 2)[choice]
        dx, dy = _rotate(a.dx, a.dy, angle)
        a.dx, a.dy = float(round(dx)), float(round(dy))
        a.heading = math.atan2(a.dy, a.dx)
        a.to_stop = self._next_node(a)
        if self._in_road(a.x + a.dx * 2, a.y + a.dy * 2):
            self._log(a, "cross")
            if self.rng.random() < 0.5:
                a.mode, a.wait = "wait", int(self.rng.integers(5, 40))
                self._log(a, "wait")
        else:
            self._log(a, "walk_on" if choice == 0 else "turn_corner")

    def _respawn_pedestrian(self, a: Agent) -> None:
        st, rng = self.street, self.rng
        south = rng.random() < 0.5
        a.dx, a.dy = (0.0, 1.0) if south else (0.0, -1.0)
        a.x = st.junction_x(int(rng.integers(st.junctions))) + (
            st.ped_line if rng.random() < 0.5 else -st.ped_line
        )
        a.y = -2.0 if south else st.depth_m + 2
        a.heading = math.atan2(a.dy, a.dx)
        a.to_stop = self._next_node(a)

    def _move_camera(self, dt: float) -> None:
        if self.config.camera != "vehicle":
            return
        rng = self.rng
        if rng.random() < 0.02:
            self.cam_target = float(rng.choice([0.0, 3.0, 6.0, 8.0], p=(0.15, 0.25, 0.35, 0.25)))
        rate = 2.5 * dt
        self.cam_speed += float(np.clip(self.cam_target - self.cam_speed, -rate, rate))
        self.cam_x = (self.cam_x + self.cam_speed * dt) % self.street.width_m

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

    # ---------------------------------------------------------------- rendering
    def render(self) -> Frame:
        """The current state as seen by the camera (does not advance time)."""
        cfg, view, bg, rng = self.config, self.view, self.background, self.render_rng
        ppm = cfg.ppm
        jit = (0.06 if cfg.camera == "static" else 0.1) * ppm  # camera shake, canvas px
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
        colour *= 1 + rng.normal(0, 0.01)
        noise = _noise_bank(cfg.height, cfg.width)[rng.integers(8)]
        colour += noise * self.noise_sigma
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

    # ---------------------------------------------------------------- streams
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


def _collect(world: StreetWorld, length: int, stride: int, branch_window: int) -> Sequence:
    frames = list(world.frames(length, stride))
    world.advance(branch_window * stride)  # decisions just after the last frame count too
    steps = np.array([e.step for e in world.events if e.visible], np.int64)
    indices = np.array([f.index for f in frames], np.int64)
    window = branch_window * stride
    branched = (np.abs(indices[:, None] - steps[None, :]) <= window).any(1)
    return Sequence(
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
) -> Sequence:
    """`num_frames` consecutive frames of the world `seed` (with its jitter and drops)."""
    return _collect(StreetWorld(config, seed), num_frames, 1, branch_window)


def sample_clip(
    rng: np.random.Generator,
    config: WorldConfig,
    length: int,
    stride: int = 1,
    burn_in: tuple[int, int] = (5, 40),
    branch_window: int = 4,
) -> Sequence:
    """A training clip from a fresh random world state, every `stride`-th tick.

    The layout comes from a pool of `config.layout_pool` cached layouts, the agents, camera,
    lighting and noise are fresh; a random burn-in puts agents mid-scene.
    """
    world = StreetWorld(
        config, int(rng.integers(2**31)), layout_seed=int(rng.integers(config.layout_pool))
    )
    world.advance(int(rng.integers(burn_in[0], burn_in[1] + 1)))
    return _collect(world, length, stride, branch_window)
