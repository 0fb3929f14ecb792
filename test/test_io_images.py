"""Image message <-> numpy: every encoding, row padding, and what a malformed message says."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from deltaworld_ros.io.images import (
    ImageDecodeError,
    decode_compressed,
    decode_image_message,
    decode_labels,
    decode_raw,
    encode_compressed,
    encode_raw,
    stamp_ns,
)
from deltaworld_ros.tools.fuzz import jpeg_declaring, png_bomb, png_declaring

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)


def padded(pixels: np.ndarray, pad: int) -> tuple[bytes, int]:
    """Row-major bytes of (H, W, ...) pixels with `pad` junk bytes after every row."""
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    junk = np.full((rows.shape[0], pad), 0xAB, np.uint8)
    return np.hstack([rows, junk]).tobytes(), rows.shape[1] + pad


def wire(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, C) pixels as a publisher of `encoding` lays them out."""
    r, g, b = (rgb[..., i] for i in range(3))
    alpha = np.full_like(r, 7)
    return {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "8UC3": rgb[..., ::-1],
        "rgba8": np.dstack([r, g, b, alpha]),
        "bgra8": np.dstack([b, g, r, alpha]),
        "rgb16": rgb.astype("<u2") * 257,
        "bgr16": rgb[..., ::-1].astype("<u2") * 257,
    }[encoding]


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "8UC3", "rgba8", "bgra8", "rgb16", "bgr16"])
def test_colour_encodings_decode_to_rgb(encoding: str, pad: int) -> None:
    data, step = padded(np.ascontiguousarray(wire(RGB, encoding)), pad)
    out = decode_raw(encoding, 5, 6, step, data)
    assert out.dtype == np.uint8 and out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out, RGB)
    assert all(s > 0 for s in out.strides)  # torch.from_numpy refuses negative strides


@pytest.mark.parametrize("pad", [0, 2])
@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_becomes_grey_rgb(encoding: str, pad: int) -> None:
    grey = RGB[..., 0]
    data, step = padded(grey, pad)
    out = decode_raw(encoding, 5, 6, step, data)
    np.testing.assert_array_equal(out, np.dstack([grey] * 3))


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_mono16_keeps_the_high_byte_in_either_byte_order(encoding: str) -> None:
    wide = RNG.integers(0, 65536, size=(4, 6), dtype=np.uint16)
    for order, flag in (("<", 0), (">", 1)):
        data, step = padded(wide.astype(f"{order}u2"), 4)
        out = decode_raw(encoding, 4, 6, step, data, is_bigendian=flag)
        np.testing.assert_array_equal(out[..., 1], (wide >> 8).astype(np.uint8))


def test_rgb8_is_a_zero_copy_view_of_the_buffer() -> None:
    data = bytearray(RGB.tobytes())
    out = decode_raw("rgb8", 5, 6, 18, data)
    data[0] = (int(RGB[0, 0, 0]) + 1) % 256
    assert out[0, 0, 0] == data[0]


# BT.601 limited range: Y=81, U=90, V=240 is pure red, Y=235, U=V=128 white.
@pytest.mark.parametrize(
    ("encoding", "pair"),
    [
        ("yuv422", [90, 81, 240, 235]),  # U Y0 V Y1
        ("UYVY", [90, 81, 240, 235]),
        ("uyvy", [90, 81, 240, 235]),
        ("yuv422_yuy2", [81, 90, 235, 240]),  # Y0 U Y1 V
        ("YUYV", [81, 90, 235, 240]),
        ("yuyv", [81, 90, 235, 240]),
    ],
)
def test_yuv422_known_colour(encoding: str, pair: list[int]) -> None:
    # The pair shares U/V, so pixel 1 (Y=235) is white tinted red; check pixel 0 strictly.
    data, step = padded(np.array([[pair * 2]] * 2, np.uint8).reshape(2, 8), 4)
    out = decode_raw(encoding, 2, 4, step, data)
    assert out.shape == (2, 4, 3)
    np.testing.assert_allclose(out[:, 0], [[255, 0, 0]] * 2, atol=2)
    np.testing.assert_array_equal(out[:, 0], out[:, 2])


