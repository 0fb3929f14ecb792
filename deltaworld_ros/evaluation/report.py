"""The evaluation report: metrics.json, report.md and report.html with PNG figures.

Both documents are rendered from one list of blocks (heading, paragraph, list, table, figure),
so they always say the same thing.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ..runtime.postprocess import disagreement
from .results import ClassMaps, ConfidenceSummary, Evaluation, Example, Features, Metrics, plain

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LINES = {  # baseline -> (legend, style)
    "most_confident": ("most confident", "o-"),
    "best_of_k": ("best of K (oracle)", "s-"),
    "mean_of_k": ("mean of K", "^-"),
    "copy_last": ("copy last (model's segmentation)", "x--"),
    "copy_last_target": ("copy last target", "+:"),
}


@dataclass
class Block:
    kind: str  # "h1", "h2", "p", "list", "table", "figure"
    body: Any  # text, list of texts, (header, rows) or (path, caption)


def write_report(out: Path, evaluation: Evaluation) -> dict[str, Path]:
    """metrics.json, figures and both documents into `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluation.metrics
    (out / "metrics.json").write_text(json.dumps(plain(metrics), indent=1) + "\n")
    figures = {"horizon": plot_horizon(metrics, out / "horizon.png")}
    if metrics.class_maps.rollout_confidence.forecasts:
        figures["confidence"] = plot_confidence(metrics, out / "confidence.png")
    if metrics.latency_ms:
        figures["latency"] = plot_latency(metrics, out / "latency.png")
    for i, example in enumerate(evaluation.examples):
        figures[f"example {i + 1}"] = plot_example(
            example, evaluation.palette, metrics, out / f"example_{i + 1}.png"
        )
    blocks = report_blocks(metrics, figures)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    paths["json"] = out / "metrics.json"
    paths["markdown"].write_text(to_markdown(blocks))
    paths["html"].write_text(to_html(blocks, title=blocks[0].body))
    return paths


# --------------------------------------------------------------------------------------------
# Text


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def target_phrase(metrics: Metrics) -> str:
    if metrics.target.labels:
        return f"labels of {metrics.target.topic}"
    return "PSEUDO-LABELS (the model's own segmentation of the frame that really came)"


def summary_text(metrics: Metrics) -> str:
    """A few lines for the terminal."""
    frames = metrics.frames
    lines = [
        f"{metrics.mode} evaluation of {metrics.bag} {metrics.image_topic}: "
        f"{frames.messages} messages, {frames.undecodable} undecodable, "
        f"{frames.kept} kept, restarts {frames.restarts or 0}",
        f"scored against {target_phrase(metrics)}",
    ]
    for step in metrics.class_maps.steps:
        lines.append(
            f"  step {step.step} (+{_num(step.horizon_s, 2)} s, {step.scored} scored): "
            + ", ".join(f"{LINES[k][0]} mIoU {_num(v)}" for k, v in step.miou.items() if k in LINES)
        )
    if metrics.tokens:
        probe = metrics.tokens.probe
        lines.append(
            f"  DeltaTok: token reliance {_num(probe.reliance)} (1 = the token is "
            f"ignored), identity error / copy-last error {_num(probe.identity_ratio)}, "
            f"{probe.pairs} frame pairs"
        )
    for step in metrics.depth.steps if metrics.depth else []:
        lines.append(
            f"  depth step {step.step} ({step.scored} scored): most confident AbsRel "
            f"{_num(step.abs_rel.get('most_confident'))} RMSE "
            f"{_num(step.rmse.get('most_confident'), 2)} m, best of K AbsRel "
            f"{_num(step.abs_rel.get('best_of_k'))}"
        )
    class_maps = metrics.class_maps
    for source, part in _confidence_sources(class_maps):
        quality = part.rollout_confidence
        if quality.forecasts:
            lines.append(
                f"  confidence ({source}): most confident is the best "
                f"{_num(quality.top_is_best, 2)} of the time (chance "
                f"{_num(quality.chance, 2)}), Spearman(conf, error) "
                f"{_num(quality.spearman, 2)}, ECE {_num(quality.ece, 3)}"
            )
    lines += [f"  note: {n}" for n in metrics.notes]
    return "\n".join(lines)


def report_blocks(metrics: Metrics, figures: dict[str, Path]) -> list[Block]:
    frames = metrics.frames
    blocks = [
        Block("h1", f"Forecast evaluation: {Path(metrics.bag).name} {metrics.image_topic}"),
        Block(
            "p",
            f"Mode: **{metrics.mode}** (forecasts from {metrics.forecasts_from}). "
            f"K = {metrics.K} hypotheses, T = {metrics.T} steps every "
            f"{metrics.frame_interval_s:.3f} s of header time. Scored against "
            f"**{target_phrase(metrics)}**.",
        ),
    ]
    if not metrics.target.labels:
        blocks.append(Block("p", "This is a pseudo-label score: " + metrics.target.meaning))
    if metrics.model:
        model = metrics.model
        blocks.append(Block("p", f"Model: {model.name} ({model.dir}), {model.backend}."))
    if metrics.notes:
        blocks += [Block("h2", "Notes"), Block("list", metrics.notes)]
    rows = [
        ["messages on the topic", frames.messages],
        ["decoded", frames.decoded],
        ["undecodable (skipped)", frames.undecodable],
        ["kept (one per forecast step of header time)", frames.kept],
        ["skipped between kept frames", frames.gated],
    ]
    rows += [[f"history restarts: {r}", n] for r, n in frames.restarts.items()]
    rows += [[f"decode error: {e[:90]}", n] for e, n in frames.decode_errors.items()]
    rows += [[what, n] for what, n in (metrics.predictions or {}).items()]
    blocks += [Block("h2", "Frames"), Block("table", (["", "count"], rows))]

    cm = metrics.class_maps
    blocks.append(Block("h2", "Class maps: mIoU per horizon step"))
    if cm.present_miou is not None:
        blocks.append(
            Block(
                "p",
                f"Segmentation of the present frame itself: mIoU {cm.present_miou:.3f} "
                "(a ceiling for the forecasts).",
            )
        )
    names = [n for n in LINES if any(n in s.miou for s in cm.steps)]
    blocks.append(
        Block(
            "p",
            "Most confident: the hypothesis ranked first (the first row the node publishes). "
            "Best of K: per forecast the hypothesis closest to what came (an oracle: what the "
            "sampled set contains). Mean of K: all K hypotheses together (a random one, on "
            "average). Copy last: the model's segmentation of the present frame, held still. "
            "Copy last target: the present frame's target held still (how much the scene "
            "changed).",
        )
    )
    blocks.append(
        Block(
            "table",
            (
                ["step", "horizon s", "scored", *(LINES[n][0] for n in names)],
                [
                    [s.step, _num(s.horizon_s, 2), s.scored] + [_num(s.miou.get(n)) for n in names]
                    for s in cm.steps
                ],
            ),
        )
    )
    if metrics.features:
        feats = metrics.features
        names = ["best_of_k", "mean_of_k", "most_confident", "copy_last"]
        blocks += [
            Block("h2", "Features: error per horizon step"),
            Block("p", f"{feats.error}, from the {feats.source}; lower is better."),
            Block(
                "table",
                (
                    ["step", "horizon s", "scored", *(LINES[n][0] for n in names[:-1])]
                    + ["copy last (present features)"],
                    [
                        [s.step, _num(s.horizon_s, 2), s.scored]
                        + [_num(s.feature_mse.get(n), 4) for n in names]
                        for s in feats.steps
                    ],
                ),
            ),
        ]
    if metrics.tokens:
        tokens, probe = metrics.tokens, metrics.tokens.probe
        blocks += [
            Block("h2", "DeltaTok token probes"),
            Block(
                "p",
                f"On {probe.pairs} pairs of consecutive kept frames (a uniform sample of the "
                f"recording's {tokens.pairs_in_recording}). Token reliance: the error of a "
                "pair decoded with the token of another pair of the same segment, divided by "
                "the error with its own token (1: the decoder ignores the token). Identity "
                "ratio: the error of decode(encode(y, y), y) against y, divided by the "
                "copy-last error (0: 'no change' decodes to no change).",
            ),
            Block(
                "table",
                (
                    ["token reliance", "identity ratio", "explained", "copy-last MSE", "pairs"],
                    [
                        [_num(probe.reliance), _num(probe.identity_ratio), _num(probe.explained)]
                        + [_num(probe.copy_error, 4), probe.pairs]
                    ],
                ),
            ),
        ]
    if metrics.depth:
        depth = metrics.depth
        names = {"most_confident": "most confident", "best_of_k": "best of K",
                 "mean_of_k": "mean of K", "copy_last": "copy last (present depth)"}  # fmt: skip
        against = depth.target.topic or depth.target.meaning
        blocks += [
            Block("h2", "Depth: error per horizon step"),
            Block("p", f"{depth.error}; against {against}; from the {depth.source}."),
            Block(
                "table",
                (
                    ["step", "scored"]
                    + [
                        f"{metric} {name}"
                        for metric in ("AbsRel", "RMSE m")
                        for name in names.values()
                    ],
                    [
                        [s.step, s.scored]
                        + [_num(errors.get(n), 3) for errors in (s.abs_rel, s.rmse) for n in names]
                        for s in depth.steps
                    ],
                ),
            ),  # fmt: skip
        ]
    blocks += [
        Block("h2", "Confidence quality"),
        Block(
            "p",
            "Error of the most confident hypothesis vs a random one (the mean over K) and the "
            "best one; how often the most confident is the best (chance: a random pick); "
            "Spearman rank correlation of confidence and error over the K hypotheses of a "
            "forecast, averaged (negative: more confident hypotheses err less); expected "
            "calibration error of whole rollouts (10 equal-width confidence bins, over every "
            "hypothesis). The forecasts' confidence source is named; beside a learned scorer "
            "the kernel density of the same forecasts is scored too.",
        ),
        _confidence_table(metrics),
    ]
    if metrics.latency_ms:
        blocks += [
            Block("h2", "Latency per stage (ms)"),
            Block(
                "table",
                (
                    ["stage", "mean", "p50", "p95", "frames"],
                    [
                        [stage] + [_num(v, 2) for v in (t.mean, t.p50, t.p95, t.count)]
                        for stage, t in metrics.latency_ms.items()
                    ],
                ),
            ),
        ]
    if metrics.replay:
        blocks += [
            Block("h2", "Replay"),
            Block(
                "table",
                (["", "value"], [[key, _num(v)] for key, v in plain(metrics.replay).items()]),
            ),
        ]
    blocks.append(Block("h2", "Figures"))
    captions = {
        "horizon": "Metrics vs horizon step.",
        "confidence": "Confidence: class error by confidence rank, error of the most "
        "confident vs random vs best, and reliability (how often a hypothesis of a given "
        "confidence was the best one).",
        "latency": "Latency per stage.",
    }
    for name, path in figures.items():
        caption = captions.get(
            name,
            f"Example ({name}): the frames that really came, their "
            f"{'labels' if metrics.target.labels else 'pseudo-labels'}, and "
            "the model's own segmentation of the present frame (copy-last) beside the labels "
            "held still, where the K hypotheses differ at each step (share of the K off the "
            "pixel's mode, dark: all agree), and the K with their confidences (most confident "
            "first). Each example: the forecast whose hypotheses differ most in its equal part "
            "of the recording.",
        )
        blocks.append(Block("figure", (path.name, caption)))
    return blocks


def _confidence_table(metrics: Metrics) -> Block:
    header = ["scored by", "confidence", "step", "forecasts", "most confident", "random", "best"]
    header += ["top is best", "chance", "Spearman", "ECE"]
    rows = []
    sources = [("class error (1 - frame mIoU)", metrics.class_maps)]
    if metrics.features:
        sources.append(("feature error", metrics.features))
    for label, part in sources:
        entries = [
            (part.confidence_source, step, q)
            for step, q in _by_step(part.steps, part.rollout_confidence)
        ]
        if part.kernel_density and part.kernel_density.rollout_confidence.forecasts:
            entries.append(("kernel density", "rollout", part.kernel_density.rollout_confidence))
        for confidence, step, q in entries:
            rows.append(
                [label, confidence, step, q.forecasts]
                + [_num(v, 4) for v in (q.most_confident, q.random, q.best)]
                + [_num(v, 2) for v in (q.top_is_best, q.chance, q.spearman)]
                + [_num(q.ece, 3)]
            )
    return Block("table", (header, rows))


def _confidence_sources(part: ClassMaps | Features) -> list[tuple[str, Any]]:
    """The forecasts' confidence, then the kernel density's beside a learned scorer."""
    sources: list[tuple[str, Any]] = [(part.confidence_source, part)]
    if part.kernel_density:
        sources.append(("kernel density", part.kernel_density))
    return sources


def _by_step(steps: list[Any], rollout: ConfidenceSummary) -> list[tuple[str, ConfidenceSummary]]:
    """Each step's confidence quality, then the whole rollouts'; those with forecasts."""
    entries = [(str(s.step), s.confidence) for s in steps] + [("rollout", rollout)]
    return [(name, q) for name, q in entries if q.forecasts]


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if block.kind == "h1":
            out.append(f"# {block.body}")
        elif block.kind == "h2":
            out.append(f"## {block.body}")
        elif block.kind == "p":
            out.append(block.body)
        elif block.kind == "list":
            out.append("\n".join(f"- {item}" for item in block.body))
        elif block.kind == "table":
            header, rows = block.body
            lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
            out.append("\n".join(lines))
        elif block.kind == "figure":
            path, caption = block.body
            out.append(f"![{caption}]({path})\n\n*{caption}*")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    def inline(text: str) -> str:
        parts = html.escape(str(text)).split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    out = []
    for block in blocks:
        if block.kind in ("h1", "h2"):
            out.append(f"<{block.kind}>{inline(block.body)}</{block.kind}>")
        elif block.kind == "p":
            out.append(f"<p>{inline(block.body)}</p>")
        elif block.kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block.body) + "</ul>")
        elif block.kind == "table":
            header, rows = block.body
            head = "".join(f"<th>{inline(h)}</th>" for h in header)
            body = "".join(
                "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif block.kind == "figure":
            path, caption = block.body
            out.append(
                f'<figure><img src="{html.escape(path)}"><figcaption>{inline(caption)}'
                "</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;}"
        "table{border-collapse:collapse;margin:1em 0;}td,th{border:1px solid #bbb;"
        "padding:2px 8px;text-align:right;}img{max-width:100%;}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# Figures


def _step_labels(steps: list[Any]) -> list[str]:
    return [f"{s.step}\n+{_num(s.horizon_s, 2)} s" for s in steps]


def plot_horizon(metrics: Metrics, path: Path) -> Path:
    """mIoU per step (and feature error per step when there are features)."""
    with_features = metrics.features is not None
    fig, axes = plt.subplots(1, 2 if with_features else 1, figsize=(11 if with_features else 6, 4))
    axes = np.atleast_1d(axes)
    steps = metrics.class_maps.steps
    x = np.arange(len(steps))
    for name, (legend, style) in LINES.items():
        values = [s.miou.get(name) for s in steps]
        if any(v is not None for v in values):
            axes[0].plot(x, [np.nan if v is None else v for v in values], style, label=legend)
    axes[0].set_title(f"mIoU vs {target_phrase(metrics).split(' (')[0].lower()}")
    axes[0].set_ylabel("mIoU (higher is better)")
    if with_features:
        fsteps = metrics.features.steps
        for name in ("best_of_k", "mean_of_k", "most_confident", "copy_last"):
            values = [s.feature_mse.get(name) for s in fsteps]
            if any(v is not None for v in values):
                legend, style = LINES[name]
                legend = "copy last (present features)" if name == "copy_last" else legend
                axes[1].plot(x, [np.nan if v is None else v for v in values], style, label=legend)
        axes[1].set_title(f"feature error ({metrics.features.source})")
        axes[1].set_ylabel("MSE (lower is better)")
    for ax in axes:
        ax.set_xticks(x, _step_labels(steps))
        ax.set_xlabel("horizon step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing scored", ha="center", transform=ax.transAxes)
    fig.suptitle(f"{metrics.mode}: {Path(metrics.bag).name}, K={metrics.K}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_confidence(metrics: Metrics, path: Path) -> Path:
    """Error by confidence rank, most confident vs random vs best, reliability diagram."""
    cm = metrics.class_maps
    k = metrics.K
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for s in cm.steps:
        if s.confidence.error_by_rank:
            axes[0].plot(np.arange(1, k + 1), s.confidence.error_by_rank, "o-",
                         label=f"step {s.step}")  # fmt: skip
    axes[0].set_xlabel("confidence rank (1 = most confident)")
    axes[0].set_ylabel("class error 1 - frame mIoU")
    axes[0].set_title("error by confidence rank")
    axes[0].ticklabel_format(axis="y", useOffset=False)
    entries = _by_step(cm.steps, cm.rollout_confidence)
    x = np.arange(len(entries))
    for i, (key, legend) in enumerate((("most_confident", "most confident"), ("best", "best"))):
        values = [(getattr(q, key) or 0.0) - (q.random or 0.0) for _, q in entries]
        axes[1].bar(x + (i - 0.5) * 0.35, values, 0.35, label=legend)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_xticks(x, [n for n, _ in entries])
    axes[1].set_xlabel("horizon step")
    axes[1].set_ylabel("class error - a random hypothesis' error")
    axes[1].set_title("vs a random hypothesis (below 0: better)")
    bins = cm.reliability
    if bins:
        conf = [b.confidence for b in bins]
        rate = [b.best_rate for b in bins]
        axes[2].plot(conf, rate, "o-", label="observed")
        top = max(max(conf), max(rate)) * 1.1
        axes[2].plot([0, top], [0, top], "k:", label="calibrated")
        axes[2].axhline(1 / k, color="grey", ls="--", label=f"chance 1/K = {1 / k:.2f}")
    axes[2].set_xlabel("hypothesis confidence (bin mean)")
    axes[2].set_ylabel("share of times it was the best")
    axes[2].set_title("reliability (whole rollouts)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"confidence quality against {target_phrase(metrics).split(' (')[0].lower()}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_latency(metrics: Metrics, path: Path) -> Path:
    stages = metrics.latency_ms
    names = list(stages)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y - 0.2, [stages[n].mean for n in names], 0.4, label="mean")
    ax.barh(y + 0.2, [stages[n].p95 for n in names], 0.4, label="p95")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("ms per frame")
    ax.set_title("latency per stage")
    ax.legend()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_example(example: Example, palette: np.ndarray, metrics: Metrics, path: Path) -> Path:
    """Columns: the present, then each step. Rows: the camera frames, their labels (the first
    one: the labels held still), the model's own segmentation of the present (copy-last) and
    where the K hypotheses differ at each step, then the K (most confident first)."""
    k, t = example.hypotheses.shape[:2]
    order = np.argsort(-example.confidence, kind="stable")
    target_name = "label" if metrics.target.labels else "pseudo-label"
    rows, cols = 3 + k, 1 + t
    spread = disagreement(example.hypotheses)  # (T, h, w) share of the K off the pixel's mode
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for c in range(cols):
        when = "now" if c == 0 else f"+{_num(example.horizon_s[c], 2)} s"
        if example.frames[c] is not None:
            axes[0, c].imshow(example.frames[c])
        axes[0, c].set_title(f"camera {when}" if c == 0 else f"what came {when}", fontsize=8)
        if example.targets[c] is not None:
            axes[1, c].imshow(_colour(example.targets[c], palette))
        axes[1, c].set_title(f"{target_name} {when}", fontsize=8)
    if example.present is not None:
        axes[2, 0].imshow(_colour(example.present, palette))
    axes[2, 0].set_title("model now = copy-last", fontsize=8)
    for step in range(t):
        axes[2, 1 + step].imshow(spread[step], cmap="magma", vmin=0, vmax=1 - 1 / max(k, 2))
        axes[2, 1 + step].set_title(
            f"K differ: {100 * (spread[step] > 0).mean():.0f} % of px", fontsize=8
        )
    for row, h in enumerate(order):
        ax = axes[3 + row, 0]
        ax.text(
            0.5,
            0.5,
            f"hypothesis {row + 1}\nconfidence\n{example.confidence[h]:.3f}",
            ha="center",
            va="center",
            fontsize=9,
            transform=ax.transAxes,
        )
        for step in range(t):
            axes[3 + row, 1 + step].imshow(_colour(example.hypotheses[h, step], palette))
            if row == 0:
                axes[3, 1 + step].set_title(f"forecast step {step + 1}", fontsize=8)
    source = "forecast published by the node" if metrics.mode == "predictions" else "forecast"
    fig.suptitle(
        f"{source} {example.offset_s:.2f} s into {Path(metrics.bag).name} "
        f"(stamp {example.stamp_s:.3f})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / rows))  # room for the suptitle
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _colour(classes: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class ids -> RGB; ids past the palette (and ignore pixels) are black."""
    lut = np.zeros((max(int(classes.max(initial=0)) + 1, len(palette)), 3), np.uint8)
    lut[: len(palette)] = palette
    return lut[classes]
