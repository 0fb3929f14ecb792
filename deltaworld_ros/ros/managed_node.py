"""managed_forecast_node: forecast_node as a ROS 2 managed (lifecycle) node.

unconfigured: parameters read and checked, nothing loaded. configure: the engine, the outputs,
/diagnostics. activate: the camera subscriptions, forecasting. deactivate: frames still arrive
and are counted as inactive, none is forecast. cleanup: everything configure made is freed.
shutdown: the same, and the process ends. With autostart:=true the node configures and
activates itself, as a lifecycle manager would.
"""

from __future__ import annotations

import sys

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from ..model.store import ModelDirError
from .node import Forecasting, read_settings, run

SUCCESS = TransitionCallbackReturn.SUCCESS


class ManagedForecastNode(Forecasting, LifecycleNode):
    """forecast_node's topics and parameters, brought up and down through the lifecycle
    services (/forecast_node/change_state, get_state, ...)."""

    def __init__(self, argv: list[str] = ()) -> None:
        super().__init__("forecast_node")
        descriptor = ParameterDescriptor(
            description="configure and activate at start instead of waiting for a manager",
            read_only=True,
        )
        autostart = self.declare_parameter("autostart", False, descriptor).value
        self.settings = read_settings(self, argv)
        if autostart and self.trigger_configure() == SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model; a model that cannot load leaves the node unconfigured."""
        try:
            self.start()
        except (ModelDirError, OSError, RuntimeError, ValueError) as err:
            self.get_logger().error(f"cannot load the model: {err}")
            return TransitionCallbackReturn.FAILURE
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate()
        self.get_logger().info("active: forecasting")
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self.get_logger().info("inactive: frames are counted, not forecast")
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        self.get_logger().info("cleaned up: the engine is freed")
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        self.finished = True
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: free what was made and go back to unconfigured."""
        self.stop()
        return SUCCESS


def main(args: list[str] | None = None) -> int:
    """managed_forecast_node [--ros-args ...]"""
    return run(ManagedForecastNode, args)


if __name__ == "__main__":
    sys.exit(main())
