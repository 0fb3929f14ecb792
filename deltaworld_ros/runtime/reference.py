"""The authors' implementation (amazon-far/deltatok) doing the package's streaming work.

Nothing of it is vendored: `checkout` is the path of a clone of the public repository, whose
models/ are imported as they are and given this package's weights (the keys match). To run
offline it needs torch and transformers >= 5 (its DINOv3 classes), not the Hub: the DINOv3
"template" config that the reference reads with AutoConfig.from_pretrained is written to a
temporary folder from the model's own config, and its training package (lightning, wandb,
datasets), which models/deltatok.py imports for checkpoint loading only, is replaced by an
empty placeholder.

Per kept frame it does what the Forecaster does: the backbone on the new frame, the delta to it
and the re-encoded anchor, K x T predictor + decoder passes (the K hypotheses in one batch) and
the segmentation head on the forecasts and the frame, upsampled and argmaxed, each network call
the authors' eager module.
"""

from __future__ import annotations

import sys
import tempfile
import types
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..model.config import ModelConfig
from ..model.store import read_manifest, weight_path

NEEDS = (
    "a clone of https://github.com/amazon-far/deltatok (its models/ folder), torch and "
    "transformers >= 5 (pip install -r requirements-reference.txt); no network"
)


class ReferenceError(UsageError):
    """The checkout or its dependencies cannot be used."""


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@contextmanager
def _importable(checkout: Path):
    """The checkout's top-level packages on sys.path, its training package a placeholder."""
    placeholder = types.ModuleType("training.base")
    placeholder.load_sd = None  # only for checkpoints; weights are loaded here
    saved = {name: sys.modules.get(name) for name in ("training", "training.base")}
    sys.modules["training"] = types.ModuleType("training")
    sys.modules["training.base"] = placeholder
    sys.path.insert(0, str(checkout))
    try:
        yield
    finally:
        sys.path.remove(str(checkout))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Backbone(nn.Module):
    """Transformers' DINOv3ViTModel with the attributes the reference reads off its wrapper,
    and the ImageNet normalisation of its image processor."""

    def __init__(self, hf_config, cfg: ModelConfig) -> None:
        super().__init__()
        from transformers import DINOv3ViTModel

        self.backbone = DINOv3ViTModel(hf_config)
        self.patch_size = cfg.backbone.patch_size
        self.hidden_size = cfg.backbone.hidden_size
        self.num_heads = cfg.backbone.num_heads
        self.initializer_range = cfg.backbone.initializer_range
        self.num_prefix_tokens = 1 + cfg.backbone.num_register_tokens
        self.register_buffer("mean", torch.tensor(cfg.backbone.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.backbone.image_std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) 0..255 -> patch features (B, N, C)."""
        x = (pixels / 255 - self.mean) / self.std
        return self.backbone(x).last_hidden_state[:, self.num_prefix_tokens :]


def _hf_config(cfg: ModelConfig):
    from transformers import DINOv3ViTConfig

    bb, tok = cfg.backbone, cfg.tokenizer
    if 2 * bb.intermediate_size // 3 != tok.intermediate_size:  # the reference's SwiGLU width
        raise ReferenceError(
            f"the reference derives the tokenizer's MLP width from the backbone's: "
            f"{bb.intermediate_size} gives {2 * bb.intermediate_size // 3}, "
            f"the model has {tok.intermediate_size}"
        )
    return DINOv3ViTConfig(
        hidden_size=bb.hidden_size,
        num_hidden_layers=bb.num_layers,
        num_attention_heads=bb.num_heads,
        intermediate_size=bb.intermediate_size,
        patch_size=bb.patch_size,
        num_register_tokens=bb.num_register_tokens,
        rope_theta=bb.rope_theta,
        layer_norm_eps=bb.layer_norm_eps,
        initializer_range=bb.initializer_range,
        image_size=max(cfg.image_size),
    )


class ReferenceModel:
    """The authors' DeltaTok, DeltaWorld predictor and SegHead with a model dir's weights."""

    def __init__(
        self, checkout: str | Path, model_dir: str | Path, k: int, device: str = "cpu"
    ) -> None:
        checkout = Path(checkout)
        if not (checkout / "models" / "deltatok.py").is_file():
            raise ReferenceError(
                f"{checkout} is not a deltatok checkout (no models/deltatok.py); it needs {NEEDS}"
            )
        manifest = read_manifest(model_dir)
        cfg = self.config = manifest.config
        if cfg.tokenizer.num_encoder_layers != cfg.tokenizer.num_decoder_layers:
            raise ReferenceError("the reference DeltaTok has as many encoder as decoder layers")
        try:
            import transformers  # noqa: F401
        except ImportError as err:
            raise ReferenceError(f"the reference needs {NEEDS}: {err}") from None
        hf_config = _hf_config(cfg)
        with tempfile.TemporaryDirectory() as template, _importable(checkout):
            hf_config.save_pretrained(template)
            import models.deltatok as deltatok_module
            import models.deltaworld as deltaworld_module
            import models.predictor as predictor_module
            from models.task_heads import SegHead

            deltatok_module.DINOV3_TEMPLATE = predictor_module.DINOV3_TEMPLATE = template
            backbone = _Backbone(hf_config, cfg)
            tokenizer = deltatok_module.DeltaTok(
                backbone,
                num_hidden_layers=cfg.tokenizer.num_encoder_layers,
                layer_scale_init=cfg.tokenizer.layer_scale_init,
            )
            pr = cfg.predictor
            world = deltaworld_module.DeltaWorld(
                tokenizer,
                rope_axis_sizes=(pr.rope_rotated,),
                predictor_hidden_size=pr.hidden_size,
                predictor_num_hidden_layers=pr.num_layers,
                predictor_num_heads=pr.num_heads,
                use_bom=pr.use_bom,
                num_samples_eval=k,
                layer_scale_init=pr.layer_scale_init,
                rope_unrotated_size=pr.hidden_size // pr.num_heads - pr.rope_rotated,
                mlp_ratio=pr.mlp_ratio,
            )
            head = SegHead(cfg.backbone.hidden_size, cfg.head.num_classes)
        directory = manifest.directory
        backbone.backbone.load_state_dict(_load(weight_path(directory, "backbone")))
        tokenizer.load_state_dict(_load(weight_path(directory, "tokenizer")), strict=False)
        world.load_state_dict(_load(weight_path(directory, "world")), strict=False)
        head.load_state_dict(_load(weight_path(directory, "seg_head")))
        self._check_loaded(tokenizer, world, directory)
        self.device = torch.device(device)
        self.backbone, self.tokenizer, self.world, self.head = (
            m.eval().to(self.device) for m in (backbone, tokenizer, world, head)
        )
        h, w = cfg.image_size
        with torch.inference_mode():
            black = torch.zeros(1, 3, h, w, device=self.device)
            self.rope = tokenizer.rope_embeddings(black)
            self.black = backbone(black)

    @staticmethod
    def _check_loaded(tokenizer: nn.Module, world: nn.Module, directory: Path) -> None:
        """Every tensor of the reference's tokenizer (but its backbone) and predictor came
        from the weight files."""
        for module, name in ((tokenizer, "tokenizer"), (world, "world")):
            ours = set(_load(weight_path(directory, name)))
            theirs = {
                k for k in module.state_dict() if not k.startswith(("backbone.", "tokenizer."))
            }
            if theirs - ours:
                raise ReferenceError(f"{name}: the reference has tensors the weights lack: "
                                     f"{sorted(theirs - ours)[:5]}")  # fmt: skip


class ReferenceForecaster:
    """One camera's window and forecasts, on the reference modules (see the module docstring)."""

    def __init__(self, model: ReferenceModel, k: int, horizon: int, frame_interval: float,
                 context_length: int, output_size: tuple[int, int]) -> None:  # fmt: skip
        self.model, self.k, self.horizon = model, k, horizon
        self.frame_interval, self.context_length = frame_interval, context_length
        self.output_size = output_size
        self.stamps: deque = deque()
        self.features: deque = deque()
        self.deltas: deque = deque()

    @torch.inference_mode()
    def process(self, rgb: np.ndarray, stamp: float, queries: np.ndarray) -> tuple | None:
        """Frame (H, W, 3) uint8 at the model's size, its stamp, queries (T, K, D) -> class
        maps (K, T, h, w), predicted features (K, T, N, C); None while warming up."""
        m = self.model
        device = m.device
        pixels = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32))[None].to(device)
        y = m.backbone(pixels)
        if self.features:
            self.deltas.append(m.tokenizer.encode(self.features[-1], y, m.rope))
        self.stamps.append(stamp)
        self.features.append(y)
        if len(self.features) > self.context_length:
            self.stamps.popleft()
            self.features.popleft()
            self.deltas.popleft()
        anchor = m.tokenizer.encode(m.black, self.features[0], m.rope)
        if len(self.features) < 2:
            return None
        k = self.k
        origin = self.stamps[0]
        context = torch.cat([anchor, *self.deltas], 1).expand(k, -1, -1)
        pos_k = torch.tensor([s - origin for s in self.stamps], dtype=torch.float32, device=device)
        pos_k = pos_k.expand(k, -1)
        x = y.expand(k, -1, -1)
        preds = []
        for step in range(self.horizon):
            when = stamp + (step + 1) * self.frame_interval - origin
            pos_q = torch.full((k, 1), when, dtype=torch.float32, device=device)
            q = torch.from_numpy(queries[step])[:, None].to(device)
            z = m.world.predictor(q, context, None, (pos_q,), (pos_k,))
            x = m.tokenizer.decode(z, x, m.rope)
            context = torch.cat([context, z], 1)
            pos_k = torch.cat([pos_k, pos_q], 1)
            preds.append(x)
        feats = torch.stack(preds, 1)  # (K, T, N, C)
        gh, gw = m.config.grid
        grid = torch.cat([feats.flatten(0, 1), y]).unflatten(1, (gh, gw)).permute(0, 3, 1, 2)
        logits = F.interpolate(m.head(grid), self.output_size, mode="bilinear",
                               align_corners=False)  # fmt: skip
        classes = logits.argmax(1).to(torch.uint8)
        classes = classes[:-1].unflatten(0, (k, self.horizon))
        return classes.cpu().numpy(), feats.float().cpu().numpy()
