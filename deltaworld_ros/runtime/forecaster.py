"""The streaming Forecaster: camera frames in, K forecast semantic maps with confidences out
(and K forecast depth maps when the model has a depth head).

Each stream (a camera, or one square crop of a wide camera) keeps the features of the last
`context_length` kept frames and the delta tokens between them. At every kept frame the
predictor sees the context the model was trained on, the anchor re-encoded for the oldest
frame of the window followed by the cached frame-to-frame deltas:
    [encode(black, y_{t-L+1}), encode(y_{t-L+1}, y_{t-L+2}), ..., encode(y_{t-1}, y_t)]
at the frames' header times relative to the window (RoPE only sees differences). Which frames
are kept, and where a history restarts, is the frame gate's rule (gate.py).

One step: the kept frames' crops become the batch's slots (one per stream), the backbone and
the encoder extend every slot's window, the predictor and decoder roll out K hypotheses x T
steps for the ready streams (all streams and hypotheses through each graph in one batched
call), and each camera's Forecast is built whole from its streams' rollouts. Stage timings are
named after the graphs (backbone, encoder, predictor, decoder, head, depth), with preprocess,
post and total (up to the rollouts, before each Forecast is assembled) beside them.

The anchor that the next frame will need (encode(black, the second-oldest frame) once the window
is full) does not depend on that frame: `encode_ahead()` computes it after a forecast has been
published, which takes its time off the latency of the next one.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .engine import Engine
from .gate import MAX_GAP, TOLERANCE, FrameGate, GateSettings
from .postprocess import bilinear_matrix, disagreement, kernel_density_confidence, softmax
from .threads import limited_blas


@dataclass(frozen=True)
class ForecasterConfig:
    num_hypotheses: int = 8  # K
    horizon: int = 3  # T steps
    context_length: int | None = None  # frames in the window; None: the model's
    min_context: int = 2  # frames needed before the first forecast after a (re)start
    frame_interval: float | None = None  # seconds between kept frames; None: the model's
    gate_tolerance: float = TOLERANCE  # keep a frame once (1 - tol) * frame_interval passed
    max_gap: float = MAX_GAP  # a gap above max_gap * frame_interval restarts the history
    output_size: tuple[int, int] | None = None  # class maps (h, w); None: 4x the patch grid
    crop: str = "resize"  # "resize" the whole frame, or "square" crops of wide frames
    seed: int = 0
    keep_features: bool = False  # also return predicted features (for evaluation)
    blas_threads: int | None = 1  # numpy's BLAS pool while forecasting (threads.py); None: as is

    def validate(self) -> None:
        checks = [
            (self.num_hypotheses >= 1, "num_hypotheses must be >= 1"),
            (self.horizon >= 1, "horizon must be >= 1"),
            (
                self.context_length is None or self.context_length >= 1,
                "context_length must be >= 1",
            ),
            (self.min_context >= 1, "min_context must be >= 1"),
            (
                self.frame_interval is None or self.frame_interval > 0,
                "frame_interval must be > 0 s",
            ),
            (0 <= self.gate_tolerance < 1, "gate_tolerance must be in [0, 1)"),
            (self.max_gap > 1, "max_gap must be > 1 (frame intervals)"),
            (self.output_size is None or min(self.output_size) >= 1, "output_size must be >= 1"),
            (self.crop in ("resize", "square"), "crop must be 'resize' or 'square'"),
            (self.blas_threads is None or self.blas_threads >= 1, "blas_threads must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {self}")


@dataclass
class FrameInput:
    stream_id: str  # camera name
    stamp: float  # header time, seconds
    rgb: np.ndarray  # (H, W, 3) uint8


@dataclass
class StreamOverrides:
    """Evaluation hooks: fixed noise, and the true future stamps instead of the nominal grid."""

    queries: np.ndarray | None = None  # (T, K, D) queries as fed to the predictor
    future_stamps: Sequence[float] | None = None  # T absolute stamps, seconds


@dataclass
class Forecast:
    stream_id: str
    stamp: float
    future_stamps: np.ndarray  # (T,) s
    classes: np.ndarray  # (K, T, h, w) class ids; rows sorted by confidence, descending
    confidence: np.ndarray  # (K,) float32, sums to 1
    uncertainty: np.ndarray  # (T, h, w) share of hypotheses off the per-pixel mode
    current_classes: np.ndarray  # (h, w) segmentation of the frame itself
    delta_tokens: np.ndarray  # (K, T, C) sampled tokens, rows as in classes
    order: np.ndarray  # (K,) sampling index of each row
    history_length: int
    reset: str | None  # why this stream's history restarted, on the first forecast after it
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage of the batch
    features: np.ndarray | None = None  # (K, T, N, C) with keep_features
    current_features: np.ndarray | None = None  # (N, C) with keep_features
    depth: np.ndarray | None = None  # (K, T, h, w) float32 metres, rows as in classes
    current_depth: np.ndarray | None = None  # (h, w) depth of the frame itself


@dataclass
class _Window:
    """One stream's history: kept stamps, features (N, C), deltas into frames 1.. (C,)."""

    stamps: deque = field(default_factory=deque)
    features: deque = field(default_factory=deque)
    deltas: deque = field(default_factory=deque)
    anchor: np.ndarray | None = None  # encode(black, oldest frame); None when stale
    next_anchor: np.ndarray | None = None  # encode(black, second-oldest), from encode_ahead


