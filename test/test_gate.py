"""The frame gate (runtime/gate.py) and the node's frame-size policy in front of it: which frames
of a camera stream are kept, and where the history restarts. One table, every rule.

The frame interval is 1/8 s, so that every stamp and bound below is exact in binary: a frame
is kept from 3/32 s after the last kept one, and more than 3/8 s after it restarts the history.
"""

from __future__ import annotations

import numpy as np
import pytest

from deltaworld_ros.runtime.gate import (
    GAP,
    GATED,
    RESOLUTION_CHANGED,
    STAMP_BACKWARDS,
    FrameGate,
    GateSettings,
    Verdict,
)
from deltaworld_ros.runtime.intake import ADOPT_SIZE_AFTER, WRONG_SIZE, CameraGate

SETTINGS = GateSettings(frame_interval=0.125, tolerance=0.25, max_gap=3.0)
A, B, C = (48, 64), (96, 128), (64, 64)  # frame sizes (h, w)

# Expected verdicts, spelled short.
FIRST = Verdict(kept=True, starts=True)
KEPT = Verdict(kept=True)
DROP = Verdict(kept=False, drop=GATED)
WRONG = Verdict(kept=False, drop=WRONG_SIZE)


def restart(reason: str) -> Verdict:
    return Verdict(kept=True, starts=True, restart=reason)


GATE_CASES = {
    "the first frame starts the history": ([(5.0, A)], [FIRST]),
    "30 Hz in, one frame per 1/8 s kept": (
        [(i / 32, A) for i in range(9)],
        [FIRST, DROP, DROP, KEPT, DROP, DROP, KEPT, DROP, DROP],
    ),
    "kept from exactly (1 - tolerance) intervals on": (
        [(0.0, A), (3 / 32 - 1 / 1024, A), (3 / 32, A)],
        [FIRST, DROP, KEPT],
    ),
    "a repeated stamp is gated": ([(1.0, A), (1.0, A)], [FIRST, DROP]),
    "late frames keep the grid of the kept ones": (
        [(0.0, A), (0.25, A), (0.375, A)],
        [FIRST, KEPT, KEPT],
    ),
    "a stamp before the last kept one restarts": (
        [(1.0, A), (1.125, A), (1.0625, A), (1.09375, A)],
        [FIRST, KEPT, restart(STAMP_BACKWARDS), DROP],
    ),
    "going back behind a gated frame only is gated (jitter)": (
        [(1.0, A), (1.0625, A), (1.03125, A), (1.125, A)],
        [FIRST, DROP, DROP, KEPT],
    ),
    "a bag loop restarts once, then the grid starts anew": (
        [(10.0, A), (10.125, A), (2.0, A), (2.03125, A), (2.125, A)],
        [FIRST, KEPT, restart(STAMP_BACKWARDS), DROP, KEPT],
    ),
    "a gap of exactly max_gap intervals does not restart": (
        [(0.0, A), (0.375, A)],
        [FIRST, KEPT],
    ),
    "a gap beyond max_gap intervals restarts": (
        [(0.0, A), (0.375 + 1 / 1024, A)],
        [FIRST, restart(GAP)],
    ),
    "the gap counts from the last kept frame, not the last seen": (
        [(0.0, A), (0.0625, A), (0.40625, A)],
        [FIRST, DROP, restart(GAP)],
    ),
    "a new size restarts, even where the stamp would gate": (
        [(0.0, A), (0.03125, B), (0.0625, B), (0.125, B)],
        [FIRST, restart(RESOLUTION_CHANGED), DROP, KEPT],
    ),
    "a new size wins over a backwards stamp": (
        [(1.0, A), (0.5, B)],
        [FIRST, restart(RESOLUTION_CHANGED)],
    ),
    "back and forth between sizes restarts each time": (
        [(0.0, A), (0.125, B), (0.25, A)],
        [FIRST, restart(RESOLUTION_CHANGED), restart(RESOLUTION_CHANGED)],
    ),
    "an unknown size (a compressed frame not decoded) applies no size rule": (
        [(0.0, A), (0.125, None), (0.25, B)],
        [FIRST, KEPT, restart(RESOLUTION_CHANGED)],
    ),
}


@pytest.mark.parametrize(("frames", "expected"), GATE_CASES.values(), ids=GATE_CASES.keys())
def test_the_frame_gate(frames, expected):
    gate = FrameGate(SETTINGS)
    assert [gate.admit(stamp, size) for stamp, size in frames] == expected


CAMERA_CASES = {
    "a lone frame of another size is dropped, no restart": (
        [(0.0, A), (0.125, B), (0.25, A)],
        [FIRST, WRONG, KEPT],
    ),
    f"a size that persists {ADOPT_SIZE_AFTER} frames is adopted and restarts": (
        [(0.0, A), (0.125, B), (0.25, B), (0.375, B), (0.5, B)],
        [FIRST, WRONG, WRONG, restart(RESOLUTION_CHANGED), KEPT],
    ),
    "the new size must come in a row": (
        [(0.0, A), (0.0625, B), (0.078125, C), (0.09375, B), (0.109375, B), (0.125, A)],
        [FIRST, WRONG, WRONG, WRONG, WRONG, KEPT],
    ),
    "a dropped frame moves no stamp reference": (
        [(1.0, A), (0.5, B), (1.0625, A), (1.125, A)],
        [FIRST, WRONG, DROP, KEPT],
    ),
    "an adopted size is kept on a gating stamp": (
        [(0.0, A), (0.0625, B), (0.0703125, B), (0.078125, B)],
        [FIRST, WRONG, WRONG, restart(RESOLUTION_CHANGED)],
    ),
}


@pytest.mark.parametrize(("frames", "expected"), CAMERA_CASES.values(), ids=CAMERA_CASES.keys())
def test_the_cameras_size_policy_in_front_of_the_gate(frames, expected):
    gate = CameraGate(SETTINGS)
    assert [gate.admit(stamp, size) for stamp, size in frames] == expected


def test_gated_frames_pass_the_gate_again_unchanged():
    """The evaluator gates a recording and hands the kept frames to the Forecaster, whose gate
    runs again: both must keep the same frames and restart at the same ones."""
    rng = np.random.default_rng(0)
    stamps = np.cumsum(rng.uniform(0.0, 0.2, 400)) + np.where(np.arange(400) >= 250, -20.0, 0)
    stamps[rng.choice(400, 10)] += 2.0  # late stragglers: gaps, then going back
    sizes = [B if 100 <= i < 130 else A for i in range(400)]
    first = CameraGate(SETTINGS)
    verdicts = [first.admit(t, s) for t, s in zip(stamps, sizes, strict=True)]
    kept = [(t, s, v) for t, s, v in zip(stamps, sizes, verdicts, strict=True) if v.kept]
    again = FrameGate(SETTINGS)
    assert [again.admit(t, s) for t, s, _ in kept] == [v for _, _, v in kept]
    assert {v.restart for v in verdicts} == {None, STAMP_BACKWARDS, GAP, RESOLUTION_CHANGED}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(frame_interval=0.0), "frame_interval must be > 0 s, got 0.0"),
        (dict(frame_interval=0.1, tolerance=1.0), "gate_tolerance must be in \\[0, 1\\), got 1.0"),
        (dict(frame_interval=0.1, tolerance=-0.1), "gate_tolerance must be in"),
        (dict(frame_interval=0.1, max_gap=1.0), "max_gap must be > 1 \\(frame intervals\\)"),
    ],
)
def test_bad_gate_settings_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        GateSettings(**settings)
