"""`deltaworld evaluate-world`: the paper's forecasting table on held-out synthetic worlds.

Cases: a window of `context_length` frames of a held-out world, then the true future. Every
case is forecast by each method and scored at each of HORIZONS steps ahead (DEFINITIONS says
what each method and measure is). The held-out worlds come in seed sets (`--seed-sets`); every
set is scored on its own, so a difference between methods can be told apart from the
difference between two sets of worlds.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arguments import at_least
from ..errors import UsageError
from ..model.deltatok import tokenize_offline
from ..model.deltaworld import DeltaWorld, Rollout, best_of_k, rollout
from ..model.loading import load_module_file
from ..model.probes import TokenProbe, partner_pairs, probe_tokens
from ..model.store import load_model, read_manifest
from ..model.world_model import WorldModel
from ..ros.share import package_model_dir
from ..runtime.postprocess import disagreement, kernel_density_confidence
from ..synth import AGENT_CLASSES, CLASS_NAMES, PALETTE, StreetWorld, WorldConfig
from ..train.data import HELD_OUT_SEED_BASE, camera_for, render_clip
from .confidence import ConfidenceQuality
from .metrics import (
    confusion,
    feature_error,
    iou_per_class,
    mean_iou,
    patch_majority,
)
from .world_results import (
    CameraResult,
    ConfidenceScores,
    Coverage,
    Covered,
    HorizonScores,
    Score,
    SeedSetResult,
    WorldEvaluation,
    method_targets,
    table_markdown,
    target_rows,
    to_json,
)

HORIZONS = (1, 3)
METHODS = ("oracle", "copy_last", "baseline", "feature_mean", "single", "best_of_k")
CAMERAS = ("static", "vehicle")
COVERED_BY = ("copy_last", "baseline", "feature_mean", "best_of_k")
AGENT_IOU_THRESHOLD = 0.5
FORKS = 4  # alternative futures rendered per case to find out whether it branched
BRANCH_PATCHES = 2  # patches whose majority label must differ for a case to count as branched
DEFINITIONS = {
    "oracle": "the seg head on the backbone features of the true future frame: the ceiling "
    "of every forecast scored through the head",
    "copy-last": "the model's own segmentation of the last context frame, held still",
    "deterministic baseline": "the predictor trained with one learned query, rolled out",
    "mean of K": "the head on the average of the K hypotheses' features (the authors' mean)",
    "single hypothesis": "each of the K hypotheses scored on its own, all K in one confusion "
    "matrix: the expected score of one sampled hypothesis",
    "best-of-K": "per case the hypothesis with the lowest smooth-L1 feature loss against the "
    "true future features at that step (an oracle pick: what the K contain)",
    "mIoU": "seg head on the (predicted) features, upsampled to the label size, against the "
    "world's labels; one confusion matrix per method, camera and seed set over all cases",
    "feature loss": "mean squared error to the backbone features of the true future frame",
    "branched": f"a case whose future branched at patch level: among {FORKS} forks of the "
    "world at the last context frame (same past, re-seeded decisions of agents and ego "
    f"vehicle), at least one whose labels at the last step differ from the true future's in "
    f">= {BRANCH_PATCHES} patches (majority label of each patch of the model's grid)",
    "diversity": "share of the K hypotheses' patches (the head's per-patch argmax at the last "
    "step) whose class differs from the per-patch mode over the K; mean over the cases",
    "mode coverage": "a forecast covers a branched case when its agent IoU at the last step is "
    f">= {AGENT_IOU_THRESHOLD} (agent IoU of a class map: pixels where prediction and truth "
    "agree on an agent class / pixels where either says agent; best-of-K: the best of the K). "
    "Absolute: share of the branched cases covered; relative: the share among the branched "
    "cases the oracle covers",
    "confidence": "each hypothesis' confidence (summing to 1 over the K) from the kernel "
    "density of the sampled delta tokens and, for a model with one, from the learned scorer; "
    "a hypothesis' error is its feature loss averaged over the steps, the best one has the "
    "lowest; most confident is the best: share of cases (chance 1/K); error ratio: the most "
    "confident's error over a random hypothesis' (the mean of the K), beside the best's over "
    "a random one (the floor any confidence can reach); Spearman: rank correlation of "
    "confidence and error over the K of a case (-1: perfectly ordered); ECE: expected "
    "calibration error, 10 equal-width confidence bins, over every hypothesis (a hypothesis "
    "counting as the best with its share of ties) and of the most confident alone (its "
    "confidence against whether it was the best)",
    "token reliance": "DeltaTok's error on a pair of consecutive frames decoded with another "
    "pair's token of the same world, divided by the error with its own token (1: the token is "
    "ignored)",
    "identity ratio": "error of decode(encode(y, y), y) against y, divided by the copy-last "
    "error of the same pairs (0: 'no change' decodes to no change)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model directory (default: the embedded default model)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/world"))
    parser.add_argument(
        "--sequences", type=at_least(1), default=8, help="held-out worlds per seed set (default 8)"
    )
    parser.add_argument(
        "--seed-sets",
        type=at_least(1),
        default=2,
        help="seed sets of --sequences worlds each, scored apart to show the spread (default 2)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=HELD_OUT_SEED_BASE,
        help=f"first held-out world seed (>= {HELD_OUT_SEED_BASE}, never trained on)",
    )
    parser.add_argument("--frames", type=int, default=40, help="kept frames per sequence")
    parser.add_argument("--every", type=int, default=2, help="a case every N frames (default 2)")
    parser.add_argument(
        "--num-hypotheses", type=at_least(1), default=20, help="K per case (default 20)"
    )
    parser.add_argument("--threads", type=int, default=2)


@dataclass
class Case:
    """What the figure needs of one case."""

    context_rgb: np.ndarray  # (L, H, W, 3)
    context_labels: np.ndarray  # (L, H, W)
    truth_rgb: np.ndarray  # (T, H, W, 3)
    truth: np.ndarray  # (T, H, W) labels
    copy_last: np.ndarray  # (H, W)
    baseline: np.ndarray  # (T, H, W)
    feature_mean: np.ndarray  # (T, H, W)
    hypotheses: np.ndarray  # (K, T, H, W)
    losses: np.ndarray  # (K,) feature loss at the last step
    seed: int
    camera: str
    events: list[str]


@dataclass
class Sequence:
    """One held-out world's clip, its forecasts at every case, and which cases branched."""

    seed: int
    camera: str
    rgb: np.ndarray  # (F, H, W, 3)
    labels: np.ndarray  # (F, H, W)
    stamps: np.ndarray  # (F,) header stamps, s
    features: torch.Tensor  # (F, N, C) backbone features of every frame
    lasts: np.ndarray  # (W,) index of each case's last context frame
    branched: np.ndarray  # (W,) bool
    events: list[list[str]]  # per case, the visible decisions after its last context frame


