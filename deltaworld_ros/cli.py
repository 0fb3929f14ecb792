"""One `deltaworld` command; each subcommand lives beside the layer it drives.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. Modules are
imported only when their subcommand runs, so `deltaworld synth` never pays for onnxruntime.
Errors end a command with one line `deltaworld <command>: <message>`: exit code 2 for bad
input (a UsageError, or a flag argparse refuses), 1 for any other DeltaworldError.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .arguments import CommandParser, run_command
from .errors import UsageError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("deltaworld_ros.synth.cli", "write the procedural street world as a rosbag2"),
    "train": ("deltaworld_ros.train.cli", "train the default model's stages"),
    "export": ("deltaworld_ros.export.cli", "export ONNX graphs + manifest into a model dir"),
    "bench": ("deltaworld_ros.tools.bench", "benchmark the streaming Forecaster"),
    "bench-compare": (
        "deltaworld_ros.tools.compare",
        "the package vs the authors' code (and its own levers), side by side",
    ),
    "bench-gpu": ("deltaworld_ros.runtime.gpu_bench", "the torch path on a GPU (CUDA graphs)"),
    "evaluate-world": ("deltaworld_ros.evaluation.world", "the paper's table on held-out synth"),
    "eval": ("deltaworld_ros.evaluation.cli", "score a forecaster on a rosbag2"),
    "bag-from-video": ("deltaworld_ros.io.video_bag", "turn a video file into a rosbag2"),
    "replay": ("deltaworld_ros.tools.replay", "play a bag into ROS and record the outputs"),
    "demo": ("deltaworld_ros.tools.demo", "the whole chain on the default model"),
    "soak": ("deltaworld_ros.tools.fuzz", "forecast_node under hostile input: RSS and p99 drift"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="deltaworld", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:
        try:
            build_parser().parse_args(argv)  # --help, or the refusal of an unknown command
        except UsageError as err:
            print(f"deltaworld: {err}", file=sys.stderr)
            return 2
    name = argv[0]
    module, description = SUBCOMMANDS[name]
    return run_command(f"deltaworld {name}", description, importlib.import_module(module), argv[1:])


if __name__ == "__main__":
    sys.exit(main())
