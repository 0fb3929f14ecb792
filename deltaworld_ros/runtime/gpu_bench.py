"""`deltaworld bench-gpu`: the torch path on a GPU, prepared to run once on a lent device.

The Engine interface hands numpy arrays between graphs, which on a GPU means copying every
decoder output (K x N x C floats) to the host and back. Here one camera-rate step stays on the
device: the backbone on the new frames, the new delta and the re-encoded anchor in one encoder
call, K hypotheses x T steps of predictor + decoder with the K decodes in one batch, the head
on the forecasts and the frames, upsampling and argmax; only class maps come back. Modes:
`eager`, `graph` (the step captured once into a CUDA graph and replayed) and `compile`
(torch.compile, inductor without its own CUDA graphs, then captured into one the same way).
Precision bf16 = the Linear weights in bf16 under autocast (norms, RoPE tables in float32).

It reports ms per step (median, p99) per mode, the closed-form FLOPs per frame, the achieved
TFLOP/s against the floor (FLOPs / a measured bf16 matmul peak), with --deltatok the authors'
eager modules on the same device and weights (reference.py), and --cameras N --rate HZ a paced
run: N cameras whose frames arrive together every 1/HZ s, with latency and the p99 jitter of the
output interval. On the CPU, with a small preset, it checks itself against the Forecaster.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..arguments import size
from ..errors import DeltaworldError, UsageError
from ..model.config import PRESETS
from .arguments import add_forecast_arguments
from .forecaster import ForecasterConfig
from .threads import passive_openmp

MODES = ("eager", "graph", "compile")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="vitb16", choices=sorted(PRESETS),
                        help="random weights of a preset (default vitb16)")  # fmt: skip
    parser.add_argument("--image-size", type=size, help="HxW (default: the preset's)")
    # the paper's setting: 20 hypotheses, one step
    add_forecast_arguments(parser, ForecasterConfig(num_hypotheses=20, horizon=1))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--modes", default="eager,graph,compile", help=f"of {MODES}")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--deltatok", type=Path, help="deltatok checkout: the authors' eager code")
    parser.add_argument("--cameras", type=int, default=3, help="paced run: cameras")
    parser.add_argument("--rate", type=float, default=10.0, help="paced run: Hz per camera")
    parser.add_argument("--seconds", type=float, default=20.0, help="paced run: length")
    parser.add_argument("--paced-mode", default="graph", help="mode of the paced run")
    parser.add_argument(
        "--check", action="store_true", help="first compare the step's maps with the Forecaster's"
    )
    parser.add_argument("--json", type=Path, help="result file (default benchmarks/gpu-...)")


class DeviceStep:
    """One steady-state step for S cameras whose windows are full, every tensor on the device.

    Static buffers (inputs and window state) are updated in place, so the same step can be
    replayed from a CUDA graph. Window per camera: L frames' features, the L-1 deltas between
    them, their stamps relative to the oldest.
    """

    def __init__(self, model, cameras: int, k: int, horizon: int, output_size, dtype) -> None:
        import torch

        cfg = model.cfg
        self.torch, self.model, self.k, self.horizon = torch, model, k, horizon
        self.cfg, self.dtype, self.output_size = cfg, dtype, tuple(output_size)
        device = next(model.parameters()).device
        self.device = device
        s, n, c, length = cameras, cfg.num_patches, cfg.token_size, cfg.context_length
        h, w = cfg.image_size
        zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        self.pixels = zeros(s, 3, h, w)
        self.queries = zeros(horizon, s * k, 1, cfg.predictor.hidden_size)
        self.features = zeros(s, length, n, c)  # window, oldest first
        self.deltas = zeros(s, length - 1, c)  # into frames 1..L-1
        self.stamps = zeros(s, length)  # absolute s (float32 is fine over a bench's minutes)
        self.interval = cfg.frame_interval
        with torch.inference_mode(), self.autocast():
            self.black = model.black_features().float()  # (1, N, C)

    def autocast(self):
        torch = self.torch
        # no cast cache: a CUDA graph must not capture casts cached outside it
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, self.dtype, enabled=enabled, cache_enabled=False)

    def fill(self, frames: np.ndarray, stamps: np.ndarray) -> None:
        """Warm the windows from L frames per camera (S, L, H, W, 3) at stamps (S, L)."""
        torch, m = self.torch, self.model
        with torch.inference_mode(), self.autocast():
            for i in range(frames.shape[1]):
                pixels = torch.from_numpy(frames[:, i].transpose(0, 3, 1, 2).astype(np.float32))
                self.features[:, i] = m.backbone(pixels.to(self.device)).float()
            for i in range(1, frames.shape[1]):
                self.deltas[:, i - 1] = m.tokenizer.encode(
                    self.features[:, i - 1], self.features[:, i]
                )[:, 0].float()
        self.stamps.copy_(torch.from_numpy(stamps.astype(np.float32)))

    def step(self) -> tuple[Any, Any]:
        """The new frames in self.pixels -> class maps (S, K, T, h, w) uint8, tokens; slides
        every window by one frame."""
        torch, m, cfg = self.torch, self.model, self.cfg
        s, k, horizon = self.pixels.shape[0], self.k, self.horizon
        y = m.backbone(self.pixels).float()  # (S, N, C)
        # the delta into the new frame and the anchor of the window after it, in one call
        x_in = torch.cat([self.features[:, -1], self.black.expand(s, -1, -1)])
        y_in = torch.cat([y, self.features[:, 1]])
        z = m.tokenizer.encode(x_in, y_in)[:, 0].float()
        delta, anchor = z[:s], z[s:]
        self.features.copy_(torch.cat([self.features[:, 1:], y[:, None]], 1))
        self.deltas.copy_(torch.cat([self.deltas[:, 1:], delta[:, None]], 1))
        now = self.stamps[:, -1:] + self.interval
        self.stamps.copy_(torch.cat([self.stamps[:, 1:], now], 1))
        origin = self.stamps[:, :1]
        context = torch.cat([anchor[:, None], self.deltas], 1).repeat_interleave(k, 0)
        pos_k = (self.stamps - origin).repeat_interleave(k, 0)
        x = y.repeat_interleave(k, 0)
        preds, tokens = [], []
        for t in range(horizon):
            pos_q = (now + (t + 1) * self.interval - origin).repeat_interleave(k, 0)
            z_hat = m.world.predictor(self.queries[t], context, pos_q, pos_k).float()
            x = m.tokenizer.decode(z_hat, x).float()
            context, pos_k = torch.cat([context, z_hat], 1), torch.cat([pos_k, pos_q], 1)
            preds.append(x)
            tokens.append(z_hat[:, 0])
        feats = torch.stack(preds, 1).flatten(0, 1)  # (S*K*T, N, C)
        logits = m.seg_head(torch.cat([feats, y]), cfg.grid, self.output_size)
        maps = logits.argmax(1).to(torch.uint8)
        return maps[: s * k * horizon].unflatten(0, (s, k, horizon)), torch.stack(tokens, 1)


def _runner(step: DeviceStep, mode: str) -> tuple[Any, float]:
    """A callable doing one step in `mode` and returning its outputs; seconds compiling."""
    torch = step.torch

    def eager():
        with torch.inference_mode(), step.autocast():
            return step.step()

    if mode == "eager":
        return eager, 0.0
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use {MODES}")
    if step.device.type != "cuda":
        raise ValueError(f"mode {mode!r} needs a CUDA device")
    body, compile_s = eager, 0.0
    if mode == "compile":
        started = time.perf_counter()
        compiled = torch.compile(step.step)

        def body():
            with torch.inference_mode(), step.autocast():
                return compiled()

        for _ in range(3):
            body()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - started
    side = torch.cuda.Stream()  # warm-up off the capturing stream, as CUDA graphs need
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = body()

    def replay():
        graph.replay()
        return static_out

    return replay, compile_s


def _run_mode(step: DeviceStep, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    """ms per step, host to host: new frames copied in, class maps copied out."""
    torch = step.torch
    cuda = step.device.type == "cuda"
    frames = torch.randint(0, 256, step.pixels.shape, dtype=torch.uint8)
    if cuda:
        frames = frames.pin_memory()
    run, compile_s = _runner(step, mode)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step.pixels.copy_(frames, non_blocking=True)
        maps, _ = run()
        maps.cpu()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "compile_s": compile_s}  # fmt: skip


def _paced(step: DeviceStep, mode_run, cameras: int, rate: float, seconds: float) -> dict:
    """Frames of all cameras arrive together every 1/rate s; latency and output jitter."""
    torch = step.torch
    period = 1.0 / rate
    ticks = int(seconds * rate)
    start = time.perf_counter() + period
    latency, done = [], []
    for i in range(ticks):
        arrival = start + i * period
        while time.perf_counter() < arrival:
            time.sleep(min(1e-3, max(0.0, arrival - time.perf_counter())))
        mode_run()
        if step.device.type == "cuda":
            torch.cuda.synchronize()
        finished = time.perf_counter()
        latency.append(finished - arrival)
        done.append(finished)
    intervals = np.diff(done) * 1e3
    jitter = np.abs(intervals - period * 1e3)
    lat = np.array(latency) * 1e3
    return {
        "cameras": cameras,
        "rate_hz": rate,
        "ticks": ticks,
        "latency_median_ms": float(np.median(lat)),
        "latency_p99_ms": float(np.percentile(lat, 99)),
        "jitter_p99_ms": float(np.percentile(jitter, 99)),
        "missed_deadlines": int((lat > period * 1e3).sum()),
    }


def matmul_peak(torch, device, dtype) -> float:
    """FLOP/s of a large matmul on this device: the ceiling the floor is computed from."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 10 * 2 * n**3 / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    k, horizon = args.num_hypotheses, args.horizon
    passive_openmp()
    import torch

    from ..model.config import preset
    from ..model.loading import save_weights
    from ..model.store import write_manifest
    from ..model.world_model import WorldModel
    from .bench import run_record
    from .flops import frame_flops

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("torch sees no CUDA device (--device cpu?)")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    torch.manual_seed(0)
    cfg = preset(args.preset, args.image_size)
    model = WorldModel(cfg).eval()
    output_size = (4 * cfg.grid[0], 4 * cfg.grid[1])
    if args.check:
        check_against_forecaster(model, k, horizon, output_size)
    weights = tempfile.TemporaryDirectory(prefix="deltaworld-gpu-")
    if args.deltatok is not None:  # the reference loads the same float32 weights
        save_weights(model, weights.name)
        write_manifest(weights.name, cfg, {"source": "random weights seed 0"})
    model.to(device)
    if dtype != torch.float32:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(dtype)
    flops = frame_flops(cfg, k, horizon, cfg.context_length)
    frame_flop = float(sum(flops.values()))
    peak = matmul_peak(torch, device, dtype)
    floor_ms = frame_flop / peak * 1e3
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {
        "model": cfg.name, "image_size": list(cfg.image_size), "k": k, "t": horizon,
        "precision": args.precision, "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "flops_per_frame": flops,
        "matmul_peak_tflop_s": peak / 1e12, "floor_ms": floor_ms, "modes": {},
    }  # fmt: skip
    for mode in [m for m in args.modes.split(",") if m]:
        step = _warm_step(model, 1, k, horizon, output_size, dtype, rng)
        try:
            timing = _run_mode(step, mode, args.steps, args.warmup)
        except Exception as err:  # one failing mode must not cost the others' device time
            result["modes"][mode] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{mode}: failed: {type(err).__name__}: {err}", flush=True)
            continue
        timing["achieved_tflop_s"] = frame_flop / (timing["median_ms"] * 1e-3) / 1e12
        timing["of_floor"] = floor_ms / timing["median_ms"]
        result["modes"][mode] = timing
        print(f"{mode}: {timing}", flush=True)
    if args.deltatok is not None:
        result["reference"] = reference_timing(args, cfg, weights.name, device, dtype, output_size)
        print(f"reference: {result['reference']}", flush=True)
        for timing in result["modes"].values():
            if "median_ms" in timing:
                timing["speedup_over_reference"] = (
                    result["reference"]["median_ms"] / timing["median_ms"]
                )
    if args.cameras and args.paced_mode in result["modes"]:
        step = _warm_step(model, args.cameras, k, horizon, output_size, dtype, rng)
        result["paced"] = _paced_run(step, args)
        print(f"paced: {result['paced']}", flush=True)
    result.update(run_record())
    path = args.json or Path("benchmarks") / f"gpu-{cfg.name}-k{k}t{horizon}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


