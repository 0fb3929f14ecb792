"""Street geometry and the static, textured top-down raster of one street layout.

A main road runs east-west through a world that wraps around in x (a torus, so a moving
camera never runs out of street); cross streets meet it at `junctions` equally spaced
junctions. Blocks between them hold buildings (drawn 2.5-D: roof leaning away from the
camera, facade strip towards it), parks with trees, and lawns. Baked sun shadows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .classes import BUILDING, ROAD, SIDEWALK, TERRAIN, VEGETATION


@dataclass(frozen=True)
class Street:
    """Metric street geometry shared by the layout and the agents (metres, y grows south)."""

    lane_w: float = 3.0
    park_w: float = 2.0
    sidewalk_w: float = 2.5
    junction_spacing: float = 64.0
    junctions: int = 3
    depth_m: float = 96.0
    main_y: float = 46.0

    @property
    def half_width(self) -> float:
        """Road half width, kerb to centre line (both roads are equally wide)."""
        return self.lane_w + self.park_w

    @property
    def ped_line(self) -> float:
        """Offset of the pedestrians' walking line (sidewalk centre) from a road's centre."""
        return self.half_width + self.sidewalk_w / 2

    @property
    def width_m(self) -> float:
        return self.junction_spacing * self.junctions

    def junction_x(self, k: int) -> float:
        return (k + 0.5) * self.junction_spacing


@dataclass(frozen=True, eq=False)
class Background:
    """Static rasters of a layout; padded on the east by `pad` columns copied from the west."""

    labels: np.ndarray  # (Hpx, Wpx + pad) uint8 class ids
    rgb: np.ndarray  # (Hpx, Wpx + pad, 3) uint8
    height_dm: np.ndarray  # (Hpx, Wpx + pad) uint8 object height, decimetres
    width_px: int  # unpadded width (the wrap period)
    sun: tuple[float, float]  # ground offset of a shadow per metre of height (east, south)

    def __deepcopy__(self, memo: dict) -> Background:
        return self  # immutable and shared between worlds


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    gh, gw = shape[0] // cell + 2, shape[1] // cell + 2
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    ys = np.arange(shape[0], dtype=np.float32) / cell
    xs = np.arange(shape[1], dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


class _Painter:
    """Accumulates labels, albedo and heights on metric rectangles and discs."""

    def __init__(self, street: Street, ppm: float, rng: np.random.Generator) -> None:
        self.ppm = ppm
        self.rng = rng
        self.h = int(round(street.depth_m * ppm))
        self.w = int(round(street.width_m * ppm))
        self.width_m = street.width_m
        self.labels = np.full((self.h, self.w), TERRAIN, np.uint8)
        self.rgb = np.zeros((self.h, self.w, 3), np.float32)
        self.height = np.zeros((self.h, self.w), np.float32)
        self.shadow = np.zeros((self.h, self.w), bool)
        self.y = (np.arange(self.h, dtype=np.float32) + 0.5) / ppm
        self.x = (np.arange(self.w, dtype=np.float32) + 0.5) / ppm

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        p = self.ppm
        r0, r1 = max(0, int(round(y0 * p))), min(self.h, int(round(y1 * p)))
        c0, c1 = max(0, int(round(x0 * p))), min(self.w, int(round(x1 * p)))
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def disc(self, cx: float, cy: float, r: float) -> tuple[tuple[slice, slice], np.ndarray]:
        """Window and mask of a disc; also the normalised radius for shading."""
        sl = self.box(cx - r, cx + r, cy - r, cy + r)
        d = np.hypot(self.x[sl[1]][None, :] - cx, self.y[sl[0]][:, None] - cy) / r
        return sl, d


def _paint_base(p: _Painter, street: Street) -> None:
    """Terrain, roads, sidewalks, markings and crosswalks."""
    rng, hw, sw = p.rng, street.half_width, street.sidewalk_w
    ym = street.main_y
    grass = np.array([92, 128, 58], np.float32)
    dirt = np.array([128, 112, 78], np.float32)
    mix = np.clip(_smooth_noise(rng, (p.h, p.w), max(4, int(6 * p.ppm))) * 0.8 + 0.3, 0, 1)
    p.rgb[:] = grass * (1 - mix[..., None] * 0.6) + dirt * (mix[..., None] * 0.6)

    dy = np.abs(p.y - ym)[:, None]  # (H, 1)
    jx = np.array([street.junction_x(k) for k in range(street.junctions)], np.float32)
    dx = np.abs(p.x[None, :] - jx[:, None]).min(0)[None, :]  # (1, W) to the nearest cross street
    road = (dy < hw) | (dx < hw)
    walk = ((dy < hw + sw) | (dx < hw + sw)) & ~road
    p.labels[walk] = SIDEWALK
    p.labels[road] = ROAD
    tiles = (np.mod(p.y, 1.0)[:, None] < 1.0 / p.ppm) | (np.mod(p.x, 1.0)[None, :] < 1.0 / p.ppm)
    p.rgb[walk] = np.array([172, 166, 156], np.float32)
    p.rgb[walk & tiles] = np.array([140, 135, 128], np.float32)
    p.rgb[road] = np.array([72, 72, 77], np.float32)
    parking = (dy > street.lane_w) & (dy < hw) & (dx > hw)
    p.rgb[parking] = np.array([86, 84, 82], np.float32)

    away = dx > hw + sw  # outside junctions and their crosswalks
    dash_x = np.mod(p.x, 6.0)[None, :] < 3.0
    dash_y = np.mod(p.y, 6.0)[:, None] < 3.0
    centre = ((dy < 0.2) & dash_x & away) | ((dx < 0.2) & dash_y & (dy > hw + sw))
    edge = (np.abs(dy - street.lane_w) < 0.12) & away
    line = np.abs(p.x[None, :] - jx[:, None])  # (J, W)
    zebra_ew = ((np.abs(line - street.ped_line) < 1.4).any(0)[None, :]) & (dy < hw)
    zebra_ew &= np.mod(p.y - ym, 1.2)[:, None] < 0.6
    zebra_ns = (np.abs(dy - street.ped_line) < 1.4) & (dx < hw)
    rel_x = np.mod(p.x, street.junction_spacing) - street.junction_spacing / 2
    zebra_ns &= np.mod(rel_x, 1.2)[None, :] < 0.6
    marks = centre | edge | zebra_ew | zebra_ns
    p.rgb[marks] = np.array([228, 226, 215], np.float32)
    p.rgb[centre] = np.array([222, 190, 60], np.float32)


def _paint_tree(p: _Painter, x: float, y: float, r: float, sun: tuple[float, float]) -> None:
    if x + r > p.width_m:  # the world wraps in x: paint the part past the seam on the west
        _paint_tree(p, x - p.width_m, y, r, sun)
    h = r * 1.6
    (sl, d) = p.disc(x + sun[0] * h, y + sun[1] * h, r)
    p.shadow[sl] |= d < 1
    sl, d = p.disc(x, y, r)
    inside = d < 1
    p.labels[sl][inside] = VEGETATION
    tone = np.array([46, 92, 38], np.float32) * p.rng.uniform(0.8, 1.2)
    shade = (1.25 - 0.55 * d[..., None]) * tone
    region = p.rgb[sl]
    region[inside] = shade[inside]
    p.height[sl][inside] = np.maximum(p.height[sl][inside], h)


ROOF_COLOURS = np.array(
    [(150, 150, 156), (168, 92, 72), (122, 104, 92), (190, 184, 172), (92, 98, 110)], np.float32
)


def _paint_building(p: _Painter, x0: float, x1: float, y0: float, y1: float, h: float) -> None:
    """Footprint [x0, x1] x [y0, y1]; the roof leans north by 0.35 m per metre of height."""
    if x1 > p.width_m:
        _paint_building(p, x0 - p.width_m, x1 - p.width_m, y0, y1, h)
    rng = p.rng
    lean = 0.35 * h
    roof_col = ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))] * rng.uniform(0.85, 1.1)
    wall_col = roof_col * 0.62 + np.array([20, 16, 10], np.float32)
    whole = p.box(x0, x1, y0 - lean, y1)
    p.labels[whole] = BUILDING
    p.height[whole] = h
    facade = p.box(x0, x1, y1 - lean, y1)
    fy = (y1 - p.y[facade[0]])[:, None] / max(lean, 1e-3) * h  # height on the wall, metres
    fx = p.x[facade[1]][None, :] - x0
    window = (np.mod(fy, 3.0) > 1.0) & (np.mod(fy, 3.0) < 2.2) & (np.mod(fx, 2.5) > 0.9)
    wall = np.where(window[..., None], np.array([58, 68, 88], np.float32), wall_col)
    p.rgb[facade] = wall
    roof = p.box(x0, x1, y0 - lean, y1 - lean)
    p.rgb[roof] = roof_col
    inner = p.box(x0 + 0.6, x1 - 0.6, y0 - lean + 0.6, y1 - lean - 0.6)
    p.rgb[inner] = roof_col * 0.9
    for _ in range(rng.integers(0, 3)):  # rooftop units
        ux, uy = (
            rng.uniform(x0 + 1, max(x0 + 1.1, x1 - 3)),
            rng.uniform(y0 + 1, max(y0 + 1.1, y1 - 3)),
        )
        p.rgb[p.box(ux, ux + 1.8, uy - lean, uy - lean + 1.4)] = np.array([175, 175, 178])


def _paint_blocks(p: _Painter, street: Street, sun: tuple[float, float]) -> None:
    """Lots along both sides of the main road between cross streets, plus street trees."""
    rng, hw, sw = p.rng, street.half_width, street.sidewalk_w
    ym, front = street.main_y, street.half_width + street.sidewalk_w
    buildings: list[tuple[float, float, float, float, float]] = []
    trees: list[tuple[float, float, float]] = []
    for k in range(street.junctions):
        xa = street.junction_x(k) + front
        xb = street.junction_x(k) + street.junction_spacing - front
        for side in (-1, 1):  # north, south
            x = xa + rng.uniform(0, 2)
            while x < xb - 4:
                width = min(rng.uniform(8, 18), xb - x)
                corner = x < xa + 3 or x + width > xb - 3
                kind = rng.choice(3, p=(0.8, 0.1, 0.1) if corner else (0.5, 0.3, 0.2))
                setback, depth = rng.uniform(0.5, 3.0), rng.uniform(10, 26)
                near = ym + side * (front + setback)
                far = near + side * depth
                if kind == 0:
                    buildings.append(
                        (x, x + width, min(near, far), max(near, far), rng.uniform(5, 13))
                    )
                else:
                    count = int(width * depth / (30 if kind == 1 else 90)) + 1
                    for _ in range(count):
                        trees.append(
                            (
                                rng.uniform(x, x + width),
                                rng.uniform(min(near, far), max(near, far)),
                                rng.uniform(1.5, 3.2),
                            )
                        )
                x += width + rng.uniform(0, 3)
        for x in np.arange(
            street.junction_x(k) + front + 4, street.junction_x(k + 1) - front - 2, 9.0
        ):
            for side in (-1, 1):
                if rng.random() < 0.45:
                    trees.append(
                        (x + rng.uniform(-1, 1), ym + side * (hw + sw - 0.2), rng.uniform(1.6, 2.4))
                    )
        for y in np.arange(2.0, street.depth_m - 2.0, 11.0):  # along the cross streets
            if abs(y - ym) < front + 3:
                continue
            for side in (-1, 1):
                if rng.random() < 0.5:
                    trees.append(
                        (
                            street.junction_x(k) + side * (hw + sw + rng.uniform(1, 5)),
                            y,
                            rng.uniform(1.6, 3.0),
                        )
                    )
    for x0, x1, y0, y1, h in buildings:
        for shift in (0.0, -p.width_m):
            sx, sy = sun[0] * h + shift, sun[1] * h
            p.shadow[p.box(x0 + sx, x1 + sx, y0 + sy, y1 + sy)] = True
    for x0, x1, y0, y1, h in sorted(buildings, key=lambda b: b[3]):  # far (north) first
        _paint_building(p, x0, x1, y0, y1, h)
    for x, y, r in trees:
        _paint_tree(p, x, y, r, sun)


@lru_cache(maxsize=32)
def build_background(street: Street, ppm: float, seed: int, pad: int) -> Background:
    """Rasterise the layout of `seed` at `ppm` pixels per metre (cached: layouts are reused)."""
    rng = np.random.default_rng([seed, 0x5EED])
    angle = rng.uniform(-0.6, 0.6) + math.pi / 4  # sun from the north-west-ish
    sun = (0.45 * math.cos(angle), 0.45 * math.sin(angle))
    p = _Painter(street, ppm, rng)
    _paint_base(p, street)
    _paint_blocks(p, street, sun)
    ground = p.height == 0
    p.rgb[p.shadow & ground] *= 0.62
    fine = rng.normal(0, 1, (p.h, p.w)).astype(np.float32)
    grain = np.where(np.isin(p.labels, (VEGETATION, TERRAIN)), 10.0, 5.0).astype(np.float32)
    blotch = _smooth_noise(rng, (p.h, p.w), max(2, int(2 * ppm))) * 8
    p.rgb += (fine * grain + blotch)[..., None]
    rgb = np.clip(p.rgb, 0, 255).astype(np.uint8)
    height_dm = np.clip(p.height * 10, 0, 255).astype(np.uint8)

    def wrap(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([a, a[:, :pad]], axis=1))

    arrays = [wrap(a) for a in (p.labels, rgb, height_dm)]
    for a in arrays:
        a.setflags(write=False)
    return Background(*arrays, width_px=p.w, sun=sun)
