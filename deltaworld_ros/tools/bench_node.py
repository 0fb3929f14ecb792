"""Benchmark the running node: `python -m deltaworld_ros.tools.bench_node [--model-dir DIR]`.

Starts forecast_node as a user would (console script, params file, its own ROS domain),
publishes rgb8 camera frames at --rate Hz stamped with the wall clock, and reports
  - end-to-end latency: arrival of each futures message at a subscriber - its header stamp
    (DDS in, the wait in the latest-frame slot, inference, packing, DDS out), median and p95;
  - the node's own overhead (message -> RGB conversion, packing, publishing) next to the
    Forecaster's time per step, both as the node reports them on /diagnostics;
  - rates and drops (stale: replaced before inference; gated: between forecast steps).
The result goes to benchmarks/node-<model>-<backend>.json.

Frames above 512 KB (640x480 rgb8 is 900 KB) do not fit Fast DDS's default shared-memory
segment and go over fragmented UDP, where the node's best-effort camera subscription loses
most of them; both processes therefore run with config/fastdds_large_frames.xml unless
FASTDDS_DEFAULT_PROFILES_FILE is set already or --stock-dds is given (to measure that loss).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ..arguments import at_least, run_command, size
from ..io.images import stamp_ns
from ..model.store import read_manifest
from ..ros import packing, topics
from ..ros.diagnostics import (
    FORECASTER,
    GATED,
    LATENCY,
    NODE_STAGES,
    RECEIVED,
    STALE,
    counter,
    latest_cameras,
    read_report,
    stage_summary,
)
from ..ros.node import OUTPUT_QOS, SENSOR_QOS
from ..ros.params import engine_parameters
from ..ros.share import package_model_dir
from ..runtime.arguments import add_engine_arguments, add_forecast_arguments, engine_options
from ..synth import WorldConfig, render_sequence
from .harness import NodeProcess, Probe, domain_id, write_params

FUTURES = topics.DEFAULT_FUTURES
DDS_PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_large_frames.xml"
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def frames(height: int, width: int, count: int, rate: float) -> list[Image]:
    """`count` frames of the procedural street world as rgb8 messages (stamps set at send)."""
    world = render_sequence(
        WorldConfig(height=height, width=width, fps=rate), seed=0, num_frames=count
    )
    return [packing.image_message(rgb, "rgb8", Header(frame_id="camera")) for rgb in world.rgb]


def camera_values(probe: Probe) -> dict[str, str]:
    """The one camera's totals in the latest /diagnostics."""
    return next(iter(latest_cameras(probe.received(topics.DIAGNOSTICS)).values()), {})


