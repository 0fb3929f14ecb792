"""Every stage of the networks against the authors' reference numbers (random weights).

Tolerances from ../shared/fixtures/README_fixtures.md: float arrays 1e-4 * max(1, max|ref|),
scalar losses 1e-6 absolute, indices and masks exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close

from deltaworld_ros.model.deltatok import log_cosh, tokenize_offline
from deltaworld_ros.model.deltaworld import best_of_k, causal_mask, rollout
from deltaworld_ros.model.layers import apply_time_rope, patch_rope, time_rope

B, T, N, C = 2, 5, 16, 64


@pytest.fixture(scope="module")
def features(tiny_model, fixture_arrays):
    frames = torch.from_numpy(fixture_arrays["inputs/frames_uint8"])
    with torch.no_grad():
        y = tiny_model.backbone(frames.flatten(0, 1).float()).reshape(B, T, N, C)
        black = tiny_model.black_features()
        z = tokenize_offline(tiny_model.tokenizer, y, black)
    return y, black, z


def test_preprocessing(tiny_model, fixture_arrays):
    frames = torch.from_numpy(fixture_arrays["inputs/frames_uint8"])
    pixels = tiny_model.backbone.preprocess(frames[0, 0:1])
    assert_close(pixels[0], fixture_arrays["out/preproc/pixel_values_b0_t0"], "pixels")
    black = tiny_model.backbone.preprocess(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))
    assert_close(
        black.flatten(), fixture_arrays["out/preproc/pixel_values_black_per_channel"], "black"
    )


def test_rope_tables(tiny_model, fixture_arrays):
    cos, sin = patch_rope(4, 4, 16, 100.0)
    for prefix in ("out/backbone_debug", "out/tokenizer_debug"):
        assert_close(cos, fixture_arrays[f"{prefix}/rope_cos"], prefix)
        assert_close(sin, fixture_arrays[f"{prefix}/rope_sin"], prefix)
    s = float(fixture_arrays["out/tokenizer_train/aug_rescale_factor"][0])
    cos, sin = tiny_model.tokenizer.rope(s)
    assert_close(cos, fixture_arrays["out/tokenizer_train/aug_rope_cos"], "aug cos")
    assert_close(sin, fixture_arrays["out/tokenizer_train/aug_rope_sin"], "aug sin")


def test_predictor_time_rope(fixture_arrays):
    u = "unit/predictor_rope"
    for name, pos in (("q", "pos_q"), ("k", "pos_k")):
        x = torch.from_numpy(fixture_arrays[f"{u}/{name}_in"])
        cos, sin = time_rope(torch.from_numpy(fixture_arrays[f"{u}/{pos}"]), 60)
        got = apply_time_rope(x, cos, sin)
        assert np.abs(got.numpy() - fixture_arrays[f"{u}/{name}_out"]).max() <= 5e-4


def test_backbone(tiny_model, fixture_arrays, features):
    y, black, _ = features
    assert_close(y, fixture_arrays["out/backbone/y"], "y")
    assert_close(black[0], fixture_arrays["out/backbone/black_frame"], "black frame")


def test_tokenizer_encode_decode(tiny_model, fixture_arrays, features):
    y, black, z = features
    tok = tiny_model.tokenizer
    with torch.no_grad():
        z12 = tok.encode(y[:, 1], y[:, 2])
        assert_close(z12[:, 0], fixture_arrays["out/tokenizer/encode_x_y1_y_y2"], "encode")
        assert_close(
            tok.decode(z12, y[:, 1]), fixture_arrays["out/tokenizer/decode_z12_x_y1"], "decode"
        )
        black_b = black.expand(B, -1, -1)
        z0 = tok.encode(black_b, y[:, 0])
        assert_close(z0[:, 0], fixture_arrays["out/tokenizer/encode_x_black_y_y0"], "anchor")
        assert_close(
            tok.decode(z0, black_b),
            fixture_arrays["out/tokenizer/decode_z0_x_black"],
            "anchor decode",
        )
    assert_close(z, fixture_arrays["out/tokenizer/delta_tokens"], "delta tokens")


@pytest.mark.parametrize("horizon", [2, 5])
def test_tokenizer_autoregressive_eval(tiny_model, fixture_arrays, features, horizon):
    """Each step encodes the previous reconstruction against the true frame, then decodes."""
    y, black, _ = features
    tok = tiny_model.tokenizer
    x = black.expand(B, -1, -1) if horizon == T else y[:, T - horizon - 1]
    preds = []
    with torch.no_grad():
        for t in range(T - horizon, T):
            x = tok.decode(tok.encode(x, y[:, t]), x)
            preds.append(x)
    assert_close(
        torch.stack(preds, 1),
        fixture_arrays[f"out/tokenizer/forward_eval_h{horizon}_preds"],
        "eval",
    )


def test_tokenizer_training_forward(tiny_model, fixture_arrays, features):
    y, _, _ = features
    tok = tiny_model.tokenizer
    with torch.no_grad():
        y_hat, loss = tok.forward_train(y[:, 3], y[:, 4], rescale=1.0)
        assert_close(y_hat, fixture_arrays["out/tokenizer_train/noaug_y_hat"], "noaug")
        assert (
            abs(loss.item() - fixture_arrays["out/tokenizer_train/noaug_logcosh_loss"][0]) <= 1e-6
        )
        s = float(fixture_arrays["out/tokenizer_train/aug_rescale_factor"][0])
        y_hat, loss = tok.forward_train(y[:, 3], y[:, 4], rescale=s)
        assert_close(y_hat, fixture_arrays["out/tokenizer_train/aug_y_hat"], "aug")
        assert abs(loss.item() - fixture_arrays["out/tokenizer_train/aug_logcosh_loss"][0]) <= 1e-6
    assert (
        abs(log_cosh(torch.tensor([0.0, 30.0])).item() - (30 - np.log(2)) / 2) < 1e-5
    )  # no overflow


def test_predictor_single_step(tiny_model, fixture_arrays, features):
    y, _, z = features
    w = "out/world/single"
    draws = torch.from_numpy(fixture_arrays[f"{w}/query_normal_draws"])
    queries = (draws * tiny_model.world.query_scale).reshape(B * 3, 1, -1)
    assert_close(queries, fixture_arrays[f"{w}/queries"], "queries")
    kv = z[:, :4].repeat_interleave(3, 0)
    assert_close(kv, fixture_arrays[f"{w}/kv"], "kv")
    t = torch.from_numpy(fixture_arrays["inputs/timestamps"])
    pos_q, pos_k = t[:, 4:5].repeat_interleave(3, 0), t[:, :4].repeat_interleave(3, 0)
    with torch.no_grad():
        z_hat = tiny_model.world.predictor(queries, kv, pos_q, pos_k)
        y_hat = tiny_model.tokenizer.decode(z_hat, y[:, 3].repeat_interleave(3, 0))
    assert_close(z_hat, fixture_arrays[f"{w}/z_hat"], "z_hat")
    assert_close(y_hat, fixture_arrays[f"{w}/y_hat"], "y_hat")


@pytest.fixture(scope="module")
def fixture_rollout(tiny_model, fixture_arrays, features):
    y, _, z = features
    t = torch.from_numpy(fixture_arrays["inputs/timestamps"])
    queries = torch.from_numpy(fixture_arrays["out/world/rollout/queries"])
    with torch.no_grad():
        return rollout(
            tiny_model.world, tiny_model.tokenizer, z[:, :3], t[:, :3], y[:, 2], t[:, 3:], queries
        )


def test_rollout_k_hypotheses_two_steps(fixture_arrays, fixture_rollout, features):
    r = "out/world/rollout"
    assert_close(fixture_rollout.preds, fixture_arrays[f"{r}/preds"], "preds")
    assert_close(
        fixture_rollout.z_hat.permute(2, 0, 1, 3).reshape(2, 6, C),
        fixture_arrays[f"{r}/z_hat"],
        "z_hat",
    )
    y = features[0]
    mean = fixture_rollout.preds.mean(1)
    assert_close(mean, fixture_arrays[f"{r}/mean_rollout"], "mean")
    losses, best = best_of_k(fixture_rollout.preds, y[:, -1])
    assert_close(losses, fixture_arrays[f"{r}/best_of_k_losses"], "best-of-K losses")
    np.testing.assert_array_equal(best.numpy(), fixture_arrays[f"{r}/best_of_k_idx"])


def test_heads(tiny_model, fixture_arrays, features, fixture_rollout):
    y = features[0]
    grid = (4, 4)
    with torch.no_grad():
        seg = tiny_model.seg_head(y.flatten(0, 1), grid).reshape(B, T, 5, 4, 4)
        assert_close(seg, fixture_arrays["out/heads/seg_logits_gt"], "seg gt")
        preds = fixture_rollout.preds
        seg_roll = tiny_model.seg_head(preds.flatten(0, 2), grid).reshape(B, 3, 2, 5, 4, 4)
        assert_close(seg_roll, fixture_arrays["out/heads/seg_logits_rollout"], "seg rollout")
        seg_mean = tiny_model.seg_head(preds.mean(1).flatten(0, 1), grid).reshape(B, 2, 5, 4, 4)
        assert_close(seg_mean, fixture_arrays["out/heads/seg_logits_mean_rollout"], "seg mean")
        best = torch.from_numpy(fixture_arrays["out/world/rollout/best_of_k_idx"])
        chosen = preds[torch.arange(B), best]
        seg_best = tiny_model.seg_head(chosen.flatten(0, 1), grid).reshape(B, 2, 5, 4, 4)
        assert_close(seg_best, fixture_arrays["out/heads/seg_logits_best_rollout"], "seg best")
        depth = tiny_model.depth_head(y.flatten(0, 1), grid).reshape(B, T, 1, 4, 4)
        assert_close(depth, fixture_arrays["out/heads/depth_gt"], "depth gt")
        depth_roll = tiny_model.depth_head(preds.flatten(0, 2), grid).reshape(B, 3, 2, 1, 4, 4)
        assert_close(depth_roll, fixture_arrays["out/heads/depth_rollout"], "depth rollout")


def test_best_of_many_training(tiny_model, fixture_arrays, features):
    _, _, z = features
    bom = "out/world/bom"
    t = torch.from_numpy(fixture_arrays["inputs/timestamps"])
    candidates = torch.from_numpy(fixture_arrays[f"{bom}/candidates"])
    np.testing.assert_array_equal(
        causal_mask(4, 4, repeat=8).numpy(), fixture_arrays[f"{bom}/causal_mask_selection"]
    )
    np.testing.assert_array_equal(
        causal_mask(4, 4).numpy(), fixture_arrays[f"{bom}/causal_mask_train"]
    )
    result = tiny_model.world.best_of_many(z, t, candidates=candidates)
    assert_close(
        result.candidate_losses, fixture_arrays[f"{bom}/candidate_losses"], "candidate losses"
    )
    np.testing.assert_array_equal(result.best.numpy(), fixture_arrays[f"{bom}/argmin"])
    assert_close(result.z_hat, fixture_arrays[f"{bom}/z_hat"], "z_hat")
    assert abs(result.loss.item() - fixture_arrays[f"{bom}/smooth_l1_loss"][0]) <= 1e-6
    assert result.loss.requires_grad, "the kept candidates must be trained"
