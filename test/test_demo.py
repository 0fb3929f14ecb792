"""`deltaworld demo` end to end on a short bag: synth, a real forecast_node process, replay,
SIGINT, eval of what the node published. The tiny random-weight model keeps it to seconds;
`make demo` runs the same chain on the default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval import make_tiny_model

from deltaworld_ros.cli import main
from deltaworld_ros.model.store import read_manifest
from deltaworld_ros.tools.harness import domain_id

pytestmark = pytest.mark.dds


def test_demo_scores_what_the_node_published(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    model = make_tiny_model(tmp_path / "tiny")
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--frames", "24", "--model-dir", str(model)]
    args += [
        "--backend",
        "torch",
        "--num-hypotheses",
        "3",
        "--domain-id",
        str(domain_id("test_demo")),
    ]
    assert main([*args, "--rate", "2", "--no-progress"]) == 0  # 2x the recorded rate
    printed = capsys.readouterr().out
    size = "x".join(map(str, read_manifest(model).config.image_size))
    for camera in ("static", "vehicle"):
        assert f"[demo] {camera} 1/5 street world, {camera} camera: 24 frames {size}" in printed
        assert f"[demo] {camera} 4/5 node stopped (exit code 0)" in printed
        report = out / camera / "report"
        assert f"{camera} camera: {report / 'report.html'}" in printed
        metrics = json.loads((report / "metrics.json").read_text())
        assert metrics["mode"] == "predictions" and metrics["target"]["kind"] == "labels"
        assert metrics["replay"]["mode"] == "rate 2"
        # At a fixed rate the node may drop a frame when it is busy; eval counts what came.
        matched = metrics["predictions"]["forecasts matched to input frames"]
        missed = metrics["predictions"].get("input frames the node did not forecast", 0)
        assert matched + missed == metrics["frames"]["kept"]
        assert matched >= 6
        # the node's forecasts beside the model's own segmentation (copy-last) and the labels
        # held still, the head on the present frame, and the delta tokens' probes
        step = metrics["class_maps"]["steps"][2]
        assert step["scored"] > 0
        assert {"copy_last", "copy_last_target", "most_confident"} <= set(step["miou"])
        assert metrics["class_maps"]["present_miou"] is not None
        assert metrics["tokens"]["pairs"] > 0
        assert all(metrics["notes"]), metrics["notes"]  # a bag closed properly: no damage note
        text = (report / "report.md").read_text()
        assert "DeltaTok token probes" in text and "copy last (model's segmentation)" in text
        for name in ("report.md", "horizon.png", "confidence.png", "example_1.png"):
            assert (report / name).is_file(), name
