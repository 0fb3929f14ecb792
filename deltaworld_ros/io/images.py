"""sensor_msgs/Image and CompressedImage <-> numpy, with no ROS import.

Every image that enters the package becomes RGB uint8 (H, W, 3) here, whether it comes from
rclpy, from a rosbags-deserialized bag message or from a video, so the node, the training code
and the evaluator see the same pixels. Label maps stay class ids (H, W) uint8 / uint16.

Arrays returned by the decoders never have negative or zero strides (torch.from_numpy accepts
them). rgb8, mono8 labels and little-endian mono16 labels are zero-copy views of the message
buffer: read-only when the buffer is immutable `bytes`; copy before writing into them.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile

# Pillow decodes lazily and, with this flag set, pads a truncated file with grey instead of
# failing; a forecaster fed half-grey frames is worse than a counted drop.
ImageFile.LOAD_TRUNCATED_IMAGES = False

Buffer = bytes | bytearray | memoryview | np.ndarray
# Frames above this many pixels are refused before any decompression: a 160 KiB PNG can
# declare 30000 x 30000 pixels (a 900 MB decode). 4096 x 4096 covers every camera up to 4K.
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageDecodeError(ValueError):
    """A message's fields or payload do not describe a decodable image; `cause` is a short
    name of the problem for counters ("too large", "corrupt payload", "step/data length", ...)."""

    def __init__(self, message: str, cause: str = "corrupt payload") -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class _RawLayout:
    channels: int
    bytes_per_channel: int  # 1 or 2
    rgb_channels: tuple[int, int, int]  # which input channels become R, G, B


_RAW_LAYOUTS: dict[str, _RawLayout] = {
    "rgb8": _RawLayout(3, 1, (0, 1, 2)),
    "bgr8": _RawLayout(3, 1, (2, 1, 0)),
    "8UC3": _RawLayout(3, 1, (2, 1, 0)),  # OpenCV's default channel order is BGR
    "rgba8": _RawLayout(4, 1, (0, 1, 2)),
    "bgra8": _RawLayout(4, 1, (2, 1, 0)),
    "mono8": _RawLayout(1, 1, (0, 0, 0)),
    "8UC1": _RawLayout(1, 1, (0, 0, 0)),
    "rgb16": _RawLayout(3, 2, (0, 1, 2)),
    "bgr16": _RawLayout(3, 2, (2, 1, 0)),
    "mono16": _RawLayout(1, 2, (0, 0, 0)),
    "16UC1": _RawLayout(1, 2, (0, 0, 0)),
}

# Packed 4:2:2, 2 bytes per pixel; value = (offset of Y0, offset of U) in each 4-byte pair.
_YUV422_LAYOUTS: dict[str, tuple[int, int]] = {
    "yuv422": (1, 0),  # ROS's name for UYVY
    "uyvy": (1, 0),
    "UYVY": (1, 0),
    "yuv422_yuy2": (0, 1),  # YUYV
    "yuyv": (0, 1),
    "YUYV": (0, 1),
}

RAW_ENCODINGS: tuple[str, ...] = (*_RAW_LAYOUTS, *_YUV422_LAYOUTS)
LABEL_ENCODINGS: tuple[str, ...] = ("mono8", "8UC1", "mono16", "16UC1")
ENCODE_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "mono8", "mono16", "32FC1")
CompressedFormat = Literal["jpeg", "png"]


def _flat_bytes(data: Any) -> np.ndarray:
    """A 1-D uint8 view of any buffer (bytes, memoryview, array.array, ndarray)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints, as some message wrappers hand out
        return np.asarray(data, dtype=np.uint8)


def _check_pixels(what: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{what} declares {width}x{height} = {width * height} pixels, more than the limit "
            f"of {max_pixels} (raise max_input_pixels if the camera really is this large)",
            "too large",
        )


