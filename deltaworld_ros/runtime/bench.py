"""`deltaworld bench`: latency, throughput, memory and FLOP/s of the streaming Forecaster.

Synthetic frames arrive at the model's frame interval on S streams; every step feeds one frame
per stream through one batched `Forecaster.process`. After the warm-up it reports per-stage
latency (median / p95 / p99), stream-frames per second, peak RSS, and the closed-form FLOPs of
every graph call (2 FLOPs per multiply-add; matmuls, convolutions and attention), counted from
the shapes the engine really sees. `--soak N` compares RSS and p99 at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..model.config import PRESETS, ModelConfig
from ..model.store import ModelDirError
from .engine import GRAPHS, Engine, open_engine
from .forecaster import Forecaster, ForecasterConfig, FrameInput
from .threads import passive_openmp

# "total" is the latency of Forecaster.process; "ahead" the work done after it (encode_ahead).
STAGES = ("preprocess", "backbone", "encode", "predict", "decode", "head", "depth", "post",
          "total", "ahead")  # fmt: skip
STAGE_OF = {"backbone": "backbone", "encoder": "encode", "predictor": "predict",
            "decoder": "decode", "head": "head", "depth": "depth"}  # fmt: skip


# ---------------------------------------------------------------- closed-form FLOPs per row


def _block(tokens: int, dim: int, hidden: int, heads: int, deltatok: bool) -> int:
    """One self-attention layer over `tokens`: q,k,v,o projections, QK^T and AV, the MLP
    (GELU: 2 matmuls, SwiGLU: 3), DeltaTok's per-head gate."""
    projections = 4 * 2 * tokens * dim * dim
    attention = 2 * 2 * tokens * tokens * dim
    mlp = (3 if deltatok else 2) * 2 * tokens * dim * hidden
    gate = 2 * tokens * dim * heads if deltatok else 0
    return projections + attention + mlp + gate


def graph_flops(cfg: ModelConfig, graph: str, context: int | None = None) -> int:
    """FLOPs of one batch row of a graph; the predictor's depend on its context length."""
    n, c = cfg.num_patches, cfg.token_size
    bb, tok, pr = cfg.backbone, cfg.tokenizer, cfg.predictor
    if graph == "backbone":
        tokens = 1 + bb.num_register_tokens + n
        patchify = 2 * n * c * 3 * bb.patch_size**2
        layer = _block(tokens, c, bb.intermediate_size, bb.num_heads, deltatok=False)
        return patchify + bb.num_layers * layer
    if graph in ("encoder", "decoder"):
        tokens, layers = (
            (1 + 2 * n, tok.num_encoder_layers)
            if graph == "encoder"
            else (1 + n, tok.num_decoder_layers)
        )
        return layers * _block(tokens, c, tok.intermediate_size, tok.num_heads, deltatok=True)
    if graph == "predictor":
        length = context or cfg.context_length
        d = pr.hidden_size
        layer = (
            2 * d * d  # q
            + 2 * length * c * 2 * d  # kv, recomputed for every hypothesis row
            + 2 * 2 * length * d  # QK^T and AV for one query
            + 2 * d * d  # out
            + 2 * 2 * d * pr.mlp_ratio * d  # MLP
        )
        return pr.num_layers * layer + 2 * d * c  # + head to token size
    if graph == "head":
        return 2 * n * c * cfg.head.num_classes
    if graph == "depth":  # 1x1 conv to the bins, then the expectation over them
        return 2 * n * c * cfg.head.depth_bins + 2 * n * cfg.head.depth_bins
    raise ValueError(f"unknown graph {graph!r}")


def frame_flops(cfg: ModelConfig, k: int, horizon: int, context: int) -> dict[str, int]:
    """Steady-state FLOPs per stream-frame: one backbone pass, the new delta plus the re-encoded
    anchor, K x T predictor and decoder rows (context growing by one token per step), and the
    heads (segmentation, depth) on K x T forecasts + the current frame."""
    return {
        "backbone": graph_flops(cfg, "backbone"),
        "encoder": 2 * graph_flops(cfg, "encoder"),
        "predictor": k * sum(graph_flops(cfg, "predictor", context + t) for t in range(horizon)),
        "decoder": k * horizon * graph_flops(cfg, "decoder"),
        "head": (k * horizon + 1) * graph_flops(cfg, "head") if cfg.head.num_classes else 0,
        "depth": (k * horizon + 1) * graph_flops(cfg, "depth") if cfg.head.with_depth else 0,
    }


