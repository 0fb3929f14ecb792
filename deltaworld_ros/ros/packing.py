"""A Forecast -> the node's output messages; every header is the source frame's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ..io.images import encode_raw
from ..model.config import generic_classes
from ..runtime.forecaster import Forecast
from .futures import tile

BAR_WIDTH = 6  # px of the confidence bar left of each hypothesis row in the visualization


def image_message(array: np.ndarray, encoding: str, header: Header) -> Image:
    """sensor_msgs/Image of an array packed by io.images.encode_raw."""
    data, step = encode_raw(array, encoding)
    return Image(
        header=header,
        height=array.shape[0],
        width=array.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=data,
    )


def class_encoding(dtype: np.dtype) -> str:
    return "mono8" if np.dtype(dtype) == np.uint8 else "mono16"


def futures_message(forecast: Forecast, header: Header) -> Image:
    """Class ids, K rows x T columns of tiles."""
    classes = forecast.classes
    return image_message(tile(classes), class_encoding(classes.dtype), header)


def confidence_message(forecast: Forecast, header: Header) -> Image:
    """32FC1, 1 x K, the confidence of each futures row."""
    return image_message(forecast.confidence.astype(np.float32)[None], "32FC1", header)


def uncertainty_message(forecast: Forecast, header: Header) -> Image:
    """32FC1, 1 x T tiles: per pixel, the share of hypotheses off the per-pixel mode."""
    return image_message(tile(forecast.uncertainty[None].astype(np.float32)), "32FC1", header)


def depth_message(forecast: Forecast, header: Header) -> Image:
    """32FC1 metres, K rows x T columns of tiles as in futures."""
    return image_message(tile(forecast.depth.astype(np.float32)), "32FC1", header)


def palette_array(palette: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8; a generated palette when the model ships none."""
    if len(palette) < num_classes:
        palette = generic_classes(num_classes)[1]
    return np.asarray(palette, np.uint8)


def visualization_message(
    forecast: Forecast, rgb: np.ndarray, palette: np.ndarray, header: Header
) -> Image:
    """rgb8 mosaic for rqt/rviz. Left column: the frame's segmentation, then the frame itself;
    then a bar per row (filled to the row's confidence); then the K x T hypotheses."""
    k, t, h, w = forecast.classes.shape
    column = np.zeros((k * h, w, 3), np.uint8)
    column[:h] = palette[forecast.current_classes]
    if k > 1:
        frame = PILImage.fromarray(rgb).resize((w, h), PILImage.BILINEAR, reducing_gap=2.0)
        column[h : 2 * h] = np.asarray(frame)
    bars = np.full((k * h, BAR_WIDTH, 3), 40, np.uint8)
    for row, confidence in enumerate(forecast.confidence):
        filled = round(float(confidence) * h)
        bars[(row + 1) * h - filled : (row + 1) * h, 1:-1] = 255
    mosaic = np.concatenate((column, bars, palette[tile(forecast.classes)]), axis=1)
    return image_message(mosaic, "rgb8", header)
