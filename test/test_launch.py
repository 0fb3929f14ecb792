"""The launch files, run as `ros2 launch deltaworld_ros <file> name:=value ...` runs them: from a
`colcon build` install, frames in over DDS, outputs checked under the expected names, then
SIGINT and a clean exit.

Where a ROS 2 install provides `ros2 launch`, that runs them. Here ROS 2 comes from PyPI wheels,
which have no launch/launch_ros, so the unmodified sources in ../shared/ros2_launch do (their
README; DELTAWORLD_ROS2_LAUNCH points elsewhere).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from deltaworld_ros.io.images import encode_compressed
from deltaworld_ros.model.store import read_manifest
from deltaworld_ros.ros import packing
from deltaworld_ros.ros.node import LAYOUT_QOS, OUTPUT_QOS, SENSOR_QOS
from deltaworld_ros.tools.harness import LOCAL_DISCOVERY, Probe, write_params

pytestmark = pytest.mark.dds

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
PACKAGE = "deltaworld_ros"
SHARED_LAUNCH = Path(
    os.environ.get("DELTAWORLD_ROS2_LAUNCH", ROOT.parent / "shared" / "ros2_launch")
)
ROS2_CLI = shutil.which("ros2") is not None and importlib.util.find_spec("launch_ros") is not None
ARGUMENTS = {"config", "model_dir", "image", "namespace", "use_sim_time", "log_level", "managed",
             "autostart"}  # fmt: skip
START_TIMEOUT = 60.0  # s from launch to the first forecast
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shared_launch_path() -> list[str]:
    """The folders of ../shared/ros2_launch that go on PYTHONPATH (none with a ROS 2 install)."""
    if ROS2_CLI:
        return []
    if not (SHARED_LAUNCH / "ros2_launch.py").is_file():
        pytest.fail(f"no ROS 2 launch: neither `ros2` nor {SHARED_LAUNCH}/ros2_launch.py")
    return [str(SHARED_LAUNCH / d) for d in ("launch", "launch_ros", "ros2launch", "stubs")]


class Launch:
    """`ros2 launch deltaworld_ros <file> <arguments>` in a shell that sourced the install, in
    its own session (as a terminal's foreground job), ROS domain `domain`, logs under tmp."""

    def __init__(self, workspace: Path, file: str, arguments: list[str], domain: int, tmp: Path):
        if ROS2_CLI:
            launch = ["ros2", "launch", "-n", PACKAGE, file, *arguments]
        else:
            launch = [sys.executable, str(SHARED_LAUNCH / "ros2_launch.py"), "-n", PACKAGE, file,
                      *arguments]  # fmt: skip
        setup = workspace / "install" / "local_setup.bash"
        self.command = ["bash", "-c", f'source "{setup}" && exec "$@"', "launch", *launch]
        (tmp / "tmp").mkdir(exist_ok=True)
        path = [*shared_launch_path(), os.environ.get("PYTHONPATH", "")]
        self.env = {**LOCAL_DISCOVERY, **os.environ, "ROS_DOMAIN_ID": str(domain),
                    "ROS_LOG_DIR": str(tmp / "ros_log"), "TMPDIR": str(tmp / "tmp"),
                    "PYTHONPATH": os.pathsep.join(filter(None, path)),
                    "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.log_path = tmp / f"{file}.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Launch:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return ANSI.sub("", self.log_path.read_text(errors="replace"))

    def node_command_line(self) -> list[str]:
        """The node process's argv, read from /proc (launch logs its pid)."""
        found = re.search(r"process started with pid \[(\d+)\]", self.log())
        assert found, self.log()
        return Path(f"/proc/{found[1]}/cmdline").read_bytes().decode().split("\0")

    def interrupt(self, whole_group: bool = False) -> tuple[int, str]:
        """SIGINT to launch alone, or to the whole group as Ctrl-C in a terminal does (the node
        then gets one from the terminal and one from launch); exit code and log."""
        assert self.process is not None
        if whole_group:
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            self.process.send_signal(signal.SIGINT)
        return self.wait(30)

    def wait(self, timeout: float) -> tuple[int, str]:
        """Exit code and log of a launch that ends by itself (its last process ended)."""
        assert self.process is not None
        return self.process.wait(timeout), self.log()


def assert_clean_exit(code: int, log: str) -> None:
    """`ros2 launch` exits 0 even when its node died: the node's end is read off launch's log."""
    assert code == 0, log
    assert "process has finished cleanly" in log, log
    assert "process has died" not in log and "Traceback" not in log, log


def publish_until(launch: Launch, send, until, timeout: float) -> None:
    """send() a frame every 50 ms until until() holds; fail early if launch ended."""
    deadline = time.monotonic() + timeout
    while not until():
        assert launch.running(), launch.log()
        assert time.monotonic() < deadline, f"timed out after {timeout} s:\n{launch.log()}"
        send()
        time.sleep(0.05)


class Camera:
    """Frames of a moving gradient, stamps 0.1 s apart, raw rgb8 or jpeg, on one topic."""

    def __init__(self, probe: Probe, topic: str, size=(48, 64), compressed: bool = False):
        self.publisher = probe.publisher(CompressedImage if compressed else Image, topic,
                                         SENSOR_QOS)  # fmt: skip
        self.size, self.compressed, self.count = size, compressed, 0

    def send(self) -> None:
        self.count += 1
        h, w = self.size
        ramp = np.roll(np.linspace(0, 255, w).astype(np.uint8), self.count)
        rgb = np.stack([np.broadcast_to(ramp, (h, w)), np.full((h, w), 90, np.uint8),
                        np.broadcast_to(ramp[::-1], (h, w))], -1)  # fmt: skip
        header = Header(frame_id="camera")
        header.stamp.sec, header.stamp.nanosec = 1000 + self.count // 10, self.count % 10 * 10**8
        if self.compressed:
            msg = CompressedImage(header=header, format="jpeg", data=encode_compressed(rgb, "jpeg"))
        else:
            msg = packing.image_message(rgb, "rgb8", header)
        self.publisher.publish(msg)


def small_config(tmp_path: Path, **params) -> Path:
    """A parameter file of the user's: K=2, T=2, CPU, diagnostics every 0.25 s."""
    values = {"num_hypotheses": 2, "horizon": 2, "providers": ["cpu"], "diagnostics_period": 0.25}
    return write_params(tmp_path / "my.yaml", {**values, **params})


def test_forecast_launch_with_every_documented_argument(colcon_workspace, tmp_path, domain):
    """config:= a user's file whose model_dir does not exist, model_dir:=embedded overriding it,
    the camera remapped, a namespace, node-scoped debug logging; Ctrl-C to the whole group."""
    config = small_config(tmp_path, model_dir="/no/such/model")
    arguments = [f"config:={config}", "model_dir:=embedded", "image:=/cam/image_raw",
                 "namespace:=/robot1", "use_sim_time:=false", "log_level:=debug"]  # fmt: skip
    with (
        Launch(colcon_workspace, "forecast.launch.py", arguments, domain, tmp_path) as launch,
        Probe(domain) as probe,
    ):
        probe.subscribe(Image, "/robot1/deltaworld/futures", OUTPUT_QOS)
        probe.subscribe(String, "/robot1/deltaworld/futures/layout", LAYOUT_QOS)
        camera = Camera(probe, "/cam/image_raw")
        publish_until(launch, camera.send, lambda: probe.received("/robot1/deltaworld/futures"),
                      START_TIMEOUT)  # fmt: skip
        command_line = launch.node_command_line()
        layout = json.loads(probe.received("/robot1/deltaworld/futures/layout")[-1].data)
        code, log = launch.interrupt(whole_group=True)

    assert_clean_exit(code, log)
    assert command_line.count("--ros-args") == 1, command_line
    assert (layout["K"], layout["T"]) == (2, 2)
    embedded = read_manifest(ROOT / "models" / "default").config.name
    assert f"with {embedded}, onnxruntime " in log  # the placement line of the engine
    debug = [line for line in log.splitlines() if "[DEBUG]" in line]
    assert any("[robot1.forecast_node]: settings:" in line for line in debug), log
    assert all("[robot1.forecast_node]" in line for line in debug), debug[:5]


def test_robot_launch_on_an_fp16_model_as_a_managed_node(
    colcon_workspace, model_dir, tmp_path, domain
):
    """robot.launch.py: its robot.yaml (jpeg camera, fp16, K=6, T=4, 64x64 tiles) on a model
    directory given by model_dir:=, managed:=true activating itself (autostart's default)."""
    arguments = [f"model_dir:={model_dir}", "image:=/robot/camera/compressed",
                 "managed:=true"]  # fmt: skip
    with (
        Launch(colcon_workspace, "robot.launch.py", arguments, domain, tmp_path) as launch,
        Probe(domain) as probe,
    ):
        probe.subscribe(Image, "/deltaworld/futures", OUTPUT_QOS)
        probe.subscribe(String, "/deltaworld/futures/layout", LAYOUT_QOS)
        camera = Camera(probe, "/robot/camera/compressed", compressed=True)
        publish_until(launch, camera.send, lambda: probe.received("/deltaworld/futures"),
                      START_TIMEOUT)  # fmt: skip
        state = probe.call(GetState, "/forecast_node/get_state", GetState.Request())
        futures = probe.received("/deltaworld/futures")[-1]
        layout = json.loads(probe.received("/deltaworld/futures/layout")[-1].data)
        code, log = launch.interrupt()

    assert_clean_exit(code, log)
    assert state.current_state.id == State.PRIMARY_STATE_ACTIVE
    assert (layout["K"], layout["T"], layout["tile_size"]) == (6, 4, [64, 64])
    assert (futures.height, futures.width) == (6 * 64, 4 * 64)
    assert "fp16" in (model_dir / "manifest.json").read_text()


def test_vehicle_launch_honours_config(colcon_workspace, model_dir, tmp_path, domain):
    """vehicle.launch.py config:= a copy of vehicle.yaml with another front topic and the test's
    model: both cameras forecast under /car/deltaworld/<camera>."""
    vehicle = yaml.safe_load((ROOT / "config" / "vehicle.yaml").read_text())
    values = vehicle["/**"]["ros__parameters"]
    values.update({"model_dir": str(model_dir), "cameras.front.topic": "other/front",
                   "num_hypotheses": 2, "horizon": 2, "output_size": [16, 16]})  # fmt: skip
    config = write_params(tmp_path / "my_vehicle.yaml", values)
    arguments = [f"config:={config}", "namespace:=car"]
    with (
        Launch(colcon_workspace, "vehicle.launch.py", arguments, domain, tmp_path) as launch,
        Probe(domain) as probe,
    ):
        for name in ("front", "side"):
            probe.subscribe(Image, f"/car/deltaworld/{name}/futures", OUTPUT_QOS)
        front = Camera(probe, "/car/other/front", size=(48, 96))
        side = Camera(probe, "/car/side/image_raw/compressed", compressed=True)

        def both() -> None:
            front.send()
            side.send()

        publish_until(
            launch, both,
            lambda: all(probe.received(f"/car/deltaworld/{n}/futures") for n in ("front", "side")),
            START_TIMEOUT,
        )  # fmt: skip
        front_futures = probe.received("/car/deltaworld/front/futures")[-1]
        code, log = launch.interrupt()

    assert_clean_exit(code, log)
    assert (front_futures.height, front_futures.width) == (2 * 16, 2 * 32)  # two square crops


def lifecycle_state(probe: Probe) -> int:
    return probe.call(GetState, "/forecast_node/get_state", GetState.Request()).current_state.id


def change_state(probe: Probe, transition: int) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition))
    return probe.call(ChangeState, "/forecast_node/change_state", request, timeout=60).success


