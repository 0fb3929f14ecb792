"""forecast_node with a parameter file; the camera topic `image` is remapped to `image:=...`.

ros2 launch deltaworld_ros forecast.launch.py image:=/camera/image_raw
ros2 launch deltaworld_ros forecast.launch.py config:=/path/to/my.yaml model_dir:=/models/x
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "deltaworld_ros"
EXECUTABLE = "forecast_node"


def forecast_node(context):
    """The node, with model_dir overriding the config file's only when it is given."""
    overrides = {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context) == "true"}
    model_dir = LaunchConfiguration("model_dir").perform(context)
    if model_dir:
        overrides["model_dir"] = model_dir
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name="forecast_node",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("config"), overrides],
            remappings=[("image", LaunchConfiguration("image"))],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "config",
                default_value=PathJoinSubstitution(
                    [FindPackageShare(PACKAGE), "config", "default.yaml"]
                ),
                description="parameter file (default.yaml: embedded model, one camera)",
            ),
            DeclareLaunchArgument(
                "model_dir",
                default_value="",
                description="model directory with manifest.json; empty keeps the config file's",
            ),
            DeclareLaunchArgument(
                "image",
                default_value="image",
                description="camera topic the node's `image` input is remapped to",
            ),
            DeclareLaunchArgument(
                "namespace", default_value="", description="namespace of the node and outputs"
            ),
            DeclareLaunchArgument(
                "use_sim_time",
                default_value="false",
                choices=["true", "false"],
                description="follow /clock (bag replay)",
            ),
            DeclareLaunchArgument(
                "log_level",
                default_value="info",
                choices=["debug", "info", "warn", "error", "fatal"],
                description="forecast_node's log level",
            ),
            OpaqueFunction(function=forecast_node),
        ]
    )
