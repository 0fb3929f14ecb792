"""numpy's BLAS pool held at one thread while an engine runs beside it.

OpenBLAS threads keep spinning after each call; next to onnxruntime's (or torch's) own pool they
oversubscribe the cores: on 2 cores a forecast step took 2x as long (benchmarks/LEVERS.md). The
Forecaster's numpy work (upsampling, confidences) is small enough for one thread.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController

_controller: ThreadpoolController | None = None


def single_threaded_blas() -> AbstractContextManager:
    """Context in which every loaded BLAS library uses one thread; restored on exit."""
    global _controller
    if _controller is None:  # finding the loaded libraries costs a few ms: once per process
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
