"""Reading weights: the published files, the HF DINOv3 directory, and this package's format.

Nothing here unpickles arbitrary objects: `.safetensors` or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UsageError
from .config import BackboneConfig, ModelConfig
from .store import weight_path
from .world_model import MODULES, WorldModel

# Wrapper prefixes that training frameworks put in front of a module's own keys.
_WRAPPER_PREFIXES = ("", "module.", "network.", "model.", "_orig_mod.", "state_dict.")


class WeightFileError(UsageError):
    """A weight file that cannot be read or does not fit its module."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .bin / .pt / .pth file, unwrapped from {'state_dict': ...}."""
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightFileError(
            f"{path} holds objects other than tensors; refusing to unpickle it "
            f"(weights_only=True). Re-save it as a plain state dict or safetensors. ({err})"
        ) from err
    except (SafetensorError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise WeightFileError(
            f"{path} is not a readable weight file (corrupt or truncated?): {err}"
        ) from err
    if (
        isinstance(data, Mapping)
        and "state_dict" in data
        and isinstance(data["state_dict"], Mapping)
    ):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightFileError(f"{path} does not hold a state dict of tensors")
    return dict(data)


def _strip_wrapper(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove the one wrapper prefix (possibly repeated, e.g. 'module.network.') that fits best."""
    best = state
    for _ in range(3):
        candidates = [
            {k[len(p) :]: v for k, v in best.items() if k.startswith(p)}
            for p in _WRAPPER_PREFIXES[1:]
        ]
        candidates = [c for c in candidates if len(c) == len(best)]
        scored = max(candidates, key=lambda c: len(expected & c.keys()), default=None)
        if scored is None or len(expected & scored.keys()) <= len(expected & best.keys()):
            break
        best = scored
    return best


def fit_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load `state` into `module` strictly; name every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    state = _strip_wrapper(dict(state), set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or misshaped:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped", misshaped),
            )
            if keys
        ]
        raise WeightFileError(f"{what} does not fit the configured model: " + "; ".join(parts))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_module_file(
    module: nn.Module, path: str | Path, rename: Callable[[str], str] | None = None
) -> None:
    state = read_state_dict(path)
    if rename is not None:
        state = {rename(k): v for k, v in state.items()}
    fit_state_dict(module, state, str(path))


def _hub_layer_name(key: str) -> str:
    """Hub DINOv3 files name layers `layer.N.*`; transformers 5 (and we) say `model.layer.N.*`."""
    return "model." + key if key.startswith("layer.") else key


def backbone_config_from_hf(directory: str | Path) -> BackboneConfig:
    """The sizes of a Hugging Face DINOv3 directory's config.json."""
    path = Path(directory) / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightFileError(f"cannot read the DINOv3 config {path}: {err}") from err
    if hf.get("key_bias", False) or hf.get("use_gated_mlp", False):
        raise WeightFileError(
            f"{path}: only DINOv3 ViTs without key bias and gated MLP are supported"
        )
    return BackboneConfig(
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        patch_size=hf["patch_size"],
        num_register_tokens=hf["num_register_tokens"],
        rope_theta=hf["rope_theta"],
        layer_norm_eps=hf["layer_norm_eps"],
        initializer_range=hf["initializer_range"],
    )


def load_published(
    cfg: ModelConfig,
    dinov3_dir: str | Path,
    deltatok: str | Path,
    deltaworld: str | Path,
    seg_head: str | Path | None = None,
    depth_head: str | Path | None = None,
) -> WorldModel:
    """The official release: HF DINOv3 dir, DeltaTok, DeltaWorld and head files -> WorldModel."""
    hf_backbone = backbone_config_from_hf(dinov3_dir)
    backbone = replace(
        hf_backbone, image_mean=cfg.backbone.image_mean, image_std=cfg.backbone.image_std
    )
    cfg = replace(cfg, backbone=backbone)
    model = WorldModel(cfg)
    load_module_file(model.backbone, Path(dinov3_dir) / "model.safetensors", _hub_layer_name)
    load_module_file(model.tokenizer, deltatok)
    load_module_file(model.world, deltaworld)
    for module, path, role in (
        (model.seg_head, seg_head, "seg"),
        (model.depth_head, depth_head, "depth"),
    ):
        if path is not None:
            if module is None:
                raise WeightFileError(
                    f"a {role} head file was given but the config has no {role} head"
                )
            load_module_file(module, path)
    return model.eval()


def save_weights(model: WorldModel, directory: str | Path) -> list[Path]:
    """This package's format: one safetensors file per module under <dir>/weights/."""
    written = []
    for name in MODULES:
        module = getattr(model, name)
        if module is None:
            continue
        path = weight_path(directory, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
        written.append(path)
    return written


def load_weights(cfg: ModelConfig, directory: str | Path) -> WorldModel:
    """A WorldModel from this package's weight files (verify the manifest first: store.py)."""
    model = WorldModel(cfg)
    for name in MODULES:
        module = getattr(model, name)
        if module is not None:
            load_module_file(module, weight_path(directory, name))
    return model.eval()
