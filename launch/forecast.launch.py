"""forecast_node with a parameter file; the camera topic `image` is remapped to `image:=...`.

ros2 launch deltaworld_ros forecast.launch.py image:=/camera/image_raw
ros2 launch deltaworld_ros forecast.launch.py config:=/path/to/my.yaml model_dir:=/models/x
ros2 launch deltaworld_ros forecast.launch.py config:=/path/to/my.yaml model_dir:=embedded
ros2 launch deltaworld_ros forecast.launch.py managed:=true autostart:=false
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "deltaworld_ros"
NAME = "forecast_node"
EXECUTABLES = {"false": "forecast_node", "true": "managed_forecast_node"}  # by `managed`
EMBEDDED = "embedded"  # model_dir:=embedded selects the embedded default model


def forecast_node(context):
    """The node; model_dir overrides the config file's only when it is given."""
    argument = {
        name: LaunchConfiguration(name).perform(context)
        for name in ("config", "model_dir", "image", "namespace", "use_sim_time", "log_level",
                     "managed", "autostart")
    }  # fmt: skip
    overrides = {
        "use_sim_time": argument["use_sim_time"] == "true",
        "log_level": argument["log_level"],
    }
    if argument["model_dir"]:
        overrides["model_dir"] = "" if argument["model_dir"] == EMBEDDED else argument["model_dir"]
    if argument["managed"] == "true":
        overrides["autostart"] = argument["autostart"] == "true"
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLES[argument["managed"]],
            name=NAME,
            namespace=argument["namespace"],
            parameters=[argument["config"], overrides],
            remappings=[("image", argument["image"])],
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
                description="model directory with manifest.json; 'embedded' = the embedded "
                "default model; empty keeps the config file's",
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
                description="forecast_node's log level (its own logger; rcl's stay at info)",
            ),
            DeclareLaunchArgument(
                "managed",
                default_value="false",
                choices=["true", "false"],
                description="a managed (lifecycle) node: model loaded on configure, cameras "
                "forecast while active (ros2 lifecycle set /forecast_node ...)",
            ),
            DeclareLaunchArgument(
                "autostart",
                default_value="true",
                choices=["true", "false"],
                description="with managed:=true, configure and activate at once; false waits "
                "for a lifecycle manager",
            ),
            OpaqueFunction(function=forecast_node),
        ]
    )
