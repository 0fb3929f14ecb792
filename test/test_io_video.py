"""Video frames with real timestamps, and `deltaworld bag-from-video` end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deltaworld_ros.cli import main
from deltaworld_ros.io.bags import bag_topics, read_images
from deltaworld_ros.io.video import probe_video, read_video_frames, write_video


def brightness_ramp(count: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Frame i is uniformly grey level 8*i: decoded frames identify themselves."""
    return [np.full((height, width, 3), 8 * i, np.uint8) for i in range(count)]


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    assert write_video(path, brightness_ramp(30), fps=30) == 30
    return path


def test_video_round_trip_with_timestamps(video: Path) -> None:
    info = probe_video(video)
    assert (info.width, info.height, info.fps, info.frames) == (64, 48, 30.0, 30)
    frames = list(read_video_frames(video))
    times = [t for t, _ in frames]
    np.testing.assert_allclose(times, np.arange(30) / 30, atol=1e-6)
    levels = [int(rgb.mean()) for _, rgb in frames]
    np.testing.assert_allclose(levels, 8 * np.arange(30), atol=3)


def test_fps_drops_frames_to_at_most_that_rate(video: Path) -> None:
    times = [t for t, _ in read_video_frames(video, fps=10)]
    np.testing.assert_allclose(times, np.arange(10) / 10, atol=1e-6)
    eleven = [t for t, _ in read_video_frames(video, fps=11)]
    assert len(eleven) <= 11


def test_max_width_keeps_aspect(video: Path) -> None:
    _, rgb = next(read_video_frames(video, max_width=32))
    assert rgb.shape == (24, 32, 3)


def test_bad_video_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        next(read_video_frames(tmp_path / "none.mp4"))
    with pytest.raises(ValueError, match="even width and height, got 63x48"):
        write_video(tmp_path / "odd.mp4", brightness_ramp(1, width=63), fps=10)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_from_video_cli(
    video: Path, tmp_path: Path, storage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bag"
    argv = ["bag-from-video", str(video), "--out", str(out), "--fps", "10", "--storage", storage]
    assert main([*argv, "--start-time", "1700000000.5", "--max-width", "32"]) == 0
    assert "wrote 10 frames (0.90 s, 32x24 rgb8) on /camera/image_raw" in capsys.readouterr().out
    assert bag_topics(out) == {"/camera/image_raw": "sensor_msgs/msg/Image"}
    frames = list(read_images(out, "/camera/image_raw"))
    stamps = np.array([f.stamp_ns for f in frames])
    assert len(frames) == 10 and np.all(np.diff(stamps) > 0)
    assert stamps[0] == 1_700_000_000_500_000_000
    np.testing.assert_allclose(np.diff(stamps), 100_000_000, atol=1_000)
    assert frames[0].image.shape == (24, 32, 3)
    np.testing.assert_allclose([f.image.mean() for f in frames], 24 * np.arange(10), atol=3)


def test_bag_from_video_cli_rejects_bad_arguments(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bag-from-video", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "b")]) == 2
    assert "video" in capsys.readouterr().err
    assert main(["bag-from-video", str(video), "--out", str(tmp_path), "--fps", "1"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["bag-from-video", str(video), "--out", str(tmp_path / "c"), "--fps", "0"]) == 2
    assert "--fps must be > 0, got 0.0" in capsys.readouterr().err
