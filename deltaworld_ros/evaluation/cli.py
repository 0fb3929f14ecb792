"""`deltaworld eval`: score K-hypothesis forecasts on a rosbag2, offline or as the node
published them (evaluator.py says how)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..arguments import at_least
from ..ros import topics
from ..runtime.arguments import add_engine_arguments, add_forecast_arguments, engine_options
from .evaluator import EvalOptions, evaluate
from .report import summary_text, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", required=True, type=Path, help="rosbag2 (sqlite3 or mcap)")
    parser.add_argument("--image-topic", required=True, help="Image or CompressedImage topic")
    parser.add_argument(
        "--label-topic",
        default="auto",
        help="class-id Image topic to score against; 'auto' (default): the bag's topic named "
        "like labels, if exactly one; 'none': pseudo-labels (the model's own segmentation)",
    )
    parser.add_argument(
        "--depth-topic",
        help="32FC1 depth Image topic (metres) to score depth futures against; default: the "
        "model's own depth of the frame that came (a model with a depth head)",
    )
    parser.add_argument(
        "--model-dir", type=Path, help="model directory (default: the embedded one)"
    )
    add_engine_arguments(parser)
    parser.add_argument("--out", type=Path, help="report directory (default: <bag>_eval)")
    add_forecast_arguments(parser)  # of the offline run; --predictions: the node's
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the offline run")
    parser.add_argument(
        "--predictions",
        type=Path,
        help="bag recorded by `deltaworld replay`: score the node's published forecasts",
    )
    parser.add_argument(
        "--futures-topic",
        default=topics.DEFAULT_FUTURES,
        help="the node's futures topic in --predictions (its /confidence and /layout beside it)",
    )
    parser.add_argument(
        "--with-model",
        action="store_true",
        help="with --predictions and labels: run the model on the frames too (its own "
        "segmentation of the present, copy-last, feature errors and token probes)",
    )
    parser.add_argument(
        "--examples", type=at_least(0), default=3, help="example mosaics in the report (0: none)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    options = EvalOptions(
        bag=args.bag,
        image_topic=args.image_topic,
        label_topic=args.label_topic,
        depth_topic=args.depth_topic,
        model_dir=args.model_dir,
        num_hypotheses=args.num_hypotheses,
        horizon=args.horizon,
        predictions=args.predictions,
        futures_topic=args.futures_topic,
        engine=engine_options(args),
        seed=args.seed,
        examples=args.examples,
        progress=not args.no_progress,
        with_model=args.with_model,
    )
    out = args.out or args.bag.with_name(args.bag.name.rstrip("/") + "_eval")
    evaluation = evaluate(options)
    paths = write_report(out, evaluation)
    print(summary_text(evaluation.metrics))
    print(f"report: {paths['markdown']} (+ {paths['html'].name}, metrics.json, figures)")
    return 0 if evaluation.metrics.scored else 1
