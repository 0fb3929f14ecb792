"""`deltaworld bench-gpu`, the parts a CPU can run: the device-resident step forecasts what the
Forecaster does (same frames, queries and weights), bf16 under autocast, the paced cameras,
and a mode that needs CUDA is reported as failed without costing the others."""

from __future__ import annotations

import json

from deltaworld_ros.cli import main


def test_the_device_step_matches_the_forecaster_and_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    argv = ["bench-gpu", "--device", "cpu", "--preset", "tiny", "--image-size", "64x64",
            "--num-hypotheses", "3", "--horizon", "2", "--precision", "bf16",
            "--modes", "eager,graph",
            "--steps", "2", "--warmup", "1", "--check", "--cameras", "2", "--rate", "20",
            "--seconds", "0.2", "--paced-mode", "eager", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "check: device step = Forecaster on 100.00% of class pixels" in capsys.readouterr().out
    result = json.loads(out.read_text())
    eager = result["modes"]["eager"]
    assert eager["median_ms"] > 0 and eager["achieved_tflop_s"] > 0 and eager["of_floor"] > 0
    assert "needs a CUDA device" in result["modes"]["graph"]["error"]
    assert result["floor_ms"] > 0 and result["matmul_peak_tflop_s"] > 0
    paced = result["paced"]
    assert paced["cameras"] == 2 and paced["ticks"] == 4 and 0 <= paced["missed_deadlines"] <= 4
    assert 0 < paced["latency_median_ms"] <= paced["latency_p99_ms"]
