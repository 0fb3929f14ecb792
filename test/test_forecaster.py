"""The streaming Forecaster: executable documentation of its streaming semantics.

The model is the fixture's tiny random-weight model behind the torch engine, so the numbers
are the reference implementation's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from deltaworld_ros.model.deltatok import tokenize_offline
from deltaworld_ros.model.deltaworld import rollout
from deltaworld_ros.runtime.forecaster import (
    Forecaster,
    ForecasterConfig,
    FrameInput,
    StreamOverrides,
)
from deltaworld_ros.runtime.torch_engine import TorchEngine

K, T = 3, 2


@pytest.fixture(scope="module")
def engine(tiny_model):
    return TorchEngine(tiny_model)


@pytest.fixture(scope="module")
def clip(fixture_arrays):
    """The fixture's two clips as camera frames (B, T, H, W, 3) and their stamps (B, T)."""
    return fixture_arrays["inputs/frames_uint8"].transpose(0, 1, 3, 4, 2).copy(), fixture_arrays[
        "inputs/timestamps"
    ]


def frame(camera: str, stamp: float, rgb: np.ndarray) -> FrameInput:
    return FrameInput(camera, float(stamp), np.ascontiguousarray(rgb))


def make(engine, **overrides) -> Forecaster:
    settings = dict(
        num_hypotheses=K,
        horizon=T,
        context_length=3,
        min_context=1,
        frame_interval=0.03,
        max_gap=100.0,
    )
    settings.update(overrides)
    return Forecaster(engine, ForecasterConfig(**settings))


def in_sampling_order(forecast, array):
    return array[np.argsort(forecast.order)]


def test_streaming_equals_the_reference_offline_rollout(engine, clip, fixture_arrays):
    """Both fixture clips as two cameras, one frame at a time, batched together: the forecast at
    frame 2 is the reference rollout (context 3, horizon 2) for the stored queries."""
    frames, stamps = clip
    forecaster = make(engine, keep_features=True, min_context=3)
    queries = fixture_arrays["out/world/rollout/queries"][:, :, 0].reshape(T, 2, K, -1)
    for t in range(3):
        overrides = {
            f"cam{b}": StreamOverrides(queries=queries[:, b], future_stamps=stamps[b, 3:5])
            for b in range(2)
        }
        results = forecaster.process(
            [frame(f"cam{b}", stamps[b, t], frames[b, t]) for b in range(2)], overrides
        )
        assert (results[0] is None) == (t < 2)
    for b in range(2):
        got = in_sampling_order(results[b], results[b].features)
        np.testing.assert_allclose(
            got, fixture_arrays["out/world/rollout/preds"][b], atol=1e-4 * 17
        )


@pytest.mark.parametrize("ahead", [False, True], ids=["inline", "encoded-ahead"])
def test_sliding_window_reencodes_the_anchor_for_the_oldest_frame(engine, tiny_model, clip, ahead):
    """At frame 4 with a 3-frame window the context is [encode(black, y2), encode(y2, y3),
    encode(y3, y4)]: exactly the offline rollout of the clip that starts at frame 2, whether
    the anchor was encoded inline or ahead, after the previous forecast."""
    frames, stamps = clip
    forecaster = make(engine, keep_features=True)
    rng = np.random.default_rng(3)
    queries = (rng.standard_normal((T, K, 128)) * 0.02).astype(np.float32)
    future = stamps[0, 4] + np.array([0.05, 0.11])
    for t in range(5):
        override = {"cam": StreamOverrides(queries=queries, future_stamps=future)}
        result = forecaster.process([frame("cam", stamps[0, t], frames[0, t])], override)[0]
        if ahead:
            spent = forecaster.encode_ahead()
            assert (spent > 0) == (t >= 2), "only a full window has an anchor to encode ahead"
            assert forecaster.encode_ahead() == 0.0, "nothing twice"
    assert result.history_length == 3
    with torch.no_grad():
        window = torch.from_numpy(frames[0, 2:5].transpose(0, 3, 1, 2).copy())
        y = tiny_model.backbone(window.float())[None]  # (1, 3, N, C)
        z = tokenize_offline(tiny_model.tokenizer, y, tiny_model.black_features())
        t = torch.from_numpy(stamps[0:1, 2:5].astype(np.float32))
        offline = rollout(
            tiny_model.world, tiny_model.tokenizer, z, t, y[:, -1],
            torch.from_numpy(future[None].astype(np.float32)),
            torch.from_numpy(queries[:, :, None]),
        )  # fmt: skip
    np.testing.assert_allclose(
        in_sampling_order(result, result.features), offline.preds[0].numpy(), atol=2e-4
    )
    np.testing.assert_allclose(
        in_sampling_order(result, result.delta_tokens), offline.z_hat[0].numpy(), atol=1e-4
    )