def test_yuv422_grey_is_grey() -> None:
    out = decode_raw("yuv422", 1, 2, 4, bytes([128, 126, 128, 126]))
    np.testing.assert_allclose(out, 128, atol=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(height=0), "height=0, width=6; both must be > 0"),
        (dict(width=0), "height=5, width=0; both must be > 0"),
        (dict(step=17), "step=17 is smaller than width*bytes_per_pixel=6*3=18"),
        (dict(data=bytes(89)), "needs step*height=90 bytes of data, got 89"),
        (dict(encoding="bayer_rggb8"), "unsupported image encoding 'bayer_rggb8'; supported: rgb8"),
        (dict(is_bigendian=2), "is_bigendian must be 0 or 1, got 2"),
        (dict(encoding="yuv422", width=5, step=10, data=bytes(50)), "width must be even, got 5"),
    ],
)
def test_malformed_raw_images_say_what_is_wrong(kwargs: dict, message: str) -> None:
    fields = dict(encoding="rgb8", height=5, width=6, step=18, data=RGB.tobytes())
    fields.update(kwargs)
    with pytest.raises(ImageDecodeError) as err:
        decode_raw(**fields)
    assert message in str(err.value)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_encode_raw_round_trips_colour(encoding: str) -> None:
    data, step = encode_raw(RGB, encoding)
    assert step == 18 and len(data) == 90
    np.testing.assert_array_equal(decode_raw(encoding, 5, 6, step, data), RGB)


@pytest.mark.parametrize(
    ("encoding", "dtype"), [("mono8", np.uint8), ("mono16", np.uint16), ("32FC1", np.float32)]
)
def test_encode_raw_single_channel_is_little_endian(encoding: str, dtype: type) -> None:
    array = (RNG.random((3, 4)) * 1000).astype(dtype)
    data, step = encode_raw(array, encoding)
    assert step == 4 * np.dtype(dtype).itemsize
    back = np.frombuffer(data, np.dtype(dtype).newbyteorder("<")).reshape(3, 4)
    np.testing.assert_array_equal(back, array)


def test_encode_raw_rejects_wrong_dtype_and_encoding() -> None:
    with pytest.raises(ValueError, match=r"mono16 needs a non-empty \(H, W\) uint16 array.*astype"):
        encode_raw(np.zeros((2, 2), np.int64), "mono16")
    with pytest.raises(ValueError, match="cannot encode 'yuv422'; supported: rgb8"):
        encode_raw(RGB, "yuv422")


def test_png_round_trip_is_exact_and_jpeg_close() -> None:
    smooth = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 16, 0)
    smooth = np.repeat(smooth, 3, 2)
    np.testing.assert_array_equal(decode_compressed("png", encode_compressed(RGB, "png")), RGB)
    jpeg = decode_compressed("rgb8; jpeg compressed bgr8", encode_compressed(smooth, "jpeg"))
    assert jpeg.shape == smooth.shape
    assert np.abs(jpeg.astype(int) - smooth).mean() < 3


def test_compressed_grey_and_16bit_png_become_rgb() -> None:
    wide = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    out = decode_compressed("mono16; png compressed mono16", buf.getvalue())
    np.testing.assert_array_equal(out[..., 2], (wide >> 8).astype(np.uint8))
    grey = decode_compressed("png", encode_compressed(RGB[..., 0], "png"))
    np.testing.assert_array_equal(grey, np.dstack([RGB[..., 0]] * 3))


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_jpeg_raises(cut: float) -> None:
    jpeg = encode_compressed(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), "jpeg")
    with pytest.raises(ImageDecodeError, match="cannot decode .* jpeg payload"):
        decode_compressed("jpeg", jpeg[: int(len(jpeg) * cut)])


def test_corrupt_and_mislabelled_payloads_raise() -> None:
    with pytest.raises(ImageDecodeError, match="cannot decode 100-byte png"):
        decode_compressed("png", bytes(100))
    with pytest.raises(ImageDecodeError, match="cannot decode .* jpeg"):
        decode_compressed("jpeg", encode_compressed(RGB, "png"))  # refuse to guess
    with pytest.raises(ImageDecodeError, match="unsupported compressed image format 'tiff'"):
        decode_compressed("tiff", b"II*\x00")
    with pytest.raises(ImageDecodeError, match="compressedDepth"):
        decode_compressed("16UC1; compressedDepth png", b"")