def _warm_step(model, cameras, k, horizon, output_size, dtype, rng) -> DeviceStep:
    cfg = model.cfg
    step = DeviceStep(model, cameras, k, horizon, output_size, dtype)
    h, w = cfg.image_size
    length = cfg.context_length
    frames = rng.integers(0, 256, (cameras, length, h, w, 3), dtype=np.uint8)
    step.fill(frames, np.tile(np.arange(length) * cfg.frame_interval, (cameras, 1)))
    queries = rng.standard_normal(step.queries.shape) * cfg.backbone.initializer_range
    step.queries.copy_(step.torch.from_numpy(queries.astype(np.float32)))
    return step


def _paced_run(step: DeviceStep, args: argparse.Namespace) -> dict:
    run, _ = _runner(step, args.paced_mode)
    return _paced(step, lambda: run()[0].cpu(), args.cameras, args.rate, args.seconds)


def reference_timing(args, cfg, model_dir, device, dtype, output_size) -> dict[str, Any]:
    k, horizon = args.num_hypotheses, args.horizon
    """The authors' eager modules with the same weights, on the same device and precision."""
    import torch

    from .reference import ReferenceForecaster, ReferenceModel

    reference = ReferenceModel(args.deltatok, model_dir, k, device=device)
    forecaster = ReferenceForecaster(reference, k, horizon, cfg.frame_interval,
                                     cfg.context_length, output_size)  # fmt: skip
    rng = np.random.default_rng(1)
    h, w = cfg.image_size
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    queries = (rng.standard_normal((horizon, k, cfg.predictor.hidden_size)) * 0.02).astype(
        np.float32
    )
    times = []
    with torch.autocast(device.type, dtype, enabled=dtype != torch.float32):
        for i in range(args.warmup + args.steps // 2):
            start = time.perf_counter()
            forecaster.process(frame, i * cfg.frame_interval, queries)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))}


