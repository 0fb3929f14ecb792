"""`deltaworld bench-compare`: the package against the authors' code, side by side in one process.

Every variant streams the same frames with the same noise queries through the same weights
(a model dir), one camera at the model's frame interval, K hypotheses x T steps. The variants
take turns in blocks of a few steps, so that a busy neighbour slows them alike, and the
medians are compared as ratios. Before timing, every variant's forecasts are compared with the
package's (features, class maps); the reference must agree within AGREE.

Variants: `package` (onnxruntime, as the node runs it), `package int8` (its int8 decoder, made in
a temporary copy by `deltaworld export --int8`'s code when the model dir has none), `package
torch`, `reference` (the authors' eager modules; needs --deltatok, see reference.NEEDS) and with
--levers the package with one lever off at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..model.store import read_manifest
from ..ros.share import package_model_dir
from ..runtime.arguments import add_forecast_arguments
from ..runtime.bench import percentiles_ms, run_record, synthetic_streams
from ..runtime.engine import EngineOptions, graph_file, open_engine
from ..runtime.forecaster import Forecaster, ForecasterConfig, FrameInput, StreamOverrides
from ..runtime.threads import passive_openmp

REFERENCE = "reference"
AGREE = 1e-3  # max |feature difference| between the package (fp32) and the reference


@dataclass
class Variant:
    name: str
    step: Callable[[np.ndarray, float, np.ndarray], Any]  # frame, stamp, queries (T, K, D)
    wall: list[float] = field(default_factory=list)  # the whole step, encode_ahead included
    cpu: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)  # the package's process() alone
    count: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, help="model dir (default: the embedded model)")
    parser.add_argument(
        "--deltatok", type=Path, help="a clone of github.com/amazon-far/deltatok: the reference"
    )
    add_forecast_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="engine threads")
    parser.add_argument(
        "--torch-threads", type=int, help="torch's (package torch, reference); default --threads"
    )
    parser.add_argument("--rounds", type=int, default=12, help="turns of every variant")
    parser.add_argument("--block", type=int, default=5, help="steps per turn")
    parser.add_argument("--warmup", type=int, default=8, help="steps per variant before timing")
    parser.add_argument("--levers", action="store_true",
                        help="also the package with one lever off at a time")  # fmt: skip
    parser.add_argument("--no-int8", action="store_true", help="leave out the int8 decoder")
    parser.add_argument("--no-torch", action="store_true", help="leave out the torch backend")
    parser.add_argument("--json", type=Path, help="result file (default benchmarks/compare-...)")


def package(name: str, forecaster: Forecaster, ahead: bool = True) -> Variant:
    """A variant on the Forecaster; the time to its forecast (latency) is kept apart from the
    anchor encoded ahead, after it."""

    def step(rgb: np.ndarray, stamp: float, queries: np.ndarray):
        overrides = {"cam": StreamOverrides(queries=queries)}
        result = forecaster.process([FrameInput("cam", stamp, rgb)], overrides)[0]
        if result is not None:
            variant.latency.append(result.timings["total"])
        if ahead:
            forecaster.encode_ahead()
        return result

    variant = Variant(name, step)
    return variant


def build_variants(args: argparse.Namespace, model_dir: Path, workdir: Path) -> list[Variant]:
    config = ForecasterConfig(
        num_hypotheses=args.num_hypotheses, horizon=args.horizon, keep_features=True
    )

    def forecaster(precision="fp32", backend="onnxruntime", threads=args.threads, **changes):
        options = EngineOptions(backend=backend, device="cpu", precision=precision, threads=threads)
        engine = open_engine(model_dir if precision != "int8" else int8_dir, options)
        return Forecaster(engine, replace(config, **changes))

    int8_dir = model_dir
    if not args.no_int8 and not read_manifest(model_dir).has(graph_file("decoder", "int8")):
        from ..export.int8 import add_int8

        int8_dir = workdir / "model"
        shutil.copytree(model_dir, int8_dir)
        print("quantizing the decoder in a temporary copy (deltaworld export --int8) ...")
        add_int8(int8_dir)
    variants = [package("package", forecaster())]
    if not args.no_int8:
        variants.append(package("package int8", forecaster("int8")))
    if not args.no_torch:
        variants.append(package("package torch", forecaster(backend="torch")))
    if args.levers:
        variants += [
            package("package, BLAS pool not limited", forecaster(blas_threads=None)),
            package("package, anchor not encoded ahead", forecaster(), ahead=False),
            package("package, 1 engine thread", forecaster(threads=1)),
        ]
    if args.deltatok is not None:
        from ..runtime.reference import ReferenceForecaster, ReferenceModel

        reference = forecaster()  # for its window sizes
        model = ReferenceModel(args.deltatok, model_dir, args.num_hypotheses)
        forecaster = ReferenceForecaster(
            model, args.num_hypotheses, args.horizon, reference.frame_interval,
            reference.context_length, reference.output_size,
        )  # fmt: skip
        variants.append(Variant(REFERENCE, forecaster.process))
    return variants


def check_agreement(variants: list[Variant], frames, queries, interval: float) -> dict:
    """Features and class maps of each variant against the first one (the package), over the
    same frames; the package's rows are put back in sampling order."""
    outputs: dict[str, list] = {v.name: [] for v in variants}
    for i in range(len(frames)):
        for v in variants:
            result = v.step(frames[i], i * interval, queries[i])
            if result is None:
                continue
            if v.name == REFERENCE:
                outputs[v.name].append(result)
            else:
                order = np.argsort(result.order)
                outputs[v.name].append((result.classes[order], result.features[order]))
    base = outputs[variants[0].name]
    agreement = {}
    for v in variants[1:]:
        pairs = list(zip(base, outputs[v.name], strict=True))
        agreement[v.name] = {
            "max_feature_difference": max(float(np.abs(a[1] - b[1]).max()) for a, b in pairs),
            "class_pixels_equal": float(np.mean([(a[0] == b[0]).mean() for a, b in pairs])),
        }
    return agreement


