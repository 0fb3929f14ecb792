"""Every `deltaworld` command, given bad input, ends with exit code 2 and one line
`deltaworld <command>: <message>` naming what was wrong; never a traceback. Each command runs
in a process of its own, as a user would start it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deltaworld_ros.io.bags import ImageBagWriter

IMAGE = "/camera/image"
NO_MODEL = "no manifest.json in model directory {missing}"
# (command and its arguments, a part of the one line it must print); {missing} is a path that
# does not exist, {new} one that may be created, {bag} a small bag of IMAGE frames.
CASES = [
    ("synth --out {new} --size 96", "synth: argument --size: size must read HxW"),
    ("synth --out {bag}", "synth: --out {bag} exists already"),
    ("train --stages world,nope --out {new}", "train: unknown stages ['nope']"),
    ("train --steps world=many --out {new}", "train: 'world=many' in 'world=many': not an integer"),
    ("train --preset nope --out {new} --clips 1", "train: unknown model preset 'nope'"),
    ("export --preset tiny --image-size 60x60 --out {new}", "must be a positive multiple"),
    ("export --model-dir {missing}", f"export: {NO_MODEL}"),
    ("bench --num-hypotheses -1", "bench: argument --num-hypotheses: must be >= 1, got -1"),
    ("bench --model-dir {missing} --device cpu", f"bench: {NO_MODEL}"),
    ("bench --device gpu", "bench: device must be cpu, cuda or cuda:<index>, got 'gpu'"),
    ("bench --providers quantum", "bench: unknown execution provider 'quantum'"),
    ("bench-compare --model-dir {missing}", f"bench-compare: {NO_MODEL}"),
    ("bench-gpu --preset tiny --image-size 6x6 --device cpu", "bench-gpu: image size 6x6"),
    ("evaluate-world --model-dir {missing}", f"evaluate-world: {NO_MODEL}"),
    (f"eval --bag {{missing}} --image-topic {IMAGE}", "eval: no rosbag2 at {missing}"),
    ("eval --bag {bag} --image-topic /nope", "eval: --image-topic /nope is not in the bag"),
    (f"eval --bag {{bag}} --image-topic {IMAGE} --model-dir {{missing}}", "eval: cannot open"),
    (
        f"eval --bag {{bag}} --image-topic {IMAGE} --precision int8 --backend torch",
        "eval: precision 'int8' does not run on torch",
    ),  # fmt: skip
    ("bag-from-video {missing} --out {new}", "bag-from-video: video {missing} does not exist"),
    (f"replay --bag {{missing}} --image-topic {IMAGE} --record {{new}}", "replay: no rosbag2 at"),
    (
        f"replay --bag {{bag}} --image-topic {IMAGE} --record {{bag}}",
        "replay: --record {bag} exists already",
    ),
    ("demo --model-dir {missing} --out {new}", f"demo: {NO_MODEL}"),
    ("soak --model-dir {missing}", f"soak: {NO_MODEL}"),
    ("nope", "deltaworld: argument COMMAND: invalid choice: 'nope'"),
]


def commands() -> list[str]:
    """The commands `deltaworld --help` lists."""
    help_text = subprocess.run([sys.executable, "-m", "deltaworld_ros.cli", "--help"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    return re.findall(r"^    (\S+)", help_text, re.MULTILINE)  # "    synth   write ..."


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    with ImageBagWriter(root / "bag") as writer:
        for i in range(3):
            writer.write_image(IMAGE, (i + 1) * 10**8, np.zeros((64, 64, 3), np.uint8), "rgb8")
    return {"missing": str(root / "missing"), "new": str(root / "new"), "bag": str(root / "bag")}


def test_every_listed_command_is_tried():
    listed = commands()
    assert "synth" in listed and "soak" in listed
    tried = {line.split()[0] for line, _ in CASES}
    assert set(listed) <= tried, sorted(set(listed) - tried)


@pytest.mark.parametrize(("line", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code_2(paths, tmp_path, line, expected):
    argv = [part.format(**paths) for part in line.split()]
    done = subprocess.run([sys.executable, "-m", "deltaworld_ros.cli", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    command = "deltaworld" if argv[0] == "nope" else f"deltaworld {argv[0]}"
    assert lines[0].startswith(f"{command}: "), lines[0]
    assert expected.format(**paths) in lines[0]
    assert not Path(paths["new"]).exists()  # nothing was written
