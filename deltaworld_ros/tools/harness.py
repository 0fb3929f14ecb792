"""Drive forecast_node as a user would, over real DDS: the console script in a subprocess with
a params file, and a probe node (its own rclpy context) that publishes frames and records the
outputs. Used by the node tests, the node benchmark, the soak and the demo.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile

from ..ros import topics
from ..ros.diagnostics import read_report

EXECUTABLE = "forecast_node"
MANAGED_EXECUTABLE = "managed_forecast_node"
# Discovery on this machine only, unless the caller's environment says otherwise.
LOCAL_DISCOVERY = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def domain_id(key: str) -> int:
    """A ROS_DOMAIN_ID in 1..100 from this process id and a key (e.g. the test's name), so that
    two runs on one machine do not hear each other."""
    return 1 + zlib.crc32(f"{os.getpid()}:{key}".encode()) % 100


def forecast_node_command(executable: str = EXECUTABLE) -> str:
    """The installed console script beside this interpreter (pip install -e . puts it there)."""
    path = shutil.which(executable, path=str(Path(sys.executable).parent)) or shutil.which(
        executable
    )
    if path is None:
        raise FileNotFoundError(
            f"console script {executable!r} not found beside {sys.executable} or on PATH; "
            "install the package (pip install -e .)"
        )
    return path


def write_params(path: Path, params: dict[str, Any]) -> Path:
    """A ROS 2 params file that applies to the node whatever its name or namespace."""
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False))
    return path


class NodeProcess:
    """forecast_node (or `executable`, e.g. MANAGED_EXECUTABLE) --ros-args --params-file <files>
    [extra], in ROS domain `domain`; its output goes to `log_path`. Killed on exit of the `with`
    block whatever happened."""

    def __init__(
        self,
        params_files: list[Path],
        domain: int,
        log_path: Path,
        extra_args: tuple[str, ...] = (),
        executable: str = EXECUTABLE,
    ) -> None:
        self.command = [forecast_node_command(executable), "--ros-args"]
        for file in params_files:
            self.command += ["--params-file", str(file)]
        self.command += list(extra_args)
        self.env = {**LOCAL_DISCOVERY, **os.environ, "ROS_DOMAIN_ID": str(domain),
                    "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.domain = domain
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> NodeProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def wait_ready(self, timeout: float) -> bool:
        """Until the node's first /diagnostics report (its model is loaded and its topics are
        up); False if the process exits first or no report comes within `timeout` s."""
        with Probe(self.domain, "readiness") as probe:
            probe.subscribe(DiagnosticArray, topics.DIAGNOSTICS)

            def reported() -> bool:
                return any(read_report(m).engine for m in probe.received(topics.DIAGNOSTICS))

            probe.wait_for(lambda: reported() or not self.running(), timeout)
            return reported() and self.running()

    def wait(self, timeout: float) -> int:
        """Exit code of a process expected to end by itself."""
        assert self.process is not None
        return self.process.wait(timeout)

    def interrupt(self, timeout: float = 15.0) -> int:
        """SIGINT, as Ctrl-C in a terminal; the exit code."""
        self.send(signal.SIGINT)
        return self.process.wait(timeout)

    def send(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Probe:
    """A node in its own rclpy context on `domain`, spun by a background thread: records what
    arrives on its subscriptions and publishes what it is given."""

    def __init__(self, domain: int, name: str = "probe") -> None:
        for variable, value in LOCAL_DISCOVERY.items():
            os.environ.setdefault(variable, value)  # read when the context starts
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.messages: dict[str, list[Any]] = defaultdict(list)
        self.arrivals: dict[str, list[float]] = defaultdict(list)  # time.time() of each message
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self.stopping.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def subscribe(self, kind: type, topic: str, qos: QoSProfile | int = 10) -> None:
        def record(msg: Any) -> None:
            with self.lock:
                self.messages[topic].append(msg)
                self.arrivals[topic].append(time.time())

        self.node.create_subscription(kind, topic, record, qos)

    def publisher(self, kind: type, topic: str, qos: QoSProfile | int = 10) -> Any:
        return self.node.create_publisher(kind, topic, qos)

    def call(self, kind: type, name: str, request: Any, timeout: float = 15.0) -> Any:
        """The response of service `name` to `request`; TimeoutError if none within timeout s."""
        client = self.node.create_client(kind, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available within {timeout} s")
            future = client.call_async(request)
            if not self.wait_for(future.done, timeout):
                raise TimeoutError(f"service {name} did not answer within {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def received(self, topic: str) -> list[Any]:
        with self.lock:
            return list(self.messages[topic])

    def timed(self, topic: str) -> list[tuple[float, Any]]:
        """(arrival time.time(), message) of everything received on `topic`."""
        with self.lock:
            return list(zip(self.arrivals[topic], self.messages[topic], strict=True))

    def wait_for(self, condition: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
        """Wait up to `timeout` s for condition() (checked every `poll` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(poll)
        return condition()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
