"""`deltaworld demo` end to end on a short bag: synth, a real forecast_node process, replay,
SIGINT, eval of what the node published. The tiny random-weight model keeps it to seconds;
`make demo` runs the same chain on the default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval import make_tiny_model

from deltaworld_ros.cli import main
from deltaworld_ros.ros.harness import domain_id

pytestmark = pytest.mark.dds


def test_demo_scores_what_the_node_published(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    model = make_tiny_model(tmp_path / "tiny")
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--frames", "24", "--model", str(model)]
    args += ["--backend", "torch", "--k", "3", "--domain-id", str(domain_id("test_demo"))]
    assert main([*args, "--rate", "2", "--no-progress"]) == 0  # 2x the recorded rate
    printed = capsys.readouterr().out
    assert "node stopped (exit code 0)" in printed
    assert f"Report: {out / 'report' / 'report.html'}" in printed
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["mode"] == "predictions" and metrics["target"]["kind"] == "labels"
    assert metrics["replay"]["mode"] == "rate 2"
    # At a fixed rate the node may drop a frame when it is busy; eval counts what came.
    matched = metrics["predictions"]["forecasts matched to input frames"]
    missed = metrics["predictions"].get("input frames the node did not forecast", 0)
    assert matched + missed == metrics["frames"]["kept"]
    assert matched >= 12
    assert metrics["class_maps"]["steps"][2]["scored"] > 0
    for name in ("report.md", "horizon.png", "confidence.png", "example_1.png"):
        assert (out / "report" / name).is_file(), name