def stage_means(probe: Probe, since: float) -> dict[str, float]:
    """Mean over the diagnostics periods since `since` of each stage's per-period mean, ms."""
    reports = [read_report(m) for arrived, m in probe.timed(topics.DIAGNOSTICS) if arrived > since]
    return {stage: round(v["mean"], 3) for stage, v in sorted(stage_summary(reports).items())}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = args.model_dir or package_model_dir()
    manifest = read_manifest(model_dir, verify=False)
    height, width = args.size
    messages = frames(height, width, args.frames, args.rate)
    params = {
        "model_dir": str(model_dir),
        **engine_parameters(engine_options(args)),
        "num_hypotheses": args.num_hypotheses,
        "horizon": args.horizon,
        "visualization": not args.no_visualization,
        "diagnostics_period": 1.0,
    }
    if not args.stock_dds:
        os.environ.setdefault(PROFILE_VARIABLE, str(DDS_PROFILE))  # before any participant
    domain = domain_id("bench_node")
    with tempfile.TemporaryDirectory() as tmp:
        files = [write_params(Path(tmp) / "bench.yaml", params)]
        with NodeProcess(files, domain, Path(tmp) / "node.log") as node, Probe(domain) as probe:
            probe.subscribe(Image, FUTURES, OUTPUT_QOS)
            probe.subscribe(DiagnosticArray, topics.DIAGNOSTICS)
            publisher = probe.publisher(Image, "/image", SENSOR_QOS)
            sent = 0

            def publish_for(seconds: float, until=None) -> None:
                """Frames at args.rate, stamped with the wall clock as they leave."""
                nonlocal sent
                start, count = time.monotonic(), 0
                while time.monotonic() - start < seconds and not (until and until()):
                    if not node.running():
                        raise RuntimeError(f"forecast_node exited:\n{node.log()}")
                    msg = messages[sent % len(messages)]
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
                    publisher.publish(msg)
                    sent, count = sent + 1, count + 1
                    time.sleep(max(0.0, start + count / args.rate - time.monotonic()))

            publish_for(args.warmup_timeout, until=lambda: probe.received(FUTURES))
            if not probe.received(FUTURES):
                raise RuntimeError(f"no forecast within {args.warmup_timeout} s:\n{node.log()}")
            publish_for(args.warmup)
            begin, sent_before = time.time(), sent
            before = camera_values(probe)
            publish_for(args.duration)
            end = time.time()
            time.sleep(1.5)  # the last forecasts and one more diagnostics period
            after = camera_values(probe)
            stages = stage_means(probe, begin + 1.0)
            futures = probe.timed(FUTURES)
            code = node.interrupt()
    latencies = np.array(
        [
            (arrived - stamp_ns(msg.header) * 1e-9) * 1e3
            for arrived, msg in futures
            if begin <= stamp_ns(msg.header) * 1e-9 <= end
        ]
    )
    frames_sent = sent - sent_before

    def delta(key: str) -> int:
        return counter(after, key) - counter(before, key)

    return {
        "what": "forecast_node end to end over DDS on one machine (python -m "
        "deltaworld_ros.tools.bench_node)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "model": {
            "dir": str(model_dir),
            "name": manifest.config.name,
            "image_size": list(manifest.config.image_size),
            "source": manifest.provenance.get("source", ""),
        },
        "params": params,
        "dds_profile": os.environ.get(PROFILE_VARIABLE, "Fast DDS defaults"),
        "input": {
            "rate_hz": args.rate,
            "size": [height, width],
            "encoding": "rgb8",
            "duration_s": round(end - begin, 2),
            "frames_sent": frames_sent,
        },
        "forecasts": {
            "received": int(latencies.size),
            "rate_hz": round(latencies.size / (end - begin), 2),
            "frames_received_by_node": delta(RECEIVED),
            "frames_dropped_stale": delta(STALE),
            "frames_gated": delta(GATED),
        },
        "latency_stamp_to_subscriber_ms": {
            "median": round(float(np.median(latencies)), 2),
            "p95": round(float(np.percentile(latencies, 95)), 2),
            "max": round(float(latencies.max()), 2),
        },
        "node_overhead_ms": {stage: stages.get(stage) for stage in NODE_STAGES},
        "node_overhead_total_ms": round(sum(stages.get(s, 0.0) for s in NODE_STAGES), 3),
        "forecaster_ms": {
            k.removeprefix(FORECASTER): v for k, v in stages.items() if k.startswith(FORECASTER)
        },
        "node_stamp_to_publish_ms": stages.get(LATENCY),
        "exit_code_after_sigint": code,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir", type=Path, help="model directory (default: the embedded model)"
    )
    add_engine_arguments(parser)
    add_forecast_arguments(parser)
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--size", type=size, default=(480, 640), help="HxW of the frames")
    parser.add_argument("--frames", type=at_least(1), default=30, help="distinct frames, looped")
    parser.add_argument("--duration", type=float, default=20.0, help="s measured")
    parser.add_argument("--warmup", type=float, default=3.0, help="s after the first forecast")
    parser.add_argument("--warmup-timeout", type=float, default=120.0)
    parser.add_argument("--no-visualization", action="store_true")
    parser.add_argument(
        "--stock-dds", action="store_true", help=f"do not set {PROFILE_VARIABLE} (see above)"
    )
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/node_...)")


def run(args: argparse.Namespace) -> int:
    result = measure(args)
    name = f"node-{result['model']['name']}-{args.backend}.json"  # beside `deltaworld bench`'s
    out = args.out or Path("benchmarks") / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    latency = result["latency_stamp_to_subscriber_ms"]
    print(
        f"{result['forecasts']['received']} forecasts at {result['forecasts']['rate_hz']} Hz "
        f"from {result['input']['frames_sent']} frames at {args.rate:g} Hz "
        f"({result['forecasts']['frames_received_by_node']} received by the node, "
        f"{result['forecasts']['frames_gated']} gated, "
        f"{result['forecasts']['frames_dropped_stale']} stale)\n"
        f"end-to-end latency: median {latency['median']} ms, p95 {latency['p95']} ms\n"
        f"node overhead {result['node_overhead_total_ms']} ms per step "
        f"{result['node_overhead_ms']}; Forecaster {result['forecaster_ms'].get('total')} ms\n"
        f"-> {out}"
    )
    return 0 if result["exit_code_after_sigint"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    prog, description = "python -m deltaworld_ros.tools.bench_node", __doc__.splitlines()[0]
    argv = sys.argv[1:] if argv is None else argv
    return run_command(prog, description, sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
