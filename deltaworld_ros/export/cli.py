"""`deltaworld export`: ONNX graphs + manifest for a preset (random weights), an existing model
dir, or the official release files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from ..arguments import size
from ..errors import UsageError
from ..model.config import PRESETS, preset
from ..model.loading import load_published, save_weights
from ..model.store import load_model, read_manifest, sha256
from ..model.world_model import WorldModel
from .exporter import export_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="model directory to write (default: --model-dir)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS),
        help="random weights of this preset; with --dinov3 the release's config (default vitb16)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--image-size", type=size, help="HxW the networks run at (multiple of the patch)"
    )
    parser.add_argument("--model-dir", type=Path, help="a model dir with weights/ + manifest")
    parser.add_argument("--dinov3", type=Path, help="Hugging Face DINOv3 directory")
    parser.add_argument("--deltatok", type=Path, help="published DeltaTok weight file")
    parser.add_argument("--deltaworld", type=Path, help="published DeltaWorld weight file")
    parser.add_argument("--seg-head", type=Path, help="published segmentation head file")
    parser.add_argument("--depth-head", type=Path, help="published depth head file")
    parser.add_argument("--fp16", action="store_true", help="also write onnx/fp16/ (optional)")
    parser.add_argument("--int8", action="store_true",
                        help="also write onnx/int8/decoder.onnx, kept if its forecasts agree "
                             "with float32 on >= 99%% of class pixels (optional, CPU)")  # fmt: skip
    parser.add_argument("--skip-check", action="store_true", help="skip the torch/ONNX parity")


def build(args: argparse.Namespace) -> tuple[WorldModel, Path, dict[str, Any]]:
    """The model to export, the directory to write, and where its weights came from."""
    sources = [args.model_dir is not None, args.dinov3 is not None,
               args.preset is not None and args.dinov3 is None]  # fmt: skip
    if sum(sources) != 1:
        raise UsageError("give exactly one source: --preset NAME, --model-dir DIR or --dinov3 DIR")
    if args.preset and not args.dinov3:
        if args.out is None:
            raise UsageError("--preset needs --out DIR")
        torch.manual_seed(args.seed)
        model = WorldModel(preset(args.preset, args.image_size)).eval()
        return model, args.out, {"source": f"random weights seed {args.seed}"}
    if args.model_dir:
        provenance = read_manifest(args.model_dir).provenance
        provenance.pop("export", None)
        model = load_model(args.model_dir)
        if args.image_size:
            raise UsageError("--image-size applies to --preset and the release files only")
        return model, args.out or args.model_dir, provenance
    if args.deltatok is None or args.deltaworld is None or args.out is None:
        raise UsageError("--dinov3 needs --deltatok FILE, --deltaworld FILE and --out DIR")
    cfg = preset(args.preset or "vitb16", args.image_size)
    files = {
        "dinov3": args.dinov3 / "model.safetensors",
        "deltatok": args.deltatok,
        "deltaworld": args.deltaworld,
        "seg_head": args.seg_head,
        "depth_head": args.depth_head,
    }
    model = load_published(cfg, args.dinov3, args.deltatok, args.deltaworld,
                           args.seg_head, args.depth_head)  # fmt: skip
    source = {k: {"path": str(p), "sha256": sha256(p)} for k, p in files.items() if p is not None}
    return model, args.out, {"source": source}


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("deltaworld_ros").setLevel(logging.INFO)
    model, out, provenance = build(args)
    out.mkdir(parents=True, exist_ok=True)
    if args.model_dir is None or out.resolve() != args.model_dir.resolve():
        save_weights(model, out)
    manifest, parity = export_model(model, out, provenance, fp16=args.fp16,
                                    check=not args.skip_check)  # fmt: skip
    for p in parity:
        context = f" context {p.context}" if p.context else ""
        print(f"{p.graph:9s} {p.precision} batch {p.batch}{context}: max|onnx - torch| "
              f"{p.max_error:.3g} (tolerance {p.bound:.3g})")  # fmt: skip
    if args.int8:
        from .int8 import add_int8

        agreement = add_int8(out)
        print(f"int8 decoder: forecast class pixels {agreement.class_pixels:.2%} equal to "
              f"float32's over {agreement.forecasts} forecasts, relative feature error "
              f"{agreement.feature_error:.3g}")  # fmt: skip
        manifest = read_manifest(out, verify=False)
    graphs = sorted(f for f in manifest.files if f.startswith("onnx/"))
    print(f"wrote {len(graphs)} graphs and {out / 'manifest.json'}")
    return 0
