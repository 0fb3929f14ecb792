"""The commands' flags of the runtime's settings, spelled like forecast_node's parameters
(--num-hypotheses for num_hypotheses, --backend for backend), with the defaults of the config
dataclasses."""

from __future__ import annotations

import argparse

from ..arguments import at_least
from .engine import BACKENDS, PRECISIONS, EngineOptions, largest_batch
from .forecaster import ForecasterConfig


def add_forecast_arguments(
    parser: argparse.ArgumentParser, defaults: ForecasterConfig | None = None
) -> None:
    """--num-hypotheses (K) and --horizon (T), the node's num_hypotheses and horizon."""
    defaults = defaults or ForecasterConfig()
    parser.add_argument(
        "--num-hypotheses", type=at_least(1), default=defaults.num_hypotheses,
        help=f"K: forecast hypotheses per frame (default {defaults.num_hypotheses})",
    )  # fmt: skip
    parser.add_argument(
        "--horizon", type=at_least(1), default=defaults.horizon,
        help=f"T: forecast steps, one frame interval each (default {defaults.horizon})",
    )  # fmt: skip


def add_engine_arguments(
    parser: argparse.ArgumentParser, defaults: EngineOptions | None = None
) -> None:
    """The engine flags, the node's backend, device, precision, threads, providers and
    strict_providers; engine_options() reads them back."""
    defaults = defaults or EngineOptions()
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                        help=f"inference backend (default {defaults.backend})")  # fmt: skip
    parser.add_argument(
        "--device", default=defaults.device,
        help="cpu, cuda or cuda:<index> (onnxruntime: the GPU of its CUDA/TensorRT providers); "
        "default: the backend's choice (torch: cpu, onnxruntime: its providers on GPU 0)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", default=defaults.precision,
        choices=tuple(dict.fromkeys(p for b in BACKENDS for p in PRECISIONS[b])),
        help="fp32, fp16 (export --fp16), int8 (the decoder of export --int8, onnxruntime), "
        f"bf16 (torch); default {defaults.precision}",
    )  # fmt: skip
    parser.add_argument("--threads", type=at_least(1), default=defaults.threads,
                        help="CPU threads of the engine (default: the runtime's)")  # fmt: skip
    parser.add_argument(
        "--providers", nargs="+", default=defaults.providers,
        help="onnxruntime execution providers by preference, e.g. cuda cpu "
        "(default: tensorrt cuda cpu, those available; cpu alone on --device cpu)",
    )  # fmt: skip
    parser.add_argument("--strict-providers", action="store_true",
                        help="fail unless the listed providers run")  # fmt: skip


def engine_options(args: argparse.Namespace, streams: int = 1) -> EngineOptions:
    """The options of add_engine_arguments' flags, sized for `streams` streams of the forecasts
    add_forecast_arguments' flags ask for."""
    options = EngineOptions(
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        providers=tuple(args.providers) if args.providers else None,
        strict_providers=args.strict_providers,
        max_batch=largest_batch(args.num_hypotheses, args.horizon, streams),
    )
    options.validate()
    return options
