"""`deltaworld synth`: record the procedural street world as a rosbag2 (images + labels)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from deltaworld_ros.arguments import at_least, size
from deltaworld_ros.errors import UsageError
from deltaworld_ros.io.bags import ImageBagWriter

from .config import WorldConfig
from .world import StreetWorld

DEFAULT_START_S = 1_767_225_600  # 2026-01-01T00:00:00Z: header stamps look like a real recording


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="bag directory to create")
    parser.add_argument(
        "--frames", type=at_least(1), default=300, help="frames to write (default 300)"
    )
    parser.add_argument("--seed", type=int, default=0, help="world seed (layout, agents, noise)")
    parser.add_argument("--camera", choices=("static", "vehicle"), default="static")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument(
        "--size", type=size, default=(96, 96), help="HxW (default 96x96, the small model's)"
    )
    parser.add_argument("--fps", type=float, default=10.0, help="nominal frame rate (default 10)")
    parser.add_argument("--image-topic", default="/camera/image_raw")
    parser.add_argument("--label-topic", default="/camera/labels")
    parser.add_argument("--frame-id", default="camera")
    parser.add_argument(
        "--start-stamp",
        type=float,
        default=DEFAULT_START_S,
        help="epoch seconds of the first frame's grid slot (default 2026-01-01)",
    )
    parser.add_argument(
        "--compressed",
        action="store_true",
        help="write the image topic as sensor_msgs/CompressedImage (jpeg); labels stay raw",
    )


def run(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise UsageError(f"--out {args.out} exists already; choose a new bag path or delete it")
    height, width = args.size
    config = WorldConfig(height=height, width=width, camera=args.camera, fps=args.fps)
    print(
        record(
            args.out,
            StreetWorld(config, args.seed),
            args.frames,
            storage=args.storage,
            image_topic=args.image_topic,
            label_topic=args.label_topic,
            frame_id=args.frame_id,
            start_ns=int(round(args.start_stamp * 1e9)),
            compressed=args.compressed,
        )
    )
    return 0


def record(
    out: Path,
    world: StreetWorld,
    frames: int,
    *,
    storage: str = "mcap",
    image_topic: str = "/camera/image_raw",
    label_topic: str = "/camera/labels",
    frame_id: str = "camera",
    start_ns: int = DEFAULT_START_S * 10**9,
    compressed: bool = False,
) -> str:
    """Write `frames` frames of `world` (images + labels) as a rosbag2; a line saying what."""
    config = world.config
    t0 = time.perf_counter()
    first = last = 0
    events = 0
    with ImageBagWriter(out, storage=storage) as bag:
        for i, frame in enumerate(tqdm(world.frames(frames), total=frames, unit="frame")):
            stamp = start_ns + int(round(frame.stamp_s * 1e9))
            if i == 0:
                first = stamp
            last = stamp
            events += sum(e.visible for e in frame.branch_events)
            if compressed:
                bag.write_compressed(image_topic, stamp, frame.rgb, "jpeg", frame_id)
            else:
                bag.write_image(image_topic, stamp, frame.rgb, "rgb8", frame_id)
            bag.write_image(label_topic, stamp, frame.labels, "mono8", frame_id)
    dropped = frame.index - frames  # grid slots skipped by the simulated sensor
    return (
        f"wrote {out} ({storage}): {frames} frames {config.width}x{config.height} "
        f"{config.camera} camera, {(last - first) / 1e9:.1f} s of header time, "
        f"{dropped} dropped, {events} visible branching decisions, "
        f"{time.perf_counter() - t0:.1f} s"
    )
