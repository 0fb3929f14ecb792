"""One `deltaworld` command; each subcommand lives beside the layer it drives.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. Modules are
imported only when their subcommand runs, so `deltaworld synth` never pays for onnxruntime.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("deltaworld_ros.synth.cli", "write the procedural street world as a rosbag2"),
    "train": ("deltaworld_ros.train.cli", "train the default model's stages"),
    "export": ("deltaworld_ros.export.cli", "export ONNX graphs + manifest into a model dir"),
    "bench": ("deltaworld_ros.runtime.bench", "benchmark the streaming Forecaster"),
    "bench-compare": (
        "deltaworld_ros.runtime.compare",
        "the package vs the authors' code (and its own levers), side by side",
    ),
    "bench-gpu": ("deltaworld_ros.runtime.gpu_bench", "the torch path on a GPU (CUDA graphs)"),
    "evaluate-world": ("deltaworld_ros.evaluation.world", "the paper's table on held-out synth"),
    "eval": ("deltaworld_ros.evaluation.replay_eval", "score a forecaster on a rosbag2"),
    "bag-from-video": ("deltaworld_ros.io.video_bag", "turn a video file into a rosbag2"),
    "replay": ("deltaworld_ros.ros.replay", "play a bag into ROS and record the outputs"),
    "demo": ("deltaworld_ros.evaluation.demo", "the whole chain on the default model"),
    "soak": ("deltaworld_ros.ros.fuzz", "forecast_node under hostile input: RSS and p99 drift"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltaworld", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        top.parse_args(argv)  # prints usage / the error and exits
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"deltaworld {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
