"""The camera intake in front of the Forecaster: latest-frame slots and the frame-size policy.

The node puts each camera's newest message into its slot (LatestFrames) and drops a lone frame
of another size (FrameSizes) before the Forecaster's frame gate (gate.py) sees it. CameraGate
replays both rules on a recording, so that the evaluator, replay pacing and training keep the
frames the node keeps.
"""

from __future__ import annotations

import threading
from typing import Any

from .gate import FrameGate, GateSettings, Verdict

ADOPT_SIZE_AFTER = 3  # consecutive frames of a new size before a camera is taken as resized
WRONG_SIZE = "wrong size"  # the drop of a lone frame of another size


class LatestFrames:
    """One slot per camera holding its newest unprocessed message."""

    def __init__(self) -> None:
        self._slots: dict[str, Any] = {}
        self._ready = threading.Condition()
        self._closed = False

    def put(self, camera: str, msg: Any) -> bool:
        """Store msg; True when it replaced a message the worker never took."""
        with self._ready:
            replaced = camera in self._slots
            self._slots[camera] = msg
            self._ready.notify()
        return replaced

    def take(self) -> dict[str, Any] | None:
        """Wait for at least one message and empty every slot; None once closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._slots or self._closed)
            if self._closed:
                return None
            slots, self._slots = self._slots, {}
        return slots

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class FrameSizes:
    """One camera's frame size (h, w): the first frame's. A frame of another size is dropped,
    unless that size persists for ADOPT_SIZE_AFTER frames in a row (the camera was
    reconfigured): then it is adopted, and the frame gate restarts the history on it."""

    def __init__(self) -> None:
        self.expected: tuple[int, ...] | None = None
        self._candidate: tuple[tuple[int, ...], int] | None = None  # new size, frames in a row

    def admit(self, size: tuple[int, ...]) -> bool:
        if self.expected is None or self.expected == size:
            self.expected, self._candidate = size, None
            return True
        seen, count = self._candidate or (size, 0)
        count = count + 1 if seen == size else 1
        if count >= ADOPT_SIZE_AFTER:
            self.expected, self._candidate = size, None
            return True
        self._candidate = (size, count)
        return False


class CameraGate:
    """One camera's frames as the node keeps them: FrameSizes, then the frame gate."""

    def __init__(self, settings: GateSettings) -> None:
        self.sizes = FrameSizes()
        self.gate = FrameGate(settings)

    def admit(self, stamp: float, size: tuple[int, ...] | None) -> Verdict:
        """The verdict on the next frame (size None: unknown, no size rule applies)."""
        if size is not None and not self.sizes.admit(size):
            return Verdict(kept=False, drop=WRONG_SIZE)
        return self.gate.admit(stamp, size)
