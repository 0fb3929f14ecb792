"""The frames an evaluation scores: the ones the Forecaster's gate keeps, numbered, in segments
between history restarts, each with the kept frames that came next."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..runtime.gate import GATED
from ..runtime.intake import WRONG_SIZE, CameraGate


@dataclass
class KeptFrame:
    index: int  # position among kept frames
    message: int  # position among the topic's messages
    stamp_ns: int  # header stamp
    log_ns: int  # when it was recorded
    rgb: np.ndarray  # (H, W, 3) uint8
    segment: int  # increases at every history restart


@dataclass
class FrameStats:
    messages: int = 0
    undecodable: int = 0
    errors: Counter = field(default_factory=Counter)  # decode error -> count
    gated: int = 0
    wrong_size: int = 0  # a lone frame of another size, dropped as the node drops it
    kept: int = 0
    restarts: Counter = field(default_factory=Counter)  # reason -> count
    read_s: list[float] = field(default_factory=list)  # bag read + decode, per message


def keep_frames(frames: Iterable[Any], gate: CameraGate, stats: FrameStats) -> Iterator[KeptFrame]:
    """Decoded frames (io.bags.BagFrame) that `gate` keeps, numbered, with a new segment at
    every restart. Undecodable frames are counted in `stats` and skipped."""
    segment = index = 0
    source = iter(frames)
    while True:
        start = time.perf_counter()
        frame = next(source, None)
        if frame is None:
            return
        stats.read_s.append(time.perf_counter() - start)
        stats.messages += 1
        if frame.image is None:
            stats.undecodable += 1
            stats.errors[frame.error] += 1
            continue
        verdict = gate.admit(frame.stamp_ns / 1e9, frame.image.shape[:2])
        if verdict.restart is not None:
            stats.restarts[verdict.restart] += 1
            segment += 1
        if verdict.drop == WRONG_SIZE:
            stats.wrong_size += 1
        if not verdict.kept:
            stats.gated += verdict.drop == GATED
            continue
        stats.kept += 1
        yield KeptFrame(
            index, stats.messages - 1, frame.stamp_ns, frame.log_time_ns, frame.image, segment
        )
        index += 1


def with_futures(
    kept: Iterable[KeptFrame], horizon: int
) -> Iterator[tuple[KeptFrame, list[KeptFrame]]]:
    """Each kept frame with the (up to) `horizon` kept frames that came next in its segment."""
    window: deque[KeptFrame] = deque()

    def pop() -> tuple[KeptFrame, list[KeptFrame]]:
        head = window.popleft()
        return head, [f for f in window if f.segment == head.segment]

    for frame in kept:
        window.append(frame)
        if len(window) > horizon:
            yield pop()
    while window:
        yield pop()
