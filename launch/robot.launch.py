"""A robot: one camera, the published model with a VSPW-style head (config/robot.yaml).

config:= replaces robot.yaml; every other argument of forecast.launch.py passes through
(image, model_dir, namespace, managed, ...):

    ros2 launch deltaworld_ros robot.launch.py image:=/camera/color/image_raw/compressed
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = "deltaworld_ros"
CONFIG = "robot.yaml"


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
