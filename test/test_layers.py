"""The package's layers, and the one direction its imports take: a module imports only from its
own package or from layers below it. Read from the source (every import, also those inside
functions), so that an import the wrong way fails here before it tangles the layers; and the
planner-facing futures decoder stays importable without the node."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "deltaworld_ros"

# Bottom to top. A layer imports the layers of lower rows, never its own row's other layers.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),  # the package's error types
    ("io", "model", "arguments"),  # codecs and bags; networks and model dirs; command plumbing
    ("synth", "runtime"),  # the procedural world; inference without ROS
    ("export", "train", "ros"),  # ONNX graphs; training; the node and its message contract
    ("evaluation",),  # scores forecasts, also what the node published (ros's contract)
    ("tools",),  # benchmarks, replay, soak, demo: drive the node and the evaluation
    ("cli",),  # the `deltaworld` command
)
RANK = {layer: rank for rank, row in enumerate(LAYERS) for layer in row}
# Third-party modules only the ROS side may import (runtime and below are tested without ROS).
ROS_ONLY = ("rclpy", "ament_index_python")
ROS_SIDE = {"ros", "tools", "cli"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(module: str, path: Path) -> set[str]:
    """Every module `module` imports, relative imports resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                names.add(prefix)
            else:  # from . import a, b: modules of the package
                names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def test_every_module_belongs_to_a_layer():
    unplaced = {layer(m) for m in modules() if m != PACKAGE} - set(RANK)
    assert not unplaced, f"place {sorted(unplaced)} in LAYERS of test_layers.py"


def test_imports_only_point_down():
    wrong = []
    for module, path in modules().items():
        own = layer(module)
        for name in imported(module, path):
            target = layer(name)
            if own is None or target is None or target == own:
                continue
            if RANK[target] >= RANK[own]:
                wrong.append(f"{module} imports {name} ({own} may not import {target})")
    assert not wrong, "\n".join(sorted(wrong))


def test_ros_stays_on_the_ros_side():
    wrong = [
        f"{module} imports {name}"
        for module, path in modules().items()
        if layer(module) not in ROS_SIDE
        for name in imported(module, path)
        if name.split(".")[0] in ROS_ONLY
    ]
    assert not wrong, "\n".join(wrong)


def test_the_table_catches_an_import_the_wrong_way(tmp_path):
    """The parser sees relative imports, from-imports of modules and imports in functions."""
    path = tmp_path / "replay.py"
    path.write_text(
        "from ..evaluation import report\n"
        "from .. import tools\n"
        "def f():\n"
        "    from ...deltaworld_ros.cli import main\n"
    )
    names = imported(f"{PACKAGE}.runtime.replay", path)
    assert {f"{PACKAGE}.evaluation", f"{PACKAGE}.tools"} <= names
    assert all(RANK[layer(n)] > RANK["runtime"] for n in names if layer(n))


def test_the_futures_decoder_loads_without_the_node():
    """A planner imports the decoder and the topic names without rclpy, the node or torch."""
    code = (
        "import sys\n"
        "from deltaworld_ros.ros.futures import decode_futures\n"
        "from deltaworld_ros.ros.topics import DEFAULT_FUTURES\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'torch')\n"
        "             or m == 'deltaworld_ros.ros.node'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