def test_outputs_are_well_formed(engine, clip):
    frames, stamps = clip
    forecaster = make(engine, output_size=(10, 12), seed=5)
    for t in range(3):
        result = forecaster.process([frame("cam", stamps[0, t], frames[0, t])])[0]
    assert result.classes.shape == (K, T, 10, 12) and result.classes.dtype == np.uint8
    assert result.classes.max() < 5
    assert result.confidence.shape == (K,)
    assert abs(float(result.confidence.sum()) - 1) < 1e-5
    assert np.all(np.diff(result.confidence) <= 0), "rows sorted by confidence"
    assert result.uncertainty.shape == (T, 10, 12)
    assert result.uncertainty.min() >= 0 and result.uncertainty.max() <= 1 - 1 / K + 1e-6
    assert result.current_classes.shape == (10, 12)
    assert set(result.timings) >= {
        "backbone",
        "encoder",
        "predictor",
        "decoder",
        "head",
        "post",
        "total",
    }
    np.testing.assert_allclose(result.future_stamps, stamps[0, 2] + 0.03 * np.arange(1, T + 1))
    assert result.depth.shape == (K, T, 10, 12) and result.depth.dtype == np.float32
    assert result.current_depth.shape == (10, 12) and "depth" in result.timings


def test_depth_futures_are_the_depth_of_each_rows_predicted_features(engine, clip):
    """Row k, column t of the depth futures: the depth head on the same predicted features
    as the class futures' row k, column t, upsampled to the tile."""
    frames, stamps = clip
    forecaster = make(engine, output_size=(8, 8), keep_features=True)
    for t in range(3):
        result = forecaster.process([frame("cam", stamps[0, t], frames[0, t])])[0]
    k, t, n, c = result.features.shape
    on_grid = engine.depth(result.features.reshape(k * t, n, c))
    expected = forecaster._upsampled(on_grid).reshape(k, t, 8, 8)
    np.testing.assert_allclose(result.depth, expected, rtol=1e-5)
    np.testing.assert_allclose(
        result.current_depth,
        forecaster._upsampled(engine.depth(result.current_features[None]))[0, 0],
        rtol=1e-5,
    )
    assert result.depth.min() > 0


def test_seeded_noise_is_reproducible(engine, clip):
    frames, stamps = clip
    runs = []
    for seed in (7, 7, 8):
        forecaster = make(engine, seed=seed)
        for t in range(3):
            result = forecaster.process([frame("cam", stamps[0, t], frames[0, t])])[0]
        runs.append(result.delta_tokens)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_frames_are_gated_by_header_time(engine, clip):
    """30 Hz input, a model trained at 10 Hz: every third frame is used."""
    frames, _ = clip
    forecaster = make(engine, frame_interval=0.1)
    kept = [
        forecaster.process([frame("cam", i / 30, frames[0, i % 5])])[0] is not None
        for i in range(12)
    ]
    assert kept == [True, False, False] * 4
    assert forecaster.stats["cam"]["gated"] == 8


@pytest.mark.parametrize(
    ("second_stamp", "reason"),
    [(-0.5, "stamp went backwards"), (10.0, "gap in stamps")],
)
def test_a_stamp_that_goes_back_or_jumps_restarts_the_history(engine, clip, second_stamp, reason):
    frames, _ = clip
    forecaster = make(engine, max_gap=3.0)
    for i in range(3):
        result = forecaster.process([frame("cam", 0.03 * i, frames[0, i])])[0]
    assert result.history_length == 3 and result.reset is None
    result = forecaster.process([frame("cam", second_stamp, frames[0, 3])])[0]
    assert result.history_length == 1 and result.reset == reason
    assert forecaster.stats["cam"][f"reset: {reason}"] == 1
    result = forecaster.process([frame("cam", second_stamp + 0.03, frames[0, 4])])[0]
    assert result.history_length == 2 and result.reset is None


