"""The node's parameters: declared with descriptors, read once, validated at start.

A bad value is a ParameterError that names the parameter, the value and the fix; the node
logs it and exits 2. Every parameter is read-only: a change needs a restart. rcl forgives
some mistakes in silence (a -p value of another type than the file's is dropped, `[]` has no
type); those are refused here too, as are params files that rcl cannot parse.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter

from ..errors import UsageError
from ..io.images import DEFAULT_MAX_PIXELS
from ..runtime.engine import BACKENDS, PRECISIONS, EngineOptions, largest_batch
from ..runtime.forecaster import ForecasterConfig
from ..runtime.ort_engine import requested_providers
from . import topics
from .share import package_model_dir

TRANSPORTS = ("raw", "compressed")
CROPS = ("resize", "square")
SQUARE_CROPS = 4  # the most square crops the engine is sized for: a 4:1 panorama
LOG_LEVELS = ("", "debug", "info", "warn", "error", "fatal")
NAME_TOKEN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
TOPIC_NAME = re.compile(r"^~?/?[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


class ParameterError(UsageError):
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
        choices=tuple(dict.fromkeys(p for b in BACKENDS for p in PRECISIONS[b])),
    ),
    "device": Spec(
        "",
        "cpu, cuda or cuda:<index> (onnxruntime: the GPU its CUDA/TensorRT providers use); "
        "'' = the backend's choice (torch: cpu, onnxruntime: its providers on GPU 0)",
    ),
    "threads": Spec(0, "CPU threads of the engine; 0 = its default (all cores)", 0, 256),
    "num_hypotheses": Spec(
        ForecasterConfig.num_hypotheses, "K: forecast hypotheses per frame (futures rows)", 1, 64
    ),
    "horizon": Spec(
        ForecasterConfig.horizon, "T: forecast steps of step_seconds each (futures columns)", 1, 32
    ),
    "frame_interval": Spec(
        0.0, "s of header time between kept frames, = one forecast step; 0 = the model's", 0, 60
    ),
    "context_length": Spec(
        0, "frames in the predictor's window (>= 2: a delta needs two); 0 = the model's", 0, 64
    ),
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
    "output_namespace": Spec(
        topics.DEFAULT_NAMESPACE, "namespace of the outputs (relative to the node's)"
    ),
    "visualization": Spec(True, "publish the rgb8 visualization mosaic"),
    "seed": Spec(0, "seed of the hypotheses' noise", 0, 2**31 - 1),
    "diagnostics_period": Spec(1.0, "s between /diagnostics messages", 0.1, 60.0),
    "max_input_pixels": Spec(
        DEFAULT_MAX_PIXELS,
        "frames declaring more pixels are dropped (decode error: too large) before any "
        "decompression; a guard against decompression bombs",
        1,
        2**30,
    ),
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
    engine: EngineOptions
    forecaster: ForecasterConfig
    cameras: tuple[CameraSettings, ...]
    visualization: bool
    diagnostics_period: float
    max_input_pixels: int
    log_level: str


def declare_and_read(node: Node, argv: list[str] = ()) -> NodeSettings:
    """Declare every parameter (cameras.<name>.* once the names are known) and validate.
    `argv` is the command line the node was started with: its params files name where values
    came from, and its -p values must be the ones the node got."""
    read = _Reader(node, params_files(argv))
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
        re.fullmatch(r"(cpu|cuda(:\d+)?)?", values["device"]) is not None,
        "device", values["device"], "cpu, cuda or cuda:<index>, or '' for the backend's choice",
    )  # fmt: skip
    read.check(
        values["context_length"] != 1, "context_length", 1,
        "a forecast needs at least 2 frames in the window (one delta); use 0 (the model's) "
        "or 2..64",
    )  # fmt: skip
    forecaster = ForecasterConfig(
        num_hypotheses=values["num_hypotheses"],
        horizon=values["horizon"],
        context_length=values["context_length"] or None,
        frame_interval=values["frame_interval"] or None,
        output_size=tuple(output_size) if output_size[0] else None,
        crop=values["crop"],
        seed=values["seed"],
    )
    streams = len(names) * (SQUARE_CROPS if values["crop"] == "square" else 1)
    engine = EngineOptions(
        backend=values["backend"],
        device=values["device"],
        precision=values["precision"],
        threads=values["threads"] or None,
        providers=tuple(values["providers"]) if values["providers"] else None,
        strict_providers=values["strict_providers"],
        max_batch=largest_batch(forecaster.num_hypotheses, forecaster.horizon, streams),
    )
    try:
        requested_providers(engine)  # known names, none on a GPU with device cpu
    except UsageError as err:
        read.check(False, "providers", values["providers"], str(err))
    settings = NodeSettings(
        model_dir=read.model_dir(values["model_dir"]),
        engine=engine,
        forecaster=forecaster,
        cameras=tuple(read.camera(name, len(names), namespace) for name in names),
        visualization=values["visualization"],
        diagnostics_period=values["diagnostics_period"],
        max_input_pixels=values["max_input_pixels"],
        log_level=values["log_level"],
    )
    for name, text in command_line_values(argv):
        if node.has_parameter(name):
            read.check_given(name, text)
    return settings


def engine_parameters(options: EngineOptions) -> dict[str, Any]:
    """The node's parameters that give it an engine set up as `options` (max_batch: the node
    derives its own from num_hypotheses, horizon, cameras and crop)."""
    parameters = {
        "backend": options.backend,
        "device": options.device,
        "precision": options.precision,
        "threads": options.threads or 0,
        "strict_providers": options.strict_providers,
    }
    if options.providers:
        parameters["providers"] = list(options.providers)
    return parameters


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
        """Declare with the descriptor; a value of the wrong type, out of range (refused by
        rclpy), not finite, without a type (`[]`) or not among the choices is a
        ParameterError. An integer is taken for a number (frame_interval: 1)."""
        fix = f"expected {spec.expected()} ({spec.description})"
        overrides = _overrides(self.node)
        given = overrides.get(name)
        unset_allowed = isinstance(spec.default, Parameter.Type)  # providers: [] = unset
        if given is not None and given.type_ == Parameter.Type.NOT_SET and not unset_allowed:
            raise ParameterError(self.message(name, [], f"an empty list has no type; {fix}"))
        if (
            isinstance(spec.default, float)
            and given is not None
            and given.type_ == (Parameter.Type.INTEGER)
        ):
            overrides[name] = Parameter(name, value=float(given.value))
        try:
            value = self.node.declare_parameter(name, spec.default, spec.descriptor(name)).value
        except ParameterException as err:
            shown = spec.default if given is None else given.value
            raise ParameterError(self.message(name, shown, fix)) from err
        self.check(not isinstance(value, float) or math.isfinite(value), name, value, fix)
        self.check(not spec.choices or value in spec.choices, name, value, fix)
        return value

    def check_given(self, name: str, text: str) -> None:
        """A -p name:=text that rcl dropped (another type than the params file's value)."""
        given = _yaml_value(text)
        value = self.node.get_parameter(name).value
        if isinstance(given, list):
            same = list(value) == given
        else:  # rcl reads 1e-1 as a number where YAML 1.1 sees a string
            same = value == given or (isinstance(value, float) and _number(given) == value)
        if not same:
            spec = SPECS.get(name) or CAMERA_SPECS.get(name.rsplit(".", 1)[-1])
            fix = f"expected {spec.expected()}" if spec else f"expected a value like {value!r}"
            raise ParameterError(
                f"parameter {name}={given!r} (from -p) is invalid: {fix}; it has another type "
                f"than the params file's value {value!r}, which would be used instead"
            )

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
            path = package_model_dir()
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
    return ", ".join(_option_values(argv, ("--params-file",)))


def command_line_values(argv: list[str]) -> list[tuple[str, str]]:
    """(name, value text) of every -p / --param name:=value (node:name:=value too)."""
    pairs = []
    for item in _option_values(argv, ("-p", "--param")):
        key, _, text = item.partition(":=")
        pairs.append((key.rsplit(":", 1)[-1], text))
    return pairs


def check_arguments(argv: list[str]) -> None:
    """Every --params-file exists and, like every -p value, has the shape rcl reads, before
    rcl reads them (rcl's own refusal is a multi-line error). ParameterError otherwise."""
    for file in _option_values(argv, ("--params-file",)):
        try:
            body = yaml.safe_load(Path(file).read_text())
        except OSError as err:
            raise ParameterError(
                f"cannot read the params file {file}: {err.strerror}; check the path"
            ) from err
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}" if where else ""
            problem = getattr(err, "problem", None) or err
            raise ParameterError(f"params file {file} is not valid YAML{line}: {problem}") from err
        problem = _nodes_problem(body)
        if problem is not None:
            raise ParameterError(f"params file {file}: {problem}")
    for name, text in command_line_values(argv):
        problem = _value_problem(name, _yaml_value(text))
        if problem is not None:
            raise ParameterError(f"parameter {name}:={text} (from -p): {problem}")


