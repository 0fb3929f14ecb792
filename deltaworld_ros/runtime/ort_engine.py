"""The ONNX Runtime backend of the Engine: one session per exported graph of a model dir.

ONNX Runtime drops an execution provider that fails to initialise (missing CUDA libraries, no
GPU) and runs on the CPU, loudly. This engine probes the providers quietly first
(providers.py), logs one line with the provider chosen and why the others were skipped, reads
back what every session really got, and with `strict=True` refuses to run anywhere but where it
was asked to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from safetensors import safe_open

from ..errors import UsageError
from ..model.config import ModelConfig
from ..model.store import ModelDirError, read_manifest, weight_path
from .engine import (
    GRAPHS,
    INPUTS,
    OPTIONAL_GRAPHS,
    OUTPUTS,
    EngineOptions,
    graph_file,
    graph_shapes,
)
from .providers import GPU_PROVIDERS, provider_problem

log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")


class ProviderError(UsageError):
    """A requested execution provider that is not available or did not initialise."""


def provider_name(name: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider'; full ONNX Runtime names pass through."""
    if name.endswith("ExecutionProvider"):
        return name
    if name.lower() not in PROVIDERS:
        raise UsageError(
            f"unknown execution provider {name!r}; use one of {sorted(PROVIDERS)} "
            "or a full ONNX Runtime name such as 'CUDAExecutionProvider'"
        )
    return PROVIDERS[name.lower()]


