"""Video files <-> RGB frames with PyAV (FFmpeg), keeping real presentation timestamps."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Frame times are Fractions turned into floats; a bin edge can land 1e-16 s early.
_TIME_EPS = 1e-6


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float  # the container's average rate; 0.0 when it does not say
    duration_s: float  # 0.0 when the container does not say
    frames: int  # 0 when the container does not say


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise ValueError(f"{path} has no video stream")
    return container.streams.video[0]


def _open(path: str | Path) -> tuple[Path, av.container.InputContainer]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    return path, av.open(str(path))


def probe_video(path: str | Path) -> VideoInfo:
    """Size, rate, duration and frame count from the container header (no decoding)."""
    path, container = _open(path)
    with container:
        stream = _video_stream(container, path)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        rate = stream.average_rate
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate) if rate else 0.0,
            duration_s=duration,
            frames=stream.frames,
        )


def read_video_frames(
    path: str | Path, fps: float | None = None, max_width: int | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """(presentation time in seconds, RGB uint8 (H, W, 3)) for each frame, in time order.

    `fps` keeps at most one frame per 1/fps-second bin counted from the first frame (so
    30 -> 10 fps keeps every third frame and 25 -> 10 averages 10 fps). `max_width` downscales
    wider frames, keeping the aspect ratio, in FFmpeg's scaler.
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_width is not None and max_width <= 0:
        raise ValueError(f"max_width must be > 0 pixels, got {max_width}")
    path, container = _open(path)
    with container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or 0) or 30.0
        first: float | None = None
        last_bin = -1
        for index, frame in enumerate(container.decode(stream)):
            # Streams without pts (rare raw formats) fall back to the nominal rate.
            t = float(frame.time) if frame.time is not None else index / rate
            if first is None:
                first = t
            if fps is not None:
                bin_index = math.floor((t - first) * fps + _TIME_EPS)
                if bin_index <= last_bin:
                    continue
                last_bin = bin_index
            if max_width is not None and frame.width > max_width:
                height = max(1, round(frame.height * max_width / frame.width))
                frame = frame.reformat(width=max_width, height=height)
            yield t, frame.to_ndarray(format="rgb24")


def write_video(
    path: str | Path, frames: Iterable[np.ndarray], fps: float, codec: str = "libx264"
) -> int:
    """Encode RGB uint8 (H, W, 3) frames (even H and W) at a constant rate; returns the count."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise ValueError(f"frames must be RGB uint8 (H, W, 3), got {rgb.shape} {rgb.dtype}")
            if count == 0:
                if rgb.shape[0] % 2 or rgb.shape[1] % 2:
                    raise ValueError(
                        f"yuv420p video needs even width and height, got {rgb.shape[1]}x"
                        f"{rgb.shape[0]}; crop or pad one pixel"
                    )
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = count
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode())
    return count
