"""Top-down agent sprites, pre-rendered per (kind, colour, heading bin) and pasted per frame."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .classes import BUS, CAR, PERSON

HEADING_BINS = 64


@dataclass(frozen=True)
class Body:
    """Footprint (length along the heading, width) and height of an agent kind, metres."""

    cls: int
    length: float
    width: float
    height: float
    colours: np.ndarray  # (n, 3) body / shirt colours
    drawn_scale: float = 1.0  # people are drawn larger than life so a patch of 8 px sees them


BODIES: dict[str, Body] = {
    "car": Body(
        CAR,
        4.4,
        1.9,
        1.5,
        np.array(
            [
                (235, 235, 232),
                (178, 180, 184),
                (30, 30, 34),
                (170, 28, 30),
                (36, 70, 150),
                (22, 32, 70),
                (98, 100, 104),
                (40, 96, 60),
                (222, 180, 40),
                (196, 178, 140),
            ]
        ),
    ),
    "bus": Body(BUS, 10.0, 2.5, 3.2, np.array([(200, 40, 36), (230, 190, 40), (50, 110, 180)])),
    "cyclist": Body(
        PERSON,
        1.8,
        0.7,
        1.7,
        np.array([(230, 60, 40), (40, 160, 220), (250, 210, 30), (60, 200, 90), (240, 240, 240)]),
        drawn_scale=2.0,
    ),
    "pedestrian": Body(
        PERSON,
        0.6,
        0.9,
        1.7,
        np.array(
            [
                (200, 40, 50),
                (40, 90, 200),
                (240, 240, 230),
                (30, 30, 30),
                (230, 140, 30),
                (120, 60, 160),
                (60, 150, 70),
                (240, 110, 150),
            ]
        ),
        drawn_scale=2.4,
    ),
}


@dataclass(frozen=True)
class Sprite:
    mask: np.ndarray  # (h, w) bool
    rgb: np.ndarray  # (h, w, 3) uint8
    radius: int  # the sprite is (2r+1) square, centred on the agent


def heading_bin(heading: float) -> int:
    return int(round(heading / (2 * math.pi) * HEADING_BINS)) % HEADING_BINS


@lru_cache(maxsize=8192)
def sprite(kind: str, colour: int, bin_: int, ppm: float) -> Sprite:
    """Shaded top-down sprite of `kind` heading `bin_` (0 = east, clockwise on screen)."""
    body = BODIES[kind]
    base = body.colours[colour % len(body.colours)].astype(np.float32)
    ppm *= body.drawn_scale
    r = int(math.ceil(0.5 * math.hypot(body.length, body.width) * ppm)) + 1
    g = (np.arange(2 * r + 1, dtype=np.float32) - r) / ppm
    gx, gy = g[None, :], g[:, None]
    th = bin_ / HEADING_BINS * 2 * math.pi
    a = gx * math.cos(th) + gy * math.sin(th)  # along the heading, metres
    b = -gx * math.sin(th) + gy * math.cos(th)  # to the right of the heading
    hl, hw = body.length / 2, body.width / 2
    rgb = np.broadcast_to(base, (*a.shape, 3)).copy()

    def put(region: np.ndarray, colour: np.ndarray | tuple[int, int, int]) -> None:
        rgb[region] = colour

    if kind in ("car", "bus"):
        mask = (np.abs(a) / hl) ** 6 + (np.abs(b) / hw) ** 6 < 1
        rgb *= (1.15 - 0.35 * (np.abs(b) / hw) ** 4)[..., None]  # rounded sides
        glass = np.array((42, 52, 64), np.float32)
        if kind == "car":
            put((a > 0.12 * hl * 2) & (a < 0.33 * hl * 2) & (np.abs(b) < 0.8 * hw), glass)
            put((a < -0.28 * hl * 2) & (a > -0.4 * hl * 2) & (np.abs(b) < 0.8 * hw), glass)
            roof = (a > -0.28 * hl * 2) & (a < 0.12 * hl * 2) & (np.abs(b) < 0.75 * hw)
            rgb[roof] = np.minimum(rgb[roof] * 1.12 + 10, 255)
        else:
            put((a > hl - 0.9) & (np.abs(b) < 0.85 * hw), glass)
            for c in (-2.5, 0.5):
                put((a > c) & (a < c + 1.6) & (np.abs(b) < 0.45 * hw), (150, 150, 150))
    elif kind == "cyclist":
        bike = (np.abs(a) < hl) & (np.abs(b) < 0.12)
        rider = (a / 0.35) ** 2 + (b / 0.32) ** 2 < 1
        head = ((a - 0.1) / 0.17) ** 2 + (b / 0.17) ** 2 < 1
        mask = bike | rider
        put(bike, (40, 40, 44))
        put(rider, base)
        put(head, (60, 60, 66))
    else:
        mask = (a / hl) ** 2 + (b / hw) ** 2 < 1
        rgb *= (1.1 - 0.3 * ((a / hl) ** 2 + (b / hw) ** 2))[..., None]
        put((a / 0.2) ** 2 + (b / 0.2) ** 2 < 1, (70, 50, 36))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    for arr in (mask, rgb):
        arr.setflags(write=False)
    return Sprite(mask, rgb, r)