class OrtEngine:
    """Engine on the ONNX graphs of a verified model directory."""

    backend = "onnxruntime"

    def __init__(self, model_dir: str | Path, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions()
        options.validate()
        if options.backend != self.backend:
            raise UsageError(f"OrtEngine runs the onnxruntime backend, not {options.backend!r}")
        manifest = read_manifest(model_dir, verify=True)  # every file matches its sha256
        self.config = manifest.config
        self.precision = precision = options.precision
        self.model_dir = manifest.directory
        strict = options.strict_providers
        requested = requested_providers(options)
        self.skipped = {
            p: why for p in requested if (why := provider_problem(p, options.device_index))
        }
        if self.skipped and strict:
            raise ProviderError(
                "execution provider(s) requested with strict=True cannot run here: "
                + "; ".join(f"{p}: {why}" for p, why in self.skipped.items())
                + f" (onnxruntime {ort.__version__} lists {ort.get_available_providers()})"
            )
        wanted = [p for p in requested if p not in self.skipped] or ["CPUExecutionProvider"]
        gpu = f" (GPU {options.device_index})" if wanted[0] in GPU_PROVIDERS else ""
        self.placement = f"onnxruntime {ort.__version__} on {wanted[0]}{gpu}" + "".join(
            f"; skipped {p}: {why}" for p, why in self.skipped.items()
        )
        log.info(self.placement)
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.providers: dict[str, str] = {}
        self.files: dict[str, str] = {}  # graph -> its file in the model dir
        for graph in GRAPHS:
            if graph == "scorer" and not self.config.scorer.enabled:
                continue  # a model without a learned confidence
            relative = graph_file(graph, precision)
            if not manifest.has(relative):
                headless = graph == "head" and not self.config.head.num_classes
                if headless or graph in OPTIONAL_GRAPHS:
                    continue
                hint = {"fp16": " --fp16", "int8": " --int8"}.get(precision, "")
                raise ModelDirError(
                    f"{self.model_dir} has no {relative} in its manifest; export the graphs "
                    f"with `deltaworld export --model-dir {self.model_dir}{hint}`"
                )
            path = manifest.path(relative)
            try:
                session = ort.InferenceSession(
                    str(path),
                    session_options(options.threads),
                    wanted,
                    [provider_options(p, options, self.config, graph) for p in wanted],
                )
            except Exception as err:  # onnxruntime's errors derive from Exception only
                raise ModelDirError(
                    f"{path} is not a graph onnxruntime can load ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}); re-export the model"
                ) from err
            check_interface(session, graph, self.config, path)
            got = session.get_providers()
            failed = [p for p in wanted if p not in got]
            if failed and strict:
                raise ProviderError(
                    f"{graph}: execution provider(s) {failed} did not initialise (ONNX Runtime "
                    f"fell back to {got}); see its log above for the cause"
                )
            if failed:  # do not retry a provider that failed on this machine
                log.warning("%s: providers %s failed to initialise; running on %s", graph,
                            failed, got[0])  # fmt: skip
                wanted = [p for p in wanted if p in got]
            self.sessions[graph] = session
            self.providers[graph] = got[0]
            self.files[graph] = relative
            log.info("%s: %s on %s (%s)", graph, relative, got[0], precision)
        self.learned_query = self._learned_query()

    def _learned_query(self) -> np.ndarray | None:
        """The deterministic baseline's query q_embed (D,), read from weights/world."""
        if self.config.predictor.use_bom:
            return None
        path = weight_path(self.model_dir, "world")
        try:
            with safe_open(str(path), framework="np") as f:
                return np.asarray(f.get_tensor("q_embed.weight")[0], np.float32)
        except (OSError, KeyError, ValueError) as err:
            raise ModelDirError(
                f"the deterministic predictor needs q_embed.weight from {path}: {err}"
            ) from err

    def _run(self, graph: str, *arrays: np.ndarray) -> np.ndarray:
        session = self.sessions.get(graph)
        if session is None:
            raise RuntimeError(f"model {self.config.name!r} has no {graph} graph")
        feeds = {
            name: np.ascontiguousarray(a, np.float32)
            for name, a in zip(INPUTS[graph], arrays, strict=True)
        }
        return session.run(None, feeds)[0]

    def backbone(self, pixels: np.ndarray) -> np.ndarray:
        return self._run("backbone", pixels)

    def encoder(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._run("encoder", x, y)

    def predictor(
        self, queries: np.ndarray, context: np.ndarray, pos_q: np.ndarray, pos_k: np.ndarray
    ) -> np.ndarray:
        return self._run("predictor", queries, context, pos_q, pos_k)

    def decoder(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self._run("decoder", z, x)

    def head(self, y: np.ndarray) -> np.ndarray:
        return self._run("head", y)

    def depth(self, y: np.ndarray) -> np.ndarray:
        return self._run("depth", y)

    def scorer(
        self, tokens: np.ndarray, context: np.ndarray, features: np.ndarray, present: np.ndarray
    ) -> np.ndarray:
        return self._run("scorer", tokens, context, features, present)


def requested_providers(options: EngineOptions) -> list[str]:
    """The providers to try, in order, by their ONNX Runtime names: those listed, else
    tensorrt, cuda, cpu (cpu alone on device cpu). UsageError for an unknown name or a GPU
    provider on device cpu."""
    default = ("cpu",) if options.device == "cpu" else DEFAULT_PROVIDERS
    requested = [provider_name(p) for p in options.providers or default]
    if options.device == "cpu" and (gpu := [p for p in requested if p in GPU_PROVIDERS]):
        raise UsageError(
            f"device cpu but providers {gpu} run on a GPU: drop them, or set the device to "
            "cuda or cuda:<index>"
        )
    return requested


def provider_options(
    provider: str, options: EngineOptions, config: ModelConfig, graph: str
) -> dict[str, Any]:
    """One provider's options for a graph's session: the GPU of the device (cuda:N), and
    TensorRT's precision, engine cache and shape profiles up to options.max_batch."""
    if provider == "CUDAExecutionProvider":
        return {"device_id": options.device_index}
    if provider == "TensorrtExecutionProvider":
        cache = Path.home() / ".cache" / "deltaworld" / "tensorrt"
        cache.mkdir(parents=True, exist_ok=True)
        return {
            "device_id": options.device_index,
            "trt_fp16_enable": options.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            **_trt_profiles(config, graph, options.max_batch),
        }
    return {}


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = threads
    # The sessions run one after another: a pool that spins after its graph would steal the
    # cores the next graph needs (and a shared robot computer's).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def check_interface(
    session: ort.InferenceSession, graph: str, config: ModelConfig, path: Path
) -> None:
    """The graph's inputs and output must be those the engine feeds and reads, of the sizes
    the manifest's config implies; ModelDirError naming the file and the tensor otherwise."""
    expected = graph_shapes(config)[graph]
    got = {t.name: t.shape for t in (*session.get_inputs(), *session.get_outputs())}
    names = {t.name for t in session.get_inputs()}
    if names != set(INPUTS[graph]) or OUTPUTS[graph] not in got:
        raise ModelDirError(
            f"{path}: inputs {sorted(names)} and outputs {[t.name for t in session.get_outputs()]}"
            f", expected inputs {sorted(INPUTS[graph])} and output {OUTPUTS[graph]!r}; "
            "re-export the model"
        )
    for name, dims in expected.items():
        shape = got[name]
        if len(shape) != len(dims) or any(
            isinstance(g, int) and isinstance(e, int) and g != e
            for g, e in zip(shape, dims, strict=True)
        ):
            raise ModelDirError(
                f"{path}: {name} has shape {list(shape)} but the config of manifest.json "
                f"implies {list(dims)}: the graph and the config disagree; re-export the model"
            )


def _trt_profiles(cfg: ModelConfig, graph: str, max_batch: int) -> dict[str, str]:
    """TensorRT shape profiles (min/opt/max) so a new batch or context size reuses the engine
    instead of rebuilding it; batch up to max_batch, context up to 4 x the model's, the
    scorer's hypotheses and steps up to the node's limits (64, 32)."""
    ctx = cfg.context_length
    shapes = {
        name: dims[1:] for name, dims in graph_shapes(cfg)[graph].items() if name in INPUTS[graph]
    }

    def profile(batch: int, context: int, k: int, steps: int) -> str:
        sizes = {"L": context, "K": k, "T": steps}
        return ",".join(
            f"{name}:" + "x".join(str(sizes.get(s, s)) for s in (batch, *dims))
            for name, dims in shapes.items()
        )

    return {
        "trt_profile_min_shapes": profile(1, 1, 1, 1),
        "trt_profile_opt_shapes": profile(max(1, max_batch // 4), ctx, 8, 3),
        "trt_profile_max_shapes": profile(max_batch, 4 * ctx, 64, 32),
    }
