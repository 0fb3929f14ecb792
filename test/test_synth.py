"""The procedural street world: determinism, labels, multimodal futures, stamps, bags."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import pytest

from deltaworld_ros.synth import (
    AGENT_CLASSES,
    CLASS_NAMES,
    PALETTE,
    StreetWorld,
    WorldConfig,
    measure,
    render_sequence,
    sample_clip,
)
from deltaworld_ros.synth.classes import BUS, CAR


def test_same_seed_same_world_other_seed_other_world():
    cfg = WorldConfig()
    a, b = render_sequence(cfg, 7, 12), render_sequence(cfg, 7, 12)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.stamps_s, b.stamps_s)
    c = render_sequence(cfg, 8, 12)
    assert not np.array_equal(a.labels, c.labels)


def test_palette_has_one_distinct_colour_per_class_and_every_class_shows_up():
    assert PALETTE.shape == (len(CLASS_NAMES), 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE}) == len(CLASS_NAMES)
    seen = np.zeros(len(CLASS_NAMES), bool)
    rng = np.random.default_rng(0)
    for i in range(12):
        cfg = WorldConfig(camera=("static", "vehicle")[i % 2])
        clip = sample_clip(rng, cfg, length=6, stride=5)
        assert clip.labels.max() < len(CLASS_NAMES)
        seen[np.unique(clip.labels)] = True
        if seen.all():
            break
    missing = [CLASS_NAMES[k] for k in np.flatnonzero(~seen)]
    assert not missing, f"classes never rendered: {missing}"


def test_agents_are_labelled_where_they_are_and_colours_follow_labels():
    world = StreetWorld(WorldConfig(), 3)
    hits = total = 0
    for _ in range(30):
        world.advance(2)
        frame = world.render()
        for kind, _, u, v in world.agent_pixels():
            if kind in ("car", "bus") and 2 <= u < 126 and 2 <= v < 126:
                total += 1
                hits += frame.labels[int(v), int(u)] in (CAR, BUS)
    assert total > 20 and hits / total > 0.9, (hits, total)
    # a nearest-class-median colour classifier explains most background pixels (the median:
    # road includes its white markings)
    seq = render_sequence(WorldConfig(), 4, 8)
    rgb, lab = seq.rgb.reshape(-1, 3).astype(np.float32), seq.labels.ravel()
    classes = [k for k in np.unique(lab) if (lab == k).sum() > 200]
    means = np.stack([np.median(rgb[lab == k], 0) for k in classes])
    nearest = np.array(classes)[((rgb[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    assert (nearest == lab).mean() > 0.6


def _junction_moment(world: StreetWorld) -> bool:
    """Advance until a visible car is one step short of its junction decision point."""
    for _ in range(400):
        world.advance()
        for a in world.agents:
            close = a.mode == "straight" and a.kind == "car" and a.speed > 3
            if close and a.to_stop < 0.15 * a.speed and world.visible(a.x, a.y, -16):
                return True
    return False


def test_one_past_many_futures_after_a_junction_decision():
    world = StreetWorld(WorldConfig(drop_prob=0.0), 11)
    assert _junction_moment(world)
    forks = [world.fork(seed) for seed in range(8)]
    now = world.render()
    for fork in forks:  # identical past and present
        np.testing.assert_array_equal(fork.render().labels, now.labels)
    futures, decisions = [], set()
    for fork in forks:
        fork.advance(15)
        futures.append(np.isin(fork.render().labels, AGENT_CLASSES))
        decisions |= {e.decision for e in fork.events if e.step > now.index and e.kind == "car"}
    distinct = {f.tobytes() for f in futures}
    assert len(distinct) >= 2, "forked futures never differ"
    assert len(decisions & {"straight", "turn_left", "turn_right"}) >= 2, decisions


def test_agents_move_a_few_pixels_per_frame():
    seq = render_sequence(WorldConfig(drop_prob=0.0), 5, 20)
    agents = np.isin(seq.labels, AGENT_CLASSES)
    changed = (agents[1:] != agents[:-1]).sum() / max(1, agents[:-1].sum())
    assert changed > 0.2, changed  # copy-last is visibly wrong on agents


def test_stamps_are_monotonic_jittered_and_show_dropped_frames():
    seq = render_sequence(WorldConfig(), 2, 300)
    dt = np.diff(seq.stamps_s)
    assert (dt > 0).all()
    assert 0.001 < np.std(dt[np.diff(seq.indices) == 1]) < 0.02
    assert (np.diff(seq.indices) > 1).any(), "no dropped frame in 300"
    np.testing.assert_allclose(seq.stamps_s - seq.indices / 10.0, seq.stamps_s[0] - 0.1, atol=0.2)
    assert seq.branched.any() and not seq.branched.all()
    clean = render_sequence(WorldConfig(drop_prob=0.0), 2, 50)
    assert (np.diff(clean.indices) == 1).all()


def test_static_camera_holds_still_vehicle_camera_pans():
    def background_change(camera: str) -> float:
        seq = render_sequence(WorldConfig(camera=camera, drop_prob=0.0), 6, 30)
        ground = ~np.isin(seq.labels, AGENT_CLASSES)
        both = ground[1:] & ground[:-1]
        return float(((seq.labels[1:] != seq.labels[:-1]) & both).sum() / both.sum())

    assert background_change("static") < 0.05
    assert background_change("vehicle") > 2 * background_change("static")


def test_sample_clip_shapes_and_stride():
    rng = np.random.default_rng(1)
    clip = sample_clip(rng, WorldConfig(height=64, width=96, drop_prob=0.0), length=5, stride=3)
    assert clip.rgb.shape == (5, 64, 96, 3) and clip.labels.shape == (5, 64, 96)
    assert clip.depth.shape == (5, 64, 96) and clip.depth.dtype == np.float32
    assert (np.diff(clip.indices) == 3).all() and len(clip) == 5


def test_render_speed_is_printed():
    cfg = WorldConfig()
    world = StreetWorld(cfg, 1)
    world.step()
    t0 = time.perf_counter()
    n = 100
    for _ in range(n):
        world.step()
    per_frame = (time.perf_counter() - t0) / n
    print(f"\nsynth 128x128: {per_frame * 1e3:.2f} ms per frame (simulate + render + labels)")
    assert per_frame < 0.05


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_synth_cli_writes_a_bag_that_reads_back(tmp_path, storage, capsys):
    from deltaworld_ros.io.bags import read_images
    from deltaworld_ros.synth import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "bag"
    args = parser.parse_args(
        [
            "--out",
            str(out),
            "--frames",
            "12",
            "--seed",
            "3",
            "--storage",
            storage,
            "--size",
            "48x64",
        ]
    )
    assert cli.run(args) == 0
    assert "12 frames" in capsys.readouterr().out
    images = list(read_images(out, "/camera/image_raw"))
    labels = list(read_images(out, "/camera/labels", labels=True))
    assert len(images) == len(labels) == 12
    assert [f.stamp_ns for f in images] == [f.stamp_ns for f in labels]
    assert images[0].stamp_ns > 1_700_000_000 * 10**9
    expected = render_sequence(WorldConfig(height=48, width=64), 3, 12)
    np.testing.assert_array_equal(np.stack([f.image for f in images]), expected.rgb)
    np.testing.assert_array_equal(np.stack([f.image for f in labels]), expected.labels)


def test_at_the_small_models_size_agents_span_patches_and_the_grid_keeps_them():
    cfg = WorldConfig(height=96, width=96, drop_prob=0.0)
    car_px = car_count = 0
    full, cut = [], []
    for seed in range(4):
        world = StreetWorld(cfg, 100 + seed)
        for _ in range(4):
            world.advance(8)
            labels = world.render().labels
            car_px += int((labels == CAR).sum())
            car_count += sum(kind == "car" for kind, *_ in world.agent_pixels())
            full.append(labels)
            cut.append(np.kron(measure.grid_labels(labels, 8), np.ones((8, 8), np.uint8)))
    assert car_count > 5 and car_px / car_count / 64 > 3  # a car covers several 8x8 patches
    assert measure.miou(np.stack(cut), np.stack(full)) > 0.55  # the patch grid's ceiling


def test_the_moving_cameras_car_decides_visibly_and_its_forks_branch():
    world = StreetWorld(WorldConfig(height=96, width=96, camera="vehicle", drop_prob=0.0), 4)
    world.advance(200)
    ego = [e for e in world.events if e.kind == "ego"]
    assert {e.decision for e in ego} >= {"speed_up", "change_lane"} and all(e.visible for e in ego)
    forks = [world.fork(seed) for seed in range(6)]
    grids = []
    for fork in forks:
        fork.advance(30)
        grids.append(measure.grid_labels(fork.render().labels, 8))
    differ = [(a != b).mean() for i, a in enumerate(grids) for b in grids[i + 1 :]]
    assert max(differ) > 0.03, differ  # alternatives differ in several patches


def test_nuisance_is_small_and_can_be_switched_off():
    cfg = WorldConfig(height=96, width=96, drop_prob=0.0)
    noisy, clean = StreetWorld(cfg, 9), StreetWorld(replace(cfg, nuisance=0.0), 9)
    noisy.advance(20), clean.advance(20)
    a, b = noisy.render(), clean.render()
    np.testing.assert_array_equal(a.labels, b.labels)
    assert 0 < np.abs(a.rgb.astype(float) - b.rgb).mean() < 3
    np.testing.assert_array_equal(clean.render().rgb, b.rgb)  # clean: a still state stays still


def test_measure_prints_the_worlds_figures(tmp_path, capsys):
    out = tmp_path / "world.json"
    args = ["--worlds", "1", "--moments", "2", "--time-clips", "2", "--json", str(out)]
    assert measure.main(args) == 0
    figures = json.loads(out.read_text())
    assert "render:" in capsys.readouterr().out
    for camera in ("static", "vehicle"):
        assert len(figures[camera]["fork_patch_diff_all"]) == 3
        assert 0 < figures[camera]["grid_miou_ceiling"] <= 1
    assert 0 <= figures["static"]["nuisance_share_of_pixel_change"] < 1
    assert figures["render_s_2400_clips"] > 0
