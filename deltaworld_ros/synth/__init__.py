"""Procedural street world with multimodal futures: frames, labels, stamps, rosbag2 export."""

from .classes import AGENT_CLASSES, CLASS_NAMES, PALETTE, colorize
from .world import (
    BranchEvent,
    Frame,
    Sequence,
    StreetWorld,
    WorldConfig,
    render_sequence,
    sample_clip,
)

__all__ = [
    "AGENT_CLASSES",
    "CLASS_NAMES",
    "PALETTE",
    "BranchEvent",
    "Frame",
    "Sequence",
    "StreetWorld",
    "WorldConfig",
    "colorize",
    "render_sequence",
    "sample_clip",
]
