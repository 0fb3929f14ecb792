"""The benchmark's FLOP model against the reference count, and one short run of `bench`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FIXTURES

from deltaworld_ros.cli import main
from deltaworld_ros.model.config import vitb16
from deltaworld_ros.runtime.bench import Records, run_steps, soak_report, synthetic_streams
from deltaworld_ros.runtime.engine import GRAPHS
from deltaworld_ros.runtime.flops import CountingEngine, frame_flops, graph_flops
from deltaworld_ros.runtime.forecaster import Forecaster, ForecasterConfig
from deltaworld_ros.runtime.torch_engine import TorchEngine


def test_closed_form_flops_match_the_reference_count_at_512():
    """FlopCounterMode on the reference modules, ViT-B/16 at 512x512 (N = 1024 patches)."""
    data = json.loads((FIXTURES / "vitb_checkpoint_keys.json").read_text())
    ref = data["flops_512x512"]["per_module"]
    cfg = vitb16()
    assert graph_flops(cfg, "backbone") == ref["backbone_per_frame"]["flops"]
    assert graph_flops(cfg, "encoder") == ref["deltatok_encode"]["flops"]
    assert graph_flops(cfg, "decoder") == ref["deltatok_decode"]["flops"]
    assert 20 * graph_flops(cfg, "predictor", 4) == ref["predictor_K20_ctx4_one_step"]["flops"]
    assert graph_flops(cfg, "head") == ref["seghead_19"]["flops"]


def test_counted_flops_equal_the_steady_state_formula(tiny_model):
    engine = CountingEngine(TorchEngine(tiny_model))
    forecaster = Forecaster(engine, ForecasterConfig(num_hypotheses=4, horizon=2))
    frames = synthetic_streams(2, tiny_model.cfg.image_size, cycle=3)
    records = run_steps(forecaster, engine, frames, steps=6)
    expected = frame_flops(tiny_model.cfg, 4, 2, forecaster.context_length)
    last = records.flops[-1]  # the window is full: the anchor is re-encoded every frame
    assert dict(zip(GRAPHS, last.tolist(), strict=True)) == {g: 2 * v for g, v in expected.items()}


def test_soak_report_flags_growth():
    steady = Records.empty(500)
    steady.wall[:], steady.cpu[:], steady.rss[:] = 0.01, 0.01, 100 << 20
    assert soak_report(steady, 5.0)["passed"]
    leaking = Records.empty(500)
    leaking.wall[:], leaking.cpu[:], leaking.rss[:] = (
        0.01,
        0.01,
        (100 + np.arange(500) // 10) * 2**20,
    )
    report = soak_report(leaking, 5.0)
    assert not report["passed"] and report["drift_percent"]["rss_mib"] > 5


def test_bench_command_writes_its_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = "bench --preset tiny --backend torch --frames 6 --streams 2 --warmup 4"
    argv += " --num-hypotheses 2 --horizon 2"
    argv = [*argv.split(), "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["stream_frames"] == 6 and result["steps"] == 3
    assert result["flops_per_stream_frame"] == pytest.approx(
        result["closed_form_flops_per_stream_frame"]
    )
    assert {"backbone", "predictor", "total", "ahead"} <= set(result["stages"])
    assert "stream-frames/s" in capsys.readouterr().out