def run(args: argparse.Namespace) -> int:
    passive_openmp()  # the package's torch engine and the reference alike
    import torch

    torch.set_num_threads(args.torch_threads or args.threads)
    model_dir = args.model_dir or package_model_dir()
    with tempfile.TemporaryDirectory(prefix="deltaworld-compare-") as workdir:
        variants = build_variants(args, model_dir, Path(workdir))
        return compare(variants, args, model_dir)


def compare(variants: list[Variant], args: argparse.Namespace, model_dir: Path) -> int:
    cfg = read_manifest(model_dir, verify=False).config
    interval = cfg.frame_interval
    cycle = 8
    frames = synthetic_streams(1, cfg.image_size, cycle=cycle)[0]
    rng = np.random.default_rng(0)
    shape = (args.horizon, args.num_hypotheses, cfg.predictor.hidden_size)
    queries = [(rng.standard_normal(shape) * 0.02).astype(np.float32) for _ in range(cycle)]
    agreement = check_agreement(variants, frames, queries, interval)
    load_before = os.getloadavg()
    for v in variants:
        v.count = cycle
        for _ in range(args.warmup):
            v.step(frames[v.count % cycle], v.count * interval, queries[v.count % cycle])
            v.count += 1
        v.latency.clear()  # timed steps only
    for _ in range(args.rounds):
        for v in variants:
            for _ in range(args.block):
                i = v.count % cycle
                start, cpu = time.perf_counter(), time.process_time()
                v.step(frames[i], v.count * interval, queries[i])
                v.wall.append(time.perf_counter() - start)
                v.cpu.append(time.process_time() - cpu)
                v.count += 1
    load_after = os.getloadavg()
    medians = {v.name: float(np.median(v.wall)) for v in variants}
    cpu = {v.name: float(np.median(v.cpu)) for v in variants}
    rows = {
        v.name: {
            **percentiles_ms(np.array(v.wall)),
            "cpu_median_ms": float(np.median(v.cpu)) * 1e3,
            **({"latency_median_ms": float(np.median(v.latency)) * 1e3} if v.latency else {}),
            "stream_frames_per_s": len(v.wall) / float(np.sum(v.wall)),
            "speedup_vs_package": medians["package"] / medians[v.name],
            **(
                {
                    "speedup_over_reference": medians[REFERENCE] / medians[v.name],
                    "cpu_time_ratio_over_reference": cpu[REFERENCE] / cpu[v.name],
                }
                if REFERENCE in medians
                else {}
            ),
        }
        for v in variants
    }
    result = {
        "model": cfg.name,
        "model_dir": str(model_dir),
        "image_size": list(cfg.image_size),
        "k": args.num_hypotheses,
        "t": args.horizon,
        "threads": args.threads,
        "torch_threads": args.torch_threads or args.threads,
        "steps_per_variant": args.rounds * args.block,
        "alternation": f"{args.rounds} rounds of {args.block} steps per variant, in turn",
        "agreement_with_package": agreement,
        "variants": rows,
        "load_average": {"before": list(load_before), "after": list(load_after)},
        **run_record(),
    }
    print(report(result))
    name = f"compare-{cfg.name}-k{args.num_hypotheses}t{args.horizon}.json"
    path = args.json or Path("benchmarks") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    off = agreement.get(REFERENCE, {}).get("max_feature_difference", 0.0) > AGREE
    if off:
        print(f"the package and the reference disagree beyond {AGREE:g}: not the same work")
    return 1 if off else 0


def report(result: dict[str, Any]) -> str:
    load = result["load_average"]
    lines = [
        f"model {result['model']} {result['image_size'][0]}x{result['image_size'][1]}, "
        f"K={result['k']} T={result['t']}, {result['threads']} engine / "
        f"{result['torch_threads']} torch threads; "
        f"{result['alternation']}; load average {load['before'][0]:.2f} -> "
        f"{load['after'][0]:.2f} on {result['machine']['cpus']} CPUs",
        f"{'variant':36s} {'median':>8s} {'p95':>8s} {'CPU':>8s} {'latency':>8s} "
        f"{'frames/s':>9s} {'vs package':>10s} {'vs reference':>12s}",
    ]
    for name, r in result["variants"].items():
        ref = r.get("speedup_over_reference")
        lines.append(
            f"{name:36s} {r['median_ms']:8.2f} {r['p95_ms']:8.2f} {r['cpu_median_ms']:8.2f} "
            f"{r.get('latency_median_ms', r['median_ms']):8.2f} "
            f"{r['stream_frames_per_s']:9.2f} {r['speedup_vs_package']:9.2f}x"
            + (f" {ref:11.2f}x" if ref is not None else "")
        )
    for name, a in result["agreement_with_package"].items():
        lines.append(
            f"{name} vs package: max |feature difference| {a['max_feature_difference']:.2e}, "
            f"class pixels equal {a['class_pixels_equal']:.2%}"
        )
    return "\n".join(lines)
