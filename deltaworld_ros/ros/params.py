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
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
LOG_LEVELS = ("", "debug", "info", "warn", "error", "fatal")
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
        "fp32",
        "numeric precision of the graphs (int8: onnxruntime, bf16: torch)",
        choices=PRECISIONS,
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
    ),
    "output_namespace": Spec("deltaworld", "namespace of the outputs (relative to the node's)"),
    "visualization": Spec(True, "publish the rgb8 visualization mosaic"),
    "seed": Spec(0, "seed of the hypotheses' noise", 0, 2**31 - 1),
    "diagnostics_period": Spec(1.0, "s between /diagnostics messages", 0.1, 60.0),
    "log_level": Spec(
        "",
        "level of this node's logger (rcl's keep theirs); '' = --log-level's",
        choices=LOG_LEVELS,
    ),  # fmt: skip
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
    log_level: str


def declare_and_read(node: Node, sources: str = "") -> NodeSettings:
    """Declare every parameter (cameras.<name>.* once the names are known) and validate.
    `sources` names where values came from (params files), for the error messages."""
    read = _Reader(node, sources)
    values = {name: read.declare(name, spec) for name, spec in SPECS.items()}
    names = values["cameras"]
    read.check(bool(names), "cameras", names, "list at least one camera name")
    read.check(len(set(names)) == len(names), "cameras", names, "camera names must be unique")
    for name in names:
        read.check(
            bool(NAME_TOKEN.match(name)), "cameras", names,
            f"camera name {name!r} must be a ROS name token: a letter, then letters, digits, _",
        )  # fmt: skip
    namespace = values["output_namespace"].strip("/")
    read.check(
        bool(TOPIC_NAME.match(namespace)), "output_namespace", values["output_namespace"],
        "a ROS name such as deltaworld",
    )  # fmt: skip
    output_size = values["output_size"]
    read.check(
        len(output_size) == 2 and (all(v == 0 for v in output_size)
                                   or all(1 <= v <= 4096 for v in output_size)),
        "output_size", output_size, "[h, w] with both in 1..4096, or [0, 0] for the default",
    )  # fmt: skip
    read.check(
        not values["strict_providers"] or bool(values["providers"]), "strict_providers", True,
        "list the providers it must hold to (providers:=[...])",
    )  # fmt: skip
    read.check(
        values["precision"] != "bf16" or values["backend"] == "torch", "precision", "bf16",
        "bf16 runs on the torch backend only; use fp16 with onnxruntime",
    )  # fmt: skip
    read.check(
        values["precision"] != "int8" or values["backend"] == "onnxruntime", "precision", "int8",
        "the int8 decoder is an onnxruntime graph (deltaworld export --int8)",
    )  # fmt: skip
    read.check(
        values["device"] == "cpu" or re.fullmatch(r"cuda(:\d+)?", values["device"]) is not None,
        "device", values["device"], "cpu, cuda or cuda:<index>",
    )  # fmt: skip
    return NodeSettings(
        model_dir=read.model_dir(values["model_dir"]),
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
        cameras=tuple(read.camera(name, len(names), namespace) for name in names),
        visualization=values["visualization"],
        diagnostics_period=values["diagnostics_period"],
        log_level=values["log_level"],
    )


def undeclared_overrides(node: Node) -> list[str]:
    """Names set in the params files or on the command line that the node does not know
    (typos, or values meant for another node)."""
    return sorted(name for name in _overrides(node) if not node.has_parameter(name))


def _overrides(node: Node) -> dict[str, Parameter]:
    """Values from params files and -p; rclpy keeps them with no public accessor."""
    return getattr(node, "_parameter_overrides", {})


class _Reader:
    """Declares parameters on a node; every refusal is a ParameterError naming the sources."""

    def __init__(self, node: Node, sources: str) -> None:
        self.node = node
        self.where = f" (parameters from {sources})" if sources else ""

    def declare(self, name: str, spec: Spec) -> Any:
        """Declare with the descriptor; a value of the wrong type or out of range (refused by
        rclpy) or not among the choices is a ParameterError."""
        fix = f"expected {spec.expected()} ({spec.description})"
        try:
            value = self.node.declare_parameter(name, spec.default, spec.descriptor(name)).value
        except ParameterException as err:
            given = _overrides(self.node).get(name)
            shown = spec.default if given is None else given.value
            raise ParameterError(self.message(name, shown, fix)) from err
        self.check(not spec.choices or value in spec.choices, name, value, fix)
        return value

    def check(self, ok: bool, name: str, value: Any, fix: str) -> None:
        if not ok:
            raise ParameterError(self.message(name, value, fix))

    def message(self, name: str, value: Any, fix: str) -> str:
        return f"parameter {name}={value!r} is invalid{self.where}: {fix}"

    def camera(self, name: str, count: int, namespace: str) -> CameraSettings:
        """cameras.<name>.*; the default topic is image (one camera) or <name>/image."""
        values = {
            key: self.declare(f"cameras.{name}.{key}", spec) for key, spec in CAMERA_SPECS.items()
        }
        topic = values["topic"] or ("image" if count == 1 else f"{name}/image")
        if not values["topic"] and values["transport"] == "compressed":
            topic += "/compressed"
        self.check(
            bool(TOPIC_NAME.match(topic)), f"cameras.{name}.topic", topic,
            "a ROS topic name such as front/image_raw",
        )  # fmt: skip
        outputs = namespace if count == 1 else f"{namespace}/{name}"
        return CameraSettings(name, topic, values["transport"], outputs)

    def model_dir(self, value: str) -> Path:
        """'' = the embedded default model; ~ and $VARS expand. The directory must exist."""
        if not value:
            path = default_model_dir()
            self.check(
                path.is_dir(), "model_dir", "",
                f"the embedded default model is missing at {path}: set model_dir to a model "
                "directory with a manifest.json (`deltaworld export`, `deltaworld train`)",
            )  # fmt: skip
            return path
        path = Path(os.path.expandvars(os.path.expanduser(value))).resolve()
        self.check(
            path.is_dir(), "model_dir", value,
            f"no such directory {path}: bring the model there (a directory with manifest.json, "
            "written by `deltaworld export`) or set model_dir:='' for the embedded default "
            "(launch argument model_dir:=embedded)",
        )  # fmt: skip
        return path


def params_files(argv: list[str]) -> str:
    """The --params-file arguments in a ROS command line, comma-separated."""
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--params-file"]
    return ", ".join(files)
