"""The node's parameters: declared with descriptors, read once, validated at start.

A bad value is a ParameterError that names the parameter, the value and the fix; the node
logs it and exits non-zero. Every parameter is read-only: a change needs a restart.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter

from ..model.store import default_model_dir
from ..runtime.forecaster import ForecasterConfig

TRANSPORTS = ("raw", "compressed")
CROPS = ("resize", "square")
BACKENDS = ("onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16", "bf16")
NAME_TOKEN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
TOPIC_NAME = re.compile(r"^~?/?[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


class ParameterError(ValueError):
    """A parameter value the node cannot run with."""


@dataclass(frozen=True)
class Spec:
    default: Any
    description: str
    low: float | None = None  # inclusive range of a number
    high: float | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self, name: str) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(name=name, description=self.description, read_only=True)
        if self.choices:
            descriptor.additional_constraints = f"one of: {', '.join(self.choices)}"
        if self.low is not None and isinstance(self.default, int):
            descriptor.integer_range = [
                IntegerRange(from_value=int(self.low), to_value=int(self.high))
            ]
        elif self.low is not None:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(self.low), to_value=float(self.high))
            ]
        return descriptor

    def expected(self) -> str:
        if self.choices:
            return f"one of {', '.join(map(repr, self.choices))}"
        if isinstance(self.default, int) and self.low is not None:
            return f"an integer in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"a number in [{self.low:g}, {self.high:g}]"
        if self.default is Parameter.Type.STRING_ARRAY:
            return "a list of strings"
        kind = {bool: "true or false", str: "a string", int: "an integer", float: "a number"}
        return kind.get(type(self.default), f"a value like {self.default!r}")


SPECS: dict[str, Spec] = {
    "model_dir": Spec("", "model directory with manifest.json; '' = the embedded default model"),
    "backend": Spec("onnxruntime", "inference backend", choices=BACKENDS),
    "providers": Spec(
        Parameter.Type.STRING_ARRAY,
        "onnxruntime execution providers in order of preference, e.g. "
        "[CUDAExecutionProvider, CPUExecutionProvider]; unset = the engine's choice",
    ),
    "strict_providers": Spec(
        False,
        "fail at start if a listed provider is missing or fails to initialise, "
        "instead of falling back to the next",
    ),
    "precision": Spec(
        "fp32", "numeric precision of the graphs (bf16: torch only)", choices=PRECISIONS
    ),
    "device": Spec("cpu", "torch backend's device: cpu, cuda or cuda:<index>"),
    "threads": Spec(0, "CPU threads of the engine; 0 = its default (all cores)", 0, 256),
    "num_hypotheses": Spec(8, "K: forecast hypotheses per frame (futures rows)", 1, 64),
    "horizon": Spec(3, "T: forecast steps of step_seconds each (futures columns)", 1, 32),
    "frame_interval": Spec(
        0.0, "s of header time between kept frames, = one forecast step; 0 = the model's", 0, 60
    ),
    "context_length": Spec(0, "frames in the predictor's window; 0 = the model's", 0, 64),
    "output_size": Spec(
        [0, 0], "[h, w] of one forecast tile (per crop); [0, 0] = 4x the model's patch grid"
    ),
    "crop": Spec(
        "resize", "'resize' the whole frame, or 'square' crops of wide frames", choices=CROPS
    ),
    "cameras": Spec(
        ["camera"],
        "camera names; one camera publishes under output_namespace, "
        "several under output_namespace/<camera>",
    ),  # fmt: skip
    "output_namespace": Spec("deltaworld", "namespace of the outputs (relative to the node's)"),
    "visualization": Spec(True, "publish the rgb8 visualization mosaic"),
    "seed": Spec(0, "seed of the hypotheses' noise", 0, 2**31 - 1),
    "diagnostics_period": Spec(1.0, "s between /diagnostics messages", 0.1, 60.0),
}
CAMERA_SPECS: dict[str, Spec] = {
    "topic": Spec(
        "",
        "input topic; '' = image (one camera) or <camera>/image, + /compressed for compressed",
    ),
    "transport": Spec("raw", "sensor_msgs/Image (raw) or CompressedImage", choices=TRANSPORTS),
}


@dataclass(frozen=True)
class CameraSettings:
    name: str
    topic: str
    transport: str  # "raw" or "compressed"
    namespace: str  # where this camera's outputs go


@dataclass(frozen=True)
class NodeSettings:
    model_dir: Path
    backend: str
    providers: tuple[str, ...] | None
    strict_providers: bool
    precision: str
    device: str
    threads: int
    forecaster: ForecasterConfig
    cameras: tuple[CameraSettings, ...]
    visualization: bool
    diagnostics_period: float


def declare_and_read(node: Node, sources: str = "") -> NodeSettings:
    """Declare every parameter (cameras.<name>.* once the names are known) and validate.
    `sources` names where values came from (params files), for the error messages."""
    values = {name: _declare(node, name, spec, sources) for name, spec in SPECS.items()}
    names = values["cameras"]
    _check(bool(names), "cameras", names, "list at least one camera name", sources)
    _check(len(set(names)) == len(names), "cameras", names, "camera names must be unique", sources)
    for name in names:
        _check(
            bool(NAME_TOKEN.match(name)), "cameras", names,
            f"camera name {name!r} must be a ROS name token: a letter, then letters, digits, _",
            sources,
        )  # fmt: skip
    namespace = values["output_namespace"].strip("/")
    _check(
        bool(TOPIC_NAME.match(namespace)), "output_namespace", values["output_namespace"],
        "a ROS name such as deltaworld", sources,
    )  # fmt: skip
    cameras = []
    for name in names:
        camera = {
            key: _declare(node, f"cameras.{name}.{key}", spec, sources)
            for key, spec in CAMERA_SPECS.items()
        }
        topic = camera["topic"] or ("image" if len(names) == 1 else f"{name}/image")
        if not camera["topic"] and camera["transport"] == "compressed":
            topic += "/compressed"
        _check(
            bool(TOPIC_NAME.match(topic)), f"cameras.{name}.topic", topic,
            "a ROS topic name such as front/image_raw", sources,
        )  # fmt: skip
        outputs = namespace if len(names) == 1 else f"{namespace}/{name}"
        cameras.append(CameraSettings(name, topic, camera["transport"], outputs))
    output_size = values["output_size"]
    _check(
        len(output_size) == 2 and (all(v == 0 for v in output_size)
                                   or all(1 <= v <= 4096 for v in output_size)),
        "output_size", output_size, "[h, w] with both in 1..4096, or [0, 0] for the default",
        sources,
    )  # fmt: skip
    _check(
        not values["strict_providers"] or bool(values["providers"]),
        "strict_providers", True, "list the providers it must hold to (providers:=[...])", sources,
    )  # fmt: skip
    _check(
        values["precision"] != "bf16" or values["backend"] == "torch",
        "precision", "bf16", "bf16 runs on the torch backend only; use fp16 with onnxruntime",
        sources,
    )  # fmt: skip
    _check(
        values["device"] == "cpu" or re.fullmatch(r"cuda(:\d+)?", values["device"]) is not None,
        "device", values["device"], "cpu, cuda or cuda:<index>", sources,
    )  # fmt: skip
    return NodeSettings(
        model_dir=_model_dir(values["model_dir"], sources),
        backend=values["backend"],
        providers=tuple(values["providers"]) if values["providers"] else None,
        strict_providers=values["strict_providers"],
        precision=values["precision"],
        device=values["device"],
        threads=values["threads"],
        forecaster=ForecasterConfig(
            num_hypotheses=values["num_hypotheses"],
            horizon=values["horizon"],
            context_length=values["context_length"] or None,
            frame_interval=values["frame_interval"] or None,
            output_size=tuple(output_size) if output_size[0] else None,
            crop=values["crop"],
            seed=values["seed"],
        ),
        cameras=tuple(cameras),
        visualization=values["visualization"],
        diagnostics_period=values["diagnostics_period"],
    )


def undeclared_overrides(node: Node) -> list[str]:
    """Names set in the params files or on the command line that the node does not know
    (typos, or values meant for another node)."""
    return sorted(name for name in _overrides(node) if not node.has_parameter(name))


def _declare(node: Node, name: str, spec: Spec, sources: str) -> Any:
    try:
        value = node.declare_parameter(name, spec.default, spec.descriptor(name)).value
    except ParameterException as err:
        given = _overrides(node).get(name)
        shown = given.value if given is not None else spec.default
        fix = f"expected {spec.expected()} ({spec.description})"
        raise ParameterError(_message(name, shown, fix, sources)) from err
    if spec.choices and value not in spec.choices:
        fix = f"expected {spec.expected()} ({spec.description})"
        raise ParameterError(_message(name, value, fix, sources))
    return value


def _overrides(node: Node) -> dict[str, Parameter]:
    """Values from params files and -p; rclpy keeps them with no public accessor."""
    return getattr(node, "_parameter_overrides", {})


def _check(ok: bool, name: str, value: Any, fix: str, sources: str) -> None:
    if not ok:
        raise ParameterError(_message(name, value, fix, sources))


def _message(name: str, value: Any, fix: str, sources: str) -> str:
    where = f" (set in {sources})" if sources else ""
    return f"parameter {name}={value!r} is invalid{where}: {fix}"


def _model_dir(value: str, sources: str) -> Path:
    if not value:
        path = default_model_dir()
        _check(
            path.is_dir(), "model_dir", "",
            f"the embedded default model is missing at {path}: build it (make demo) or set "
            "model_dir to a model directory with a manifest.json", sources,
        )  # fmt: skip
        return path
    path = Path(os.path.expandvars(os.path.expanduser(value))).resolve()
    _check(
        path.is_dir(), "model_dir", value,
        f"no such directory {path}: bring the model there (a directory with manifest.json, "
        "written by `deltaworld export`) or set model_dir:='' for the embedded default", sources,
    )  # fmt: skip
    return path


def params_files(argv: list[str]) -> str:
    """The --params-file arguments in a ROS command line, comma-separated."""
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--params-file"]
    return ", ".join(files)
