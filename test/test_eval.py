"""`deltaworld eval`: scores on rosbag2 files, and what it says about bags it cannot fully use.

The model is a random-weight tiny model behind the torch engine: the numbers mean nothing as
forecasts, but they must equal a direct run of the runtime's Forecaster on the same frames.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from deltaworld_ros.cli import main
from deltaworld_ros.evaluation.evaluator import EvalOptions, evaluate
from deltaworld_ros.evaluation.metrics import (
    confusion,
    depth_errors,
    feature_error,
    iou_per_class,
    mean_iou,
    patch_majority,
    rank,
    spearman,
)
from deltaworld_ros.evaluation.model_run import TokenPairs
from deltaworld_ros.evaluation.results import Target
from deltaworld_ros.io.bags import TYPESTORE, ImageBagWriter, make_header, read_images
from deltaworld_ros.io.video import write_video
from deltaworld_ros.model.config import preset
from deltaworld_ros.model.loading import save_weights
from deltaworld_ros.model.store import write_manifest
from deltaworld_ros.model.world_model import WorldModel
from deltaworld_ros.runtime.engine import EngineOptions, open_engine
from deltaworld_ros.runtime.forecaster import (
    Forecaster,
    ForecasterConfig,
    FrameInput,
    StreamOverrides,
)

IMAGE, LABELS = "/camera/image_raw", "/camera/labels"
TORCH = EngineOptions(backend="torch")
K, T = 3, 2


def make_tiny_model(directory: Path) -> Path:
    """A random-weight tiny model directory: weights + manifest, which the torch backend runs
    (no ONNX export: that takes a while)."""
    torch.manual_seed(0)
    model = WorldModel(preset("tiny")).eval()
    save_weights(model, directory)
    write_manifest(directory, model.cfg, {"source": "random weights seed 0 (test)"})
    return directory


def ignore_the_token(model: WorldModel) -> WorldModel:
    """DeltaTok's decoder made the identity: every token is ignored (token reliance 1) and
    "no change" decodes to no change (identity error 0), whatever the other weights are."""
    for block in model.tokenizer.decoder_blocks:
        for scale in (block.layer_scale1, block.layer_scale2):
            torch.nn.init.zeros_(scale.lambda1)
    return model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def synth_bag(path: Path, frames: int = 16, *extra: str) -> Path:
    args = ["synth", "--out", str(path), "--frames", str(frames), "--size", "64x64"]
    assert main([*args, *extra]) == 0
    return path


@pytest.fixture(scope="module")
def labelled_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_bag(tmp_path_factory.mktemp("bags") / "synth", 16, "--seed", "3")


def run_eval(*args: str) -> int:
    return main(["eval", "--backend", "torch", "--no-progress", *args])


# --------------------------------------------------------------------------------------------
# Metrics


def test_miou_counts_classes_present_in_either_map_and_skips_ignore_pixels():
    target = np.array([[0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 2]])
    matrix = confusion(pred, target, 3)
    assert matrix.sum() == 3  # the ignore pixel is not counted
    np.testing.assert_allclose(iou_per_class(matrix)[:2], [1 / 2, 1 / 2])
    assert np.isnan(iou_per_class(matrix)[2])  # class 2 only predicted on an ignore pixel
    assert mean_iou(matrix) == pytest.approx(0.5)
    assert np.isnan(mean_iou(np.zeros((3, 3), np.int64)))


def test_feature_error_is_mse_over_patches_and_channels():
    a = np.zeros((2, 3, 4, 5))
    b = np.ones((4, 5))
    np.testing.assert_allclose(feature_error(a, b), np.ones((2, 3)))


def test_patch_majority_takes_each_patch_cells_most_common_class():
    labels = np.zeros((4, 6), np.uint8)
    labels[:2, :3] = [[1, 1, 2], [1, 2, 2]]  # 3 of class 1, 3 of class 2: the lower id wins
    labels[2:, 3:] = [[2, 2, 2], [2, 0, 0]]
    np.testing.assert_array_equal(patch_majority(labels, (2, 2), 3), [[1, 0], [0, 2]])
    with pytest.raises(ValueError, match="patch grid"):
        patch_majority(labels, (3, 2), 3)


def test_token_pairs_are_consecutive_frames_of_one_segment_sampled_uniformly():
    pairs = TokenPairs(limit=3)
    for index, segment in [(0, 0), (1, 0), (2, 0), (4, 0), (5, 1), (6, 1), (7, 1), (8, 1)]:
        pairs.add(index, segment, np.full((2, 2), index, np.float32))
    assert pairs.seen == 5  # 0-1, 1-2, 5-6, 6-7, 7-8: not over the gap 2-4 nor the restart 4-5
    assert len(pairs.pairs) == 3
    for previous, current, segment in pairs.pairs:
        assert current[0, 0] - previous[0, 0] == 1 and segment in (0, 1)


def test_depth_errors_are_absrel_and_rmse_over_valid_target_pixels():
    target = np.array([[2.0, 4.0, 0.0, np.nan]])
    pred = np.array([[[3.0, 2.0, 9.0, 9.0]], [[2.0, 4.0, 1.0, 1.0]]])  # (2, 1, 4)
    abs_rel, rmse = depth_errors(pred, target)
    np.testing.assert_allclose(abs_rel, [(0.5 + 0.5) / 2, 0])
    np.testing.assert_allclose(rmse, [np.sqrt((1 + 4) / 2), 0])
    assert np.isnan(depth_errors(pred, np.zeros((1, 4)))[0]).all()


def test_spearman_ranks_ties_by_their_average():
    np.testing.assert_allclose(rank(np.array([3.0, 1.0, 3.0])), [2.5, 1, 2.5])
    assert spearman(np.array([1, 2, 3]), np.array([30, 20, 10])) == pytest.approx(-1)
    assert np.isnan(spearman(np.array([1, 2, 3]), np.array([5, 5, 5])))


# --------------------------------------------------------------------------------------------
# Scores equal a direct Forecaster run on the same frames


def direct_forecasts(model_dir: Path, bag: Path) -> tuple[list, list]:
    """The frames the Forecaster's own gate keeps, and its forecast at each, told the true
    stamps of the next kept frames."""
    engine = open_engine(model_dir, TORCH)
    frames = [f for f in read_images(bag, IMAGE) if f.image is not None]
    probe = Forecaster(engine, ForecasterConfig(num_hypotheses=1, horizon=1))
    kept = []
    for f in frames:
        gated = Counter(probe.stats.get(IMAGE))["gated"]
        probe.process([FrameInput(IMAGE, f.stamp_ns / 1e9, f.image)])
        if probe.stats[IMAGE]["gated"] == gated:
            kept.append(f)
    assert not [k for k in probe.stats[IMAGE] if k.startswith("reset")]
    config = ForecasterConfig(num_hypotheses=K, horizon=T, seed=0, keep_features=True)
    forecaster = Forecaster(engine, config)
    out = []
    for i, f in enumerate(kept):
        future = [g.stamp_ns / 1e9 for g in kept[i + 1 : i + 1 + T]]
        step = engine.config.frame_interval
        future += [f.stamp_ns / 1e9 + step * s for s in range(len(future) + 1, T + 1)]
        override = {IMAGE: StreamOverrides(future_stamps=future)}
        out.append(forecaster.process([FrameInput(IMAGE, f.stamp_ns / 1e9, f.image)], override)[0])
    return kept, out


def direct_scores(model_dir: Path, bag: Path, labelled: bool) -> dict[str, list[float]]:
    """What eval must report, computed straight from the Forecaster's forecasts, scored
    against the labels (or its own segmentation) of the frames that came; depth against the
    model's own depth of those frames."""
    kept, out = direct_forecasts(model_dir, bag)
    labels = {f.stamp_ns: f.image for f in read_images(bag, LABELS, labels=True)}
    classes = max(int(v.max()) for v in labels.values()) + 1 if labelled else 5
    matrices = np.zeros((T, classes, classes), np.int64)
    best, mean, depth = [[] for _ in range(T)], [[] for _ in range(T)], [[] for _ in range(T)]
    for i, forecast in enumerate(out):
        for s in range(T):
            j = i + 1 + s
            if forecast is None or j >= len(kept) or out[j] is None:
                continue
            if labelled:
                target = labels[kept[j].stamp_ns]
                scale = target.shape[0] // forecast.classes.shape[-2]
                top = forecast.classes[0, s].repeat(scale, 0).repeat(scale, 1)
            else:
                target, top = out[j].current_classes, forecast.classes[0, s]
            matrices[s] += confusion(top, target, classes)
            errors = feature_error(forecast.features[:, s], out[j].current_features)
            best[s].append(errors.min())
            mean[s].append(errors.mean())
            target_depth = out[j].current_depth
            depth[s].append(np.mean(np.abs(forecast.depth[0, s] - target_depth) / target_depth))
    return {
        "depth_abs_rel": [float(np.mean(d)) for d in depth],
        "most_confident": [mean_iou(m) for m in matrices],
        "best_of_k": [float(np.mean(b)) for b in best],
        "mean_of_k": [float(np.mean(m)) for m in mean],
    }


