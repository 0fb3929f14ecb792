"""deltaworld_ros: generative forecasting of camera futures with delta tokens."""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_ROOT = Path(__file__).resolve().parent
