"""The launch files, as `ros2 launch` would load them on a ROS 2 install. With launch_ros
importable the descriptions are built; without it (this venv) the files are checked
statically: declared arguments, the config files they name, the executable they start."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
GENERIC = LAUNCH / "forecast.launch.py"
SETUPS = {"robot.launch.py": "robot.yaml", "vehicle.launch.py": "vehicle.yaml"}
ARGUMENTS = {"config", "model_dir", "image", "namespace", "use_sim_time", "log_level"}
HAVE_LAUNCH_ROS = importlib.util.find_spec("launch_ros") is not None


def calls(path: Path, name: str) -> list[ast.Call]:
    """Every call of `name` (a bare name or an attribute) in a launch file."""
    tree = ast.parse(path.read_text(), str(path))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == name
    ]


def keywords(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords if k.arg}


def constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def value(path: Path, expr: ast.expr):
    """A literal, or the literal a module-level NAME = ... assigns."""
    if isinstance(expr, ast.Name):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == expr.id for t in node.targets
            ):
                return ast.literal_eval(node.value)
        raise AssertionError(f"{path.name}: {expr.id} is not a module-level constant")
    return ast.literal_eval(expr)


def console_scripts() -> dict[str, str]:
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"(\w+)\s*=\s*([\w.]+:\w+)"', text))


def test_the_generic_launch_file_declares_its_arguments_with_descriptions():
    declared = {}
    for call in calls(GENERIC, "DeclareLaunchArgument"):
        name = ast.literal_eval(call.args[0])
        declared[name] = keywords(call)
        assert "description" in declared[name], f"{name} has no description"
    assert set(declared) == ARGUMENTS
    assert ast.literal_eval(declared["use_sim_time"]["choices"]) == ["true", "false"]
    assert "info" in ast.literal_eval(declared["log_level"]["choices"])


def test_the_node_is_this_packages_console_script_with_config_and_remap():
    (node,) = calls(GENERIC, "Node")
    args = keywords(node)
    assert value(GENERIC, args["package"]) == "deltaworld_ros"
    executable = value(GENERIC, args["executable"])
    module, function = console_scripts()[executable].split(":")
    assert (module, function) == ("deltaworld_ros.ros.node", "main")
    assert {"parameters", "remappings", "namespace"} <= set(args)


@pytest.mark.parametrize("name", [GENERIC.name, *SETUPS])
def test_launch_files_name_existing_configs_and_install_nothing(name):
    path = LAUNCH / name
    text = path.read_text()
    for forbidden in (".venv", "site-packages", "pip install", "subprocess", "/work/"):
        assert forbidden not in text, f"{name} mentions {forbidden!r}"
    for value in constants(path):
        if value.endswith(".yaml"):
            assert (ROOT / "config" / value).is_file(), f"{name} names a missing config {value}"
    if name in SETUPS:
        assert SETUPS[name] in constants(path) and "forecast.launch.py" in constants(path)
        assert calls(path, "IncludeLaunchDescription")


def test_setup_installs_the_launch_and_config_files():
    text = (ROOT / "setup.py").read_text()
    assert 'glob("launch/*.launch.py")' in text and 'glob("config/*.yaml")' in text


@pytest.mark.skipif(not HAVE_LAUNCH_ROS, reason="launch_ros is not installed (no ROS 2 here)")
@pytest.mark.parametrize("name", [GENERIC.name, *SETUPS])
def test_launch_descriptions_build(name):
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    if name == GENERIC.name:
        declared = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
        assert declared == ARGUMENTS