def _rows(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    bytes_per_pixel: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Validate the geometry and return the (height, width * bytes_per_pixel) pixel bytes."""
    if height <= 0 or width <= 0:
        raise ImageDecodeError(
            f"{encoding} image has height={height}, width={width}; both must be > 0 "
            "(an empty message: check the publisher)",
            "zero size",
        )
    _check_pixels(f"{encoding} image", width, height, max_pixels)
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ImageDecodeError(
            f"{encoding} image step={step} is smaller than width*bytes_per_pixel="
            f"{width}*{bytes_per_pixel}={row_bytes}; step must be the row length in bytes "
            "including padding",
            "step/data length",
        )
    flat = _flat_bytes(data)
    expected = step * height
    if flat.size < expected:
        raise ImageDecodeError(
            f"{encoding} image {width}x{height} with step {step} needs step*height={expected} "
            f"bytes of data, got {flat.size} (truncated message or wrong step/height)",
            "step/data length",
        )
    return flat[:expected].reshape(height, step)[:, :row_bytes]


def _check_bigendian(is_bigendian: int) -> str:
    if is_bigendian not in (0, 1):
        raise ImageDecodeError(f"is_bigendian must be 0 or 1, got {is_bigendian!r}", "is_bigendian")
    return ">" if is_bigendian else "<"


def _yuv422_to_rgb(encoding: str, rows: np.ndarray, width: int) -> np.ndarray:
    if width % 2:
        raise ImageDecodeError(
            f"{encoding} packs two pixels per 4 bytes, so width must be even, got {width}",
            "odd width",
        )
    y_off, u_off = _YUV422_LAYOUTS[encoding]
    pairs = rows.reshape(rows.shape[0], width // 2, 4).astype(np.float32)
    y = pairs[..., [y_off, y_off + 2]] - 16.0  # (H, W/2, 2): both pixels of a pair
    u = pairs[..., u_off, None] - 128.0  # (H, W/2, 1): shared by the pair
    v = pairs[..., u_off + 2, None] - 128.0
    # BT.601 limited range, the matrix OpenCV (hence cv_bridge) uses for 4:2:2.
    y = 1.164 * y
    rgb = np.stack((y + 1.596 * v, y - 0.392 * u - 0.813 * v, y + 2.017 * u), axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(rows.shape[0], width, 3)


def decode_raw(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Buffer,
    is_bigendian: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode the fields of a sensor_msgs/Image into RGB uint8 (H, W, 3).

    16-bit encodings keep their high byte (value >> 8), so a full-range mono16 image maps to
    the full 8-bit range.
    """
    if encoding in _YUV422_LAYOUTS:
        rows = _rows(encoding, height, width, step, data, 2, max_pixels)
        return _yuv422_to_rgb(encoding, rows, width)
    layout = _RAW_LAYOUTS.get(encoding)
    if layout is None:
        raise ImageDecodeError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(RAW_ENCODINGS)} "
            "(republish as rgb8 or bgr8, e.g. with image_proc)",
            "unknown encoding",
        )
    order = _check_bigendian(is_bigendian)
    pixel_bytes = layout.channels * layout.bytes_per_channel
    rows = _rows(encoding, height, width, step, data, pixel_bytes, max_pixels)
    if layout.bytes_per_channel == 2:
        pixels = (rows.view(f"{order}u2") >> 8).astype(np.uint8)
    else:
        pixels = rows
    pixels = pixels.reshape(height, width, layout.channels)
    if layout.rgb_channels == (0, 1, 2) and layout.channels == 3:
        return pixels  # rgb8: a view, no copy
    # Fancy indexing copies into a fresh C-contiguous array (no negative strides from ::-1).
    return pixels[..., list(layout.rgb_channels)]


def _compressed_codec(fmt: str) -> str:
    """'jpeg' or 'png' from a ROS format string such as 'rgb8; jpeg compressed bgr8'."""
    lowered = fmt.lower()
    if "compresseddepth" in lowered:
        raise ImageDecodeError(
            f"format {fmt!r} is a compressedDepth depth image, not a colour image; "
            "subscribe to the colour topic or republish it raw",
            "format",
        )
    if "png" in lowered:
        return "png"
    if "jpeg" in lowered or "jpg" in lowered:
        return "jpeg"
    raise ImageDecodeError(
        f"unsupported compressed image format {fmt!r}; expected jpeg or png "
        "(e.g. 'jpeg', 'png', 'rgb8; jpeg compressed bgr8')",
        "format",
    )


def _open_compressed(fmt: str, data: Buffer, max_pixels: int) -> PILImage.Image:
    """The decoded image; its size is checked against max_pixels from the file header,
    before the payload is decompressed. Any decoder failure is an ImageDecodeError."""
    codec = _compressed_codec(fmt)
    payload = _flat_bytes(data).tobytes()
    what = f"{len(payload)}-byte {codec} payload (format {fmt!r})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(io.BytesIO(payload), formats=[codec.upper()])
            _check_pixels(what, *image.size, max_pixels)
            image.load()  # Pillow decodes lazily; force it so truncation raises here
    except ImageDecodeError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as err:
        raise ImageDecodeError(f"{what}: {err}", "too large") from err
    except Exception as err:  # a decoder meets hostile bytes in many ways; none may escape
        raise ImageDecodeError(
            f"cannot decode {what}: {type(err).__name__}: {err}", "corrupt payload"
        ) from err
    return image


