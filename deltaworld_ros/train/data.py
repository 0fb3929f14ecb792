"""Training frames with header stamps (and labels), cut into clips at the model's frame interval.

Three sources give the same `FrameStore`: the procedural street world (default), a rosbag2
image topic (+ an optional label topic) and a video file. A recording's frames are kept the
way the node keeps them (runtime/gate.py: one every `frame_interval` seconds of header time; a
history restarts after a gap, a stamp going backwards or a new resolution), so the networks
train on the frames, the stamps and the drops they will see at run time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..runtime.gate import GateSettings
from ..runtime.intake import CameraGate
from ..synth import CLASS_NAMES, PALETTE, StreetWorld, WorldConfig

# World seeds of the training clips stay below this; evaluate-world draws its held-out
# sequences from seeds at or above it (and their layouts are not in the training pool).
HELD_OUT_SEED_BASE = 1_000_000_000
CACHE_FORMAT = 2  # 2: with depth; a cache of another format is rendered again


@dataclass
class FrameStore:
    """Frames at the model's image size, grouped into clips of consecutive kept frames."""

    rgb: np.ndarray  # (F, H, W, 3) uint8
    stamps: np.ndarray  # (F,) float64 header seconds
    prev: np.ndarray  # (F,) int64 previous kept frame of the same stream, -1 at a stream start
    clips: np.ndarray  # (M, T) int64 frame indices, T consecutive kept frames of one stream
    frame_interval: float  # seconds between kept frames (nominal)
    labels: np.ndarray | None = None  # (F, H, W) uint8 class ids
    source: dict[str, Any] = field(default_factory=dict)  # provenance of the frames
    depth: np.ndarray | None = None  # (F, H, W) float16 camera z-depth, metres (synth world)

    def __post_init__(self) -> None:
        f = len(self.rgb)
        if len(self.stamps) != f or len(self.prev) != f:
            raise ValueError(
                f"rgb, stamps and prev differ in length: {f}, {len(self.stamps)}, {len(self.prev)}"
            )
        for name in ("labels", "depth"):
            array = getattr(self, name)
            if array is not None and array.shape != self.rgb.shape[:3]:
                raise ValueError(f"{name} {array.shape} do not match frames {self.rgb.shape}")
        if self.clips.ndim != 2 or len(self.clips) == 0:
            raise ValueError(
                f"no clip of consecutive frames in {self.source or 'the data'} "
                f"(clips {self.clips.shape}); record a longer stream or lower --clip-length"
            )

    @property
    def clip_length(self) -> int:
        return self.clips.shape[1]

    def save(self, path: Path) -> None:
        arrays = dict(rgb=self.rgb, stamps=self.stamps, prev=self.prev, clips=self.clips)
        for name in ("labels", "depth"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        meta = json.dumps({"frame_interval": self.frame_interval, "source": self.source})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, meta=np.array(meta), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FrameStore:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            labels = data["labels"] if "labels" in data.files else None
            return cls(
                data["rgb"],
                data["stamps"],
                data["prev"],
                data["clips"],
                meta["frame_interval"],
                labels,
                meta["source"],
                data["depth"] if "depth" in data.files else None,
            )


# ---------------------------------------------------------------------------- synthetic world


@dataclass(frozen=True)
class SynthData:
    """Which training clips to render from the procedural world."""

    num_clips: int = 2400
    clip_length: int = 12  # kept frames per clip
    stride: int = 4  # world ticks (1/fps) per kept frame: frame_interval = stride / fps
    vehicle_fraction: float = 0.5  # share of clips seen from a moving car (the rest: static)
    burn_in: tuple[int, int] = (5, 60)  # ticks simulated before the first frame
    seed: int = 0  # training world seeds are seed * num_clips + i < HELD_OUT_SEED_BASE
    world: WorldConfig = field(default_factory=WorldConfig)

    def __post_init__(self) -> None:
        if (self.seed + 1) * self.num_clips > HELD_OUT_SEED_BASE:
            raise ValueError(
                f"training world seeds must stay below {HELD_OUT_SEED_BASE} (held out for "
                f"evaluate-world); got seed {self.seed} x {self.num_clips} clips"
            )

    @property
    def frame_interval(self) -> float:
        return self.stride / self.world.fps

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["world"]["camera"] = "static|vehicle"
        return d


def camera_for(index: int, vehicle_fraction: float) -> str:
    """Deterministic static / vehicle mix with exactly the given share of vehicle clips."""
    moving = int((index + 1) * vehicle_fraction) > int(index * vehicle_fraction)
    return "vehicle" if moving else "static"


def clip_groups(store: FrameStore) -> np.ndarray:
    """A name per clip of the store: its camera for the synth world, else the source kind."""
    source = store.source
    if source.get("kind") == "synth":
        rank, size, share = source["rank"], source["world_size"], source["vehicle_fraction"]
        return np.array([camera_for(rank + j * size, share) for j in range(len(store.clips))])
    return np.full(len(store.clips), source.get("kind", "recording"))


def render_clip(
    world_config: WorldConfig,
    seed: int,
    length: int,
    stride: int,
    burn_in: int,
    layout_seed: int | None = None,
) -> tuple[StreetWorld, list]:
    """`length` frames of world `seed`, every `stride` ticks (with the world's drops)."""
    world = StreetWorld(world_config, seed, layout_seed=layout_seed)
    world.advance(burn_in)
    return world, list(world.frames(length, stride))


def synth_store(
    spec: SynthData, rank: int = 0, world_size: int = 1, progress: bool = True
) -> FrameStore:
    """Render this rank's share of the training clips (clip i goes to rank i % world_size)."""
    mine = range(rank, spec.num_clips, world_size)
    rng = np.random.default_rng([spec.seed, 0xC11F])
    burn = rng.integers(spec.burn_in[0], spec.burn_in[1] + 1, spec.num_clips)
    pool = spec.world.layout_pool
    h, w, t = spec.world.height, spec.world.width, spec.clip_length
    rgb = np.empty((len(mine), t, h, w, 3), np.uint8)
    labels = np.empty((len(mine), t, h, w), np.uint8)
    depth = np.empty((len(mine), t, h, w), np.float16)  # 3 cm steps at 80 m: ample for a head
    stamps = np.empty((len(mine), t), np.float64)
    bar = tqdm(mine, desc=f"render clips r{rank}", disable=not progress, leave=False)
    for j, i in enumerate(bar):
        cfg = replace(spec.world, camera=camera_for(i, spec.vehicle_fraction))
        # consecutive clips share a layout, so the layout cache is not thrashed
        _, frames = render_clip(
            cfg,
            spec.seed * spec.num_clips + i,
            t,
            spec.stride,
            int(burn[i]),
            layout_seed=i * pool // spec.num_clips,
        )
        rgb[j] = np.stack([f.rgb for f in frames])
        labels[j] = np.stack([f.labels for f in frames])
        depth[j] = np.stack([f.depth for f in frames])
        stamps[j] = [f.stamp_s for f in frames]
    m = len(mine)
    index = np.arange(m * t).reshape(m, t)
    prev = np.where(np.arange(m * t) % t == 0, -1, np.arange(m * t) - 1)
    source = {"kind": "synth", **spec.describe(), "rank": rank, "world_size": world_size}
    return FrameStore(
        rgb.reshape(m * t, h, w, 3),
        stamps.reshape(-1),
        prev,
        index,
        spec.frame_interval,
        labels.reshape(m * t, h, w),
        source,
        depth.reshape(m * t, h, w),
    )


def cached_synth_store(
    spec: SynthData, cache_dir: Path, rank: int = 0, world_size: int = 1, progress: bool = True
) -> FrameStore:
    """synth_store, rendered once into `cache_dir` and reloaded from there afterwards."""
    key = json.dumps([spec.describe(), rank, world_size, CACHE_FORMAT], sort_keys=True,
                     default=str)  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"synth-{digest}-r{rank}of{world_size}.npz"
    if path.is_file():
        return FrameStore.load(path)
    store = synth_store(spec, rank, world_size, progress)
    store.save(path)
    return store


def synth_head_classes() -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    return tuple(CLASS_NAMES), tuple(tuple(int(v) for v in row) for row in PALETTE)


# ---------------------------------------------------------------------------- recorded streams


def gate_frames(
    stamps: np.ndarray, sizes: list[tuple[int, ...]], frame_interval: float
) -> tuple[np.ndarray, np.ndarray]:
    """The node's frame gate (runtime/gate.py) and frame-size policy, offline, with the node's
    default tolerance and restart gap: (kept indices, history start flag per kept frame)."""
    gate = CameraGate(GateSettings(frame_interval))
    verdicts = [gate.admit(float(t), size) for t, size in zip(stamps, sizes, strict=True)]
    kept = [i for i, v in enumerate(verdicts) if v.kept]
    return np.array(kept, np.int64), np.array([verdicts[i].starts for i in kept], bool)


def estimate_interval(stamps: np.ndarray) -> float:
    """Median positive difference of consecutive stamps, seconds."""
    diffs = np.diff(np.asarray(stamps, np.float64))
    diffs = diffs[diffs > 0]
    if not len(diffs):
        raise ValueError("cannot estimate a frame interval from fewer than two increasing stamps")
    return float(np.median(diffs))


def stream_store(
    rgb: list[np.ndarray],
    stamps: np.ndarray,
    image_size: tuple[int, int],
    clip_length: int,
    frame_interval: float | None,
    labels: list[np.ndarray] | None,
    source: dict[str, Any],
) -> FrameStore:
    """Frames of one recorded stream -> gated, resized frames and clip windows (stride 1)."""
    stamps = np.asarray(stamps, np.float64)
    interval = frame_interval or estimate_interval(stamps)
    kept, starts = gate_frames(stamps, [image.shape[:2] for image in rgb], interval)
    h, w = image_size
    out_rgb = np.stack([_resize(rgb[i], (h, w), Image.BILINEAR) for i in kept])
    out_labels = None
    if labels is not None:
        out_labels = np.stack([_resize(labels[i], (h, w), Image.NEAREST) for i in kept])
    n = len(kept)
    prev = np.where(starts, -1, np.arange(n) - 1)
    segment = np.cumsum(starts)
    windows = [
        np.arange(s, s + clip_length)
        for s in range(max(0, n - clip_length + 1))
        if segment[s] == segment[s + clip_length - 1]
    ]
    clips = np.array(windows, np.int64).reshape(-1, clip_length)
    return FrameStore(
        out_rgb,
        stamps[kept],
        prev,
        clips,
        interval,
        out_labels,
        {**source, "frames_read": len(stamps), "frames_kept": n},
    )


def _resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    return np.asarray(Image.fromarray(array).resize((w, h), resample))


def bag_store(
    path: str | Path,
    image_topic: str,
    image_size: tuple[int, int],
    clip_length: int,
    frame_interval: float | None = None,
    label_topic: str | None = None,
) -> FrameStore:
    """A rosbag2 image topic in recording order, as the node receives it (labels matched by
    header stamp from `label_topic`)."""
    from ..io.bags import read_images

    frames = [f for f in read_images(path, image_topic) if f.image is not None]
    if not frames:
        raise ValueError(f"no decodable image on {image_topic} in bag {path}")
    labels = None
    if label_topic:
        by_stamp = {
            f.stamp_ns: f.image
            for f in read_images(path, label_topic, labels=True)
            if f.image is not None
        }
        frames = [f for f in frames if f.stamp_ns in by_stamp]
        if not frames:
            raise ValueError(
                f"no frame of {image_topic} has a label message with the same header stamp on "
                f"{label_topic} in {path}"
            )
        labels = [by_stamp[f.stamp_ns] for f in frames]
    stamps = np.array([f.stamp_ns / 1e9 for f in frames], np.float64)
    source = {
        "kind": "rosbag2",
        "path": str(path),
        "image_topic": image_topic,
        "label_topic": label_topic,
    }
    return stream_store(
        [f.image for f in frames], stamps, image_size, clip_length, frame_interval, labels, source
    )


def video_store(
    path: str | Path,
    image_size: tuple[int, int],
    clip_length: int,
    frame_interval: float | None = None,
) -> FrameStore:
    """A video file; presentation times are the stamps (no labels)."""
    from ..io.video import read_video_frames

    fps = 1.0 / frame_interval if frame_interval else None
    pairs = list(read_video_frames(path, fps=fps))
    if not pairs:
        raise ValueError(f"no frame could be decoded from video {path}")
    stamps = np.array([t for t, _ in pairs], np.float64)
    source = {"kind": "video", "path": str(path)}
    return stream_store(
        [f for _, f in pairs], stamps, image_size, clip_length, frame_interval, None, source
    )
