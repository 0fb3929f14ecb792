"""The futures message format a planner reads, without DDS: pack a Forecast as the node does,
decode it back with deltaworld_ros.ros.futures.decode_futures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rclpy
from std_msgs.msg import Header, String

from deltaworld_ros.ros import packing
from deltaworld_ros.ros.futures import (
    crop_boxes,
    decode_depth,
    decode_float_image,
    decode_futures,
    make_layout,
    tile,
    untile,
)
from deltaworld_ros.runtime.forecaster import Forecast
from deltaworld_ros.tools.harness import domain_id

K, T, H, W = 3, 2, 6, 10


def header(sec: int = 12, nanosec: int = 500_000_000) -> Header:
    msg = Header(frame_id="camera_optical_frame")
    msg.stamp.sec, msg.stamp.nanosec = sec, nanosec
    return msg


def forecast(num_classes: int = 7) -> Forecast:
    rng = np.random.default_rng(0)
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    confidence = np.sort(rng.random(K).astype(np.float32))[::-1]
    return Forecast(
        stream_id="camera",
        stamp=12.5,
        future_stamps=12.5 + 0.1 * np.arange(1, T + 1),
        classes=rng.integers(0, num_classes, (K, T, H, W)).astype(dtype),
        confidence=confidence / confidence.sum(),
        uncertainty=rng.random((T, H, W)).astype(np.float32),
        current_classes=rng.integers(0, num_classes, (H, W)).astype(dtype),
        delta_tokens=np.zeros((K, T, 4), np.float32),
        order=np.arange(K),
        history_length=3,
        reset=None,
        depth=rng.uniform(0.5, 80, (K, T, H, W)).astype(np.float32),
        current_depth=rng.uniform(0.5, 80, (H, W)).astype(np.float32),
    )


def layout(num_classes: int = 7, encoding: str = "mono8", depth: bool = True) -> dict:
    return make_layout(
        camera="camera",
        num_hypotheses=K,
        horizon=T,
        tile_size=(H, W),
        step_seconds=0.1,
        class_names=[f"c{i}" for i in range(num_classes)],
        palette=[(i, i, i) for i in range(num_classes)],
        encoding=encoding,
        crop="resize",
        source_size=(48, 64),
        depth=depth,
    )


def test_rows_are_hypotheses_and_columns_horizon_steps():
    maps = np.arange(K * T * H * W).reshape(K, T, H, W)
    mosaic = tile(maps)
    assert mosaic.shape == (K * H, T * W)
    np.testing.assert_array_equal(mosaic[H : 2 * H, W : 2 * W], maps[1, 1])
    np.testing.assert_array_equal(untile(mosaic, K, T), maps)
    with pytest.raises(ValueError, match="does not split"):
        untile(mosaic, K + 1, T)


@pytest.mark.parametrize(("num_classes", "encoding"), [(7, "mono8"), (300, "mono16")])
def test_decode_futures_returns_what_the_node_packed(num_classes, encoding):
    f = forecast(num_classes)
    futures = packing.futures_message(f, header())
    confidence = packing.confidence_message(f, header())
    body = layout(num_classes, encoding)
    assert futures.encoding == encoding
    assert (futures.height, futures.width) == (K * H, T * W)
    assert (confidence.encoding, confidence.height, confidence.width) == ("32FC1", 1, K)
    for given in (body, json.dumps(body), String(data=json.dumps(body))):
        classes, conf = decode_futures(futures, confidence, given)
        np.testing.assert_array_equal(classes, f.classes)
        np.testing.assert_allclose(conf, f.confidence)
        assert conf.sum() == pytest.approx(1)
    classes, conf = decode_futures(futures, layout=body)
    assert conf is None and classes.shape == (K, T, H, W)


def test_decode_futures_refuses_mismatched_messages():
    f = forecast()
    futures = packing.futures_message(f, header())
    with pytest.raises(ValueError, match="pair the messages by header stamp"):
        decode_futures(futures, packing.confidence_message(f, header(sec=13)), layout())
    with pytest.raises(ValueError, match="needs the layout"):
        decode_futures(futures, packing.confidence_message(f, header()))
    with pytest.raises(ValueError, match="not the futures/layout"):
        decode_futures(futures, layout="{not json")


def test_depth_futures_are_tiles_in_metres_in_the_rows_of_the_class_futures():
    f = forecast()
    msg = packing.depth_message(f, header())
    assert (msg.encoding, msg.height, msg.width) == ("32FC1", K * H, T * W)
    assert msg.header == header()
    body = layout()
    assert body["depth"]["encoding"] == "32FC1" and body["depth"]["unit"] == "m"
    np.testing.assert_array_equal(decode_depth(msg, json.dumps(body)), f.depth)
    assert layout(depth=False)["depth"] is None
    with pytest.raises(ValueError, match="no futures/depth"):
        decode_depth(msg, layout(depth=False))


def test_uncertainty_is_one_row_of_tiles():
    f = forecast()
    msg = packing.uncertainty_message(f, header())
    assert (msg.encoding, msg.height, msg.width) == ("32FC1", H, T * W)
    np.testing.assert_array_equal(untile(decode_float_image(msg), 1, T)[0], f.uncertainty)


def test_visualization_shows_the_frame_bars_and_hypotheses():
    f = forecast()
    palette = packing.palette_array([], 7)  # the model ships none: a generated one
    rgb = np.full((48, 64, 3), 200, np.uint8)
    msg = packing.visualization_message(f, rgb, palette, header())
    mosaic = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
    assert msg.encoding == "rgb8" and msg.header.stamp == header().stamp
    assert mosaic.shape == (K * H, W + packing.BAR_WIDTH + T * W, 3)
    np.testing.assert_array_equal(mosaic[:H, :W], palette[f.current_classes])
    np.testing.assert_array_equal(mosaic[H : 2 * H, :W], rgb[:H, :W])
    np.testing.assert_array_equal(mosaic[:H, -W:], palette[f.classes[0, -1]])


def test_crop_boxes_spread_squares_from_edge_to_edge():
    """The layout's boxes locate each square crop in the source frame."""
    assert crop_boxes((40, 130), "square") == [[0, 0, 40, 40], [45, 0, 85, 40], [90, 0, 130, 40]]
    assert crop_boxes((48, 96), "square") == [[0, 0, 48, 48], [48, 0, 96, 48]]
    assert crop_boxes((48, 64), "square") == [[0, 0, 64, 48]]  # not wide enough for two
    assert crop_boxes((64, 48), "square") == [[0, 0, 48, 64]]
    assert crop_boxes((48, 96), "resize") == [[0, 0, 96, 48]]


def test_the_planner_snippet_of_the_docs_decodes_what_the_node_publishes(request):
    """README.md's planner subscriber, fed the messages the node packs (in publish order)."""
    docs = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", docs, re.S) if "class Planner" in b]
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    f = forecast()
    rclpy.init(domain_id=domain_id(request.node.name))
    try:
        planner = namespace["Planner"]()
        planner.on_layout(String(data=json.dumps(layout())))
        planner.on_confidence(packing.confidence_message(f, header()))
        planner.on_futures(packing.futures_message(f, header()))
        classes, confidence = planner.futures
        np.testing.assert_array_equal(classes, f.classes)
        np.testing.assert_allclose(confidence, f.confidence)
        planner.on_futures(packing.futures_message(f, header(sec=99)))  # no confidence yet
        assert planner.futures[1] is None
        planner.destroy_node()
    finally:
        rclpy.shutdown()
