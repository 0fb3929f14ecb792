"""The benchmark's run: synthetic frames on S streams through one batched `Forecaster.process`
per step, with per step the wall and CPU time, the stage timings, the counted FLOPs and the
RSS, and their summary (per-stage percentiles, throughput, achieved FLOP/s, soak drift).
`deltaworld bench` (tools/bench.py) drives it.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .engine import GRAPHS
from .flops import CountingEngine
from .forecaster import Forecaster, FrameInput

# "total" is the latency of Forecaster.process; "ahead" the work done after it (encode_ahead).
STAGES = ("preprocess", *GRAPHS, "post", "total", "ahead")


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
        seconds = float(records.stage(graph).sum())
        if graph == "encoder":  # the anchors encoded ahead are encoder calls too
            seconds += float(records.stage("ahead").sum())
        if seconds > 0:
            achieved[graph] = flops[graph] / seconds
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
