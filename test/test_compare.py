"""`deltaworld bench-compare` on the embedded model: every variant forecasts the same frames
with the same noise, takes turns, and is reported against the package. The authors' code is
not vendored, so here the reference is only asked for where there is none."""

from __future__ import annotations

import json
import re

from deltaworld_ros.cli import main
from deltaworld_ros.model.store import default_model_dir

QUICK = [
    "--num-hypotheses",
    "2",
    "--horizon",
    "2",
    "--rounds",
    "2",
    "--block",
    "1",
    "--warmup",
    "1",
    "--threads",
    "1",
    "--no-int8",
]


def test_variants_agree_and_take_turns(tmp_path, capsys):
    out = tmp_path / "compare.json"
    argv = ["bench-compare", "--model-dir", str(default_model_dir()), *QUICK, "--levers"]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    variants = result["variants"]
    assert list(variants) == [
        "package",
        "package torch",
        "package, BLAS pool not limited",
        "package, anchor not encoded ahead",
        "package, 1 engine thread",
    ]
    assert result["steps_per_variant"] == 2
    assert variants["package"]["speedup_vs_package"] == 1.0
    assert all(v["median_ms"] > 0 and v["stream_frames_per_s"] > 0 for v in variants.values())
    assert all(0 < v["latency_median_ms"] <= v["median_ms"] for v in variants.values())
    for name, agreement in result["agreement_with_package"].items():
        assert agreement["max_feature_difference"] < 1e-3, name
        assert agreement["class_pixels_equal"] >= 0.99, name
    assert "load average" in capsys.readouterr().out


def test_a_folder_that_is_no_deltatok_checkout_is_refused_with_what_is_needed(tmp_path, capsys):
    assert main(["bench-compare", "--deltatok", str(tmp_path), *QUICK]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.match(r"deltaworld bench-compare: .*not a deltatok checkout.*transformers >= 5", line)
