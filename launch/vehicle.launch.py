"""A vehicle: front and side cameras, square crops, a Cityscapes-style head (config/vehicle.yaml).

The camera topics are parameters in vehicle.yaml (front/image_raw, side/image_raw/compressed,
relative to `namespace`); for other topics, copy the file and pass config:=<copy>.
forecast.launch.py's other arguments pass through:

    ros2 launch deltaworld_ros vehicle.launch.py model_dir:=/models/vitb16_cityscapes
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = "deltaworld_ros"
CONFIG = "vehicle.yaml"


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "config",
                default_value=PathJoinSubstitution([share, "config", CONFIG]),
                description=f"parameter file (default {CONFIG})",
            ),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(
                    PathJoinSubstitution([share, "launch", "forecast.launch.py"])
                ),
                launch_arguments={"config": LaunchConfiguration("config")}.items(),
            ),
        ]
    )
