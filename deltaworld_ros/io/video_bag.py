"""`deltaworld bag-from-video`: a video file becomes a rosbag2 of sensor_msgs/Image rgb8."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from deltaworld_ros.errors import DeltaworldError, UsageError
from deltaworld_ros.io.bags import ImageBagWriter
from deltaworld_ros.io.video import probe_video, read_video_frames


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="input video (anything FFmpeg reads)")
    parser.add_argument("--out", type=Path, required=True, help="bag directory to create")
    parser.add_argument(
        "--fps", type=float, default=None, help="keep at most this many frames per second"
    )
    parser.add_argument("--topic", default="/camera/image_raw", help="image topic")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument(
        "--start-time",
        type=float,
        default=None,
        metavar="SECONDS_EPOCH",
        help="header stamp of video time 0 (default: now); stamps = start + pts",
    )
    parser.add_argument(
        "--max-width", type=int, default=None, metavar="W", help="downscale wider frames to W"
    )
    parser.add_argument("--frame-id", default="camera", help="header frame_id")


def _check(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, phrased with its fix, or None."""
    if not args.video.is_file():
        return f"video {args.video} does not exist"
    if args.out.exists():
        return f"--out {args.out} exists already; choose a new bag path or delete it"
    if args.fps is not None and not args.fps > 0:
        return f"--fps must be > 0, got {args.fps}"
    if args.max_width is not None and args.max_width <= 0:
        return f"--max-width must be > 0 pixels, got {args.max_width}"
    if args.start_time is not None and args.start_time < 0:
        return f"--start-time must be >= 0 seconds since the epoch, got {args.start_time}"
    return None


def run(args: argparse.Namespace) -> int:
    if problem := _check(args):
        raise UsageError(problem)
    # Integer ns: a float of epoch seconds only resolves ~0.2 us, so add pts in ns after it.
    start_ns = round((time.time() if args.start_time is None else args.start_time) * 1e9)
    info = probe_video(args.video)
    rate = min(info.fps, args.fps) if args.fps and info.fps else (args.fps or info.fps)
    expected = round(info.duration_s * rate) or info.frames or None

    count, first, last, shape = 0, 0.0, 0.0, (0, 0)
    with ImageBagWriter(args.out, storage=args.storage) as bag:
        frames = read_video_frames(args.video, fps=args.fps, max_width=args.max_width)
        for t, rgb in tqdm(frames, total=expected, unit="frame", desc=args.video.name):
            bag.write_image(args.topic, start_ns + round(t * 1e9), rgb, "rgb8", args.frame_id)
            first = t if count == 0 else first
            last, shape, count = t, rgb.shape[:2], count + 1
    if count == 0:
        raise DeltaworldError(f"no frames decoded from {args.video}")
    print(
        f"wrote {count} frames ({last - first:.2f} s, {shape[1]}x{shape[0]} rgb8) on "
        f"{args.topic} to {args.out} ({args.storage})"
    )
    return 0
