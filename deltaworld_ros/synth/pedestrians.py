"""Pedestrians: sidewalk lines, and at every corner a choice to walk on, turn or cross."""

from __future__ import annotations

import math

import numpy as np

from .agents import Agent, rotate
from .sprites import BODIES


class PedestrianTraffic:
    """Mixin of StreetWorld: the pedestrians' placement and walking."""

    def _init_pedestrians(self) -> None:
        n = self.config.pedestrians_per_junction * self.street.junctions
        for _ in range(self.rng.poisson(n)):
            self.agents.append(self._pedestrian())

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
        dx, dy = rotate(a.dx, a.dy, angle)
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