@pytest.mark.parametrize("labelled", [True, False], ids=["labels", "pseudo-labels"])
def test_scores_equal_a_direct_forecaster_run(tiny_model_dir, labelled_bag, tmp_path, labelled):
    direct = direct_scores(tiny_model_dir, labelled_bag, labelled)
    label_topic = LABELS if labelled else "none"
    out = tmp_path / "report"
    args = ["--bag", str(labelled_bag), "--image-topic", IMAGE, "--label-topic", label_topic]
    args += [
        "--model-dir",
        str(tiny_model_dir),
        "--num-hypotheses",
        str(K),
        "--horizon",
        str(T),
        "--out",
        str(out),
    ]
    assert run_eval(*args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target"]["kind"] == ("labels" if labelled else "pseudo-labels")
    miou = [s["miou"]["most_confident"] for s in metrics["class_maps"]["steps"]]
    np.testing.assert_allclose(miou, direct["most_confident"], rtol=1e-9)
    for name in ("best_of_k", "mean_of_k"):
        got = [s["feature_mse"][name] for s in metrics["features"]["steps"]]
        np.testing.assert_allclose(got, direct[name], rtol=1e-6)
    depth = [s["abs_rel"]["most_confident"] for s in metrics["depth"]["steps"]]
    np.testing.assert_allclose(depth, direct["depth_abs_rel"], rtol=1e-6)
    assert metrics["depth"]["target"]["kind"] == "pseudo-labels"
    report = (out / "report.md").read_text()
    assert "Depth: error per horizon step" in report and "copy last (present depth)" in report
    if labelled:
        assert f"labels of {LABELS}" in report
    else:
        assert "pseudo-label score" in report and "PSEUDO-LABELS" in report
    for name in ("horizon.png", "confidence.png", "latency.png", "example_1.png", "report.html"):
        assert (out / name).stat().st_size > 0, name


def full_size(tile: np.ndarray, size: int = 64) -> np.ndarray:
    scale = size // tile.shape[0]
    return tile.repeat(scale, 0).repeat(scale, 1)


def test_depth_futures_are_scored_against_a_depth_topic(tiny_model_dir, labelled_bag, tmp_path):
    """A bag with a 32FC1 depth topic (here 10 m everywhere, 0 = no depth on the top rows):
    AbsRel and RMSE per step over the valid pixels, as computed from the forecasts directly."""
    bag = tmp_path / "with_depth"
    truth = np.full((64, 64), 10.0, np.float32)
    truth[:8] = 0  # invalid: left out
    with ImageBagWriter(bag) as writer:
        for f in read_images(labelled_bag, IMAGE):
            writer.write_image(IMAGE, f.stamp_ns, f.image, "rgb8")
            writer.write_image("/camera/depth", f.stamp_ns, truth, "32FC1")
    options = EvalOptions(
        bag,
        IMAGE,
        label_topic=None,
        depth_topic="/camera/depth",
        model_dir=tiny_model_dir,
        num_hypotheses=K,
        horizon=T,
        engine=TORCH,
        progress=False,
    )
    metrics = evaluate(options).metrics.depth
    kept, out = direct_forecasts(tiny_model_dir, bag)
    for s, step in enumerate(metrics.steps):
        scored = [full_size(f.depth[0, s])[8:] for i, f in enumerate(out)
                  if f is not None and i + 1 + s < len(kept)]  # fmt: skip
        assert step.scored == len(scored) > 0
        abs_rel = [np.mean(np.abs(d - 10.0) / 10.0) for d in scored]
        rmse = [np.sqrt(np.mean((d - 10.0) ** 2)) for d in scored]
        assert step.abs_rel["most_confident"] == pytest.approx(np.mean(abs_rel), rel=1e-5)
        assert step.rmse["most_confident"] == pytest.approx(np.mean(rmse), rel=1e-5)
        assert step.abs_rel["best_of_k"] <= step.abs_rel["mean_of_k"] + 1e-12
    assert metrics.target == Target("labels", "/camera/depth")


def test_the_label_topic_is_found_by_name(tiny_model_dir, labelled_bag):
    options = EvalOptions(
        labelled_bag, IMAGE, model_dir=tiny_model_dir, num_hypotheses=2, horizon=1, engine=TORCH
    )
    evaluation = evaluate(EvalOptions(**{**options.__dict__, "progress": False}))
    assert evaluation.metrics.target == Target("labels", LABELS)
    quality = evaluation.metrics.class_maps.rollout_confidence
    assert quality.forecasts > 0
    assert quality.best <= quality.random + 1e-12


# --------------------------------------------------------------------------------------------
# Other recordings: compressed images, a video


def test_compressed_images_are_scored_against_labels(tiny_model_dir, tmp_path):
    bag = synth_bag(tmp_path / "compressed", 10, "--compressed", "--storage", "sqlite3")
    out = tmp_path / "report"
    args = ["--bag", str(bag), "--image-topic", IMAGE, "--model-dir", str(tiny_model_dir)]
    args += ["--num-hypotheses", "2", "--horizon", "2", "--examples", "0", "--out", str(out)]
    assert run_eval(*args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target"]["kind"] == "labels"
    assert metrics["frames"]["undecodable"] == 0
    assert metrics["class_maps"]["steps"][0]["scored"] > 0
    assert not list(out.glob("example_*.png"))  # --examples 0: a report without mosaics


def test_a_bag_from_a_video_is_scored_against_pseudo_labels(tiny_model_dir, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    yy, xx = np.mgrid[0:48, 0:48]
    frames = [
        np.stack([(xx + 4 * i) % 48 * 5, yy * 5, np.full_like(xx, 90)], -1).astype(np.uint8)
        for i in range(12)
    ]  # a gradient sliding right
    write_video(video, frames, fps=10)
    bag = tmp_path / "video_bag"
    assert main(["bag-from-video", str(video), "--out", str(bag), "--start-time", "100"]) == 0
    out = tmp_path / "report"
    args = ["--bag", str(bag), "--image-topic", IMAGE, "--model-dir", str(tiny_model_dir)]
    assert run_eval(*args, "--num-hypotheses", "2", "--horizon", "2", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "PSEUDO-LABELS" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target"]["kind"] == "pseudo-labels"
    assert metrics["frames"]["messages"] == 12
    assert metrics["class_maps"]["steps"][1]["scored"] > 0


# --------------------------------------------------------------------------------------------
# Bags eval cannot fully use: a clear message, and a report over what was good


def write_odd_bag(path: Path) -> Path:
    """12 frames at 10 Hz: good ones in several encodings, and four that cannot be decoded."""
    rng = np.random.default_rng(0)
    start = 1_000_000_000_000
    with ImageBagWriter(path) as bag:
        for i in range(12):
            stamp = start + i * 100_000_000
            rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            if i in (3, 7):  # data shorter than step * height
                msg = TYPESTORE.types["sensor_msgs/msg/Image"](
                    header=make_header(stamp, "camera"), height=32, width=32,
                    encoding="rgb8", is_bigendian=0, step=96,
                    data=np.zeros(100, np.uint8),
                )  # fmt: skip
                bag.write_raw_message(IMAGE, "sensor_msgs/msg/Image", msg, stamp)
            elif i in (5, 9):  # an encoding no decoder knows
                msg = TYPESTORE.types["sensor_msgs/msg/Image"](
                    header=make_header(stamp, "camera"), height=32, width=32,
                    encoding="hyperspectral42", is_bigendian=0, step=96,
                    data=rgb.reshape(-1),
                )  # fmt: skip
                bag.write_raw_message(IMAGE, "sensor_msgs/msg/Image", msg, stamp)
            elif i % 3 == 1:
                bag.write_image(IMAGE, stamp, rgb[..., ::-1].copy(), "bgr8")
            elif i % 3 == 2:
                bag.write_image(IMAGE, stamp, rgb[..., 0].copy(), "mono8")
            else:
                bag.write_image(IMAGE, stamp, rgb, "rgb8")
    return path


def test_corrupt_and_oddly_encoded_frames_are_counted_and_the_rest_scored(
    tiny_model_dir, tmp_path, capsys
):
    bag = write_odd_bag(tmp_path / "odd")
    out = tmp_path / "report"
    args = ["--bag", str(bag), "--image-topic", IMAGE, "--model-dir", str(tiny_model_dir)]
    assert run_eval(*args, "--num-hypotheses", "2", "--horizon", "1", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "4 of 12 frame(s) could not be decoded" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    frames = metrics["frames"]
    assert frames["messages"] == 12 and frames["undecodable"] == 4 and frames["decoded"] == 8
    assert any("hyperspectral42" in error for error in frames["decode_errors"])
    assert metrics["class_maps"]["steps"][0]["scored"] > 0
    assert "could not be decoded" in (out / "report.md").read_text()


def looping_bag(source: Path, path: Path, laps: int = 2, labels: bool = False) -> Path:
    """The frames (and labels) of `source` `laps` times over, as a recorder logs a looping
    player: log times go on, header stamps (0.1 s apart) jump back at every lap."""
    topics = {IMAGE: ("rgb8", 3), **({LABELS: ("mono8", 1)} if labels else {})}
    with ImageBagWriter(path) as writer:
        for topic, (encoding, channels) in topics.items():
            frames = list(read_images(source, topic, labels=topic == LABELS))
            h, w = frames[0].image.shape[:2]
            for lap in range(laps):
                for i, f in enumerate(frames):
                    stamp = 10**12 + i * 100_000_000
                    msg = TYPESTORE.types["sensor_msgs/msg/Image"](
                        header=make_header(stamp, "camera"), height=h, width=w,
                        encoding=encoding, is_bigendian=0, step=channels * w,
                        data=f.image.reshape(-1),
                    )  # fmt: skip
                    log_time = stamp + lap * len(frames) * 100_000_000
                    writer.write_raw_message(topic, "sensor_msgs/msg/Image", msg, log_time)
    return path


def test_a_looping_bag_restarts_the_history_and_is_still_scored(tiny_model_dir, tmp_path, capsys):
    bag = looping_bag(synth_bag(tmp_path / "once", 8), tmp_path / "loop", labels=True)
    out = tmp_path / "report"
    args = ["--bag", str(bag), "--image-topic", IMAGE, "--model-dir", str(tiny_model_dir)]
    assert run_eval(*args, "--num-hypotheses", "2", "--horizon", "2", "--out", str(out)) == 0
    assert "stamp went backwards (does the bag loop?): 1 time(s)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["target"]["kind"], metrics["target"]["topic"]) == (
        "labels",
        LABELS,
    )  # each lap its own labels
    assert not [n for n in metrics["notes"] if "no label" in n]
    assert metrics["frames"]["restarts"] == {"stamp went backwards": 1}
    assert metrics["frames"]["forecaster"][IMAGE]["reset: stamp went backwards"] == 1
    # Forecasts are never scored across the jump: each lap has 8 - 1 warm-up - s targets.
    steps = metrics["class_maps"]["steps"]
    assert [s["scored"] for s in steps] == [2 * 6, 2 * 5]


def test_a_missing_topic_lists_the_image_topics_there_are(labelled_bag, capsys):
    assert run_eval("--bag", str(labelled_bag), "--image-topic", "/front/image") == 2
    error = capsys.readouterr().err
    assert "--image-topic /front/image is not in the bag" in error
    assert f"{IMAGE} (sensor_msgs/msg/Image)" in error and LABELS in error


def test_a_missing_bag_and_a_missing_label_topic_say_so(labelled_bag, tmp_path, capsys):
    assert run_eval("--bag", str(tmp_path / "nope"), "--image-topic", IMAGE) == 2
    assert "no rosbag2 at" in capsys.readouterr().err
    assert run_eval("--bag", str(labelled_bag), "--image-topic", IMAGE, "--label-topic", "/x") == 2
    assert "--label-topic /x is not an image topic" in capsys.readouterr().err


def test_nothing_decodable_exits_non_zero_with_a_report(tiny_model_dir, tmp_path, capsys):
    bag = tmp_path / "broken"
    with ImageBagWriter(bag) as writer:
        for i in range(3):
            msg = TYPESTORE.types["sensor_msgs/msg/CompressedImage"](
                header=make_header(1_000_000_000 + i * 100_000_000, "camera"),
                format="jpeg",
                data=np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8),
            )
            writer.write_raw_message(IMAGE, "sensor_msgs/msg/CompressedImage", msg, 1 + i)
    out = tmp_path / "report"
    args = ["--bag", str(bag), "--image-topic", IMAGE, "--model-dir", str(tiny_model_dir)]
    assert run_eval(*args, "--out", str(out)) == 1
    captured = capsys.readouterr()
    assert "3 of 3 frame(s) could not be decoded" in captured.out
    assert "no forecast could be scored" in captured.out
    assert (out / "report.md").is_file()


def test_token_probes_of_a_tokenizer_that_ignores_its_token(labelled_bag, tmp_path):
    torch.manual_seed(0)
    model = ignore_the_token(WorldModel(preset("tiny")).eval())
    save_weights(model, tmp_path)
    write_manifest(tmp_path, model.cfg, {"source": "tiny, DeltaTok decoder = identity (test)"})
    options = EvalOptions(
        labelled_bag, IMAGE, model_dir=tmp_path, num_hypotheses=2, horizon=1, engine=TORCH
    )
    evaluation = evaluate(EvalOptions(**{**options.__dict__, "progress": False}))
    metrics = evaluation.metrics
    tokens = metrics.tokens
    assert tokens.probe.reliance == pytest.approx(1.0, abs=1e-9)
    assert tokens.probe.identity_ratio == pytest.approx(0.0, abs=1e-9)
    # the first kept frame of a history makes no forecast, so the pairs start at the second
    assert tokens.probe.pairs == tokens.pairs_in_recording == metrics.frames.kept - 2
    # the decoder hands the present features on: every hypothesis is copy-last
    for step in metrics.class_maps.steps:
        miou = step.miou
        assert miou["mean_of_k"] == miou["best_of_k"] == miou["copy_last"]
    for example in evaluation.examples:
        assert example.disagreement == 0.0
        assert (example.hypotheses == example.present).all()
