"""`deltaworld demo` (`make demo`): the whole chain on the default model, on a fresh machine.

For each camera of the street world (a static one, one on a moving vehicle):
1. `deltaworld synth` writes a street-world rosbag2 (images + labels) at the model's own image
   size, so the node sees the frames the model was trained on (no resize);
2. forecast_node starts as a real process (use_sim_time, its own ROS_DOMAIN_ID, discovery on
   this machine only), the way the node tests drive it (tools/harness.py); it is ready once
   its first /diagnostics report arrives;
3. `deltaworld replay` plays the bag into it and records what it publishes;
4. the node is stopped with SIGINT, as ros2 launch would;
5. `deltaworld eval --predictions --with-model` scores the published forecasts against the
   labels, beside the model's own segmentation of the present (copy-last) and the labels held
   still, and probes the model's delta tokens on the same frames.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..arguments import at_least
from ..evaluation.evaluator import EvalOptions, evaluate
from ..evaluation.recording import EvalError, ReplaySummary
from ..evaluation.report import summary_text, write_report
from ..evaluation.results import Evaluation
from ..model.config import ModelConfig
from ..model.store import read_manifest
from ..ros.share import package_model_dir
from ..runtime.arguments import add_forecast_arguments
from ..runtime.engine import EngineOptions
from ..synth import StreetWorld, WorldConfig
from ..synth.cli import record
from .harness import NodeProcess, domain_id, write_params
from .replay import ReplayError, ReplayOptions, replay

IMAGE_TOPIC = "/camera/image_raw"
CAMERAS = ("static", "vehicle")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    parser.add_argument(
        "--frames", type=at_least(1), default=150, help="frames of each camera's synthetic bag"
    )
    parser.add_argument(
        "--cameras",
        nargs="+",
        choices=CAMERAS,
        default=list(CAMERAS),
        help="the world's cameras to play, one bag and one node run each (default: both)",
    )
    parser.add_argument("--seed", type=int, default=7, help="world seed of the synthetic bag")
    parser.add_argument(
        "--model-dir", type=Path, help="model directory (default: the embedded one)"
    )
    parser.add_argument(
        "--backend",
        choices=("onnxruntime", "torch"),
        help="default: onnxruntime when the model has its ONNX graphs, else torch",
    )
    add_forecast_arguments(parser)
    parser.add_argument(
        "--rate", type=float, help="replay at this x the recorded rate (default: --fast pacing)"
    )
    parser.add_argument(
        "--domain-id", type=int, help="ROS_DOMAIN_ID of the node and the replay (default: by pid)"
    )
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="s for the node")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    model = args.model_dir or package_model_dir()
    manifest = read_manifest(model)
    backend = args.backend or (
        "onnxruntime" if any(f.startswith("onnx/") for f in manifest.files) else "torch"
    )
    out = args.out
    for camera in CAMERAS:  # the demo's own outputs of an earlier run
        if (out / camera).exists():
            shutil.rmtree(out / camera)
    out.mkdir(parents=True, exist_ok=True)
    domain = args.domain_id if args.domain_id is not None else domain_id("demo")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # node and replay
    print(f"[demo] model {model}, ROS_DOMAIN_ID {domain}, outputs in {out}/")
    reports = {}
    for camera in args.cameras:
        result = play_camera(args, camera, Path(model), manifest.config, backend, domain)
        if result is None:
            return 1
        reports[camera] = result
    for camera, (_, evaluation, _) in reports.items():
        print(f"[demo] {camera} camera:")
        print(summary_text(evaluation.metrics))
    print(f"[demo] done in {time.monotonic() - start:.0f} s. Reports:")
    for camera, (paths, _, _) in reports.items():
        print(
            f"  {camera} camera: {paths['html']} (also {paths['markdown'].name}, "
            "metrics.json and the figures beside it)"
        )
    ok = all(e.metrics.scored and code == 0 for _, e, code in reports.values())
    return 0 if ok else 1


def play_camera(
    args: argparse.Namespace,
    camera: str,
    model: Path,
    config: ModelConfig,
    backend: str,
    domain: int,
) -> tuple[dict[str, Path], Evaluation, int | None] | None:
    """Steps 1-5 for one camera: (report paths, evaluation, node exit code); None on failure
    (said on stderr)."""
    out = args.out / camera
    bag, predictions, report = out / "synth_bag", out / "predictions_bag", out / "report"
    out.mkdir(parents=True)
    height, width = config.image_size
    print(f"[demo] {camera} 1/5 street world, {camera} camera: {args.frames} frames "
          f"{height}x{width} (the model's size) -> {bag}")  # fmt: skip
    world = StreetWorld(WorldConfig(height=height, width=width, camera=camera), args.seed)
    print(record(bag, world, args.frames, image_topic=IMAGE_TOPIC))

    log_path = out / "node.log"
    print(f"[demo] {camera} 2/5 starting forecast_node ({backend}), log {log_path}")
    params = {
        "use_sim_time": True,  # the node's clock is the bag's, played on /clock
        "model_dir": str(model.resolve()),
        "backend": backend,
        "num_hypotheses": args.num_hypotheses,
        "horizon": args.horizon,
    }
    params_file = write_params(out / "node_params.yaml", params)
    remap = ("-r", f"image:={IMAGE_TOPIC}")
    step = config.frame_interval  # the node's forecast step
    with NodeProcess([params_file], domain, log_path, extra_args=remap) as node:
        if not wait_ready(node, args.startup_timeout):
            return None
        print(f"[demo] {camera} 3/5 replaying {bag} into the node, recording {predictions}")
        try:
            summary = run_replay(bag, predictions, args.rate, step, domain, not args.no_progress)
        except ReplayError as err:
            print(f"deltaworld demo: {err}; the node's log:\n{tail(node.log())}", file=sys.stderr)
            return None
        finally:
            code = stop_node(node)
    print(f"[demo] {camera} 4/5 node stopped (exit code {code}); replay: {summary_line(summary)}")

    print(f"[demo] {camera} 5/5 scoring the node's published forecasts -> {report}")
    options = EvalOptions(
        bag=bag,
        image_topic=IMAGE_TOPIC,
        model_dir=model,
        predictions=predictions,
        engine=EngineOptions(backend=backend),
        progress=not args.no_progress,
        with_model=True,  # the model's own segmentation of the present: copy-last
    )
    try:
        evaluation = evaluate(options)
    except EvalError as err:
        print(f"deltaworld demo: {err}", file=sys.stderr)
        return None
    return write_report(report, evaluation), evaluation, code


def wait_ready(node: NodeProcess, timeout: float) -> bool:
    """Until the node reports on /diagnostics; False (with its log) if it exits or hangs."""
    if node.wait_ready(timeout):
        return True
    if not node.running():
        print(
            f"deltaworld demo: forecast_node exited with code {node.process.returncode} "
            f"before it was ready; its log ({node.log_path}):\n{tail(node.log())}",
            file=sys.stderr,
        )
        return False
    print(
        f"deltaworld demo: forecast_node not ready after {timeout:g} s; its log:\n"
        f"{tail(node.log())}",
        file=sys.stderr,
    )
    return False


def stop_node(node: NodeProcess, grace: float = 15.0) -> int | None:
    """SIGINT, a clean rclpy shutdown; the exit code (None if it hangs: the with block kills)."""
    if not node.running():
        return node.process.returncode
    try:
        return node.interrupt(grace)
    except subprocess.TimeoutExpired:
        print(f"[demo] forecast_node still running {grace:g} s after SIGINT; killing it")
        return None


def run_replay(
    bag: Path, recording: Path, rate: float | None, step: float, domain: int, progress: bool
) -> ReplaySummary:
    options = ReplayOptions(
        bag=bag,
        image_topic=IMAGE_TOPIC,
        record=recording,
        rate=rate or 1.0,
        fast=rate is None,
        step=step,
        progress=progress,
    )
    return replay(options, domain_id=domain)


def summary_line(summary: ReplaySummary) -> str:
    return (
        f"{summary.frames_published} frames played ({summary.mode}), "
        f"{summary.forecasts_received} forecasts recorded, {summary.timeouts_fast} "
        f"timeouts, {summary.wall_s:.1f} s"
    )


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])
