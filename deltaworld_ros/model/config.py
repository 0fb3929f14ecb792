"""Sizes of every network as dataclasses, and the named presets.

`vitb16` is the published model (DINOv3 ViT-B/16 + DeltaTok + DeltaWorld at 512x512);
`tiny` is the configuration of the parity fixtures; `default` is the small model this
package trains on its procedural world.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, get_args, get_origin, get_type_hints

from ..errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneConfig:
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    patch_size: int = 16
    num_register_tokens: int = 4
    rope_theta: float = 100.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02  # also the scale of DeltaWorld's noise queries
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class TokenizerConfig:
    hidden_size: int = 768
    num_heads: int = 12
    num_encoder_layers: int = 12
    num_decoder_layers: int = 12
    intermediate_size: int = 2048  # SwiGLU width = 2 * backbone MLP // 3
    layer_norm_eps: float = 1e-5
    rope_theta: float = 100.0
    layer_scale_init: float = 1e-5


@dataclass(frozen=True)
class PredictorConfig:
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    rope_rotated: int = 60  # per head; the remaining dims of the head are not rotated
    layer_norm_eps: float = 1e-5
    layer_scale_init: float = 1e-5
    use_bom: bool = True  # False: the deterministic baseline with one learned query


@dataclass(frozen=True)
class HeadConfig:
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    with_depth: bool = False
    depth_bins: int = 256
    min_depth: float = 1e-3
    max_depth: float = 80.0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class ScorerConfig:
    """The learned confidence (model/scorer.py); a model without one uses the kernel density."""

    enabled: bool = False
    hidden_size: int = 64

    # per hypothesis: 6 descriptors per step and their offsets from the mean of the K, over
    # the steps and at the last one (2 x 2 x 6), 2 of the context, then the token offset
    DESCRIPTORS = 2 * 2 * 6 + 2

    def input_size(self, token_size: int) -> int:
        return self.DESCRIPTORS + token_size


@dataclass(frozen=True)
class ModelConfig:
    name: str
    image_size: tuple[int, int]  # (H, W) the networks run at
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    frame_interval: float = 0.1  # seconds between the frames the model was trained on
    context_length: int = 4  # anchor + deltas presented to the predictor

    @property
    def grid(self) -> tuple[int, int]:
        p = self.backbone.patch_size
        return self.image_size[0] // p, self.image_size[1] // p

    @property
    def num_patches(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def token_size(self) -> int:
        return self.tokenizer.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        """Inverse of to_dict. Unknown keys, missing ones and values of the wrong type are a
        ValueError naming the field (config.backbone.hidden_size), so that a typo or an edit
        in a manifest surfaces at load instead of deep inside a network."""
        return _typed(data, cls, "config")

    def validate(self) -> None:
        """Sizes the networks can be built with; ValueError naming the field otherwise."""
        b, t, p = self.backbone, self.tokenizer, self.predictor
        sizes = {f"config.{part}.{f.name}": getattr(sub, f.name)
                 for part, sub in (("backbone", b), ("tokenizer", t), ("predictor", p),
                                   ("scorer", self.scorer))
                 for f in fields(sub) if isinstance(getattr(sub, f.name), int)
                 and not isinstance(getattr(sub, f.name), bool)}  # fmt: skip
        checks = [
            *((value >= (0 if name.endswith("register_tokens") else 1), name, value, ">= 1")
              for name, value in sizes.items()),
            (all(v >= 1 and v % b.patch_size == 0 for v in self.image_size),
             "config.image_size", self.image_size,
             f"positive multiples of backbone.patch_size ({b.patch_size})"),
            *((sub.hidden_size % sub.num_heads == 0, f"config.{part}.hidden_size",
               sub.hidden_size, f"a multiple of num_heads ({sub.num_heads})")
              for part, sub in (("backbone", b), ("tokenizer", t), ("predictor", p))),
            (t.hidden_size == b.hidden_size, "config.tokenizer.hidden_size", t.hidden_size,
             f"backbone.hidden_size ({b.hidden_size}): tokens live in the feature space"),
            (math.isfinite(self.frame_interval) and self.frame_interval > 0,
             "config.frame_interval", self.frame_interval, "a number of seconds > 0"),
            (self.context_length >= 2, "config.context_length", self.context_length,
             ">= 2 (a forecast needs one delta)"),
            (all(0 <= c <= 255 for colour in self.head.palette for c in colour),
             "config.head.palette", "...", "RGB values in 0..255"),
        ]  # fmt: skip
        for ok, name, value, expected in checks:
            if not ok:
                raise ValueError(f"{name} is {value!r}, expected {expected}")


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` read from JSON as `hint` (a config dataclass, a scalar or a tuple of them);
    ValueError naming `where` when it is not one."""
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, got {value!r:.60}")
        known = {f.name: f for f in fields(hint)}
        if unknown := sorted(set(value) - set(known)):
            raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        required = [n for n, f in known.items()
                    if f.default is MISSING and f.default_factory is MISSING]  # fmt: skip
        if missing := [n for n in required if n not in value]:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        hints = get_type_hints(hint)
        return hint(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in value.items()})
    if get_origin(hint) is tuple:
        args = get_args(hint)
        items = args[:1] * len(value) if isinstance(value, list) and args[-1] is ... else args
        if not isinstance(value, list) or len(value) != len(items):
            count = "" if args[-1] is ... else f"{len(args)} "
            raise ValueError(f"{where} must be a list of {count}items, got {value!r:.60}")
        return tuple(_typed(v, h, f"{where}[{i}]") for i, (v, h) in enumerate(zip(value, items)))
    ok = isinstance(value, hint) and not (isinstance(value, bool) and hint is not bool)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ValueError(f"{where} must be {_KINDS[hint]}, got {value!r:.60}")
    return value


CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def generic_classes(count: int) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Placeholder names and a deterministic palette for heads whose names are not shipped."""
    names = tuple(f"class_{i}" for i in range(count))
    palette = tuple(
        ((i * 67) % 256, (i * 131 + 40) % 256, (i * 197 + 90) % 256) for i in range(count)
    )
    return names, palette


def vitb16(image_size: tuple[int, int] = (512, 512), head: HeadConfig | None = None) -> ModelConfig:
    """The published model: DINOv3 ViT-B/16, DeltaTok 12+12, DeltaWorld 12 blocks."""
    head = head or HeadConfig(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)
    return ModelConfig(name="vitb16", image_size=image_size, head=head)


def tiny() -> ModelConfig:
    """The structurally complete tiny model of ../shared/fixtures (random weights)."""
    names, palette = generic_classes(5)
    return ModelConfig(
        name="tiny",
        image_size=(64, 64),
        backbone=BackboneConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),
        tokenizer=TokenizerConfig(
            hidden_size=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
            intermediate_size=2 * 256 // 3,
        ),
        predictor=PredictorConfig(hidden_size=128, num_layers=2, num_heads=2),
        head=HeadConfig(names, palette, with_depth=True),
        context_length=3,
    )  # fmt: skip


def small(head: HeadConfig | None = None, image_size: tuple[int, int] = (96, 96)) -> ModelConfig:
    """The size of the embedded default model, trainable on a 2-core CPU in under an hour.

    Patch 8 at 96x96 gives a 12x12 feature grid (finer maps than 16 px patches would); the
    tokenizer's layer scales start at 1 instead of 1e-5: it trains from scratch, briefly, and
    its one token must reach the decoder's output from the first step.
    """
    head = head or HeadConfig(*generic_classes(10))
    return ModelConfig(
        name="small",
        image_size=image_size,
        backbone=BackboneConfig(
            hidden_size=96, num_layers=4, num_heads=4, intermediate_size=384, patch_size=8,
        ),
        tokenizer=TokenizerConfig(
            hidden_size=96, num_heads=4, num_encoder_layers=3, num_decoder_layers=3,
            intermediate_size=2 * 384 // 3, layer_scale_init=1.0,
        ),
        predictor=PredictorConfig(hidden_size=128, num_layers=4, num_heads=2),
        head=head,
        frame_interval=0.2,
    )  # fmt: skip


PRESETS = {"vitb16": vitb16, "tiny": tiny, "small": small}


def preset(name: str, image_size: tuple[int, int] | None = None) -> ModelConfig:
    """The named preset, at `image_size` (H, W) instead of its own if given; UsageError for
    an unknown name or a size that is no positive multiple of the patch."""
    if name not in PRESETS:
        raise UsageError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    if image_size is None:
        return cfg
    p = cfg.backbone.patch_size
    if min(image_size) < p or image_size[0] % p or image_size[1] % p:
        raise UsageError(
            f"image size {image_size[0]}x{image_size[1]} must be a positive multiple of the "
            f"{name} preset's patch size {p}, e.g. {8 * p}x{8 * p}"
        )
    return replace(cfg, image_size=tuple(image_size))