class CountingEngine:
    """Delegates to an engine and adds up the FLOPs of every call from its input shapes."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine
        self.config = engine.config
        self.backend = engine.backend
        self.providers = engine.providers
        self.placement = engine.placement
        self.learned_query = engine.learned_query
        self.precision = engine.precision
        self.flops: dict[str, int] = dict.fromkeys(GRAPHS, 0)

    def _count(self, graph: str, rows: int, context: int | None = None) -> None:
        self.flops[graph] += rows * graph_flops(self.config, graph, context)

    def backbone(self, pixels: np.ndarray) -> np.ndarray:
        self._count("backbone", len(pixels))
        return self.inner.backbone(pixels)

    def encode(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        self._count("encoder", len(x))
        return self.inner.encode(x, y)

    def predict(self, queries, kv, pos_q, pos_k) -> np.ndarray:
        self._count("predictor", len(queries), kv.shape[1])
        return self.inner.predict(queries, kv, pos_q, pos_k)

    def decode(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        self._count("decoder", len(z))
        return self.inner.decode(z, x)

    def head(self, y: np.ndarray) -> np.ndarray:
        self._count("head", len(y))
        return self.inner.head(y)

    def depth(self, y: np.ndarray) -> np.ndarray:
        self._count("depth", len(y))
        return self.inner.depth(y)

    def take(self) -> dict[str, int]:
        counted, self.flops = self.flops, dict.fromkeys(GRAPHS, 0)
        return counted


# ---------------------------------------------------------------- memory


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; elsewhere the peak, the best getrusage offers)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB


# ---------------------------------------------------------------- the run


def synthetic_streams(
    streams: int, size: tuple[int, int], cycle: int = 8, seed: int = 0
) -> list[list[np.ndarray]]:
    """Per stream, `cycle` frames of a random texture panning right (changes between frames
    like a moving camera, bounded memory)."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(streams):
        base = rng.integers(0, 256, (h, w + cycle * 4, 3), dtype=np.uint8)
        out.append([np.ascontiguousarray(base[:, 4 * i : 4 * i + w]) for i in range(cycle)])
    return out


@dataclass
class Records:
    """Per-step measurements in arrays allocated up front, so that a soak's own bookkeeping
    does not grow the RSS it measures."""

    wall: np.ndarray  # (steps,) s, process() and encode_ahead()
    cpu: np.ndarray  # (steps,) s of this process's CPU time in it (blind to busy neighbours)
    stages: np.ndarray  # (steps, len(STAGES)) s, the Forecaster's timings; NaN: no forecast
    flops: np.ndarray  # (steps, len(GRAPHS)) counted FLOPs
    rss: np.ndarray  # (steps,) bytes after the step

    @classmethod
    def empty(cls, steps: int) -> Records:
        return cls(np.zeros(steps), np.zeros(steps), np.full((steps, len(STAGES)), np.nan),
                   np.zeros((steps, len(GRAPHS))), np.zeros(steps))  # fmt: skip

    def __len__(self) -> int:
        return len(self.wall)

    def stage(self, name: str) -> np.ndarray:
        """Seconds of one stage over the steps that produced forecasts."""
        values = self.stages[:, STAGES.index(name)]
        return values[~np.isnan(values)]


def run_steps(
    forecaster: Forecaster,
    engine: CountingEngine,
    frames: list[list[np.ndarray]],
    steps: int,
    start_step: int = 0,
) -> Records:
    """`steps` batched steps; per step the wall time, stage timings, FLOPs and RSS."""
    interval = forecaster.frame_interval
    records = Records.empty(steps)
    for i in range(steps):
        step = start_step + i
        batch = [
            FrameInput(f"cam{s}", step * interval, stream[step % len(stream)])
            for s, stream in enumerate(frames)
        ]
        engine.take()
        start, cpu = time.perf_counter(), time.process_time()
        results = forecaster.process(batch)
        ahead = forecaster.encode_ahead()
        records.wall[i] = time.perf_counter() - start
        records.cpu[i] = time.process_time() - cpu
        done = next((r for r in results if r is not None), None)
        if done is not None:
            records.stages[i] = [ahead if stage == "ahead" else done.timings.get(stage, 0.0)
                                 for stage in STAGES]  # fmt: skip
        counted = engine.take()
        records.flops[i] = [counted[g] for g in GRAPHS]
        records.rss[i] = rss_bytes()
    return records


def run_record() -> dict[str, Any]:
    """Where and when a benchmark ran, and the command that ran it."""
    return {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["deltaworld", *sys.argv[1:]]),
    }


def percentiles_ms(seconds: np.ndarray) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def summarise(records: Records, streams: int) -> dict[str, Any]:
    wall = float(records.wall.sum())
    flops = dict(zip(GRAPHS, records.flops.sum(0).tolist(), strict=True))
    frames = streams * len(records)
    achieved = {}
    for graph in GRAPHS:
        seconds = float(records.stage(STAGE_OF[graph]).sum())
        if graph == "encoder":  # the anchors encoded ahead are encoder calls too
            seconds += float(records.stage("ahead").sum())
        if seconds > 0:
            achieved[STAGE_OF[graph]] = flops[graph] / seconds
    return {
        "steps": len(records),
        "stream_frames": frames,
        "stream_frames_per_s": frames / wall,
        # busy neighbours stretch wall time; CPU time per step is what a quiet machine pays
        "cpu_ms_per_step": percentiles_ms(records.cpu),
        "stages": {
            stage: percentiles_ms(records.stage(stage))
            for stage in STAGES
            if records.stage(stage).size
        },
        "flops_per_stream_frame": {g: flops[g] / frames for g in GRAPHS},
        "achieved_flop_per_s": {**achieved, "total": sum(flops.values()) / wall},
    }


