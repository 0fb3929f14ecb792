"""The synthetic world's semantic classes and their fixed visualisation palette."""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "road",  # lane markings included: a few pixels wide, no 8-pixel patch resolves them
    "sidewalk",
    "building",
    "vegetation",
    "terrain",
    "car",
    "bus",
    "person",  # pedestrians and cyclists: even drawn large, a few 8-pixel patches can't tell them
)
ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, CAR, BUS, PERSON = range(len(CLASS_NAMES))
BACKGROUND_CLASSES: tuple[int, ...] = (ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN)
AGENT_CLASSES: tuple[int, ...] = (CAR, BUS, PERSON)

# Cityscapes colours where Cityscapes has the class; uint8 RGB, one row per class id.
PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128),  # road
        (244, 35, 232),  # sidewalk
        (70, 70, 70),  # building
        (107, 142, 35),  # vegetation
        (152, 251, 152),  # terrain
        (0, 0, 142),  # car
        (0, 60, 100),  # bus
        (220, 20, 60),  # person
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class ids (..., H, W) -> palette colours (..., H, W, 3) uint8."""
    return PALETTE[labels]
