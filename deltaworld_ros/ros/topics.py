"""The topic names of the node's interface and of what the tools record beside it.

A camera's outputs live under its namespace: output_namespace ("deltaworld" by default),
"<output_namespace>/<camera>" with several cameras; `output(namespace, FUTURES)` is the full
name. No ROS import: planners, the evaluator and the tools read these names too.
"""

from __future__ import annotations

# Outputs, relative to a camera's namespace.
FUTURES = "futures"
CONFIDENCE = "futures/confidence"
UNCERTAINTY = "futures/uncertainty"
DEPTH = "futures/depth"
LAYOUT = "futures/layout"  # transient local
VISUALIZATION = "visualization"

DEFAULT_NAMESPACE = "deltaworld"
DIAGNOSTICS = "/diagnostics"
REPLAY_STATS = "/deltaworld/replay/stats"  # std_msgs/String JSON that `deltaworld replay` writes


def output(namespace: str, name: str) -> str:
    """Output `name` (FUTURES, LAYOUT, ...) of the camera whose outputs are under `namespace`."""
    return f"{namespace.rstrip('/')}/{name}"


def beside(futures_topic: str, name: str) -> str:
    """A futures/... output of the camera whose futures are on `futures_topic`, whatever it is
    called: beside("/robot/forecasts", LAYOUT) == "/robot/forecasts/layout"."""
    if not name.startswith(FUTURES):
        raise ValueError(f"{name!r} is not published beside {FUTURES}")
    return futures_topic + name.removeprefix(FUTURES)


DEFAULT_FUTURES = output(f"/{DEFAULT_NAMESPACE}", FUTURES)  # one camera, node at the root
