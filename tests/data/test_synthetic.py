"""Tests for the procedural action-video dataset."""

import csv
import json
import os

import av
import numpy as np
import pytest

from tcclip_jax.data import synthetic

NUM_CLASSES = len(synthetic.CLASS_NAMES)
LEFT, RIGHT, UP, DOWN, GROW, SHRINK, CLOCKWISE, COUNTERCLOCKWISE = range(NUM_CLASSES)


def _decode(path):
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _object_mask(frame, box):
    """Pixels that differ from a colour plane fitted to everything outside the (padded) box."""
    h, w, _ = frame.shape
    ys, xs = np.mgrid[0:h, 0:w]
    x0, y0, x1, y1 = box
    outside = (xs < x0 - 2) | (xs > x1 + 1) | (ys < y0 - 2) | (ys > y1 + 1)
    design = np.stack([np.ones(h * w), xs.ravel(), ys.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design[outside.ravel()], frame.reshape(-1, 3)[outside.ravel()])
    background = (design @ coef).reshape(h, w, 3)
    return np.linalg.norm(frame - background, axis=-1) > 0.5 * synthetic._MIN_RGB_DISTANCE


def _mask_extent(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def _orientation_degrees(mask):
    """Principal-axis angle in image coordinates (y down), so increasing means clockwise."""
    ys, xs = np.nonzero(mask)
    dx, dy = xs - xs.mean(), ys - ys.mean()
    return np.degrees(0.5 * np.arctan2(2 * (dx * dy).mean(), (dx * dx).mean() - (dy * dy).mean()))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic"))
    paths = synthetic.generate(
        out, videos_per_class=2, val_per_class=1, num_frames=6, size=(32, 48), seed=3
    )
    return out, paths


def test_annotation_lists_and_class_csv_parse(dataset):
    out, paths = dataset
    for split, per_class in (("train", 2), ("val", 1)):
        with open(paths[split]) as f:
            lines = f.read().splitlines()
        assert len(lines) == per_class * NUM_CLASSES
        for line in lines:
            relative, label = line.split(" ")
            assert os.path.isfile(os.path.join(out, relative))
            name = synthetic.CLASS_NAMES[int(label)]
            assert relative.startswith(f"videos/{name.replace(' ', '_')}/")
    with open(paths["classes"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "name"]
    assert rows[1:] == [[str(i), name] for i, name in enumerate(synthetic.CLASS_NAMES)]
    assert len(paths["videos"]) == 3 * NUM_CLASSES


def test_videos_decode_and_boxes_hold_the_object(dataset):
    out, paths = dataset
    with open(paths["annotations"]) as f:
        annotations = json.load(f)
    assert len(annotations["videos"]) == len(paths["videos"])
    for relative, info in annotations["videos"].items():
        frames = _decode(os.path.join(out, relative))
        assert frames.shape == (6, 32, 48, 3)
        assert info["class"] == synthetic.CLASS_NAMES[info["label"]]
        boxes = np.array(info["boxes"])
        assert boxes.shape == (6, 4)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 32).all()
        for frame, box in zip(frames.astype(np.float64), boxes, strict=True):
            extent = _mask_extent(_object_mask(frame, box))
            np.testing.assert_allclose(extent, box, atol=2.0, err_msg=relative)


@pytest.mark.parametrize("class_id", range(NUM_CLASSES))
def test_motion_matches_class(class_id):
    num_frames = 12
    for seed in range(4):
        frames, boxes = synthetic.render_clip(
            class_id, np.random.default_rng(seed), num_frames, (64, 96)
        )
        assert frames.shape == (num_frames, 64, 96, 3) and frames.dtype == np.uint8
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        extent = boxes[:, 2:] - boxes[:, :2]
        steps = np.diff(centre, axis=0)
        growth = np.diff(extent, axis=0)
        moves = {LEFT: (0, -1), RIGHT: (0, 1), UP: (1, -1), DOWN: (1, 1)}
        if class_id in moves:
            axis, sign = moves[class_id]
            assert (sign * steps[:, axis] > 0.5).all()
            np.testing.assert_allclose(steps[:, 1 - axis], 0, atol=1e-3)
            np.testing.assert_allclose(growth, 0, atol=1e-3)
            continue
        # Growing and turning happen about the shape's centre of mass, which stays put.
        masks = [_object_mask(f, b) for f, b in zip(frames.astype(np.float64), boxes, strict=True)]
        centroids = np.array([np.argwhere(m).mean(axis=0) for m in masks])
        assert np.abs(centroids - centroids.mean(axis=0)).max() < 0.5, centroids
        if class_id in (GROW, SHRINK):
            sign = 1 if class_id == GROW else -1
            assert (sign * growth > 0).all()
        else:
            angles = [_orientation_degrees(m) for m in masks]
            turns = np.diff(np.degrees(np.unwrap(np.radians(angles), period=np.pi)))
            sign = 1 if class_id == CLOCKWISE else -1
            assert (sign * turns > 0).all(), turns
            assert sign * turns.sum() > 60


def test_a_single_frame_does_not_reveal_the_class():
    """A frame at a random time has the same colour, position and size statistics in every class."""
    num_clips, num_frames = 128, 5
    pick = np.random.default_rng(0)
    stats = np.empty((NUM_CLASSES, num_clips, 7))
    for class_id in range(NUM_CLASSES):
        for i in range(num_clips):
            rng = np.random.default_rng([class_id, i])
            frames, boxes = synthetic.render_clip(class_id, rng, num_frames, (32, 32))
            t = pick.integers(num_frames)
            centre = (boxes[t, :2] + boxes[t, 2:]) / 2
            extent = boxes[t, 2:] - boxes[t, :2]
            stats[class_id, i] = [*frames[t].mean(axis=(0, 1)), *centre, *extent]
    pooled_std = stats.reshape(-1, 7).std(axis=0)
    gap = np.abs(stats.mean(axis=1) - stats.reshape(-1, 7).mean(axis=0)) / pooled_std
    assert gap.max() < 0.4, gap


def test_same_seed_gives_same_content(tmp_path):
    kwargs = dict(videos_per_class=1, val_per_class=0, num_frames=4, size=(32, 32))
    runs = [
        synthetic.generate(str(tmp_path / name), seed=seed, **kwargs)
        for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    annotations = []
    for paths in runs:
        with open(paths["annotations"]) as f:
            annotations.append(json.load(f)["videos"])
    assert annotations[0] == annotations[1]
    assert annotations[0] != annotations[2]
    for first, second in zip(runs[0]["videos"], runs[1]["videos"], strict=True):
        np.testing.assert_array_equal(_decode(first), _decode(second))


def test_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    out = tmp_path / "data"
    (out / "videos" / "stale").mkdir(parents=True)
    (out / "videos" / "stale" / "old.mp4").write_bytes(b"")
    kwargs = dict(videos_per_class=1, val_per_class=0, num_frames=2, size=(16, 16))
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.generate(str(out), **kwargs)
    with pytest.raises(SystemExit):
        synthetic.main(["--output", str(out), "--frames", "2", "--size", "16", "16"])
    assert "--overwrite" in capsys.readouterr().err
    synthetic.generate(str(out), overwrite=True, **kwargs)
    assert not (out / "videos" / "stale").exists()
    assert len((out / "train.txt").read_text().splitlines()) == NUM_CLASSES


def test_command_line_writes_requested_shape(tmp_path):
    out = tmp_path / "cli"
    synthetic.main(
        ["--output", str(out), "--videos-per-class", "1", "--val-per-class", "1"]
        + ["--frames", "3", "--size", "16", "24", "--fps", "10"]
    )
    relative, _ = (out / "val.txt").read_text().splitlines()[0].split(" ")
    assert _decode(str(out / relative)).shape == (3, 16, 24, 3)
    with av.open(str(out / relative)) as container:
        assert container.streams.video[0].average_rate == 10
        assert container.streams.video[0].codec_context.name == "h264"


@pytest.mark.parametrize("size", [(31, 32), (32, 33)])
def test_rejects_odd_sizes(tmp_path, size):
    with pytest.raises(ValueError, match="even"):
        synthetic.generate(str(tmp_path / "odd"), size=size)