def _nodes_problem(body: Any, where: str = "") -> str | None:
    """What in a params file's node levels rcl refuses: they must map names to mappings,
    down to each node's ros__parameters."""
    if not isinstance(body, dict):
        return (
            f"{where or 'the top level'} must map node names to their parameters, e.g. "
            "'/**: {ros__parameters: {num_hypotheses: 8}}'"
        )
    for key, value in body.items():
        if key == "ros__parameters":
            if not isinstance(value, dict):
                return f"{where} > ros__parameters must map parameter names to values"
            problems = (_value_problem(name, v) for name, v in value.items())
            if (problem := next((p for p in problems if p), None)) is not None:
                return problem
        elif (problem := _nodes_problem(value, f"{where} > {key}" if where else key)) is not None:
            return problem
    return None


def _value_problem(name: str, value: Any) -> str | None:
    """What rcl refuses in one value: a list of mixed types, a list of lists, no value."""
    if isinstance(value, dict):  # a namespace of parameters in a file
        problems = (_value_problem(f"{name}.{k}", v) for k, v in value.items())
        return next((p for p in problems if p), None)
    if value is None:
        return f"{name} has no value"
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        if len(kinds) > 1 or kinds & {list, dict, type(None)}:
            return (
                f"{name}={value!r}: a list must hold values of one type (numbers, strings, bools)"
            )
    return None


def _option_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in options]


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _yaml_value(text: str) -> Any:
    """A -p value as rcl reads it: YAML (a string when it does not parse)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
