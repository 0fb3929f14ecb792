"""Thread pools that leave the cores to each other: numpy's BLAS pool held at one thread while
an engine runs beside it, and torch's OpenMP threads that sleep instead of spinning.

OpenBLAS threads keep spinning after each call; next to onnxruntime's (or torch's) own pool they
oversubscribe the cores: on 2 cores a forecast step took 2x as long (benchmarks/LEVERS.md). The
Forecaster's numpy work (upsampling, confidences) is small enough for one thread. torch's
OpenMP threads spin between parallel regions too; on a busy CPU a small matmul took 34 ms with 2
threads instead of 3 ms with 1 (2.3 ms with 2 passive threads).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

from threadpoolctl import ThreadpoolController

_controller: ThreadpoolController | None = None


def limited_blas(threads: int | None) -> AbstractContextManager:
    """Context in which every loaded BLAS library uses `threads` threads (None: as it is);
    restored on exit."""
    global _controller
    if threads is None:
        return nullcontext()
    if _controller is None:  # finding the loaded libraries costs a few ms: once per process
        _controller = ThreadpoolController()
    return _controller.limit(limits=threads, user_api="blas")


def passive_openmp() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless set: read once, when torch loads its OpenMP runtime, so
    call this before `import torch` (later it changes nothing)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
