"""The streaming Forecaster: camera frames in, K forecast semantic maps with confidences out
(and K forecast depth maps when the model has a depth head).

Each stream (a camera, or one square crop of a wide camera) keeps the features of the last
`context_length` kept frames and the delta tokens between them. At every kept frame the
predictor sees the context the model was trained on, the anchor re-encoded for the oldest
frame of the window followed by the cached frame-to-frame deltas:
    [encode(black, y_{t-L+1}), encode(y_{t-L+1}, y_{t-L+2}), ..., encode(y_{t-1}, y_t)]
at the frames' header times relative to the window (RoPE only sees differences).
All streams and hypotheses go through each graph in one batched call.

The anchor that the next frame will need (encode(black, the second-oldest frame) once the window
is full) does not depend on that frame: `encode_ahead()` computes it after a forecast has been
published, which takes its time off the latency of the next one.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .engine import Engine
from .gate import MAX_GAP, TOLERANCE, FrameGate, GateSettings
from .postprocess import bilinear_matrix, disagreement, kernel_density_confidence
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
    pending_reset: str | None = None
    windows: list[_Window] = field(default_factory=list)  # one per crop


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
        """One batched step over the given frames; None where a frame was gated or the
        stream is still warming up. A malformed frame raises ValueError before any state
        changes."""
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
            tokens = self.engine.encode(black, np.stack([w.features[1] for w in windows]))
        for window, token in zip(windows, tokens[:, 0], strict=True):
            window.next_anchor = token
        return time.perf_counter() - start

    def _process(
        self, frames: Sequence[FrameInput], overrides: dict[str, StreamOverrides]
    ) -> list[Forecast | None]:
        timings: Counter = Counter()
        start = time.perf_counter()
        crops = [self._crops(frame) for frame in frames]
        admitted = [self._admit(f, len(c)) for f, c in zip(frames, crops, strict=True)]
        windows = [
            self._cameras[f.stream_id].windows[i]
            for f, c, ok in zip(frames, crops, admitted, strict=True)
            if ok
            for i in range(len(c))
        ]
        stamps = [
            f.stamp for f, c, ok in zip(frames, crops, admitted, strict=True) if ok for _ in c
        ]
        pixels = [
            self._pixels(crop) for c, ok in zip(crops, admitted, strict=True) if ok for crop in c
        ]
        timings["preprocess"] = time.perf_counter() - start
        if windows:
            y = self._timed(timings, "backbone", self.engine.backbone, np.stack(pixels))
            self._append(windows, stamps, y, timings)
        results: list[Forecast | None] = []
        ready = [
            ok
            and all(
                len(w.features) >= self.config.min_context
                for w in self._cameras[f.stream_id].windows
            )
            for f, ok in zip(frames, admitted, strict=True)
        ]
        streams = [
            (f.stream_id, w, overrides.get(f.stream_id))
            for f, ok in zip(frames, ready, strict=True)
            if ok
            for w in self._cameras[f.stream_id].windows
        ]
        parts = iter(self._rollout(streams, timings) if streams else [])
        for frame, crop_list, ok in zip(frames, crops, ready, strict=True):
            if not ok:
                results.append(None)
                continue
            camera = self._cameras[frame.stream_id]
            pieces = [next(parts) for _ in crop_list]
            forecast = pieces[0] if len(pieces) == 1 else stitch_crops(pieces)
            forecast.reset, camera.pending_reset = camera.pending_reset, None
            self.stats[frame.stream_id]["forecasts"] += 1
            results.append(forecast)
        timings["total"] = time.perf_counter() - start
        for forecast in results:
            if forecast is not None:
                forecast.timings = dict(timings)
        return results

    def reset(self, stream_id: str | None = None) -> None:
        """Forget one camera's history (or every camera's)."""
        for key in [k for k in self._cameras if stream_id in (None, k)]:
            del self._cameras[key]

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
            camera.pending_reset = verdict.restart
        return True

    def _pixels(self, rgb: np.ndarray) -> np.ndarray:
        h, w = self.image_size
        if rgb.shape[:2] != (h, w):
            rgb = np.asarray(
                Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.BILINEAR)
            )
        return rgb.transpose(2, 0, 1).astype(np.float32)  # (3, H, W), values 0..255

    def _append(
        self, windows: list[_Window], stamps: list[float], y: np.ndarray, timings: Counter
    ) -> None:
        """Append each frame; encode its delta and re-encode anchors whose oldest frame changed."""
        xs, ys, targets = [], [], []
        for window, stamp, feat in zip(windows, stamps, y, strict=True):
            if window.features:
                xs.append(window.features[-1])
                ys.append(feat)
                targets.append(window.deltas.append)
            window.stamps.append(stamp)
            window.features.append(feat)
            if len(window.features) > self.context_length:
                window.stamps.popleft()
                window.features.popleft()
                window.deltas.popleft()
                window.anchor, window.next_anchor = window.next_anchor, None
            if window.anchor is None:
                xs.append(self._black)
                ys.append(window.features[0])
                targets.append(lambda z, w=window: setattr(w, "anchor", z))
        tokens = self._timed(timings, "encode", self.engine.encode, np.stack(xs), np.stack(ys))
        for store, token in zip(targets, tokens[:, 0], strict=True):
            store(token)

    def _rollout(
        self, streams: list[tuple[str, _Window, StreamOverrides | None]], timings: Counter
    ) -> list[Forecast]:
        """K hypotheses x T steps for every ready stream; streams with equal history length
        share each call (in steady state: all of them)."""
        by_length: dict[int, list[int]] = {}
        for i, (_, window, _) in enumerate(streams):
            by_length.setdefault(len(window.features), []).append(i)
        results: list[Forecast | None] = [None] * len(streams)
        for members in by_length.values():
            group = [streams[i] for i in members]
            for i, forecast in zip(members, self._rollout_group(group, timings), strict=True):
                results[i] = forecast
        return results  # type: ignore[return-value]

    def _rollout_group(
        self, group: list[tuple[str, _Window, StreamOverrides | None]], timings: Counter
    ) -> list[Forecast]:
        k, horizon, g = self.config.num_hypotheses, self.config.horizon, len(group)
        windows = [w for _, w, _ in group]
        origin = np.array([w.stamps[0] for w in windows])  # each window's own time origin
        future = np.stack([self._future_stamps(w, o) for _, w, o in group])  # (G, T) absolute
        queries = np.stack([self._queries(o) for _, _, o in group], 1)  # (T, G, K, D)
        kv = np.repeat(np.stack([np.stack([w.anchor, *w.deltas]) for w in windows]), k, 0)
        pos_k = np.repeat(np.stack([np.array(w.stamps) for w in windows]) - origin[:, None], k, 0)
        pos_k = pos_k.astype(np.float32)  # (G*K, L)
        current = np.stack([w.features[-1] for w in windows])  # (G, N, C)
        x = np.repeat(current, k, 0)  # (G*K, N, C), row g*K + k
        preds, tokens = [], []
        for step in range(horizon):
            pos_q = np.repeat(future[:, step] - origin, k)[:, None].astype(np.float32)
            z_hat = self._timed(
                timings,
                "predict",
                self.engine.predict,
                queries[step].reshape(g * k, 1, -1),
                kv,
                pos_q,
                pos_k,
            )
            x = self._timed(timings, "decode", self.engine.decode, z_hat, x)
            kv = np.concatenate((kv, z_hat), 1)
            pos_k = np.concatenate((pos_k, pos_q), 1)
            preds.append(x)
            tokens.append(z_hat[:, 0])
        feats = np.stack(preds, 1)  # (G*K, T, N, C)
        futures_and_current = np.concatenate((feats.reshape(-1, *feats.shape[2:]), current))
        logits = self._timed(timings, "head", self.engine.head, futures_and_current)
        depth = (
            self._timed(timings, "depth", self.engine.depth, futures_and_current)
            if self.has_depth
            else None
        )
        start = time.perf_counter()
        maps = self._upsampled(logits).argmax(1).astype(self.class_dtype)
        future_maps = maps[: g * k * horizon].reshape(g, k, horizon, *self.output_size)
        if depth is not None:
            depth = self._upsampled(depth)[:, 0].astype(np.float32)  # (G*K*T + G, h, w)
            future_depth = depth[: g * k * horizon].reshape(g, k, horizon, *self.output_size)
        tokens_g = np.stack(tokens, 1).reshape(g, k, horizon, -1)
        feats_g = feats.reshape(g, k, horizon, *feats.shape[2:])
        forecasts = []
        for i, (stream_id, window, _) in enumerate(group):
            confidence = kernel_density_confidence(tokens_g[i].reshape(k, -1))
            order = np.argsort(-confidence, kind="stable")
            forecasts.append(
                Forecast(
                    stream_id=stream_id,
                    stamp=window.stamps[-1],
                    future_stamps=future[i],
                    classes=future_maps[i][order],
                    confidence=confidence[order],
                    uncertainty=disagreement(future_maps[i]),
                    current_classes=maps[g * k * horizon + i],
                    delta_tokens=tokens_g[i][order],
                    order=order,
                    history_length=len(window.features),
                    reset=None,
                    features=feats_g[i][order] if self.config.keep_features else None,
                    current_features=current[i] if self.config.keep_features else None,
                    depth=None if depth is None else future_depth[i][order],
                    current_depth=None if depth is None else depth[g * k * horizon + i],
                )
            )
        timings["post"] += time.perf_counter() - start
        return forecasts

    def _future_stamps(self, window: _Window, override: StreamOverrides | None) -> np.ndarray:
        if override is not None and override.future_stamps is not None:
            return np.asarray(override.future_stamps, dtype=np.float64)
        return window.stamps[-1] + self.frame_interval * np.arange(1, self.config.horizon + 1)

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

    @staticmethod
    def _timed(
        timings: Counter, stage: str, fn: Callable[..., np.ndarray], *args: np.ndarray
    ) -> np.ndarray:
        start = time.perf_counter()
        out = fn(*args)
        timings[stage] += time.perf_counter() - start
        return out


def crop_boxes(size: tuple[int, int], mode: str) -> list[list[int]]:
    """[x0, y0, x1, y1] of each stream cut from a frame of `size` (h, w): the whole frame, or
    for "square" and a wide frame round(w / h) squares of side h spread from edge to edge."""
    h, w = size
    n = max(1, round(w / h)) if mode == "square" and w > h else 1
    if n == 1:
        return [[0, 0, w, h]]
    return [[x, 0, x + h, h] for x in (round(i * (w - h) / (n - 1)) for i in range(n))]


def stitch_crops(parts: list[Forecast]) -> Forecast:
    """Square crops side by side. Crops are sampled independently, so row k joins every crop's
    k-th sample, with the product of the crops' confidences (renormalised) as its own."""
    by_sample = [np.argsort(p.order) for p in parts]  # row of each sampling index
    joint = np.prod([p.confidence[rows] for p, rows in zip(parts, by_sample, strict=True)], axis=0)
    joint = joint / joint.sum()
    order = np.argsort(-joint, kind="stable")

    def side_by_side(field_name: str) -> np.ndarray:
        arrays = [
            getattr(p, field_name)[rows][order] for p, rows in zip(parts, by_sample, strict=True)
        ]
        return np.concatenate(arrays, axis=-1)

    first = parts[0]
    has_depth = first.depth is not None
    return Forecast(
        stream_id=first.stream_id,
        stamp=first.stamp,
        future_stamps=first.future_stamps,
        classes=side_by_side("classes"),
        confidence=joint[order].astype(np.float32),
        uncertainty=np.concatenate([p.uncertainty for p in parts], axis=-1),
        current_classes=np.concatenate([p.current_classes for p in parts], axis=-1),
        delta_tokens=side_by_side("delta_tokens"),
        order=order,
        history_length=min(p.history_length for p in parts),
        reset=None,
        depth=side_by_side("depth") if has_depth else None,
        current_depth=np.concatenate([p.current_depth for p in parts], -1) if has_depth else None,
    )
