"""Procedural street world with multimodal futures: frames, labels, stamps, rosbag2 export."""

from .agents import BranchEvent
from .classes import AGENT_CLASSES, CLASS_NAMES, PALETTE, colorize
from .config import WorldConfig
from .render import Frame
from .world import Clip, StreetWorld, render_sequence, sample_clip

__all__ = [
    "AGENT_CLASSES",
    "CLASS_NAMES",
    "PALETTE",
    "BranchEvent",
    "Clip",
    "Frame",
    "StreetWorld",
    "WorldConfig",
    "colorize",
    "render_sequence",
    "sample_clip",
]
