"""Where a colcon-installed package keeps its files: the ament share directory."""

from __future__ import annotations

import os
from pathlib import Path

from ..model.store import default_model_dir

PACKAGE = "deltaworld_ros"


def package_model_dir() -> Path:
    """The embedded default model: $DELTAWORLD_MODEL, the ament share dir of an installed
    package, or the source tree's (model.store.default_model_dir)."""
    if os.environ.get("DELTAWORLD_MODEL"):
        return default_model_dir()
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(PACKAGE)) / "models" / "default"
        if share.is_dir():
            return share
    except (ImportError, LookupError, ValueError, OSError):  # OSError: no AMENT_PREFIX_PATH
        pass
    return default_model_dir()