def check_against_forecaster(model, k: int, horizon: int, output_size) -> None:
    """The device step's class maps equal the Forecaster's (torch engine, fp32) for the same
    frames and queries; run on the CPU before any timing."""
    import torch

    from .forecaster import Forecaster, FrameInput, StreamOverrides
    from .torch_engine import TorchEngine

    cfg = model.cfg
    rng = np.random.default_rng(5)
    length = cfg.context_length
    h, w = cfg.image_size
    frames = rng.integers(0, 256, (length + 1, h, w, 3), dtype=np.uint8)
    queries = (rng.standard_normal((horizon, k, cfg.predictor.hidden_size)) * 0.02).astype(
        np.float32
    )
    forecaster = Forecaster(TorchEngine(model), ForecasterConfig(
        num_hypotheses=k, horizon=horizon, output_size=output_size))  # fmt: skip
    stamps = np.arange(length + 1) * cfg.frame_interval
    for i in range(length + 1):
        expected = forecaster.process([FrameInput("cam", stamps[i], frames[i])],
                                      {"cam": StreamOverrides(queries=queries)})[0]  # fmt: skip
    step = DeviceStep(model, 1, k, horizon, output_size, torch.float32)
    step.fill(frames[None, :length], stamps[None, :length])
    step.pixels.copy_(torch.from_numpy(frames[length].transpose(2, 0, 1).astype(np.float32)))
    step.queries.copy_(torch.from_numpy(queries.reshape(step.queries.shape)))
    with torch.inference_mode():
        maps, _ = step.step()
    got = maps[0].numpy()
    same = float((got == expected.classes[np.argsort(expected.order)]).mean())
    if same < 0.999:
        raise DeltaworldError(
            f"the device step agrees with the Forecaster on only {same:.2%} of class pixels"
        )
    print(f"check: device step = Forecaster on {same:.2%} of class pixels", flush=True)