def soak_report(records: Records, tolerance: float) -> dict[str, Any]:
    """RSS and p99 step latency over the first vs the last tenth of the run; the median wall
    and CPU time per step too, to tell a drift of our own from a busy neighbour."""
    window = max(50, len(records) // 10)

    def measure(part: slice) -> dict[str, float]:
        latency = percentiles_ms(records.wall[part])
        return {
            "rss_mib": float(records.rss[part].mean()) / 2**20,
            "p99_ms": latency["p99_ms"],
            "median_ms": latency["median_ms"],
            "cpu_median_ms": float(np.median(records.cpu[part])) * 1e3,
        }

    start, end = measure(slice(0, window)), measure(slice(len(records) - window, None))
    drift = {k: (end[k] - start[k]) / start[k] * 100 for k in start}
    return {
        "window_steps": window,
        "start": start,
        "end": end,
        "drift_percent": drift,
        "tolerance_percent": tolerance,
        "passed": drift["rss_mib"] <= tolerance and drift["p99_ms"] <= tolerance,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", type=Path, help="model dir (default: the embedded model)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="random weights of a preset")
    parser.add_argument("--image-size", help="HxW for --preset (default: the preset's)")
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    parser.add_argument("--providers", default="tensorrt,cuda,cpu",
                        help="onnxruntime providers in order of preference")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="fail unless every provider runs")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "int8", "bf16"),
        help="int8: the decoder of `deltaworld export --int8` (onnxruntime)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's)")
    parser.add_argument("--k", type=int, default=8, help="hypotheses K")
    parser.add_argument("--t", type=int, default=3, help="horizon T (steps)")
    parser.add_argument("--streams", type=int, default=1, help="cameras batched together")
    parser.add_argument("--frames", type=int, default=200,
                        help="measured stream-frames, spread over the streams")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=10, help="steps before measuring")
    parser.add_argument("--output-size", help="class map HxW (default: the Forecaster's)")
    parser.add_argument("--soak", type=int, metavar="N",
                        help="long run of N stream-frames: RSS and p99, start vs end")  # fmt: skip
    parser.add_argument("--soak-tolerance", type=float, default=5.0,
                        help="allowed growth of RSS and p99 in a soak, percent")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="result file (default benchmarks/bench-...)")


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    from ..export.cli import parse_size

    return parse_size(text)


def open_bench_engine(args: argparse.Namespace, workdir: Path) -> tuple[Engine, str]:
    """The engine to measure and a description of the model it runs."""
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    kwargs = dict(backend=args.backend, providers=providers, strict=args.strict,
                  precision=args.precision, device=args.device, threads=args.threads)  # fmt: skip
    if args.preset is None:
        from ..model.store import default_model_dir

        model_dir = args.model_dir or default_model_dir()
        return open_engine(model_dir, **kwargs), str(model_dir)
    passive_openmp()
    import torch

    from ..export.cli import with_image_size
    from ..export.exporter import export_model
    from ..model.config import preset
    from ..model.loading import save_weights
    from ..model.store import write_manifest
    from ..model.world_model import WorldModel

    torch.manual_seed(args.seed)
    model = WorldModel(with_image_size(preset(args.preset), args.image_size)).eval()
    source = {"source": f"random weights seed {args.seed}"}
    save_weights(model, workdir)
    write_manifest(workdir, model.cfg, source)
    if args.backend == "onnxruntime":
        print(f"exporting random-weight {args.preset} to {workdir} ...", flush=True)
        export_model(model, workdir, source, fp16=args.precision == "fp16", check=False)
    return open_engine(workdir, **kwargs), f"preset {args.preset}, {source['source']}"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("deltaworld_ros").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="deltaworld-bench-") as workdir:
        try:
            engine, source = open_bench_engine(args, Path(workdir))
        except (ModelDirError, ValueError) as err:
            raise SystemExit(f"deltaworld bench: {err} (or benchmark --preset NAME)") from None
        return bench(engine, source, args)


def bench(engine: Engine, source: str, args: argparse.Namespace) -> int:
    cfg = engine.config
    counting = CountingEngine(engine)
    forecaster = Forecaster(
        counting,
        ForecasterConfig(
            num_hypotheses=args.k,
            horizon=args.t,
            seed=args.seed,
            output_size=_size(args.output_size),
        ),  # fmt: skip
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
        "k": args.k,
        "t": args.t,
        "streams": args.streams,
        "context_length": forecaster.context_length,
        "warmup_steps": args.warmup,
        **summarise(records, args.streams),
        "closed_form_flops_per_stream_frame": frame_flops(
            cfg, args.k, args.t, forecaster.context_length
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
    flops = {STAGE_OF[g]: v for g, v in result["flops_per_stream_frame"].items()}
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