@dataclass
class _Camera:
    gate: FrameGate
    windows: list[_Window] = field(default_factory=list)  # one per crop
    reset: str | None = None  # why the history restarted, until the first forecast after it


@dataclass
class _Slot:
    """One stream of a batch: a kept frame's crop and the window it joins."""

    camera: str
    stamp: float
    window: _Window
    pixels: np.ndarray  # (3, H, W) float32, values 0..255
    override: StreamOverrides | None


@dataclass
class _Rollout:
    """One stream's K hypotheses x T steps, rows in sampling order."""

    future_stamps: np.ndarray  # (T,) s
    delta_tokens: np.ndarray  # (K, T, C)
    confidence: np.ndarray  # (K,) float32, sums to 1
    classes: np.ndarray  # (K, T, h, w)
    uncertainty: np.ndarray  # (T, h, w)
    current_classes: np.ndarray  # (h, w)
    history_length: int
    features: np.ndarray | None  # (K, T, N, C) with keep_features
    current_features: np.ndarray | None  # (N, C) with keep_features
    depth: np.ndarray | None  # (K, T, h, w) with a depth head
    current_depth: np.ndarray | None  # (h, w) with a depth head


class Forecaster:
    """Batched streaming forecasts over many cameras; see the module docstring."""

    def __init__(self, engine: Engine, config: ForecasterConfig | None = None) -> None:
        config = config or ForecasterConfig()
        config.validate()
        model = engine.config
        self.engine = engine
        self.config = config
        self.context_length = config.context_length or model.context_length
        self.frame_interval = config.frame_interval or model.frame_interval
        self.gate_settings = GateSettings(
            self.frame_interval, config.gate_tolerance, config.max_gap
        )
        self.grid = model.grid
        self.output_size = tuple(config.output_size or (4 * self.grid[0], 4 * self.grid[1]))
        self.class_dtype = np.uint8 if model.head.num_classes <= 256 else np.uint16
        self.has_depth = "depth" in engine.providers
        # the model's learned scorer when it has one, else the training-free kernel density
        self.has_scorer = "scorer" in engine.providers
        self.confidence_source = "learned scorer" if self.has_scorer else "kernel density"
        self.query_dim = model.predictor.hidden_size
        self.query_scale = model.backbone.initializer_range
        self.image_size = model.image_size
        self.rng = np.random.default_rng(config.seed)
        self.stats: dict[str, Counter] = {}  # per camera: frames, gated, resets, forecasts
        self._cameras: dict[str, _Camera] = {}
        h, w = self.image_size
        self._black = engine.backbone(np.zeros((1, 3, h, w), np.float32))[0]  # anchor's x
        self._upsample = (
            bilinear_matrix(self.grid[0], self.output_size[0]),
            bilinear_matrix(self.grid[1], self.output_size[1]),
        )

    def process(
        self, frames: Sequence[FrameInput], overrides: dict[str, StreamOverrides] | None = None
    ) -> list[Forecast | None]:
        """One batched step over the given frames (at most one per camera); None where a frame
        was gated or the stream is still warming up. A malformed frame raises ValueError
        before any state changes."""
        with limited_blas(self.config.blas_threads):
            return self._process(frames, overrides or {})

    def encode_ahead(self) -> float:
        """Encode now the anchors that the next kept frame of each full window will need;
        seconds spent. Optional: without it the next `process` encodes them itself."""
        windows = [
            w
            for camera in self._cameras.values()
            for w in camera.windows
            if len(w.features) == self.context_length >= 2 and w.next_anchor is None
        ]
        if not windows:
            return 0.0
        start = time.perf_counter()
        with limited_blas(self.config.blas_threads):
            black = np.repeat(self._black[None], len(windows), 0)
            tokens = self.engine.encoder(black, np.stack([w.features[1] for w in windows]))
        for window, token in zip(windows, tokens[:, 0], strict=True):
            window.next_anchor = token
        return time.perf_counter() - start

    def reset(self, stream_id: str | None = None) -> None:
        """Forget one camera's history (or every camera's)."""
        for key in [k for k in self._cameras if stream_id in (None, k)]:
            del self._cameras[key]

    def _process(
        self, frames: Sequence[FrameInput], overrides: dict[str, StreamOverrides]
    ) -> list[Forecast | None]:
        """Gate, run the backbone and the encoder on the kept frames, roll out the ready
        streams, then build each camera's forecast from its streams."""
        timings: Counter = Counter()
        start = time.perf_counter()
        crops = self._checked_crops(frames)
        slots: list[_Slot] = []
        for frame, frame_crops in zip(frames, crops, strict=True):
            if self._admit(frame, len(frame_crops)):
                windows = self._cameras[frame.stream_id].windows
                override = overrides.get(frame.stream_id)
                slots += [
                    _Slot(frame.stream_id, frame.stamp, window, self._pixels(crop), override)
                    for window, crop in zip(windows, frame_crops, strict=True)
                ]
        timings["preprocess"] = time.perf_counter() - start
        if slots:
            pixels = np.stack([slot.pixels for slot in slots])
            self._append(slots, self._run(timings, "backbone", pixels), timings)
        # A camera's crops share their history length: all of them are ready, or none.
        ready = [slot for slot in slots if len(slot.window.features) >= self.config.min_context]
        crops_of: dict[str, list[_Rollout]] = {}
        for slot, rollout in zip(ready, self._rollout(ready, timings), strict=True):
            crops_of.setdefault(slot.camera, []).append(rollout)
        timings["total"] = time.perf_counter() - start
        return [
            self._forecast(frame, crops_of[frame.stream_id], dict(timings))
            if frame.stream_id in crops_of
            else None
            for frame in frames
        ]

    def _checked_crops(self, frames: Sequence[FrameInput]) -> list[list[np.ndarray]]:
        """Each frame's crops (one per stream); ValueError on a malformed frame or batch."""
        cameras = [frame.stream_id for frame in frames]
        if len(set(cameras)) != len(cameras):
            repeated = sorted({c for c in cameras if cameras.count(c) > 1})
            raise ValueError(f"one frame per camera and step; cameras {repeated} come twice")
        return [self._crops(frame) for frame in frames]

    def _crops(self, frame: FrameInput) -> list[np.ndarray]:
        rgb = frame.rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
            raise ValueError(
                f"camera {frame.stream_id!r}: expected an (H, W, 3) uint8 RGB frame, "
                f"got shape {rgb.shape} dtype {rgb.dtype}"
            )
        if not np.isfinite(frame.stamp):
            raise ValueError(f"camera {frame.stream_id!r}: stamp must be finite, got {frame.stamp}")
        return [rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in crop_boxes(rgb.shape[:2], self.config.crop)]

    def _admit(self, frame: FrameInput, num_crops: int) -> bool:
        """Keep or gate the frame by the frame gate (gate.py); a fresh history where it starts
        one."""
        stats = self.stats.setdefault(frame.stream_id, Counter())
        camera = self._cameras.setdefault(frame.stream_id, _Camera(FrameGate(self.gate_settings)))
        stats["frames"] += 1
        verdict = camera.gate.admit(frame.stamp, frame.rgb.shape[:2])
        if not verdict.kept:
            stats[verdict.drop] += 1
            return False
        if verdict.starts:
            camera.windows = [_Window() for _ in range(num_crops)]
        if verdict.restart is not None:
            stats[f"reset: {verdict.restart}"] += 1
            camera.reset = verdict.restart
        return True

    def _pixels(self, rgb: np.ndarray) -> np.ndarray:
        h, w = self.image_size
        if rgb.shape[:2] != (h, w):
            rgb = np.asarray(
                Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.BILINEAR)
            )
        return rgb.transpose(2, 0, 1).astype(np.float32)  # (3, H, W), values 0..255

    def _append(self, slots: list[_Slot], features: np.ndarray, timings: Counter) -> None:
        """Slide each window onto its new frame, with the delta from the frame before it and,
        where the oldest frame changed and encode_ahead did not run, a new anchor."""
        moved = [slot.window for slot in slots if slot.window.features]  # get a delta
        previous = [window.features[-1] for window in moved]
        for slot, y in zip(slots, features, strict=True):
            window = slot.window
            window.stamps.append(slot.stamp)
            window.features.append(y)
            if len(window.features) > self.context_length:
                window.stamps.popleft()
                window.features.popleft()
                window.deltas.popleft()
                window.anchor, window.next_anchor = window.next_anchor, None
        stale = [slot.window for slot in slots if slot.window.anchor is None]
        x = np.stack(previous + [self._black] * len(stale))
        y = np.stack([w.features[-1] for w in moved] + [w.features[0] for w in stale])
        tokens = self._run(timings, "encoder", x, y)[:, 0]
        for window, delta in zip(moved, tokens[: len(moved)], strict=True):
            window.deltas.append(delta)
        for window, anchor in zip(stale, tokens[len(moved) :], strict=True):
            window.anchor = anchor

    def _rollout(self, slots: list[_Slot], timings: Counter) -> list[_Rollout]:
        """K hypotheses x T steps for every ready stream; streams with equal history length
        share each call (in steady state: all of them)."""
        by_length: dict[int, list[int]] = {}
        for i, slot in enumerate(slots):
            by_length.setdefault(len(slot.window.features), []).append(i)
        rollouts: dict[int, _Rollout] = {}
        for members in by_length.values():
            group = self._rollout_group([slots[i] for i in members], timings)
            rollouts.update(zip(members, group, strict=True))
        return [rollouts[i] for i in range(len(slots))]

    def _rollout_group(self, group: list[_Slot], timings: Counter) -> list[_Rollout]:
        k, horizon, g = self.config.num_hypotheses, self.config.horizon, len(group)
        windows = [slot.window for slot in group]
        origin = np.array([w.stamps[0] for w in windows])  # each window's own time origin
        future = np.stack([self._future_stamps(slot) for slot in group])  # (G, T) absolute
        queries = np.stack([self._queries(slot.override) for slot in group], 1)  # (T, G, K, D)
        context = np.stack([np.stack([w.anchor, *w.deltas]) for w in windows])  # (G, L, C)
        context = np.repeat(context, k, 0)  # (G*K, L, C), row g*K + k
        pos_k = np.stack([np.array(w.stamps) for w in windows]) - origin[:, None]
        pos_k = np.repeat(pos_k, k, 0).astype(np.float32)  # (G*K, L)
        current = np.stack([w.features[-1] for w in windows])  # (G, N, C)
        history = context[::k]  # (G, L, C), the scorer's context
        x = np.repeat(current, k, 0)  # (G*K, N, C)
        predicted, tokens = [], []
        for step in range(horizon):
            pos_q = np.repeat(future[:, step] - origin, k)[:, None].astype(np.float32)
            step_queries = queries[step].reshape(g * k, 1, -1)
            z_hat = self._run(timings, "predictor", step_queries, context, pos_q, pos_k)
            x = self._run(timings, "decoder", z_hat, x)
            # each hypothesis goes on from its own sample
            context = np.concatenate((context, z_hat), 1)
            pos_k = np.concatenate((pos_k, pos_q), 1)
            predicted.append(x)
            tokens.append(z_hat[:, 0])
        features = np.stack(predicted, 1)  # (G*K, T, N, C)
        futures = g * k * horizon  # rows of the head's batch before the current frames'
        head_in = np.concatenate((features.reshape(futures, *features.shape[2:]), current))
        logits = self._run(timings, "head", head_in)
        depth = self._run(timings, "depth", head_in) if self.has_depth else None
        start = time.perf_counter()
        maps = self._upsampled(logits).argmax(1).astype(self.class_dtype)  # (futures + G, h, w)
        if depth is not None:
            depth = self._upsampled(depth)[:, 0].astype(np.float32)  # (futures + G, h, w)
        per_stream = (g, k, horizon)
        maps_g = maps[:futures].reshape(*per_stream, *self.output_size)
        depth_g = None if depth is None else depth[:futures].reshape(*per_stream, *self.output_size)
        tokens_g = np.stack(tokens, 1).reshape(*per_stream, -1)
        features_g = features.reshape(*per_stream, *features.shape[2:])
        if self.has_scorer:
            timings["post"] += time.perf_counter() - start
            scores = self._run(timings, "scorer", tokens_g, history, features_g, current)
            confidences = softmax(scores)
            start = time.perf_counter()
        else:
            confidences = [kernel_density_confidence(t.reshape(k, -1)) for t in tokens_g]
        keep = self.config.keep_features
        rollouts = [
            _Rollout(
                future_stamps=future[i],
                delta_tokens=tokens_g[i],
                confidence=confidences[i],
                classes=maps_g[i],
                uncertainty=disagreement(maps_g[i]),
                current_classes=maps[futures + i],
                history_length=len(windows[i].features),
                features=features_g[i] if keep else None,
                current_features=current[i] if keep else None,
                depth=None if depth_g is None else depth_g[i],
                current_depth=None if depth is None else depth[futures + i],
            )
            for i in range(g)
        ]
        timings["post"] += time.perf_counter() - start
        return rollouts

    def _forecast(
        self, frame: FrameInput, crops: list[_Rollout], timings: dict[str, float]
    ) -> Forecast:
        """The camera's forecast: its crops side by side, rows by confidence. Crops are
        sampled independently, so row k joins every crop's k-th sample, with the product of
        the crops' confidences (renormalised) as its own."""
        camera = self._cameras[frame.stream_id]
        reset, camera.reset = camera.reset, None
        self.stats[frame.stream_id]["forecasts"] += 1
        if len(crops) == 1:
            confidence = crops[0].confidence
        else:
            joint = np.prod([crop.confidence for crop in crops], axis=0)
            confidence = (joint / joint.sum()).astype(np.float32)
        order = np.argsort(-confidence, kind="stable")

        def side_by_side(name: str, ranked: bool = True) -> np.ndarray | None:
            arrays = [getattr(crop, name) for crop in crops]
            if arrays[0] is None:
                return None
            joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=-1)
            return joined[order] if ranked else joined

        single = crops[0] if len(crops) == 1 else None  # features do not stitch side by side
        return Forecast(
            stream_id=frame.stream_id,
            stamp=frame.stamp,
            future_stamps=crops[0].future_stamps,
            classes=side_by_side("classes"),
            confidence=confidence[order],
            uncertainty=side_by_side("uncertainty", ranked=False),
            current_classes=side_by_side("current_classes", ranked=False),
            delta_tokens=side_by_side("delta_tokens"),
            order=order,
            history_length=min(crop.history_length for crop in crops),
            reset=reset,
            timings=timings,
            features=None if single is None or single.features is None else single.features[order],
            current_features=None if single is None else single.current_features,
            depth=side_by_side("depth"),
            current_depth=side_by_side("current_depth", ranked=False),
        )

    def _future_stamps(self, slot: _Slot) -> np.ndarray:
        if slot.override is not None and slot.override.future_stamps is not None:
            return np.asarray(slot.override.future_stamps, dtype=np.float64)
        return slot.stamp + self.frame_interval * np.arange(1, self.config.horizon + 1)

    def _queries(self, override: StreamOverrides | None) -> np.ndarray:
        """(T, K, D): the override, the baseline's learned query, or seeded noise * 0.02."""
        shape = (self.config.horizon, self.config.num_hypotheses, self.query_dim)
        if override is not None and override.queries is not None:
            return np.asarray(override.queries, dtype=np.float32).reshape(shape)
        if self.engine.learned_query is not None:
            return np.broadcast_to(self.engine.learned_query.astype(np.float32), shape)
        return (self.rng.standard_normal(shape) * self.query_scale).astype(np.float32)

    def _upsampled(self, maps: np.ndarray) -> np.ndarray:
        """(M, C, h, w) on the patch grid -> (M, C, *output_size), bilinear as F.interpolate
        with align_corners=False."""
        rows, cols = self._upsample
        return np.einsum("oh,mchw,pw->mcop", rows, maps, cols, optimize=True)

    def _run(self, timings: Counter, graph: str, *inputs: np.ndarray) -> np.ndarray:
        """One call of the engine's `graph`, its time counted under the graph's name."""
        start = time.perf_counter()
        out = getattr(self.engine, graph)(*inputs)
        timings[graph] += time.perf_counter() - start
        return out


def crop_boxes(size: tuple[int, int], mode: str) -> list[list[int]]:
    """[x0, y0, x1, y1] of each stream cut from a frame of `size` (h, w): the whole frame, or
    for "square" and a wide frame round(w / h) squares of side h spread from edge to edge."""
    h, w = size
    n = max(1, round(w / h)) if mode == "square" and w > h else 1
    if n == 1:
        return [[0, 0, w, h]]
    return [[x, 0, x + h, h] for x in (round(i * (w - h) / (n - 1)) for i in range(n))]
