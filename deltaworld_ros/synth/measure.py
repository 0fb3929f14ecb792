"""What the world shows a patch-based model: agent size, grid ceiling, branching, nuisance.

    python -m deltaworld_ros.synth.measure --size 96 --patch 8 --stride 2 --worlds 24

prints (and with --json writes) per camera:
- mean patches covered per visible agent of each class (class pixels / agents whose centre is
  in view / patch area);
- the mIoU of the labels cut to the patch grid (majority per patch, upsampled) against the full
  labels: the ceiling of a per-patch segmentation;
- how much two forks of one past (`StreetWorld.fork`) differ, as the share of grid patches whose
  majority label differs at +1, +2, +3 kept frames, over moments where a visible agent decided
  in that window ("branched") and over all moments;
- rendering nuisance: the pixel-space frame-to-frame change rendered as is against the same
  states rendered without sensor noise, shake and flicker (share of the change that is nuisance);
- render time of a training clip (burn-in + kept frames), extrapolated to the default 2400 clips.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .classes import AGENT_CLASSES, CLASS_NAMES
from .config import WorldConfig
from .sprites import BODIES
from .world import StreetWorld

SEED_BASE = 1_000_000_000  # held-out seeds, as evaluate-world uses


def grid_labels(labels: np.ndarray, patch: int) -> np.ndarray:
    """(..., H, W) class ids -> (..., H/p, W/p) majority class per patch."""
    *lead, h, w = labels.shape
    gh, gw = h // patch, w // patch
    cut = labels[..., : gh * patch, : gw * patch].reshape(*lead, gh, patch, gw, patch)
    cut = np.moveaxis(cut, -3, -2).reshape(*lead, gh, gw, patch * patch)
    counts = (cut[..., None] == np.arange(len(CLASS_NAMES))).sum(-2)
    return counts.argmax(-1).astype(np.uint8)


def miou(pred: np.ndarray, target: np.ndarray) -> float:
    n = len(CLASS_NAMES)
    m = np.bincount(target.ravel().astype(np.int64) * n + pred.ravel(), minlength=n * n)
    m = m.reshape(n, n)
    inter, union = np.diag(m), m.sum(0) + m.sum(1) - np.diag(m)
    return float(np.mean(inter[union > 0] / union[union > 0]))


def _world(config: WorldConfig, i: int, burn_in: int = 30) -> StreetWorld:
    world = StreetWorld(config, SEED_BASE + i)
    world.advance(burn_in)
    return world


def measure_camera(
    config: WorldConfig, patch: int, stride: int, worlds: int, moments: int
) -> dict[str, object]:
    area = patch * patch
    pixels = {k: 0 for k in AGENT_CLASSES}
    agents = {k: 0 for k in AGENT_CLASSES}
    full, cut = [], []
    diff_branched: list[np.ndarray] = []
    diff_all: list[np.ndarray] = []
    noisy_change = clean_change = 0.0
    clean_cfg = replace(config, nuisance=0.0)
    for i in range(worlds):
        world = _world(config, i)
        for _ in range(moments):
            world.advance(stride * 3)
            frame = world.render()
            full.append(frame.labels)
            cut.append(np.repeat(np.repeat(grid_labels(frame.labels, patch), patch, 0), patch, 1))
            for k in AGENT_CLASSES:
                pixels[k] += int((frame.labels == k).sum())
            for kind, *_ in world.agent_pixels():
                agents[BODIES[kind].cls] += 1
            a, b = world.fork(2 * i), world.fork(2 * i + 1)
            diffs = []
            for _ in range(3):
                a.advance(stride)
                b.advance(stride)
                la, lb = (
                    grid_labels(a.render().labels, patch),
                    grid_labels(b.render().labels, patch),
                )
                diffs.append(float((la != lb).mean()))
            decided = any(e.visible and e.step > world.index for e in a.events + b.events)
            diff_all.append(np.array(diffs))
            if decided:
                diff_branched.append(np.array(diffs))
        # nuisance: the same states rendered with and without it (static camera only)
        if config.camera == "static":
            noisy, clean = _world(config, i), _world(clean_cfg, i)
            prev_n = prev_c = None
            for _ in range(8):
                noisy.advance(stride)
                clean.advance(stride)
                fn = noisy.render().rgb.astype(np.float32)
                fc = clean.render().rgb.astype(np.float32)
                if prev_n is not None:
                    noisy_change += float(((fn - prev_n) ** 2).mean())
                    clean_change += float(((fc - prev_c) ** 2).mean())
                prev_n, prev_c = fn, fc
    full_a, cut_a = np.stack(full), np.stack(cut)
    out: dict[str, object] = {
        "patches_per_agent": {
            CLASS_NAMES[k]: (pixels[k] / agents[k] / area if agents[k] else None)
            for k in AGENT_CLASSES
        },
        "agents_in_view_per_frame": {CLASS_NAMES[k]: agents[k] / len(full) for k in AGENT_CLASSES},
        "grid_miou_ceiling": miou(cut_a, full_a),
        "fork_patch_diff_branched": (np.mean(diff_branched, 0).tolist() if diff_branched else None),
        "fork_patch_diff_all": np.mean(diff_all, 0).tolist(),
        "branched_share": len(diff_branched) / len(diff_all),
    }
    if config.camera == "static":
        out["nuisance_share_of_pixel_change"] = 1 - clean_change / max(noisy_change, 1e-9)
        out["pixel_change_mse"] = {"as_rendered": noisy_change, "clean": clean_change}
    return out


def render_time(config: WorldConfig, stride: int, clips: int, length: int = 12) -> float:
    """CPU seconds of one core per training clip (burn-in 5..60 ticks, `length` kept frames).

    CPU time, not wall time: the figure should not depend on what else the machine runs.
    """
    rng = np.random.default_rng(0)
    for layout in range(4):  # layouts are built once per training run (16, ~0.1 s each)
        StreetWorld(config, 0, layout_seed=layout)
    t0 = time.process_time()
    for i in range(clips):
        cfg = replace(config, camera=("static", "vehicle")[i % 2])
        world = StreetWorld(cfg, i, layout_seed=i % 4)
        world.advance(int(rng.integers(5, 61)))
        list(world.frames(length, stride))
    return (time.process_time() - t0) / clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--stride", type=int, default=2, help="world ticks per kept frame")
    parser.add_argument("--worlds", type=int, default=24, help="held-out worlds per camera")
    parser.add_argument("--moments", type=int, default=6, help="fork points per world")
    parser.add_argument("--time-clips", type=int, default=40, help="clips timed (0: skip)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    base = WorldConfig(height=args.size, width=args.size, drop_prob=0.0)
    result: dict[str, object] = {
        "size": args.size,
        "patch": args.patch,
        "stride": args.stride,
        "worlds": args.worlds,
        "moments": args.moments,
    }
    for camera in ("static", "vehicle"):
        cfg = replace(base, camera=camera)
        result[camera] = measure_camera(cfg, args.patch, args.stride, args.worlds, args.moments)
        print(camera, json.dumps(result[camera], indent=1, default=float))
    if args.time_clips:
        per_clip = render_time(replace(base, drop_prob=0.03), args.stride, args.time_clips)
        result["render_s_per_clip"] = per_clip
        result["render_s_2400_clips"] = per_clip * 2400
        print(
            f"render: {per_clip * 1e3:.1f} ms CPU per 12-frame clip, {per_clip * 2400:.0f} s / 2400"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