def test_a_stream_whose_resolution_changes_restarts(engine, clip):
    frames, _ = clip
    forecaster = make(engine)
    forecaster.process([frame("cam", 0.0, frames[0, 0])])
    forecaster.process([frame("cam", 0.03, frames[0, 1])])
    bigger = np.repeat(np.repeat(frames[0, 2], 2, axis=0), 2, axis=1)  # 128 x 128: resized
    result = forecaster.process([frame("cam", 0.06, bigger)])[0]
    assert result.reset == "resolution changed" and result.history_length == 1
    assert result.classes.shape[-2:] == (16, 16)


@pytest.mark.parametrize("value", [0, 255])
def test_black_and_saturated_frames_give_finite_outputs(engine, value):
    forecaster = make(engine, keep_features=True)
    image = np.full((64, 64, 3), value, np.uint8)
    for i in range(4):
        result = forecaster.process([frame("cam", 0.03 * i, image)])[0]
    for array in (result.features, result.confidence, result.uncertainty, result.delta_tokens):
        assert np.isfinite(array).all()


def test_streams_batched_together_equal_streams_run_alone(engine, clip):
    frames, stamps = clip
    rng = np.random.default_rng(0)
    queries = {
        f"cam{b}": (rng.standard_normal((T, K, 128)) * 0.02).astype(np.float32) for b in range(2)
    }
    overrides = {c: StreamOverrides(queries=q) for c, q in queries.items()}
    together = make(engine, keep_features=True)
    alone = {c: make(engine, keep_features=True) for c in queries}
    for t in range(4):
        batch = together.process(
            [frame(f"cam{b}", stamps[b, t], frames[b, t]) for b in range(2)], overrides
        )
        for b, camera in enumerate(queries):
            single = alone[camera].process([frame(camera, stamps[b, t], frames[b, t])], overrides)[
                0
            ]
            if single is not None:
                np.testing.assert_allclose(batch[b].features, single.features, atol=1e-4)
                np.testing.assert_array_equal(batch[b].order, single.order)


def test_square_crops_of_a_wide_frame_are_streams_side_by_side(engine, clip):
    frames, stamps = clip
    wide = np.concatenate([frames[0, :], frames[1, :], frames[0, ::-1]], axis=2)  # (T, 64, 192, 3)
    forecaster = make(engine, crop="square", output_size=(8, 8))
    for t in range(3):
        result = forecaster.process([frame("front", stamps[0, t], wide[t])])[0]
    assert result.classes.shape == (K, T, 8, 24)
    assert result.uncertainty.shape == (T, 8, 24)
    assert abs(float(result.confidence.sum()) - 1) < 1e-5
    assert forecaster.stats["front"]["forecasts"] == 3


def test_a_malformed_frame_raises_and_changes_nothing(engine, clip):
    frames, stamps = clip
    forecaster = make(engine)
    forecaster.process([frame("cam", 0.0, frames[0, 0])])
    with pytest.raises(ValueError, match="expected an \\(H, W, 3\\) uint8 RGB frame"):
        forecaster.process([frame("cam", 0.03, frames[0, 1, :, :, :2])])
    result = forecaster.process([frame("cam", 0.03, frames[0, 1])])[0]
    assert result.history_length == 2 and result.reset is None


def test_bad_settings_name_the_setting():
    with pytest.raises(ValueError, match="frame_interval must be > 0 s"):
        ForecasterConfig(frame_interval=-0.1).validate()
    with pytest.raises(ValueError, match="crop must be"):
        ForecasterConfig(crop="stretch").validate()


def test_numpy_blas_keeps_one_thread_while_the_engine_runs(engine, clip):
    """OpenBLAS threads spin after each call and would oversubscribe the engine's cores."""
    before = blas_threads()
    seen = []

    class Watched:  # the real engine; its decoder notes the BLAS pools it runs beside
        def __getattr__(self, name):
            return getattr(engine, name)

        def decoder(self, z, x):
            seen.append(blas_threads())
            return engine.decoder(z, x)

    frames, stamps = clip
    forecaster = make(Watched())
    for t in range(3):
        forecaster.process([frame("cam", stamps[0, t], frames[0, t])])
    assert seen and all(set(threads) == {1} for threads in seen)
    assert blas_threads() == before, "restored after each step"


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