def _wide_to_8bit(image: PILImage.Image) -> np.ndarray | None:
    """High byte of a 16/32-bit integer grey image (Pillow's convert would clip instead)."""
    if image.mode.startswith("I"):
        return (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    return None


def decode_compressed(
    format: str, data: Buffer, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage payload (jpeg or png) into RGB uint8 (H, W, 3).

    The 'compressed bgr8' suffix ROS writes needs no channel swap: the file itself is a
    standard JPEG/PNG whatever order the publisher's OpenCV buffer had.
    """
    image = _open_compressed(format, data, max_pixels)
    grey = _wide_to_8bit(image)
    if grey is not None:
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def _require(array: np.ndarray, encoding: str, ndim: int, dtype: type, channels: int = 0) -> None:
    shape_ok = array.ndim == ndim and (ndim == 2 or array.shape[2] == channels)
    want = "(H, W)" if ndim == 2 else f"(H, W, {channels})"
    if not shape_ok or array.dtype != dtype or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{encoding} needs a non-empty {want} {np.dtype(dtype).name} array, got shape "
            f"{array.shape} {array.dtype} (convert with .astype(np.{np.dtype(dtype).name}))"
        )


def encode_raw(array: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """Pack an array into sensor_msgs/Image `data` and `step` (little-endian, no padding).

    rgb8 and bgr8 take RGB (H, W, 3) uint8, the package's convention; mono8 (H, W) uint8,
    mono16 (H, W) uint16, 32FC1 (H, W) float32.
    """
    array = np.asarray(array)
    if encoding in ("rgb8", "bgr8"):
        _require(array, encoding, 3, np.uint8, 3)
        if encoding == "bgr8":
            array = array[..., ::-1]
    elif encoding == "mono8":
        _require(array, encoding, 2, np.uint8)
    elif encoding == "mono16":
        _require(array, encoding, 2, np.uint16)
        array = array.astype("<u2", copy=False)
    elif encoding == "32FC1":
        _require(array, encoding, 2, np.float32)
        array = array.astype("<f4", copy=False)
    else:
        raise ValueError(f"cannot encode {encoding!r}; supported: {', '.join(ENCODE_ENCODINGS)}")
    step = array.shape[1] * array.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    return np.ascontiguousarray(array).tobytes(), step


def encode_compressed(rgb: np.ndarray, fmt: CompressedFormat = "jpeg", quality: int = 90) -> bytes:
    """Compress RGB (H, W, 3) or grey (H, W) uint8 as jpeg or png bytes."""
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg quality must be in 1..100, got {quality}")
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        _require(rgb, fmt, 2, np.uint8)
    else:
        _require(rgb, fmt, 3, np.uint8, 3)
    out = io.BytesIO()
    options = {"quality": quality} if fmt == "jpeg" else {}
    PILImage.fromarray(rgb).save(out, format=fmt.upper(), **options)
    return out.getvalue()


def is_compressed(msg: Any) -> bool:
    """True for a CompressedImage (has `format`), False for an Image (has `encoding`)."""
    if hasattr(msg, "encoding"):
        return False
    if hasattr(msg, "format"):
        return True
    raise TypeError(
        f"{type(msg).__name__} is neither a sensor_msgs/Image (encoding, height, width, step, "
        "data) nor a sensor_msgs/CompressedImage (format, data)"
    )


def decode_image_message(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an rclpy or rosbags sensor_msgs Image / CompressedImage;
    every way of failing is an ImageDecodeError."""
    if is_compressed(msg):
        return decode_compressed(msg.format, msg.data, max_pixels)
    return decode_raw(
        msg.encoding, msg.height, msg.width, msg.step, msg.data, int(msg.is_bigendian), max_pixels
    )


def decode_labels(msg: Any) -> np.ndarray:
    """Class ids (H, W), uint8 or uint16, from a mono8 / mono16 Image or a png CompressedImage."""
    if is_compressed(msg):
        if _compressed_codec(msg.format) != "png":
            raise ImageDecodeError(
                f"label format {msg.format!r} is lossy and would corrupt class ids; "
                "publish labels raw (mono8/mono16) or as png",
                "format",
            )
        image = _open_compressed(msg.format, msg.data, DEFAULT_MAX_PIXELS)
        if image.mode not in ("L", "I;16", "I;16B", "I;16L", "P"):
            raise ImageDecodeError(
                f"label png has mode {image.mode}, expected single-channel 8 or 16 bit",
                "format",
            )
        ids = np.asarray(image)
        return ids.astype(np.uint16 if ids.dtype.itemsize > 1 else np.uint8)
    if msg.encoding not in LABEL_ENCODINGS:
        raise ImageDecodeError(
            f"label image encoding {msg.encoding!r} is not a class-id encoding; expected one "
            f"of {', '.join(LABEL_ENCODINGS)}",
            "unknown encoding",
        )
    wide = msg.encoding in ("mono16", "16UC1")
    order = _check_bigendian(int(msg.is_bigendian))
    rows = _rows(msg.encoding, msg.height, msg.width, msg.step, msg.data, 2 if wide else 1)
    if wide:
        return rows.view(f"{order}u2").astype(np.uint16, copy=False)
    return rows


def stamp_ns(header: Any) -> int:
    """Nanoseconds of a std_msgs/Header's stamp (rclpy or rosbags)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
