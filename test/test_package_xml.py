"""package.xml declares what the package imports, so that rosdep installs it on a ROS machine."""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> package.xml key, where they differ
KEYS = {"numpy": "python3-numpy", "yaml": "python3-yaml", "tqdm": "python3-tqdm",
        "matplotlib": "python3-matplotlib", "PIL": "python3-pil", "av": "python3-av",
        "threadpoolctl": "python3-threadpoolctl",
        "torch": "python3-pytorch-pip", "onnx": "python3-onnx-pip",
        "onnxruntime": "python3-onnxruntime-gpu-pip", "safetensors": "python3-safetensors-pip",
        "rosbags": "python3-rosbags-pip"}  # fmt: skip
IMPLIED = {"lifecycle_msgs"}  # managed_forecast_node needs it through rclpy.lifecycle
# Only `deltaworld bench-compare --deltatok <checkout>` imports these: the authors' checkout
# (models) and requirements-reference.txt (transformers); the node never needs them.
REFERENCE_ONLY = {"models", "transformers"}


def imported(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"deltaworld_ros"} - REFERENCE_ONLY


def test_exec_depends_match_the_imports():
    declared = {e.text for e in ET.parse(ROOT / "package.xml").getroot().iter("exec_depend")}
    sources = [*(ROOT / "deltaworld_ros").rglob("*.py"), *(ROOT / "launch").glob("*.py")]
    needed = {KEYS.get(name, name) for name in imported(sources)} | set(IMPLIED)
    assert needed - declared == set(), "imported but not in package.xml"
    assert declared - needed == set(), "in package.xml but never imported"
