"""`colcon build` installs what `ros2 run` and `ros2 launch` look for on a ROS 2 machine:
the node under lib/<pkg>/, launch files, configs and the embedded model under share/<pkg>/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_colcon_build_gives_the_ros2_run_and_launch_layout(colcon_workspace):
    prefix = colcon_workspace / "install" / "deltaworld_ros"
    share = prefix / "share" / "deltaworld_ros"
    assert (
        prefix / "share" / "ament_index" / "resource_index" / "packages" / "deltaworld_ros"
    ).is_file()
    for executable in ("forecast_node", "managed_forecast_node", "deltaworld"):
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
