"""Vehicles (cars, buses, cyclists): lanes, junction decisions, parking and pull-outs.

A vehicle decides at the edge of the junction box, in the static camera's view, to go
straight, turn left or right, or stop and wait first; a turning vehicle brakes and starts
its arc at once, so the alternatives part within a few frames.
"""

from __future__ import annotations

import math

import numpy as np

from .agents import Agent, rotate, smoothstep
from .sprites import BODIES

MERGE_M = 10.0  # length of a parked car's pull-out manoeuvre
TURN_SPEED = {"car": 3.5, "bus": 3.0, "cyclist": 3.0}  # m/s inside a turn
WAIT_PROB = 0.35  # share of junction decisions that stop at the box edge first


class VehicleTraffic:
    """Mixin of StreetWorld: the vehicles' placement and dynamics."""

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

    def _init_vehicles(self) -> None:
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

    def _place_on_road(self, a: Agent) -> None:
        st, rng = self.street, self.rng
        if rng.random() < 0.7:  # main road, anywhere outside the junctions
            a.dx, a.dy = (1.0, 0.0) if rng.random() < 0.5 else (-1.0, 0.0)
            k = int(rng.integers(st.junctions))
            gap = st.half_width + 2
            x = st.junction_x(k) + gap + rng.uniform(0, st.junction_spacing - 2 * gap)
            a.x, a.y = x, st.main_y + a.dx * a.lane
        else:  # a cross street, before or after the junction
            k = int(rng.integers(st.junctions))
            a.dx, a.dy = (0.0, 1.0) if rng.random() < 0.5 else (0.0, -1.0)
            side = 1 if rng.random() < 0.5 else -1
            a.x = st.junction_x(k) - a.dy * a.lane
            a.y = st.main_y + side * rng.uniform(st.half_width + 2, st.main_y - 4)
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

    def _next_stop(self, a: Agent) -> float:
        """Distance along a vehicle's straight path to its next junction box edge."""
        st = self.street
        reach = st.half_width
        if a.dy == 0:  # main road: a junction every junction_spacing, world wraps in x
            along = a.x * a.dx
            stops = np.array([a.dx * st.junction_x(k) - reach for k in range(st.junctions)])
            return float(np.min(np.mod(stops - along - 1e-6, st.width_m)) + 1e-6)
        dist = (a.dy * st.main_y - reach) - a.y * a.dy
        return dist if dist > 1e-6 else math.inf

    def _clear(self, x: float, y: float, radius: float, exclude: Agent | None = None) -> bool:
        return not any(
            b is not exclude
            and b.kind != "pedestrian"
            and b.mode != "inactive"
            and math.hypot(self._wrap_dx(b.x - x), b.y - y) < radius
            for b in self.agents
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
            target = min(target, TURN_SPEED[a.kind])
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
            if a.s == 0.0 and self._box_busy(a):
                a.speed = 0.0  # yield at the box edge
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
        """At the box edge: pick straight / left / right and whether to stop and wait first."""
        rng = self.rng
        probs = (0.5, 0.25, 0.25) if a.dy == 0 else (0.2, 0.4, 0.4)
        a.turn = (0, -1, 1)[rng.choice(3, p=probs)]
        self._log(a, ("straight", "turn_left", "turn_right")[(0, -1, 1).index(a.turn)])
        hw = self.street.half_width
        a.px, a.py, a.s = a.x, a.y, 0.0
        radius = hw - a.lane if a.turn > 0 else hw + a.lane
        a.length = 2 * hw if a.turn == 0 else radius * math.pi / 2
        a.mode = "maneuver"
        if rng.random() < WAIT_PROB:
            a.mode, a.wait = "wait", int(rng.integers(5, 25))
            self._log(a, "wait")

    def _box_busy(self, a: Agent) -> bool:
        """Another vehicle from a crossing direction is inside the junction box."""
        for b in self.agents:
            if b is a or b.mode != "maneuver" or b.s <= 0.0 or b.s >= b.length - 1:
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
            a.dx, a.dy = rotate(a.dx, a.dy, a.turn * math.pi / 2)
            a.dx, a.dy = float(round(a.dx)), float(round(a.dy))
            a.x += a.dx * extra
            a.y += a.dy * extra
            a.heading = math.atan2(a.dy, a.dx)
            a.mode = "straight"
            a.to_stop = self._next_stop(a)
            return
        self._maneuver_pose_at(a, a.s)

    def _maneuver_pose_at(self, a: Agent, s: float) -> None:
        """Pose at arc length s from the box edge: a straight crossing or a quarter circle."""
        if a.turn == 0:
            a.x, a.y = a.px + a.dx * s, a.py + a.dy * s
            a.heading = math.atan2(a.dy, a.dx)
            return
        hw = self.street.half_width
        radius = hw - a.lane if a.turn > 0 else hw + a.lane
        ex, ey = a.px, a.py  # box entry
        nx, ny = -a.dy, a.dx  # right of the heading (y grows south)
        cx, cy = ex + nx * a.turn * radius, ey + ny * a.turn * radius
        angle = a.turn * s / radius
        rx, ry = rotate(ex - cx, ey - cy, angle)
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
        lat = shift * smoothstep(t)
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
