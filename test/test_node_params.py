"""forecast_node's parameters, read the way the node reads them (a params file through rcl, in
an rclpy context of this test's own), without starting the model or talking over DDS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.node import Node

from deltaworld_ros.ros.params import (
    CAMERA_SPECS,
    SPECS,
    SQUARE_CROPS,
    ParameterError,
    check_arguments,
    declare_and_read,
    engine_parameters,
    undeclared_overrides,
)
from deltaworld_ros.runtime.engine import EngineOptions
from deltaworld_ros.tools.harness import domain_id, write_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def read(request, tmp_path):
    """read(params, *files) -> (settings, node): parameters as forecast_node declares them."""
    context = Context()
    rclpy.init(context=context, domain_id=domain_id(request.node.name))
    nodes = []

    def read_params(params: dict, *files: Path, extra: tuple[str, ...] = ()):
        args = ["--ros-args"]
        for file in (*files, write_params(tmp_path / f"p{len(nodes)}.yaml", params)):
            args += ["--params-file", str(file)]
        args += extra
        node = Node("forecast_node", context=context, cli_args=args)
        nodes.append(node)
        return declare_and_read(node, args), node

    yield read_params
    for node in nodes:
        node.destroy_node()
    context.try_shutdown()


def test_one_camera_reads_image_and_publishes_under_deltaworld(read, tmp_path):
    settings, node = read({"model_dir": str(tmp_path)})
    (camera,) = settings.cameras
    assert (camera.name, camera.topic, camera.transport) == ("camera", "image", "raw")
    assert camera.namespace == "deltaworld"
    assert settings.model_dir == tmp_path and settings.engine.providers is None
    forecaster = settings.forecaster
    assert (forecaster.num_hypotheses, forecaster.horizon) == (8, 3)
    assert forecaster.frame_interval is None and forecaster.output_size is None  # the model's
    descriptor = node.describe_parameter("num_hypotheses")
    assert descriptor.read_only and descriptor.description == SPECS["num_hypotheses"].description
    assert (descriptor.integer_range[0].from_value, descriptor.integer_range[0].to_value) == (1, 64)


def test_several_cameras_get_a_namespace_and_a_topic_each(read, tmp_path):
    settings, _ = read(
        {
            "model_dir": str(tmp_path),
            "cameras": ["front", "rear"],
            "cameras.rear.transport": "compressed",
            "cameras.front.topic": "/car/front/image_raw",
        }
    )
    front, rear = settings.cameras
    assert (front.topic, front.namespace) == ("/car/front/image_raw", "deltaworld/front")
    assert (rear.topic, rear.transport) == ("rear/image/compressed", "compressed")
    assert rear.namespace == "deltaworld/rear"


def test_the_engine_parameters_reach_the_engine_options_whole(read, tmp_path):
    """cuda:1 with onnxruntime is GPU 1 of its providers; the TensorRT batch cap follows K x T
    over the streams (two cameras, each cut in up to SQUARE_CROPS square crops)."""
    params = {"model_dir": str(tmp_path), "device": "cuda:1", "providers": ["cuda", "cpu"],
              "precision": "fp16", "threads": 3, "num_hypotheses": 16, "horizon": 4,
              "cameras": ["front", "rear"], "crop": "square"}  # fmt: skip
    settings, _ = read(params)
    assert settings.engine == EngineOptions(
        backend="onnxruntime", device="cuda:1", precision="fp16", threads=3,
        providers=("cuda", "cpu"), strict_providers=False,
        max_batch=2 * SQUARE_CROPS * (16 * 4 + 1),
    )  # fmt: skip
    assert settings.engine.device_index == 1
    assert engine_parameters(settings.engine) == {
        key: params[key] for key in ("device", "providers", "precision", "threads")
    } | {"backend": "onnxruntime", "strict_providers": False}


def test_device_cpu_with_gpu_providers_is_refused(read, tmp_path):
    with pytest.raises(ParameterError, match=r"providers=\['cuda'\] is invalid.*device cpu but"):
        read({"model_dir": str(tmp_path), "device": "cpu", "providers": ["cuda"]})


@pytest.mark.parametrize("config", ["default.yaml", "robot.yaml", "vehicle.yaml"])
def test_the_shipped_configs_are_valid_given_a_model(read, tmp_path, config):
    check_arguments(["forecast_node", "--ros-args", "--params-file", str(ROOT / "config" / config)])
    settings, node = read({"model_dir": str(tmp_path)}, ROOT / "config" / config)
    assert undeclared_overrides(node) == []
    if config == "vehicle.yaml":
        assert [c.name for c in settings.cameras] == ["front", "side"]
        assert settings.forecaster.crop == "square"
        assert settings.cameras[1].transport == "compressed"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_hypotheses": 0},
         "num_hypotheses=0 is invalid (parameters from {files}): expected an integer in [1, 64]"),
        ({"num_hypotheses": "eight"}, "num_hypotheses='eight' is invalid"),
        ({"frame_interval": -0.1},
         "frame_interval=-0.1 is invalid (parameters from {files}): expected a number in "
         "[0, 60]"),
        ({"crop": "circle"},
         "crop='circle' is invalid (parameters from {files}): expected one of "
         "'resize', 'square'"),
        ({"output_size": [0, 5]}, "output_size=[0, 5] is invalid"),
        ({"cameras": ["a", "a"]}, "camera names must be unique"),
        ({"cameras": ["front-left"]}, "camera name 'front-left' must be a ROS name token"),
        ({"cameras.camera.transport": "h264"}, "cameras.camera.transport='h264' is invalid"),
        ({"strict_providers": True}, "list the providers it must hold to"),
        ({"precision": "bf16"}, "bf16 runs on the torch backend only"),
        ({"model_dir": "/nonexistent/model"}, "no such directory /nonexistent/model"),
        ({"context_length": 1}, "context_length=1 is invalid (parameters from {files}): a "
                                "forecast needs at least 2 frames"),
        ({"frame_interval": float("nan")}, "frame_interval=nan is invalid"),
        ({"diagnostics_period": float("inf")}, "diagnostics_period=inf is invalid"),
        ({"cameras": []}, "cameras=[] is invalid (parameters from {files}): an empty list has "
                          "no type"),
        ({"providers": ["gpu"]}, "unknown execution provider 'gpu'"),
        ({"max_input_pixels": 0}, "max_input_pixels=0 is invalid"),
    ],
)  # fmt: skip
def test_a_bad_value_names_the_parameter_the_value_and_the_fix(read, tmp_path, params, message):
    with pytest.raises(ParameterError) as caught:
        read({"model_dir": str(tmp_path), **params})
    assert message.format(files=tmp_path / "p0.yaml") in str(caught.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("num_hypotheses:=abc", "num_hypotheses='abc' (from -p) is invalid: expected an integer"),
        ("visualization:=3", "visualization=3 (from -p) is invalid: expected true or false"),
        ("forecast_node:crop:=7", "crop=7"),
    ],
)
def test_a_command_line_value_of_another_type_than_the_files_is_refused(
    read, tmp_path, override, message
):
    """rcl keeps the params file's value and drops such a -p in silence."""
    with pytest.raises(ParameterError, match=re.escape(message)):
        params = {"model_dir": str(tmp_path), "num_hypotheses": 4, "visualization": True}
        read({**params, "crop": "resize"}, extra=("-p", override))


