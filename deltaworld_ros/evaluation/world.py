"""`deltaworld evaluate-world`: the paper's forecasting table on held-out synthetic sequences.

For every evaluation case (a window of `context_length` frames of a held-out world, followed
by the true future) four forecasts are scored at 1 and 3 steps ahead:
  copy-last        the last context frame's features, unchanged;
  baseline         the deterministic predictor (one learned query), rolled out;
  DeltaWorld mean  K sampled hypotheses, each scored on its own (all K counted);
  DeltaWorld best  the hypothesis closest to the true features at that horizon (oracle).
mIoU: the seg head on the (predicted) features, upsampled to the label size, against the
world's true labels, one confusion matrix per method over all cases. Feature loss: mean squared
error against the backbone features of the true future frame. Mode coverage: see COVERAGE.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model.deltatok import tokenize_offline
from ..model.deltaworld import DeltaWorld, best_of_k, rollout
from ..model.loading import load_module_file
from ..model.store import default_model_dir, read_manifest
from ..model.world_model import WorldModel
from ..synth import AGENT_CLASSES, CLASS_NAMES, PALETTE, WorldConfig
from ..train.data import HELD_OUT_SEED_BASE, camera_for, render_clip
from .metrics import confusion, feature_error, iou_per_class, mean_iou

HORIZONS = (1, 3)
METHODS = ("oracle", "copy_last", "baseline", "mean_of_k", "best_of_k")
CAMERAS = ("static", "vehicle")
AGENT_IOU_THRESHOLD = 0.5
COVERAGE = (
    "Mode coverage: among branched cases (a visible agent of the world made a random decision "
    "- turn or go straight, wait, cross, walk on, pull out - at a world tick after the last "
    "context frame and no later than the 3-step target frame), the fraction in which at least "
    f"one hypothesis has agent IoU >= {AGENT_IOU_THRESHOLD} at 3 steps. Agent IoU of a class "
    "map = pixels where prediction and truth agree on an agent class (car, bus, person) "
    "/ pixels where either says agent. Copy-last and the baseline have one "
    "hypothesis."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory (default: the embedded default model)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/world"))
    parser.add_argument("--sequences", type=int, default=16, help="held-out sequences (default 16)")
    parser.add_argument(
        "--seed",
        type=int,
        default=HELD_OUT_SEED_BASE,
        help=f"first held-out world seed (>= {HELD_OUT_SEED_BASE}, never trained on)",
    )
    parser.add_argument("--frames", type=int, default=40, help="kept frames per sequence")
    parser.add_argument("--every", type=int, default=2, help="a case every N frames (default 2)")
    parser.add_argument("--k", type=int, default=20, help="hypotheses per case (default 20)")
    parser.add_argument("--threads", type=int, default=2)


@dataclass
class Scores:
    """Accumulated confusion matrices and feature errors of one method at one horizon."""

    matrix: np.ndarray
    feature: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        iou = iou_per_class(self.matrix)
        return {
            "miou": mean_iou(self.matrix),
            "feature_loss": float(np.mean(self.feature)) if self.feature else float("nan"),
            "iou_per_class": {
                CLASS_NAMES[i]: (None if np.isnan(v) else float(v)) for i, v in enumerate(iou)
            },
        }


@dataclass
class Case:
    """What the figure needs of one case."""

    context_rgb: np.ndarray  # (L, H, W, 3)
    context_labels: np.ndarray  # (L, H, W)
    truth_rgb: np.ndarray  # (T, H, W, 3)
    truth: np.ndarray  # (T, H, W) labels
    copy_last: np.ndarray  # (H, W)
    baseline: np.ndarray  # (T, H, W)
    hypotheses: np.ndarray  # (K, T, H, W)
    losses: np.ndarray  # (K,) feature loss at the last step
    seed: int
    camera: str
    events: list[str]


def agent_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Agent IoU per map over the last two axes (see COVERAGE); 1 where neither has agents."""
    agents = np.array(AGENT_CLASSES)
    p, t = np.isin(pred, agents), np.isin(truth, agents)
    inter = (p & t & (pred == truth)).sum((-2, -1))
    union = (p | t).sum((-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def load_baseline(directory: Path, model: WorldModel) -> DeltaWorld | None:
    manifest = read_manifest(directory)
    relative = manifest.provenance.get("baseline", "weights/world_baseline.safetensors")
    if not manifest.has(relative):
        return None
    cfg = model.cfg
    world = DeltaWorld(
        replace(cfg.predictor, use_bom=False), cfg.token_size, cfg.backbone.initializer_range
    )
    load_module_file(world, directory / relative)
    return world.eval()


def world_setup(manifest_provenance: dict[str, Any], cfg) -> tuple[WorldConfig, int, float]:
    """The world config, ticks per kept frame and camera mix the model was trained on."""
    data = manifest_provenance.get("data", {})
    h, w = cfg.image_size
    # the trained world's camera, density and nuisance; size and camera come from the model
    known = {f.name for f in fields(WorldConfig)} - {"height", "width", "camera"}
    trained = {k: v for k, v in data.get("world", {}).items() if k in known}
    world = WorldConfig(height=h, width=w, **trained)
    stride = int(data.get("stride", max(1, round(cfg.frame_interval * world.fps))))
    vehicle_fraction = float(data.get("vehicle_fraction", 0.5))
    return world, stride, vehicle_fraction


def _check_held_out(seeds: range, provenance: dict[str, Any]) -> None:
    data = provenance.get("data", {})
    if data.get("kind") == "synth":
        lo = data["seed"] * data["num_clips"]
        hi = lo + data["num_clips"]
        if seeds.start < hi and lo < seeds.stop:
            raise SystemExit(
                f"seeds {seeds.start}..{seeds.stop - 1} overlap the training world "
                f"seeds {lo}..{hi - 1}; use --seed >= {HELD_OUT_SEED_BASE}"
            )
    if seeds.start < HELD_OUT_SEED_BASE:
        raise SystemExit(f"--seed must be >= {HELD_OUT_SEED_BASE} (training seeds stay below)")


def class_maps(model: WorldModel, features: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Features (..., N, C) -> class ids (..., H, W): seg head, upsampled to `size`, argmax."""
    flat = features.reshape(-1, *features.shape[-2:])
    logits = model.seg_head(flat, model.cfg.grid, size)
    return logits.argmax(1).reshape(*features.shape[:-2], *size).numpy()


@torch.no_grad()
def evaluate(
    model: WorldModel,
    baseline: DeltaWorld,
    provenance: dict[str, Any],
    seeds: range,
    frames: int,
    every: int,
    k: int,
    generator: torch.Generator,
) -> tuple[dict[str, Any], Case | None]:
    cfg = model.cfg
    if tuple(cfg.head.class_names) != tuple(CLASS_NAMES):
        raise SystemExit(
            f"the model's classes {cfg.head.class_names} are not the synth world's "
            f"{CLASS_NAMES}; evaluate-world needs a model trained on the world"
        )
    world_cfg, stride, vehicle_fraction = world_setup(provenance, cfg)
    ctx, steps = cfg.context_length, max(HORIZONS)
    if frames < ctx + steps:
        raise SystemExit(f"--frames must be >= context {ctx} + {steps} steps")
    n_cls = cfg.head.num_classes
    scores = {
        (cam, m, h): Scores(np.zeros((n_cls, n_cls), np.int64))
        for cam in CAMERAS
        for m in METHODS
        for h in HORIZONS
    }
    spread: dict[int, list[float]] = {h: [] for h in HORIZONS}
    coverage: dict[str, list[bool]] = {m: [] for m in ("copy_last", "baseline", "deltaworld")}
    best_agent_iou: dict[str, list[float]] = {m: [] for m in coverage}
    black = model.black_features()
    figure_case: Case | None = None
    figure_spread = -1.0
    counts = {"cases": 0, "branched": 0, "static": 0, "vehicle": 0}
    for i, seed in enumerate(seeds):
        camera = camera_for(i, vehicle_fraction)
        world, clip = render_clip(
            replace(world_cfg, camera=camera), seed, frames, stride, burn_in=20
        )
        world.advance(steps * stride)  # the decisions right after the last frame are logged too
        rgb = np.stack([f.rgb for f in clip])
        labels = np.stack([f.labels for f in clip])
        stamps = np.array([f.stamp_s for f in clip])
        ticks = np.array([f.index for f in clip])
        decided = np.array([e.step for e in world.events if e.visible], np.int64)
        y = model.backbone(torch.from_numpy(rgb).permute(0, 3, 1, 2).float())  # (F, N, C)
        lasts = np.arange(ctx - 1, frames - steps, every)
        w = len(lasts)
        window = lasts[:, None] + np.arange(-ctx + 1, 1)  # (W, L)
        future = lasts[:, None] + np.arange(1, steps + 1)  # (W, T)
        z = tokenize_offline(model.tokenizer, y[torch.from_numpy(window)], black)  # (W, L, C)
        t0 = stamps[window[:, :1]]
        t_ctx = torch.from_numpy(stamps[window] - t0).float()
        t_fut = torch.from_numpy(stamps[future] - t0).float()
        x = y[torch.from_numpy(lasts)]
        queries = model.world.sample_queries(steps, w * k, 1, generator=generator)
        sampled = rollout(model.world, model.tokenizer, z, t_ctx, x, t_fut, queries).preds
        det = rollout(
            baseline, model.tokenizer, z, t_ctx, x, t_fut, baseline.sample_queries(steps, w, 1)
        ).preds[:, 0]
        truth_y = y[torch.from_numpy(future)]  # (W, T, N, C)
        size = (labels.shape[1], labels.shape[2])
        maps = {
            "oracle": class_maps(model, truth_y, size),
            "copy_last": class_maps(model, x, size),
            "baseline": class_maps(model, det, size),
            "sampled": class_maps(model, sampled, size),
        }
        truth = labels[future]  # (W, T, H, W)
        every_case = np.arange(w)
        for h in HORIZONS:
            j = h - 1
            target = truth[:, j]
            tf = truth_y[:, j].numpy()
            hyp = maps["sampled"][:, :, j]  # (W, K, H, W)
            errs = feature_error(sampled[:, :, j].numpy(), tf[:, None])  # (W, K)
            _, best = best_of_k(sampled[:, :, : j + 1], truth_y[:, j])
            best = best.numpy()
            forecasts = {
                "oracle": (maps["oracle"][:, j], np.zeros(w)),
                "copy_last": (maps["copy_last"], feature_error(x.numpy(), tf)),
                "baseline": (maps["baseline"][:, j], feature_error(det[:, j].numpy(), tf)),
                "mean_of_k": (hyp, errs.mean(1)),
                "best_of_k": (hyp[every_case, best], errs[every_case, best]),
            }
            for m, (pred, err) in forecasts.items():
                tgt = target if pred.ndim == target.ndim else np.repeat(target[:, None], k, 1)
                scores[camera, m, h].matrix += confusion(pred, tgt, n_cls)
                scores[camera, m, h].feature += err.tolist()
            if k > 1:  # mean squared distance between two hypotheses = 2 x their variance
                var = sampled[:, :, j].var(dim=1, unbiased=True).mean(dim=(-2, -1))
                spread[h] += (2 * var).tolist()
        # mode coverage on branched cases, at the last horizon
        lo, hi = ticks[lasts], ticks[future[:, -1]]
        branched = ((decided[None, :] > lo[:, None]) & (decided[None, :] <= hi[:, None])).any(1)
        last = truth[:, -1]
        ious = {
            "copy_last": agent_iou(maps["copy_last"], last),
            "baseline": agent_iou(maps["baseline"][:, -1], last),
            "deltaworld": agent_iou(maps["sampled"][:, :, -1], last[:, None]).max(1),
        }
        for m, v in ious.items():
            coverage[m] += (v[branched] >= AGENT_IOU_THRESHOLD).tolist()
            best_agent_iou[m] += v[branched].tolist()
        counts["cases"] += w
        counts["branched"] += int(branched.sum())
        counts[camera] += w
        # the figure: the branched case whose hypotheses disagree most at the last step
        case_spread = sampled[:, :, -1].var(dim=1, unbiased=False).mean(dim=(-2, -1)).numpy()
        case_spread[~branched] = -1
        c = int(case_spread.argmax())
        if branched.any() and case_spread[c] > figure_spread:
            figure_spread = float(case_spread[c])
            losses = feature_error(sampled[c, :, -1].numpy(), truth_y[c, -1].numpy()[None])
            names = [
                f"{e.kind} {e.decision}"
                for e in world.events
                if e.visible and lo[c] < e.step <= hi[c]
            ]
            figure_case = Case(
                rgb[window[c]],
                labels[window[c]],
                rgb[future[c]],
                truth[c],
                maps["copy_last"][c],
                maps["baseline"][c],
                maps["sampled"][c],
                losses,
                seed,
                camera,
                names,
            )
    table = {}
    for m in METHODS:
        for h in HORIZONS:
            pooled = Scores(sum(scores[cam, m, h].matrix for cam in CAMERAS))
            for cam in CAMERAS:
                pooled.feature += scores[cam, m, h].feature
                table[f"{m}@{h}/{cam}"] = scores[cam, m, h].summary()
            table[f"{m}@{h}"] = pooled.summary()
    cov = {m: (float(np.mean(v)) if v else None) for m, v in coverage.items()}
    mean_best = {m: (float(np.mean(v)) if v else None) for m, v in best_agent_iou.items()}
    return {
        "scores": table,
        "mode_coverage": cov,
        "branched_agent_iou": mean_best,
        "hypothesis_spread": {str(h): (float(np.mean(v)) if v else 0.0) for h, v in spread.items()},
        "counts": counts,
    }, figure_case


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def table_markdown(result: dict[str, Any], k: int) -> str:
    s, cov = result["scores"], result["mode_coverage"]
    rows = [
        ("copy-last", "copy_last", cov["copy_last"]),
        ("deterministic baseline", "baseline", cov["baseline"]),
        (f"DeltaWorld mean-of-{k}", "mean_of_k", None),
        (f"DeltaWorld best-of-{k}", "best_of_k", cov["deltaworld"]),
    ]

    def miou(key: str) -> str:
        return f"{100 * s[key]['miou']:.1f}"

    agent = result["branched_agent_iou"]
    agent_key = {"copy_last": "copy_last", "baseline": "baseline", "best_of_k": "deltaworld"}
    lines = [
        "| method | mIoU 1-step | mIoU 3-step | feature loss 1-step | feature loss 3-step "
        "| mode coverage | agent IoU, branched |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key, c in rows:
        a = agent.get(agent_key.get(key, ""))
        lines.append(
            f"| {label} | {miou(f'{key}@1')} | {miou(f'{key}@3')} "
            f"| {_fmt(s[f'{key}@1']['feature_loss'], 4)} "
            f"| {_fmt(s[f'{key}@3']['feature_loss'], 4)} "
            f"| {'-' if key == 'mean_of_k' else _fmt(None if c is None else 100 * c, 1)} "
            f"| {'-' if key == 'mean_of_k' else _fmt(None if a is None else 100 * a, 1)} |"
        )
    lines.append(
        f"| *seg head on the true future features (upper bound)* | {miou('oracle@1')} "
        f"| {miou('oracle@3')} | 0 | 0 | - | - |"
    )
    lines += [
        "",
        "mIoU by camera (1-step / 3-step):",
        "",
        "| method | static camera | vehicle camera |",
        "|---|---|---|",
    ]
    for label, key, _ in [*rows, ("true future features", "oracle", None)]:
        cells = [f"{miou(f'{key}@1/{cam}')} / {miou(f'{key}@3/{cam}')}" for cam in CAMERAS]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    n = result["counts"]
    spread = result["hypothesis_spread"]
    lines += [
        "",
        f"{n['cases']} cases ({n['static']} static camera, {n['vehicle']} vehicle camera) from "
        f"{result['sequences']} held-out worlds (seeds {result['seeds']}, layouts never seen "
        f"in training), {n['branched']} branched. mIoU in %, one confusion matrix over all "
        "cases; feature loss = mean squared error to the backbone features of the true future "
        "frame; mean-of-K scores every hypothesis, best-of-K the one with the lowest smooth-L1 "
        "(beta 0.1) feature error at that horizon (an oracle pick). Hypothesis spread (mean "
        f"squared distance between two hypotheses): {_fmt(spread['1'], 4)} at 1 step, "
        f"{_fmt(spread['3'], 4)} at 3 steps.",
        "",
        COVERAGE + " Agent IoU, branched: its mean over the branched cases (for DeltaWorld "
        "the best of the K hypotheses per case), in %.",
        "",
        f"Acceptance (best-of-K > baseline > copy-last in mIoU at both horizons): "
        f"{'yes' if result['acceptance'] else 'NO'}.",
    ]
    return "\n".join(lines) + "\n"


def acceptance(result: dict[str, Any]) -> bool:
    s = result["scores"]
    return all(
        s[f"best_of_k@{h}"]["miou"] > s[f"baseline@{h}"]["miou"] > s[f"copy_last@{h}"]["miou"]
        for h in HORIZONS
    )


def save_figure(case: Case, path: Path, max_hypotheses: int = 6) -> None:
    """Context frames, the true future, copy-last, baseline and hypotheses (best first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx, steps = len(case.context_rgb), len(case.truth)
    order = np.argsort(case.losses)[:max_hypotheses]
    rows = 4 + len(order)
    cols = ctx + steps
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.55 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")

    def show(r: int, c: int, image: np.ndarray, title: str = "") -> None:
        axes[r, c].imshow(image if image.ndim == 3 else PALETTE[image], interpolation="nearest")
        axes[r, c].set_title(title, fontsize=7)

    for i in range(ctx):
        show(0, i, case.context_rgb[i], f"context t{i - ctx + 1:+d}")
        show(1, i, case.context_labels[i], f"labels t{i - ctx + 1:+d}")
    for j in range(steps):
        show(0, ctx + j, case.truth_rgb[j], f"true frame t+{j + 1}")
        show(1, ctx + j, case.truth[j], f"true labels t+{j + 1}")
        show(2, ctx + j, case.copy_last, "copy-last")
        show(3, ctx + j, case.baseline[j], "baseline")
        for r, h in enumerate(order):
            show(
                4 + r,
                ctx + j,
                case.hypotheses[h, j],
                f"hyp {h} (loss {case.losses[h]:.3f})" if j == steps - 1 else f"hyp {h}",
            )
    decided = "\n".join(["decided after t+0:", *case.events[:5]])
    axes[3, 0].text(0, 0.5, decided, fontsize=8, va="center")
    fig.suptitle(
        f"held-out world {case.seed} ({case.camera} camera): {len(case.losses)} "
        f"hypotheses, {len(order)} closest shown",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    directory = args.model or default_model_dir()
    manifest = read_manifest(directory)
    from ..model.store import load_model

    model = load_model(directory)
    baseline = load_baseline(directory, model)
    if baseline is None:
        raise SystemExit(
            f"{directory} has no deterministic baseline predictor "
            f"(weights/world_baseline.safetensors); train it with --stages baseline"
        )
    seeds = range(args.seed, args.seed + args.sequences)
    _check_held_out(seeds, manifest.provenance)
    generator = torch.Generator().manual_seed(args.seed)
    result, case = evaluate(
        model, baseline, manifest.provenance, seeds, args.frames, args.every, args.k, generator
    )
    result.update(
        model=str(directory),
        k=args.k,
        sequences=args.sequences,
        seeds=f"{seeds.start}..{seeds.stop - 1}",
        frames=args.frames,
        every=args.every,
        coverage_definition=COVERAGE,
    )
    result["acceptance"] = acceptance(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    table = table_markdown(result, args.k)
    (args.out / "table.md").write_text(table)
    if case is not None:
        save_figure(case, args.out / "figure.png")
    print(table)
    return 0
