"""`colcon build` installs what `ros2 run` and `ros2 launch` look for on a ROS 2 machine:
the node under lib/<pkg>/, launch files, configs and the embedded model under share/<pkg>/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).parent / "colcon"


@pytest.mark.skipif(not COLCON.exists(), reason="colcon is installed by requirements-dev.txt")
def test_colcon_build_gives_the_ros2_run_and_launch_layout(tmp_path):
    source = tmp_path / "src" / "deltaworld_ros"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "install", "log", "results", "*.egg-info", "__pycache__"
        ),
    )
    result = subprocess.run(
        [str(COLCON), "build", "--packages-select", "deltaworld_ros"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = tmp_path / "install" / "deltaworld_ros"
    share = prefix / "share" / "deltaworld_ros"
    assert (
        prefix / "share" / "ament_index" / "resource_index" / "packages" / "deltaworld_ros"
    ).is_file()
    for executable in ("forecast_node", "deltaworld"):
        assert (prefix / "lib" / "deltaworld_ros" / executable).is_file(), (
            f"ros2 run needs lib/deltaworld_ros/{executable}"
        )
    for launch in ("forecast.launch.py", "robot.launch.py", "vehicle.launch.py"):
        assert (share / "launch" / launch).is_file()
    for config in ("default.yaml", "robot.yaml", "vehicle.yaml"):
        assert (share / "config" / config).is_file()
    assert (share / "package.xml").is_file()
    shipped = sorted(
        p.relative_to(ROOT / "models") for p in (ROOT / "models").rglob("*") if p.is_file()
    )
    installed = sorted(
        p.relative_to(share / "models") for p in (share / "models").rglob("*") if p.is_file()
    )
    assert installed == shipped, (
        "every file of models/ must be installed (the manifest pins them all)"
    )
    assert (share / "models" / "default" / "manifest.json").is_file()