def test_command_line_values_of_the_right_type_win_and_integers_pass_for_numbers(read, tmp_path):
    overrides = ("-p", "num_hypotheses:=5", "-p", "frame_interval:=1e-1", "-p", "horizon:=2")
    settings, _ = read(
        {"model_dir": str(tmp_path), "num_hypotheses": 4, "diagnostics_period": 2},
        extra=overrides,
    )
    assert (settings.forecaster.num_hypotheses, settings.forecaster.horizon) == (5, 2)
    assert settings.forecaster.frame_interval == pytest.approx(0.1)
    assert settings.diagnostics_period == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read the params file {file}: No such file or directory"),
        ("foo: [bar\n", "params file {file} is not valid YAML at line 2"),
        ("- a\n- b\n", "params file {file}: the top level must map node names to their"),
        ("forecast_node: 3\n", "params file {file}: forecast_node must map node names"),
        ("/**:\n  ros__parameters: 5\n", "/** > ros__parameters must map parameter names"),
        ("/**:\n  ros__parameters:\n    cameras: [a, 1]\n",
         "cameras=['a', 1]: a list must hold values of one type"),
        ("/**:\n  ros__parameters:\n    cameras:\n", "cameras has no value"),
    ],
)  # fmt: skip
def test_a_params_file_rcl_cannot_read_is_one_line(tmp_path, text, message):
    file = tmp_path / "params.yaml"
    if text is not None:
        file.write_text(text)
    with pytest.raises(ParameterError) as caught:
        check_arguments(["forecast_node", "--ros-args", "--params-file", str(file)])
    assert message.format(file=file) in str(caught.value)


def test_a_command_line_value_rcl_cannot_read_is_one_line():
    with pytest.raises(ParameterError, match=re.escape(
        "parameter providers:=[cuda, 3] (from -p): providers=['cuda', 3]: a list must hold"
    )):  # fmt: skip
        check_arguments(["forecast_node", "--ros-args", "-p", "providers:=[cuda, 3]"])


def test_unknown_parameters_are_reported(read, tmp_path):
    _, node = read({"model_dir": str(tmp_path), "num_hypothesis": 4})
    assert undeclared_overrides(node) == ["num_hypothesis"]


def test_every_parameter_is_documented():
    docs = (ROOT / "README.md").read_text()
    for name in [*SPECS, *(f"cameras.<name>.{key}" for key in CAMERA_SPECS)]:
        assert f"| `{name}` |" in docs, f"{name} is missing from the parameter table of README.md"
