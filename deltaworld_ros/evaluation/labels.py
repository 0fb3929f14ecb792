"""The targets an evaluation reads beside the frames: a label topic (class ids) or a depth topic
(32FC1 metres), streamed so that a long bag never sits in memory."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..io.bags import IMAGE, BagFrame, read_messages
from ..io.images import stamp_ns
from ..ros.futures import decode_float_image
from .recording import EvalError

LABEL_WORDS = ("label", "semantic", "segmentation")  # how --label-topic auto finds labels


def choose_label_topic(
    wanted: str | None, bag: Path, image_topic: str, image_types: dict[str, str]
) -> str | None:
    """The label topic to score against: `wanted`, or with "auto" the bag's Image topic named
    like labels (None: score against pseudo-labels)."""
    if wanted in (None, "", "none"):
        return None
    if wanted != "auto":
        if wanted not in image_types:
            listing = ", ".join(image_types) or "none"
            raise EvalError(
                f"--label-topic {wanted} is not an image topic of {bag}; its image topics are: "
                f"{listing} (or pass --label-topic none)"
            )
        return wanted
    candidates = [
        t
        for t, m in image_types.items()
        if m == IMAGE and t != image_topic and any(w in t for w in LABEL_WORDS)
    ]
    return candidates[0] if len(candidates) == 1 else None


def read_depth(bag: Path, topic: str, damage: list[str]) -> Iterator[BagFrame]:
    """A 32FC1 depth topic (metres) as frames; an undecodable message has image=None; damage
    in the bag is noted in `damage` (see io.bags.bag_messages)."""
    for message in read_messages(bag, [topic], damage):
        msg = message.msg
        try:
            depth, error = decode_float_image(msg), None
        except ValueError as err:
            depth, error = None, str(err)
        yield BagFrame(stamp_ns(msg.header), msg.header.frame_id, depth, error,
                       message.log_time_ns)  # fmt: skip


class LabelStream:
    """Labels (class ids or depth) read alongside the frames: the label of the frame's header
    stamp among those recorded within `window_s` of it. A long bag never sits in memory, and
    in a looping bag each lap finds its own labels."""

    def __init__(self, source: Iterator[BagFrame], window_s: float = 2.0) -> None:
        self.source = source
        self.window_ns = int(window_s * 1e9)
        self.buffer: deque[Any] = deque()  # io.bags.BagFrame, in log-time order
        self.errors = 0  # undecodable label messages
        self.done = False

    def get(self, stamp_ns: int, log_ns: int) -> np.ndarray | None:
        while not self.done and (
            not self.buffer or self.buffer[-1].log_time_ns <= log_ns + self.window_ns
        ):
            label = next(self.source, None)
            if label is None:
                self.done = True
            elif label.image is None:
                self.errors += 1
            else:
                self.buffer.append(label)
        while self.buffer and self.buffer[0].log_time_ns < log_ns - self.window_ns:
            self.buffer.popleft()
        for label in self.buffer:
            if label.stamp_ns == stamp_ns:
                self.buffer.remove(label)
                return label.image
        return None
