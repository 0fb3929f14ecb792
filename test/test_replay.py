"""`deltaworld replay` against a real forecast_node process, then `deltaworld eval --predictions`.

The node runs as its own process on a ROS_DOMAIN_ID of this test's, discovery limited to the
machine, and is stopped with SIGINT like a launch file would; every wait is bounded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval import IMAGE, looping_bag, make_tiny_model, synth_bag

from deltaworld_ros.cli import main
from deltaworld_ros.io.bags import read_messages
from deltaworld_ros.tools.demo import stop_node, wait_ready
from deltaworld_ros.tools.harness import NodeProcess, domain_id, write_params

pytestmark = pytest.mark.dds
DOMAIN = domain_id("test_replay")  # this run's own domain; discovery on this machine only


@pytest.fixture(autouse=True)
def _local_ros(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def test_the_node_s_published_forecasts_are_recorded_and_scored(tmp_path: Path):
    """A bag that loops once (stamps jump back): the node restarts its history, the replay
    keeps pacing by stamp and time, eval pairs each forecast with its lap's frame."""
    model = make_tiny_model(tmp_path / "tiny")
    bag = looping_bag(synth_bag(tmp_path / "synth", 10, "--seed", "5"), tmp_path / "loop")
    record = tmp_path / "predictions"
    params = {"use_sim_time": True, "model_dir": str(model), "backend": "torch"}
    params = write_params(tmp_path / "params.yaml", params | {"num_hypotheses": 3, "horizon": 2})
    remap = ("-r", f"image:={IMAGE}")
    with NodeProcess([params], DOMAIN, tmp_path / "node.log", extra_args=remap) as node:
        try:
            assert wait_ready(node, timeout=45), node.log()
            replay = ["replay", "--bag", str(bag), "--image-topic", IMAGE, "--fast"]
            replay += ["--record", str(record), "--domain-id", str(DOMAIN), "--no-progress"]
            assert main([*replay, "--settle", "0.3", "--timeout", "5"]) == 0
        finally:
            code = stop_node(node)
    assert code == 0, node.log()  # SIGINT is a clean shutdown

    topics = {m.topic for m in read_messages(record)}
    assert {"/deltaworld/futures", "/deltaworld/futures/layout", "/deltaworld/replay/stats"} <= (
        topics
    )
    out = tmp_path / "report"
    args = ["eval", "--bag", str(bag), "--image-topic", IMAGE, "--predictions", str(record)]
    args += ["--model-dir", str(model), "--backend", "torch"]  # pseudo-labels: no labels in the bag
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "predictions" and (metrics["K"], metrics["T"]) == (3, 2)
    assert metrics["frames"]["kept"] == 20
    assert metrics["frames"]["restarts"] == {"stamp went backwards": 1}
    # --fast waits for every forecast: the node forecast every frame but each lap's first.
    assert metrics["predictions"]["forecasts matched to input frames"] == 18
    assert metrics["replay"]["timeouts_fast"] == 0
    assert [s["scored"] for s in metrics["class_maps"]["steps"]] == [2 * 8, 2 * 7]
    assert metrics["target"]["kind"] == "pseudo-labels"
    assert metrics["features"]["source"] == "offline Forecaster run"
    assert (out / "example_1.png").is_file()


def test_replay_without_a_node_says_what_to_check(tmp_path: Path, capsys):
    bag = synth_bag(tmp_path / "synth", 3)
    args = ["replay", "--bag", str(bag), "--image-topic", IMAGE, "--record", str(tmp_path / "r")]
    assert main([*args, "--wait", "1", "--domain-id", str(DOMAIN), "--no-progress"]) == 2
    assert "nobody subscribed to /camera/image_raw within 1 s" in capsys.readouterr().err


def test_replay_of_a_missing_topic_lists_the_image_topics(tmp_path: Path, capsys):
    bag = synth_bag(tmp_path / "synth", 3)
    args = ["replay", "--bag", str(bag), "--image-topic", "/nope", "--record", str(tmp_path / "r")]
    assert main([*args, "--domain-id", str(DOMAIN)]) == 2
    assert "/camera/image_raw (sensor_msgs/msg/Image)" in capsys.readouterr().err