@dataclass
class Forecasts:
    """The features each method forecasts for the cases of one sequence."""

    present: torch.Tensor  # (W, N, C) the last context frame
    baseline: torch.Tensor  # (W, T, N, C)
    sampled: torch.Tensor  # (W, K, T, N, C)
    truth: torch.Tensor  # (W, T, N, C)
    confidence: dict[str, np.ndarray]  # source -> (W, K), see confidences()


def agent_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Agent IoU per map over the last two axes (see DEFINITIONS); 1 where neither has agents."""
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


def seed_sets(first: int, sequences: int, sets: int) -> list[range]:
    return [range(first + i * sequences, first + (i + 1) * sequences) for i in range(sets)]


def _check_held_out(seeds: range, provenance: dict[str, Any]) -> None:
    data = provenance.get("data", {})
    if data.get("kind") == "synth":
        lo = data["seed"] * data["num_clips"]
        hi = lo + data["num_clips"]
        if seeds.start < hi and lo < seeds.stop:
            raise UsageError(
                f"seeds {seeds.start}..{seeds.stop - 1} overlap the training world "
                f"seeds {lo}..{hi - 1}; use --seed >= {HELD_OUT_SEED_BASE}"
            )
    if seeds.start < HELD_OUT_SEED_BASE:
        raise UsageError(f"--seed must be >= {HELD_OUT_SEED_BASE} (training seeds stay below)")


def class_maps(model: WorldModel, features: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Features (..., N, C) -> class ids (..., H, W): seg head, upsampled to `size`, argmax.
    At size = the model's grid: the head's per-patch argmax."""
    flat = features.reshape(-1, *features.shape[-2:])
    logits = model.seg_head(flat, model.cfg.grid, size)
    return logits.argmax(1).reshape(*features.shape[:-2], *size).numpy()


