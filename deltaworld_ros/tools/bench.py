"""`deltaworld bench`: latency, throughput, memory and FLOP/s of the streaming Forecaster.

Synthetic frames arrive at the model's frame interval on S streams; every step feeds one frame
per stream through one batched `Forecaster.process` (runtime/bench.py). After the warm-up it
reports per-stage latency (median / p95 / p99), stream-frames per second, peak RSS, and the
closed-form FLOPs of every graph call (runtime/flops.py), counted from the shapes the engine
really sees. `--soak N` compares RSS and p99 at the start and the end. `--preset` measures
random weights of a preset, exported to a temporary model directory first.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from ..arguments import at_least, size
from ..errors import UsageError
from ..model.config import PRESETS
from ..model.store import ModelDirError
from ..ros.share import package_model_dir
from ..runtime.arguments import add_engine_arguments, add_forecast_arguments, engine_options
from ..runtime.bench import (
    peak_rss_bytes,
    run_record,
    run_steps,
    soak_report,
    summarise,
    synthetic_streams,
)
from ..runtime.engine import Engine, EngineOptions, open_engine
from ..runtime.flops import CountingEngine, frame_flops
from ..runtime.forecaster import Forecaster, ForecasterConfig
from ..runtime.threads import passive_openmp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", type=Path, help="model dir (default: the embedded model)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="random weights of a preset")
    parser.add_argument("--image-size", type=size, help="HxW for --preset (default: its own)")
    add_engine_arguments(parser)
    add_forecast_arguments(parser)
    parser.add_argument("--streams", type=at_least(1), default=1,
                        help="cameras batched together")  # fmt: skip
    parser.add_argument("--frames", type=at_least(1), default=200,
                        help="measured stream-frames, spread over the streams")  # fmt: skip
    parser.add_argument("--warmup", type=at_least(0), default=10, help="steps before measuring")
    parser.add_argument("--output-size", type=size,
                        help="class map HxW (default: the Forecaster's)")  # fmt: skip
    parser.add_argument("--soak", type=at_least(1), metavar="N",
                        help="long run of N stream-frames: RSS and p99, start vs end")  # fmt: skip
    parser.add_argument("--soak-tolerance", type=float, default=5.0,
                        help="allowed growth of RSS and p99 in a soak, percent")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="result file (default benchmarks/bench-...)")


def open_bench_engine(
    args: argparse.Namespace, options: EngineOptions, workdir: Path
) -> tuple[Engine, str]:
    """The engine to measure and a description of the model it runs."""
    if args.preset is None:
        model_dir = args.model_dir or package_model_dir()
        try:
            return open_engine(model_dir, options), str(model_dir)
        except ModelDirError as err:
            raise UsageError(f"{err} (or benchmark --preset NAME)") from err
    passive_openmp()
    import torch

    from ..export.exporter import export_model
    from ..model.config import preset
    from ..model.loading import save_weights
    from ..model.store import write_manifest
    from ..model.world_model import WorldModel

    torch.manual_seed(args.seed)
    model = WorldModel(preset(args.preset, args.image_size)).eval()
    source = {"source": f"random weights seed {args.seed}"}
    save_weights(model, workdir)
    write_manifest(workdir, model.cfg, source)
    if options.backend == "onnxruntime":
        print(f"exporting random-weight {args.preset} to {workdir} ...", flush=True)
        export_model(model, workdir, source, fp16=options.precision == "fp16", check=False)
    return open_engine(workdir, options), f"preset {args.preset}, {source['source']}"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("deltaworld_ros").setLevel(logging.INFO)
    if args.image_size is not None and args.preset is None:
        raise UsageError("--image-size applies to --preset only (a model dir has its own size)")
    options = engine_options(args, streams=args.streams)
    with tempfile.TemporaryDirectory(prefix="deltaworld-bench-") as workdir:
        engine, source = open_bench_engine(args, options, Path(workdir))
        return bench(engine, source, args)


def bench(engine: Engine, source: str, args: argparse.Namespace) -> int:
    cfg = engine.config
    counting = CountingEngine(engine)
    forecaster = Forecaster(
        counting,
        ForecasterConfig(
            num_hypotheses=args.num_hypotheses,
            horizon=args.horizon,
            seed=args.seed,
            output_size=args.output_size,
        ),
    )
    frames = synthetic_streams(args.streams, cfg.image_size, seed=args.seed)
    total = args.soak or args.frames
    steps = math.ceil(total / args.streams)
    run_steps(forecaster, counting, frames, args.warmup)
    records = run_steps(forecaster, counting, frames, steps, start_step=args.warmup)
    result = {
        "model": cfg.name,
        "source": source,
        "image_size": list(cfg.image_size),
        "backend": engine.backend,
        "providers": engine.providers,
        "precision": engine.precision,
        "k": args.num_hypotheses,
        "t": args.horizon,
        "streams": args.streams,
        "context_length": forecaster.context_length,
        "warmup_steps": args.warmup,
        **summarise(records, args.streams),
        "closed_form_flops_per_stream_frame": frame_flops(
            cfg, args.num_hypotheses, args.horizon, forecaster.context_length
        ),
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        **run_record(),
    }
    if args.soak:
        result["soak"] = soak_report(records, args.soak_tolerance)
    print(report(result))
    path = args.json or Path("benchmarks") / (
        f"bench-{cfg.name}-{engine.backend}" + ("-soak" if args.soak else "") + ".json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0 if not args.soak or result["soak"]["passed"] else 1


def report(result: dict[str, Any]) -> str:
    providers = sorted(set(result["providers"].values()))
    lines = [
        f"model {result['model']} ({result['source']}), {result['image_size'][0]}x"
        f"{result['image_size'][1]}, {result['backend']} on {', '.join(providers)}, "
        f"{result['precision']}; K={result['k']} T={result['t']} streams={result['streams']} "
        f"context={result['context_length']}; {result['steps']} steps after "
        f"{result['warmup_steps']} warm-up",
        f"{'stage':10s} {'median':>9s} {'p95':>9s} {'p99':>9s}  ms per step"
        f" {'GFLOP/frame':>12s} {'GFLOP/s':>9s}",
    ]
    flops = result["flops_per_stream_frame"]
    achieved = result["achieved_flop_per_s"]
    for stage, s in result["stages"].items():
        gflop = flops.get(stage, sum(flops.values()) if stage == "total" else None)
        rate = achieved.get(stage)
        lines.append(
            f"{stage:10s} {s['median_ms']:9.2f} {s['p95_ms']:9.2f} {s['p99_ms']:9.2f}"
            + " " * 13
            + (f" {gflop / 1e9:12.4f}" if gflop is not None else " " * 13)
            + (f" {rate / 1e9:9.2f}" if rate is not None else "")
        )
    lines.append(
        f"throughput {result['stream_frames_per_s']:.2f} stream-frames/s; CPU time per step "
        f"{result['cpu_ms_per_step']['median_ms']:.2f} ms (median, all threads); "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB"
    )
    closed = result["closed_form_flops_per_stream_frame"]
    lines.append(
        "closed-form GFLOP per stream-frame: "
        + ", ".join(f"{g} {v / 1e9:.4f}" for g, v in closed.items())
        + f"; total {sum(closed.values()) / 1e9:.4f}"
    )
    if "soak" in result:
        s = result["soak"]
        lines.append(
            f"soak over {result['stream_frames']} stream-frames (windows of {s['window_steps']} "
            f"steps): RSS {s['start']['rss_mib']:.1f} -> {s['end']['rss_mib']:.1f} MiB "
            f"({s['drift_percent']['rss_mib']:+.2f}%), p99 {s['start']['p99_ms']:.2f} -> "
            f"{s['end']['p99_ms']:.2f} ms ({s['drift_percent']['p99_ms']:+.2f}%), median "
            f"{s['start']['median_ms']:.2f} -> {s['end']['median_ms']:.2f} ms, CPU per step "
            f"{s['start']['cpu_median_ms']:.2f} -> {s['end']['cpu_median_ms']:.2f} ms: "
            + ("PASS" if s["passed"] else f"FAIL (tolerance {s['tolerance_percent']}%)")
        )
    return "\n".join(lines)
