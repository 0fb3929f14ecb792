"""The futures message format, and its decoder for planner authors (no ROS import).

`futures` is one class-id image (mono8, or mono16 past 256 classes) of K rows x T columns of
tiles: row k is hypothesis k (rows sorted by confidence, most confident first), column t is
horizon step t + 1, i.e. the frame expected `(t + 1) * step_seconds` after the header stamp.
`futures/confidence` is a 32FC1 image 1 x K (the rows' confidences, summing to 1),
`futures/uncertainty` a 32FC1 image of 1 x T tiles, `futures/depth` (a model with a depth
head) a 32FC1 image of K x T tiles in metres, rows and columns as in `futures`, and
`futures/layout` (transient local) the JSON that says how to cut them: see `make_layout`.

    classes, confidence = decode_futures(futures_msg, confidence_msg, layout_msg)
    classes.shape == (K, T, h, w); confidence.shape == (K,)
    depth = decode_depth(depth_msg, layout_msg)  # (K, T, h, w) metres
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io.images import ImageDecodeError, decode_labels
from ..runtime.forecaster import crop_boxes
from .topics import DEPTH

LAYOUT_FORMAT = "deltaworld-futures/1"


def tile(maps: np.ndarray) -> np.ndarray:
    """(K, T, h, w) -> one (K*h, T*w) mosaic: rows are hypotheses, columns horizon steps."""
    k, t, h, w = maps.shape
    return np.ascontiguousarray(maps.transpose(0, 2, 1, 3)).reshape(k * h, t * w)


def untile(mosaic: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Inverse of `tile`: (rows*h, columns*w) -> (rows, columns, h, w)."""
    height, width = mosaic.shape[:2]
    if height % rows or width % columns:
        raise ValueError(
            f"a {height}x{width} mosaic does not split into {rows} rows x {columns} columns of "
            "equal tiles; the layout does not belong to this message"
        )
    h, w = height // rows, width // columns
    return mosaic.reshape(rows, h, columns, w, *mosaic.shape[2:]).swapaxes(1, 2)


def make_layout(
    *,
    camera: str,
    num_hypotheses: int,
    horizon: int,
    tile_size: tuple[int, int],
    step_seconds: float,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    encoding: str,
    crop: str,
    source_size: tuple[int, int],
    depth: bool = False,
    confidence: str = "kernel density",
) -> dict[str, Any]:
    """The `futures/layout` JSON body. tile_size is (h, w) of one tile, the crops of a wide
    frame side by side in it; "crops" locates each in the source frame (see crop_boxes).
    "depth" describes futures/depth, null when the model has no depth head; "confidence" says
    where futures/confidence comes from: "learned scorer" or "kernel density"."""
    return {
        "format": LAYOUT_FORMAT,
        "camera": camera,
        "K": int(num_hypotheses),
        "T": int(horizon),
        "tile_size": [int(tile_size[0]), int(tile_size[1])],
        "step_seconds": float(step_seconds),
        "rows": "hypotheses, sorted by confidence (futures/confidence), most confident first",
        "confidence": confidence,
        "columns": "horizon steps: column t is header.stamp + (t + 1) * step_seconds",
        "encoding": encoding,
        "class_names": list(class_names),
        "palette": [list(map(int, c)) for c in palette],
        "crop": crop,
        "crops": crop_boxes(source_size, crop),
        "source_size": [int(source_size[0]), int(source_size[1])],
        "depth": {"topic": DEPTH, "encoding": "32FC1", "unit": "m",
                  "tiles": "as in futures: K rows x T columns"} if depth else None,
    }  # fmt: skip


def parse_layout(layout: Any) -> dict[str, Any]:
    """A layout as a dict, its JSON text, or the std_msgs/String that carries it."""
    if isinstance(layout, dict):
        return layout
    text = getattr(layout, "data", layout)
    try:
        body = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"layout is not the futures/layout JSON: {err}") from err
    if not isinstance(body, dict) or body.get("format") != LAYOUT_FORMAT:
        raise ValueError(f"layout format is not {LAYOUT_FORMAT!r}: {str(text)[:80]!r}")
    return body


def decode_float_image(msg: Any) -> np.ndarray:
    """(H, W) float32 from a 32FC1 sensor_msgs/Image (rclpy or rosbags)."""
    if msg.encoding != "32FC1":
        raise ImageDecodeError(f"expected a 32FC1 image, got encoding {msg.encoding!r}")
    if msg.height <= 0 or msg.width <= 0 or msg.step < 4 * msg.width:
        raise ImageDecodeError(
            f"32FC1 image {msg.width}x{msg.height} with step {msg.step}: sizes must be > 0 "
            "and step >= 4 * width"
        )
    raw = np.frombuffer(bytes(msg.data), np.uint8)
    if raw.size < msg.step * msg.height:
        raise ImageDecodeError(
            f"32FC1 image needs step*height={msg.step * msg.height} bytes, got {raw.size}"
        )
    rows = raw[: msg.step * msg.height].reshape(msg.height, msg.step)[:, : 4 * msg.width]
    return rows.copy().view(">f4" if msg.is_bigendian else "<f4").astype(np.float32)


def decode_futures(
    futures_msg: Any, confidence_msg: Any = None, layout: Any = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """futures (+ confidence, + layout) messages -> classes (K, T, h, w), confidence (K,).

    K comes from the layout or the confidence message's width, T from the layout (the
    transient-local `futures/layout`: a String message, its JSON text or the parsed dict).
    confidence is None when no confidence message is given. Messages of different stamps
    are refused, so that a planner never pairs a forecast with another's confidences.
    """
    if layout is None:
        raise ValueError(
            "decode_futures needs the layout (subscribe to futures/layout, transient local) "
            "to know the horizon T"
        )
    body = parse_layout(layout)
    mosaic = decode_labels(futures_msg)  # (K*h, T*w)
    confidence = None
    if confidence_msg is not None:
        if _stamp(confidence_msg) != _stamp(futures_msg):
            raise ValueError(
                f"confidence stamp {_stamp(confidence_msg)} != futures stamp "
                f"{_stamp(futures_msg)}: pair the messages by header stamp"
            )
        confidence = decode_float_image(confidence_msg).reshape(-1)
        if confidence.size != body["K"]:
            raise ValueError(
                f"confidence has {confidence.size} values but the layout says K={body['K']}"
            )
    return untile(mosaic, body["K"], body["T"]), confidence


def decode_depth(depth_msg: Any, layout: Any) -> np.ndarray:
    """futures/depth + the layout -> depth (K, T, h, w) in metres, rows as in futures."""
    body = parse_layout(layout)
    if not body.get("depth"):
        raise ValueError("the layout says this model publishes no futures/depth")
    return untile(decode_float_image(depth_msg), body["K"], body["T"])


def _stamp(msg: Any) -> tuple[int, int]:
    return int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)