def render_sequence(
    model: WorldModel,
    world_cfg: WorldConfig,
    seed: int,
    camera: str,
    frames: int,
    stride: int,
    lasts: np.ndarray,
    steps: int,
) -> Sequence:
    """Render a world frame by frame; at each case's last context frame, fork it FORKS times
    and render the alternative futures' labels to tell whether the case branched."""
    world, _ = render_clip(replace(world_cfg, camera=camera), seed, 0, stride, burn_in=20)
    grid, n_cls = model.cfg.grid, model.cfg.head.num_classes
    clip, alternatives = [], {}
    for i in range(frames):
        clip.append(world.step(stride))
        if i in lasts:
            alternatives[i] = [_future_labels(world.fork(seed * FORKS + f), steps, stride)
                               for f in range(FORKS)]  # fmt: skip
    world.advance(steps * stride)  # the decisions right after the last frame are logged too
    labels = np.stack([f.labels for f in clip])
    ticks = np.array([f.index for f in clip])
    rgb = np.stack([f.rgb for f in clip])
    branched, events = [], []
    for last in lasts:
        truth = patch_majority(labels[last + steps], grid, n_cls)
        differ = [
            int((patch_majority(alt, grid, n_cls) != truth).sum()) for alt in alternatives[last]
        ]
        branched.append(max(differ) >= BRANCH_PATCHES)
        lo, hi = ticks[last], ticks[last + steps]
        events.append([f"{e.kind} {e.decision}" for e in _visible(world, lo, hi)])
    with torch.no_grad():
        features = model.backbone(torch.from_numpy(rgb).permute(0, 3, 1, 2).float())
    stamps = np.array([f.stamp_s for f in clip])
    return Sequence(
        seed, camera, rgb, labels, stamps, features, lasts, np.array(branched, bool), events
    )


def _future_labels(world: StreetWorld, steps: int, stride: int) -> np.ndarray:
    """The labels of a world's frame `steps` kept frames ahead."""
    *_, last = world.frames(steps, stride)
    return last.labels


def _visible(world: StreetWorld, lo: int, hi: int) -> list:
    return [e for e in world.events if e.visible and lo < e.step <= hi]


@torch.no_grad()
def forecast(
    model: WorldModel,
    baseline: DeltaWorld,
    seq: Sequence,
    k: int,
    generator: torch.Generator,
) -> Forecasts:
    ctx, steps = model.cfg.context_length, max(HORIZONS)
    window = seq.lasts[:, None] + np.arange(-ctx + 1, 1)  # (W, L)
    future = seq.lasts[:, None] + np.arange(1, steps + 1)  # (W, T)
    y, stamps = seq.features, seq.stamps
    z = tokenize_offline(model.tokenizer, y[torch.from_numpy(window)], model.black_features())
    t0 = stamps[window[:, :1]]
    t_ctx = torch.from_numpy(stamps[window] - t0).float()
    t_fut = torch.from_numpy(stamps[future] - t0).float()
    x = y[torch.from_numpy(seq.lasts)]
    w = len(seq.lasts)
    queries = model.world.sample_queries(steps, w * k, 1, generator=generator)
    sampled = rollout(model.world, model.tokenizer, z, t_ctx, x, t_fut, queries)
    det = rollout(
        baseline, model.tokenizer, z, t_ctx, x, t_fut, baseline.sample_queries(steps, w, 1)
    ).preds[:, 0]
    truth = y[torch.from_numpy(future)]
    return Forecasts(x, det, sampled.preds, truth, confidences(model, sampled, z, x))


def confidences(
    model: WorldModel, sampled: Rollout, context: torch.Tensor, present: torch.Tensor
) -> dict[str, np.ndarray]:
    """Each case's confidence over its K hypotheses (W, K) by source: the kernel density of
    the sampled tokens, and the learned scorer's (as the node computes them)."""
    k = sampled.z_hat.shape[1]
    tokens = sampled.z_hat.reshape(len(sampled.z_hat), k, -1).numpy()
    out = {"kernel density": np.stack([kernel_density_confidence(t) for t in tokens])}
    if model.scorer is not None:
        logits = model.scorer(sampled.z_hat, context, sampled.preds, present)
        out["learned scorer"] = torch.softmax(logits, -1).numpy()
    return out