def camera_status(probe: Probe) -> tuple[str, dict[str, str]]:
    """Message and values of the latest /diagnostics status of the camera."""
    for array in reversed(probe.received("/diagnostics")):
        for status in array.status:
            if status.name == "deltaworld: camera camera":
                return status.message, {kv.key: kv.value for kv in status.values}
    return "", {}


def test_managed_node_through_the_lifecycle_services(colcon_workspace, model_dir, tmp_path, domain):
    """managed:=true autostart:=false, driven as `ros2 lifecycle set` drives it: nothing loaded
    and no subscription before configure; outputs after configure, subscriptions after
    activate; frames while inactive counted; outputs gone after cleanup; shutdown ends it."""
    config = small_config(tmp_path, model_dir=str(model_dir))
    arguments = [f"config:={config}", "managed:=true", "autostart:=false"]
    with (
        Launch(colcon_workspace, "forecast.launch.py", arguments, domain, tmp_path) as launch,
        Probe(domain) as probe,
    ):
        probe.subscribe(Image, "/deltaworld/futures", OUTPUT_QOS)
        probe.subscribe(DiagnosticArray, "/diagnostics")
        camera = Camera(probe, "/image")
        graph = probe.node

        def publishers(topic: str) -> int:
            return len(graph.get_publishers_info_by_topic(topic))

        assert lifecycle_state(probe) == State.PRIMARY_STATE_UNCONFIGURED
        assert publishers("/deltaworld/futures") == 0 and "forecasting K=" not in launch.log()

        assert change_state(probe, Transition.TRANSITION_CONFIGURE)
        assert lifecycle_state(probe) == State.PRIMARY_STATE_INACTIVE
        assert probe.wait_for(lambda: publishers("/deltaworld/futures") == 1, 10)
        assert len(graph.get_subscriptions_info_by_topic("/image")) == 0

        assert change_state(probe, Transition.TRANSITION_ACTIVATE)
        publish_until(launch, camera.send, lambda: probe.received("/deltaworld/futures"), 30)

        assert change_state(probe, Transition.TRANSITION_DEACTIVATE)
        forecasts = len(probe.received("/deltaworld/futures"))
        publish_until(
            launch, camera.send,
            lambda: int(camera_status(probe)[1].get("dropped: inactive", 0)) >= 5, 20,
        )  # fmt: skip
        message, values = camera_status(probe)
        # at most the batch in the worker and the frame in its slot were still forecast
        assert len(probe.received("/deltaworld/futures")) <= forecasts + 2

        assert change_state(probe, Transition.TRANSITION_CLEANUP)
        assert lifecycle_state(probe) == State.PRIMARY_STATE_UNCONFIGURED
        assert probe.wait_for(lambda: publishers("/deltaworld/futures") == 0, 10)

        assert change_state(probe, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        code, log = launch.wait(30)  # the node ended, and with it launch

    assert_clean_exit(code, log)
    assert message.startswith("inactive")
    assert "cleaned up: the engine is freed" in log


@pytest.mark.parametrize("name", sorted(p.name for p in LAUNCH.glob("*.launch.py")))
def test_launch_descriptions_declare_described_arguments(name, monkeypatch):
    """Every launch file builds, and offers forecast.launch.py's arguments with descriptions
    (`ros2 launch -s`); robot/vehicle default config to their own parameter file."""
    for folder in shared_launch_path():
        monkeypatch.syspath_prepend(folder)
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription

    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description: LaunchDescription = module.generate_launch_description()
    declared = {a.name: a for a in description.get_launch_arguments()}
    if not any(isinstance(e, IncludeLaunchDescription) for e in description.entities):
        assert set(declared) == ARGUMENTS
    assert declared["config"].description
    assert all(a.description for a in declared.values())
    default = " ".join(s.describe() for s in declared["config"].default_value)
    expected = {"robot.launch.py": "robot.yaml", "vehicle.launch.py": "vehicle.yaml"}
    assert expected.get(name, "default.yaml") in default, default
