"""The commands' shared flags, spelled like forecast_node's parameters (--num-hypotheses for
num_hypotheses, --model-dir for model_dir), with the defaults of the config dataclasses, and
the one parser of "HxW" sizes."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .errors import UsageError
from .runtime.engine import BACKENDS, PRECISIONS, EngineOptions, largest_batch
from .runtime.forecaster import ForecasterConfig


def parse_size(text: str, what: str = "size") -> tuple[int, int]:
    """'96x128' -> (96, 128): height x width, both >= 1; UsageError otherwise."""
    h, sep, w = text.strip().lower().partition("x")
    if sep and h.isdigit() and w.isdigit() and int(h) >= 1 and int(w) >= 1:
        return int(h), int(w)
    raise UsageError(f"{what} must read HxW (height x width, both >= 1), e.g. 96x128; got {text!r}")


def size(text: str) -> tuple[int, int]:
    """parse_size as an argparse type: the refusal names the flag."""
    try:
        return parse_size(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return integer


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


def engine_options(
    args: argparse.Namespace, streams: int = 1, forecast: ForecasterConfig | None = None
) -> EngineOptions:
    """The options of add_engine_arguments' flags, sized for `streams` streams of forecasts
    shaped like `forecast` (default: the flags of add_forecast_arguments)."""
    k = forecast.num_hypotheses if forecast else args.num_hypotheses
    horizon = forecast.horizon if forecast else args.horizon
    options = EngineOptions(
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        providers=tuple(args.providers) if args.providers else None,
        strict_providers=args.strict_providers,
        max_batch=largest_batch(k, horizon, streams),
    )
    options.validate()
    return options