@dataclass
class Tally:
    """What one camera (or all) of one seed set accumulates over its cases."""

    num_classes: int
    matrices: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    feature: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    branched_matrices: dict[str, np.ndarray] = field(default_factory=dict)
    branched_feature: dict[str, list[float]] = field(default_factory=dict)
    diversity: list[float] = field(default_factory=list)  # branched cases
    diversity_all: list[float] = field(default_factory=list)
    covered: dict[str, list[bool]] = field(default_factory=dict)  # branched cases
    cases: int = 0
    branched: int = 0
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per sequence
    # per confidence source, per case: (confidence (K,), error (K,), branched)
    confidence: dict[str, list[tuple[np.ndarray, np.ndarray, bool]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.num_classes
        for m in METHODS:
            self.branched_matrices[m] = np.zeros((n, n), np.int64)
            self.branched_feature[m] = []
            for h in HORIZONS:
                self.matrices[m, h] = np.zeros((n, n), np.int64)
                self.feature[m, h] = []
        self.covered = {m: [] for m in ("oracle", *COVERED_BY)}

    def merge(self, other: Tally) -> None:
        for key, matrix in other.matrices.items():
            self.matrices[key] = self.matrices[key] + matrix
            self.feature[key] = self.feature[key] + other.feature[key]
        for m, matrix in other.branched_matrices.items():
            self.branched_matrices[m] = self.branched_matrices[m] + matrix
            self.branched_feature[m] = self.branched_feature[m] + other.branched_feature[m]
        for m, values in other.covered.items():
            self.covered[m] = self.covered[m] + values
        for source, cases in other.confidence.items():
            self.confidence[source] = self.confidence.get(source, []) + cases
        self.diversity += other.diversity
        self.diversity_all += other.diversity_all
        self.cases += other.cases
        self.branched += other.branched


def score_cases(
    model: WorldModel, tally: Tally, truth: np.ndarray, f: Forecasts, branched: np.ndarray
) -> None:
    """Add the cases of one sequence: truth (W, T, H, W) labels, their forecasts, which
    branched (W,)."""
    size = truth.shape[-2:]
    maps = {
        "oracle": class_maps(model, f.truth, size),
        "copy_last": class_maps(model, f.present, size),
        "baseline": class_maps(model, f.baseline, size),
        "feature_mean": class_maps(model, f.sampled.mean(1), size),
        "sampled": class_maps(model, f.sampled, size),  # (W, K, T, H, W)
    }
    for h in HORIZONS:
        _score_methods(tally, h, truth, f, maps, branched)
    _score_spread(model, tally, truth, f, maps, branched)
    _score_confidence(tally, f, branched)
    tally.cases += len(truth)
    tally.branched += int(branched.sum())


def _score_methods(
    tally: Tally,
    h: int,
    truth: np.ndarray,
    f: Forecasts,
    maps: dict[str, np.ndarray],
    branched: np.ndarray,
) -> None:
    """Every method's confusion matrix and feature loss at horizon step h (the last step
    also over the branched cases alone)."""
    n_cls, k = tally.num_classes, f.sampled.shape[1]
    every = np.arange(len(truth))
    j = h - 1
    target = truth[:, j]
    tf = f.truth[:, j].numpy()
    mean = f.sampled[:, :, j].mean(1).numpy()
    errs = feature_error(f.sampled[:, :, j].numpy(), tf[:, None])  # (W, K)
    best = best_of_k(f.sampled[:, :, : j + 1], f.truth[:, j])[1].numpy()
    forecasts = {
        "oracle": (maps["oracle"][:, j], np.zeros(len(truth))),
        "copy_last": (maps["copy_last"], feature_error(f.present.numpy(), tf)),
        "baseline": (maps["baseline"][:, j], feature_error(f.baseline[:, j].numpy(), tf)),
        "feature_mean": (maps["feature_mean"][:, j], feature_error(mean, tf)),
        "single": (maps["sampled"][:, :, j], errs.mean(1)),
        "best_of_k": (maps["sampled"][every, best, j], errs[every, best]),
    }
    for m, (pred, err) in forecasts.items():
        tgt = target if pred.ndim == target.ndim else np.repeat(target[:, None], k, 1)
        tally.matrices[m, h] += confusion(pred, tgt, n_cls)
        tally.feature[m, h] += err.tolist()
        if h == max(HORIZONS):
            tally.branched_matrices[m] += confusion(pred[branched], tgt[branched], n_cls)
            tally.branched_feature[m] += err[branched].tolist()


def _score_spread(
    model: WorldModel,
    tally: Tally,
    truth: np.ndarray,
    f: Forecasts,
    maps: dict[str, np.ndarray],
    branched: np.ndarray,
) -> None:
    """Diversity of the K at the last step, and which methods cover the branched cases."""
    final = truth[:, max(HORIZONS) - 1]
    patches = class_maps(model, f.sampled[:, :, -1], model.cfg.grid)  # (W, K, h, w)
    off = np.array([disagreement(p).mean() for p in patches])  # share off the mode
    tally.diversity_all += off.tolist()
    tally.diversity += off[branched].tolist()
    ious = {
        "oracle": agent_iou(maps["oracle"][:, -1], final),
        "copy_last": agent_iou(maps["copy_last"], final),
        "baseline": agent_iou(maps["baseline"][:, -1], final),
        "feature_mean": agent_iou(maps["feature_mean"][:, -1], final),
        # coverage: whether ANY of the K covers the case, so the best of the K by agent IoU
        "best_of_k": agent_iou(maps["sampled"][:, :, -1], final[:, None]).max(1),
    }
    for m, v in ious.items():
        tally.covered[m] += (v[branched] >= AGENT_IOU_THRESHOLD).tolist()


def _score_confidence(tally: Tally, f: Forecasts, branched: np.ndarray) -> None:
    """Each source's confidence against each hypothesis' feature loss over the steps."""
    errors = (f.sampled - f.truth[:, None]).square().mean((-2, -1)).mean(-1).numpy()  # (W, K)
    for source, confidence in f.confidence.items():
        cases = zip(confidence, errors, branched.tolist(), strict=True)
        tally.confidence.setdefault(source, []).extend(cases)


def confidence_scores(cases: list[tuple[np.ndarray, np.ndarray, bool]]) -> ConfidenceScores:
    """The confidence measures (DEFINITIONS) over some cases."""
    quality = ConfidenceQuality(1, len(cases[0][0]))
    for confidence, errors, _ in cases:
        quality.add(None, confidence, errors)
    s = quality.summary(None)
    return ConfidenceScores(
        cases=s["forecasts"],
        top_is_best=s["top_is_best"],
        chance=s["chance"],
        most_confident_error=s["most_confident"],
        random_error=s["random"],
        best_error=s["best"],
        spearman=s["spearman"],
        **quality.calibration(),
        reliability=quality.reliability(),
    )


def _score(matrix: np.ndarray, feature: list[float]) -> Score:
    iou = iou_per_class(matrix)
    return Score(
        miou=mean_iou(matrix),
        feature_loss=float(np.mean(feature)) if feature else float("nan"),
        iou_per_class={
            CLASS_NAMES[i]: (None if np.isnan(v) else float(v)) for i, v in enumerate(iou)
        },
    )


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def camera_result(camera: str, tally: Tally, tokens: TokenProbe | None) -> CameraResult:
    def horizon(step: int, read) -> HorizonScores:
        return HorizonScores(step, **{m: read(m) for m in METHODS})

    horizons = [
        horizon(h, lambda m, h=h: _score(tally.matrices[m, h], tally.feature[m, h]))
        for h in HORIZONS
    ]
    branched = None
    if tally.branched:
        branched = horizon(
            max(HORIZONS),
            lambda m: _score(tally.branched_matrices[m], tally.branched_feature[m]),
        )
    oracle = np.array(tally.covered["oracle"], bool)

    def covered(method: str) -> Covered:
        hits = np.array(tally.covered[method], bool)
        return Covered(
            absolute=float(hits.mean()) if len(hits) else None,
            relative=float(hits[oracle].mean()) if oracle.any() else None,
        )

    confidence = {
        f"{source}, {which}": confidence_scores(picked)
        for source, cases in tally.confidence.items()
        for which, picked in (("all", cases), ("branched", [c for c in cases if c[2]]))
        if picked
    }
    return CameraResult(
        camera=camera,
        cases=tally.cases,
        branched_cases=tally.branched,
        horizons=horizons,
        branched=branched,
        diversity=_mean(tally.diversity),
        diversity_all_cases=_mean(tally.diversity_all),
        coverage=Coverage(_mean(oracle.tolist()), *(covered(m) for m in COVERED_BY)),
        tokens=tokens,
        confidence=confidence,
    )


def token_probe(model: WorldModel, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> TokenProbe:
    """DeltaTok's probes on the consecutive frame pairs of some sequences (one stream each)."""
    x = torch.cat([p for p, _ in pairs])
    y = torch.cat([c for _, c in pairs])
    streams = np.concatenate([np.full(len(p), i) for i, (p, _) in enumerate(pairs)])
    partner = partner_pairs(streams, np.random.default_rng(0))
    return probe_tokens(model.tokenizer, x, y, partner)


@torch.no_grad()
def evaluate_set(
    model: WorldModel,
    baseline: DeltaWorld,
    world: tuple[WorldConfig, int, float],
    seeds: range,
    frames: int,
    every: int,
    k: int,
    generator: torch.Generator,
    figure: list[tuple[float, Case]],
) -> SeedSetResult:
    """One seed set; the branched case whose hypotheses disagree most goes to `figure`."""
    world_cfg, stride, vehicle_fraction = world
    ctx, steps = model.cfg.context_length, max(HORIZONS)
    tallies = {cam: Tally(model.cfg.head.num_classes) for cam in CAMERAS}
    lasts = np.arange(ctx - 1, frames - steps, every)
    for i, seed in enumerate(seeds):
        camera = camera_for(i, vehicle_fraction)
        seq = render_sequence(model, world_cfg, seed, camera, frames, stride, lasts, steps)
        f = forecast(model, baseline, seq, k, generator)
        truth = seq.labels[lasts[:, None] + np.arange(1, steps + 1)]
        score_cases(model, tallies[camera], truth, f, seq.branched)
        tallies[camera].pairs.append((seq.features[:-1], seq.features[1:]))
        _offer_figure(figure, seq, f, truth, model)
    results = [
        camera_result(
            cam,
            tallies[cam],
            token_probe(model, tallies[cam].pairs) if tallies[cam].pairs else None,
        )
        for cam in CAMERAS
    ]
    pooled = Tally(model.cfg.head.num_classes)
    for cam in CAMERAS:
        pooled.merge(tallies[cam])
    results.append(camera_result("all", pooled, None))
    return SeedSetResult(seeds.start, seeds.stop - 1, results)


def _offer_figure(
    figure: list[tuple[float, Case]],
    seq: Sequence,
    f: Forecasts,
    truth: np.ndarray,
    model: WorldModel,
) -> None:
    """Keep in `figure` the branched case whose hypotheses disagree most at the last step."""
    spread = f.sampled[:, :, -1].var(dim=1, unbiased=False).mean(dim=(-2, -1)).numpy()
    spread[~seq.branched] = -1
    c = int(spread.argmax())
    if not seq.branched.any() or (figure and spread[c] <= figure[0][0]):
        return
    ctx, steps = model.cfg.context_length, truth.shape[1]
    last = seq.lasts[c]
    size = truth.shape[-2:]
    losses = feature_error(f.sampled[c, :, -1].numpy(), f.truth[c, -1].numpy()[None])
    figure[:] = [
        (
            float(spread[c]),
            Case(
                seq.rgb[last - ctx + 1 : last + 1],
                seq.labels[last - ctx + 1 : last + 1],
                seq.rgb[last + 1 : last + 1 + steps],
                truth[c],
                class_maps(model, f.present[c], size),
                class_maps(model, f.baseline[c], size),
                class_maps(model, f.sampled[c].mean(0), size),
                class_maps(model, f.sampled[c], size),
                losses,
                seq.seed,
                seq.camera,
                seq.events[c],
            ),
        )
    ]


def evaluate(
    model: WorldModel,
    baseline: DeltaWorld,
    provenance: dict[str, Any],
    sets: list[range],
    frames: int,
    every: int,
    k: int,
    generator: torch.Generator,
) -> tuple[list[SeedSetResult], Case | None]:
    cfg = model.cfg
    if tuple(cfg.head.class_names) != tuple(CLASS_NAMES):
        raise UsageError(
            f"the model's classes {cfg.head.class_names} are not the synth world's "
            f"{CLASS_NAMES}; evaluate-world needs a model trained on the world"
        )
    ctx, steps = cfg.context_length, max(HORIZONS)
    if frames < ctx + steps:
        raise UsageError(f"--frames must be >= context {ctx} + {steps} steps")
    world = world_setup(provenance, cfg)
    figure: list[tuple[float, Case]] = []
    results = [
        evaluate_set(model, baseline, world, seeds, frames, every, k, generator, figure)
        for seeds in sets
    ]
    return results, (figure[0][1] if figure else None)


def save_figure(case: Case, path: Path, max_hypotheses: int = 6) -> None:
    """Context frames, the true future, copy-last, baseline, the mean of K and hypotheses
    (best first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx, steps = len(case.context_rgb), len(case.truth)
    order = np.argsort(case.losses)[:max_hypotheses]
    rows = 5 + len(order)
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
        show(4, ctx + j, case.feature_mean[j], f"mean of {len(case.losses)}")
        for r, h in enumerate(order):
            show(
                5 + r,
                ctx + j,
                case.hypotheses[h, j],
                f"hyp {h} (loss {case.losses[h]:.3f})" if j == steps - 1 else f"hyp {h}",
            )
    events = case.events[:5] or ["none logged"]
    decided = "\n".join(["agents decided after t+0:", *events])
    axes[3, 0].text(0, 0.5, decided, fontsize=8, va="center")
    fig.suptitle(
        f"held-out world {case.seed} ({case.camera} camera): {len(case.losses)} "
        f"hypotheses, {len(order)} closest shown",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_reliability(results: list[SeedSetResult], path: Path) -> None:
    """Reliability diagram of each confidence source (both cameras, all cases, every seed
    set): a hypothesis' confidence against how often hypotheses of that confidence were the
    best; calibrated = on the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    top = 0.0
    for i, result in enumerate(results):
        for key, scores in sorted(result.camera("all").confidence.items()):
            if not key.endswith(", all") or not scores.reliability:
                continue
            conf = [b["confidence"] for b in scores.reliability]
            rate = [b["best_rate"] for b in scores.reliability]
            top = max(top, *conf, *rate)
            source = key.rsplit(", ", 1)[0]
            ax.plot(conf, rate, "o-", label=f"{source} (ECE {scores.ece:.3f}), set {i + 1}")
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="calibrated")
    ax.set_xlabel("hypothesis confidence (bin mean)")
    ax.set_ylabel("share of them that were the best")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    directory = args.model_dir or package_model_dir()
    manifest = read_manifest(directory)
    model = load_model(directory)
    baseline = load_baseline(directory, model)
    if baseline is None:
        raise UsageError(
            f"{directory} has no deterministic baseline predictor "
            f"(weights/world_baseline.safetensors); train it with --stages baseline"
        )
    sets = seed_sets(args.seed, args.sequences, args.seed_sets)
    _check_held_out(range(sets[0].start, sets[-1].stop), manifest.provenance)
    generator = torch.Generator().manual_seed(args.seed)
    results, case = evaluate(
        model,
        baseline,
        manifest.provenance,
        sets,
        args.frames,
        args.every,
        args.num_hypotheses,
        generator,
    )
    evaluation = WorldEvaluation(
        model=str(directory),
        k=args.num_hypotheses,
        horizons=HORIZONS,
        frames=args.frames,
        every=args.every,
        sequences_per_set=args.sequences,
        seed_sets=results,
        targets=target_rows(method_targets(args.num_hypotheses, model.scorer is not None), results),
        definitions=DEFINITIONS,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    document = to_json(evaluation) | {"all_targets_met": evaluation.all_targets_met}
    (args.out / "metrics.json").write_text(json.dumps(document, indent=1) + "\n")
    table = table_markdown(evaluation)
    (args.out / "table.md").write_text(table)
    if case is not None:
        save_figure(case, args.out / "figure.png")
    save_reliability(results, args.out / "reliability.png")
    print(table)
    return 0