def raw_msg(array: np.ndarray, encoding: str) -> SimpleNamespace:
    data, step = encode_raw(array, encoding)
    stamp = SimpleNamespace(sec=12, nanosec=34)
    return SimpleNamespace(
        header=SimpleNamespace(stamp=stamp, frame_id="cam"),
        height=array.shape[0],
        width=array.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=np.frombuffer(data, np.uint8),
    )


def test_decode_image_message_duck_types_raw_and_compressed() -> None:
    np.testing.assert_array_equal(decode_image_message(raw_msg(RGB, "bgr8")), RGB)
    compressed = SimpleNamespace(format="png", data=encode_compressed(RGB, "png"))
    np.testing.assert_array_equal(decode_image_message(compressed), RGB)
    assert stamp_ns(raw_msg(RGB, "rgb8").header) == 12_000_000_034
    with pytest.raises(TypeError, match="neither a sensor_msgs/Image"):
        decode_image_message(SimpleNamespace(data=b""))


def test_decode_image_message_accepts_rclpy_image() -> None:
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    data, step = encode_raw(RGB, "rgb8")
    msg = sensor_msgs.Image(
        height=5, width=6, encoding="rgb8", is_bigendian=0, step=step, data=data
    )
    msg.header.stamp.sec, msg.header.stamp.nanosec = 3, 5
    np.testing.assert_array_equal(decode_image_message(msg), RGB)
    assert stamp_ns(msg.header) == 3_000_000_005
    compressed = sensor_msgs.CompressedImage(format="png", data=encode_compressed(RGB, "png"))
    np.testing.assert_array_equal(decode_image_message(compressed), RGB)


def test_decode_labels_keeps_class_ids() -> None:
    ids8 = RNG.integers(0, 19, (5, 6), dtype=np.uint8)
    ids16 = RNG.integers(0, 1000, (5, 6), dtype=np.uint16)
    out8 = decode_labels(raw_msg(ids8, "mono8"))
    out16 = decode_labels(raw_msg(ids16, "mono16"))
    assert out8.dtype == np.uint8 and out16.dtype == np.uint16
    np.testing.assert_array_equal(out8, ids8)
    np.testing.assert_array_equal(out16, ids16)
    png = SimpleNamespace(format="mono8; png compressed mono8", data=encode_compressed(ids8, "png"))
    np.testing.assert_array_equal(decode_labels(png), ids8)


def test_decode_labels_refuses_colour_and_jpeg() -> None:
    with pytest.raises(ImageDecodeError, match="'rgb8' is not a class-id encoding"):
        decode_labels(raw_msg(RGB, "rgb8"))
    jpeg = SimpleNamespace(format="jpeg", data=encode_compressed(RGB, "jpeg"))
    with pytest.raises(ImageDecodeError, match="lossy"):
        decode_labels(jpeg)


@pytest.mark.parametrize(
    ("fmt", "payload"),
    [
        ("png", png_bomb(9000)),  # 79 KB, 81 megapixels: under Pillow's own bomb limit
        ("png", png_declaring(30000)),
        ("jpeg", jpeg_declaring(65000)),
    ],
)
def test_a_decompression_bomb_is_refused_from_its_header(fmt: str, payload: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="pixels") as caught:
        decode_compressed(fmt, payload)
    assert caught.value.cause == "too large"


def test_the_pixel_cap_is_the_callers() -> None:
    png = encode_compressed(RGB, "png")
    assert decode_compressed("png", png, max_pixels=30).shape == (5, 6, 3)
    with pytest.raises(
        ImageDecodeError, match="declares 6x5 = 30 pixels, more than the limit of 29"
    ):
        decode_compressed("png", png, max_pixels=29)
    data, step = encode_raw(RGB, "rgb8")
    with pytest.raises(ImageDecodeError, match="rgb8 image declares 6x5") as caught:
        decode_raw("rgb8", 5, 6, step, data, max_pixels=29)
    assert caught.value.cause == "too large"
    with pytest.raises(ImageDecodeError, match="declares 40000x40000") as caught:
        decode_raw("mono8", 40000, 40000, 40000, b"")  # refused before the data length
    assert caught.value.cause == "too large"
