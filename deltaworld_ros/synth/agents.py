"""Road users, their logged decisions and the small geometry helpers their motion shares."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple


class BranchEvent(NamedTuple):
    """One random decision: e.g. ("car", 12, "turn_left", step 40, visible); kind "ego" is
    the moving camera's own car (agent id 0)."""

    kind: str
    agent_id: int
    decision: str
    step: int
    visible: bool


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
    mode: str = "straight"  # straight | maneuver | merge | parked | wait | walk | inactive
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


def rotate(x: float, y: float, angle: float) -> tuple[float, float]:
    c, s = math.cos(angle), math.sin(angle)
    return x * c - y * s, x * s + y * c


def smoothstep(t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)
