"""The node's intake without DDS: latest-frame slots, the frame-size policy, the counters that
/diagnostics reports. The node tests show the same over DDS; these pin each rule down."""

from __future__ import annotations

import threading
from collections import Counter

from diagnostic_msgs.msg import DiagnosticStatus

from deltaworld_ros.ros.diagnostics import (
    INACTIVE,
    PUBLISHED,
    RECEIVED,
    STALE,
    WRONG_SIZE,
    NodeStats,
)
from deltaworld_ros.runtime.intake import ADOPT_SIZE_AFTER, FrameSizes, LatestFrames

JOIN_S = 30.0  # a safety net for a broken test, not a timing


def test_each_camera_slot_holds_its_newest_message():
    frames = LatestFrames()
    assert frames.put("left", "l1") is False
    assert frames.put("left", "l2") is True  # l1 was never taken: stale
    assert frames.put("right", "r1") is False
    assert frames.take() == {"left": "l2", "right": "r1"}
    assert frames.put("left", "l3") is False  # taken slots are empty again
    assert frames.take() == {"left": "l3"}


def test_take_waits_for_a_message_and_close_wakes_it():
    frames = LatestFrames()
    taken: list = []
    took = threading.Event()

    def worker() -> None:
        while (batch := frames.take()) is not None:
            taken.append(batch)
            took.set()
        taken.append(None)

    thread = threading.Thread(target=worker)
    thread.start()
    frames.put("cam", "m1")
    assert took.wait(JOIN_S)
    frames.close()
    thread.join(JOIN_S)
    assert not thread.is_alive() and taken == [{"cam": "m1"}, None]
    assert frames.take() is None  # closed for good


def test_a_camera_adopts_a_new_size_only_after_it_persists():
    sizes = FrameSizes()
    assert sizes.expected is None
    assert sizes.admit((480, 640)) and sizes.expected == (480, 640)
    assert not sizes.admit((240, 320))  # a lone odd frame
    assert sizes.admit((480, 640)) and sizes.expected == (480, 640)
    verdicts = [sizes.admit((720, 1280)) for _ in range(ADOPT_SIZE_AFTER + 1)]
    assert verdicts == [False] * (ADOPT_SIZE_AFTER - 1) + [True, True]
    assert sizes.expected == (720, 1280)
    assert not sizes.admit((480, 640))  # the old size is now the odd one


def values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def test_node_stats_report_each_camera_and_the_engine():
    stats = NodeStats(["front", "rear"])
    for key in (RECEIVED, RECEIVED, RECEIVED, PUBLISHED, STALE, WRONG_SIZE):
        stats.count("front", key)
    stats.forecaster_stats({"front": Counter({"gated": 4, "reset: gap in stamps": 1})})
    stats.record("forecaster: total", 0.010)
    stats.record("forecaster: total", 0.030)
    front, rear, engine = stats.report(
        {"front": "/front/image", "rear": "/rear/image"}, {"backend": "torch", "model": "tiny"}
    )

    assert front.name == "deltaworld: camera front" and front.level == DiagnosticStatus.WARN
    assert front.message == f"1 {WRONG_SIZE}"  # stale frames are not a problem of the input
    got = values(front)
    assert got[RECEIVED] == "3" and got[PUBLISHED] == "1" and got[STALE] == "1"
    assert got["dropped: gated"] == "4" and got["reset: gap in stamps"] == "1"
    assert rear.level == DiagnosticStatus.WARN and rear.message.startswith("no frames on /rear")
    assert engine.message == "torch tiny"
    assert values(engine)["forecaster: total mean ms"] == "20.00"
    assert values(engine)["forecaster: total max ms"] == "30.00"


def test_node_stats_tell_problems_of_the_last_period_and_totals_since_start():
    stats = NodeStats(["cam"])
    cameras = {"cam": "/image"}
    stats.count("cam", RECEIVED)
    stats.count("cam", WRONG_SIZE)
    stats.report(cameras, {})
    stats.count("cam", RECEIVED)
    stats.set_problem("cam", "frames are 0.5 s apart")
    (cam, _) = stats.report(cameras, {})
    assert cam.level == DiagnosticStatus.WARN and cam.message == "frames are 0.5 s apart"
    assert values(cam)[RECEIVED] == "2" and values(cam)[WRONG_SIZE] == "1"  # totals
    stats.count("cam", RECEIVED)
    stats.set_problem("cam", None)
    (cam, _) = stats.report(cameras, {})
    assert cam.level == DiagnosticStatus.OK and cam.message == "forecasting"


def test_an_inactive_node_reports_the_frames_it_did_not_forecast():
    stats = NodeStats(["cam"])
    for key in (RECEIVED, INACTIVE, RECEIVED, INACTIVE):
        stats.count("cam", key)
    (cam, _) = stats.report({"cam": "/image"}, {}, active=False)
    assert cam.level == DiagnosticStatus.OK and cam.message == "inactive: 2 frames not forecast"
