"""The torch backend of the Engine: the model's own modules, numpy in and out.

Reduced precision runs under torch.autocast (matmuls in bf16/fp16, norms and the time RoPE
in fp32), so the weights stay fp32 and the patch RoPE tables keep their precision.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..model.store import load_model
from ..model.world_model import WorldModel
from .engine import GRAPHS, EngineOptions

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchEngine:
    """Engine on a WorldModel (given, or loaded from a verified model directory)."""

    backend = "torch"

    def __init__(
        self,
        model: str | Path | WorldModel,
        options: EngineOptions | None = None,  # None: the defaults, on the torch backend
    ) -> None:
        options = options or EngineOptions(backend="torch")
        options.validate()
        if options.backend != self.backend:
            raise UsageError(f"TorchEngine runs the torch backend, not {options.backend!r}")
        device = torch.device(options.device or "cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                f"device {device} requested but torch {torch.__version__} sees no CUDA device; "
                "use device cpu or install the CUDA build of torch"
            )
        if device.type == "cuda" and options.device_index >= torch.cuda.device_count():
            raise UsageError(
                f"device {device} requested but torch sees {torch.cuda.device_count()} GPU(s)"
            )
        if options.threads:
            torch.set_num_threads(options.threads)
        dtype = DTYPES[options.precision]
        if not isinstance(model, WorldModel):
            model = load_model(model)
        self.model = model.eval().to(device)
        self.config = model.cfg
        self.device = device
        self.dtype = dtype
        self.precision = options.precision
        optional = {"depth": model.depth_head, "scorer": model.scorer}
        graphs = [g for g in GRAPHS if optional.get(g, model) is not None]
        self.providers = {g: f"torch:{device}" for g in graphs}
        q_embed = model.world.q_embed
        self.learned_query = None if q_embed is None else q_embed.weight[0].detach().cpu().numpy()
        self.placement = f"torch {torch.__version__} on {device}, {self.precision}"
        log.info(self.placement)

    def _run(self, fn, *arrays: np.ndarray) -> np.ndarray:
        tensors = [torch.as_tensor(np.asarray(a, np.float32), device=self.device) for a in arrays]
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32),
        ):
            out = fn(*tensors)
        return out.float().cpu().numpy()

    def backbone(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(self.model.backbone, pixels)

    def encoder(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._run(self.model.tokenizer.encode, x, y)

    def predictor(
        self, queries: np.ndarray, context: np.ndarray, pos_q: np.ndarray, pos_k: np.ndarray
    ) -> np.ndarray:
        return self._run(self.model.world.predictor, queries, context, pos_q, pos_k)

    def decoder(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self._run(self.model.tokenizer.decode, z, x)

    def head(self, y: np.ndarray) -> np.ndarray:
        seg = self.model.seg_head
        if seg is None:
            raise RuntimeError(f"model {self.config.name!r} has no segmentation head")
        return self._run(lambda f: seg(f, self.config.grid), y)

    def depth(self, y: np.ndarray) -> np.ndarray:
        head = self.model.depth_head
        if head is None:
            raise RuntimeError(f"model {self.config.name!r} has no depth head")
        return self._run(lambda f: head(f, self.config.grid), y)

    def scorer(
        self, tokens: np.ndarray, context: np.ndarray, features: np.ndarray, present: np.ndarray
    ) -> np.ndarray:
        if self.model.scorer is None:
            raise RuntimeError(f"model {self.config.name!r} has no scorer")
        return self._run(self.model.scorer, tokens, context, features, present)
