"""`predict --timeline`: windows and segments (`apps.segments`), frames by time
(`data.video_windows`, against `decode_frames` at the frame indices they stand for, decoding
through and seeking), segment merging against a long synthetic video's truth, and the files an
end-to-end run writes."""

import csv
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from measures import match_segments
from PIL import Image

from tcclip_jax.apps.inference import Predictor, class_probabilities
from tcclip_jax.apps.segments import class_path, merge_segments, sample_times, smoothed, windows
from tcclip_jax.apps.timeline import Timeline
from tcclip_jax.data import synthetic, transforms, video_windows
from tcclip_jax.data.video_decode import decode_frames
from tcclip_jax.weights.checkpoint import save_model
from tests.commands.test_predict import random_params

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FPS = 25
SEGMENTS = [(0, 50), (3, 75), (6, 50), (1, 25)]  # (class, frames): 2 s, 3 s, 2 s, 1 s


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("long") / "long.mp4")
    truth = synthetic.write_long_video(path, SEGMENTS, size=(32, 48), fps=FPS)
    return {"path": path, "truth": truth, "duration": sum(n for _, n in SEGMENTS) / FPS}


def test_windows_and_sample_times():
    bounds = windows(10.0, 4.0, 2.0)
    np.testing.assert_allclose(bounds, [[0, 4], [2, 6], [4, 8], [6, 10]])
    np.testing.assert_allclose(windows(3.0, 4.0, 2.0), [[0, 3]])
    np.testing.assert_allclose(
        sample_times(bounds[1:2], 4), [[2.5, 3.5, 4.5, 5.5]]
    )  # the centres of 4 equal parts, as test_indices takes frames
    # two temporal views: the first and the third quarter of each part, view by view
    np.testing.assert_allclose(
        sample_times(bounds[1:2], 4, clips=2),
        [[2.25, 3.25, 4.25, 5.25, 2.75, 3.75, 4.75, 5.75]],
    )


def test_merged_segments_tile_the_video():
    bounds = windows(10.0, 4.0, 2.0)
    segments = merge_segments([2, 2, 5, 2], bounds, 2.0, 10.0)
    assert [(s["index"], s["start"], s["end"], s["windows"]) for s in segments] == [
        (2, 0.0, 5.0, [0, 1]),
        (5, 5.0, 7.0, [2, 2]),
        (2, 7.0, 10.0, [3, 3]),
    ]  # window w stands for its centre 2 + 2w +- 1 s


def test_oracle_scores_give_the_truth_within_one_window(long_video):
    """Per-window scores = how much of each true segment the window covers: the merged segments
    are the true ones, each boundary within one stride."""
    window, stride = 1.0, 0.25
    bounds = windows(long_video["duration"], window, stride)
    scores = np.zeros((len(bounds), len(synthetic.CLASS_NAMES)))
    for seg in long_video["truth"]:
        overlap = np.minimum(bounds[:, 1], seg["end"]) - np.maximum(bounds[:, 0], seg["start"])
        scores[:, seg["index"]] += np.maximum(overlap, 0)
    segments = merge_segments(scores.argmax(1), bounds, stride, long_video["duration"])
    assert [s["index"] for s in segments] == [c for c, _ in SEGMENTS]
    for got, want in zip(segments, long_video["truth"], strict=True):
        assert abs(got["start"] - want["start"]) <= stride
        assert abs(got["end"] - want["end"]) <= stride
    assert all(match_segments(segments, long_video["truth"], stride))
    # A segment of another class, or an end off by more than the tolerance, is no match.
    wrong = [{**segments[0], "index": (segments[0]["index"] + 1) % 8}, *segments[1:]]
    late = [{**segments[0], "end": segments[0]["end"] + 2 * stride}, *segments[1:]]
    for found in (wrong, late):
        assert match_segments(found, long_video["truth"], stride)[0] is False
        assert all(match_segments(found, long_video["truth"], stride)[1:])


def test_an_end_exactly_one_window_off_matches():
    """Window 36 of 1.28 s windows ends at 47.36 s, a clip boundary at 46.08 s: one window apart,
    though 47.36 - 46.08 is 1.2800000000000011 in floats. One window more is no match."""
    window = 1.28
    bounds = windows(60.0, window, window)
    truth = [{"index": 1, "start": 1024 / 25, "end": 1152 / 25}]  # 40.96-46.08 s
    found = [{"index": 1, "start": bounds[32, 0], "end": bounds[36, 1]}]
    assert found[0]["end"] - truth[0]["end"] > window
    assert match_segments(found, truth, window) == [True]
    found = [{"index": 1, "start": bounds[32, 0], "end": bounds[37, 1]}]
    assert match_segments(found, truth, window) == [False]


@pytest.mark.parametrize("seek_gap", [video_windows.SEEK_GAP, 0.3])
def test_window_frames_are_the_frames_on_screen(long_video, monkeypatch, seek_gap):
    """Each window's frames equal `decode_frames` at floor(time * fps), decoding straight through
    (overlapping windows) and seeking over gaps (stride 2 s, window 0.5 s, gap 0.3 s)."""
    monkeypatch.setattr(video_windows, "SEEK_GAP", seek_gap)
    window, stride = (1.0, 0.5) if seek_gap == video_windows.SEEK_GAP else (0.5, 2.0)
    times = sample_times(windows(long_video["duration"], window, stride), 4)
    got = dict(video_windows.window_frames(long_video["path"], times, short_side=36))
    assert sorted(got) == list(range(len(times)))
    for w, t in enumerate(times):
        index = np.floor(t * FPS).astype(int)
        want = decode_frames(long_video["path"], lambda n, i=index: i, short_side=36)
        np.testing.assert_array_equal(got[w], want)


def test_timeline_command_writes_scores_segments_and_picture(long_video, tiny_config, tmp_path):
    checkpoint = str(tmp_path / "ckpt")
    save_model(checkpoint, tiny_config, random_params(tiny_config, 3), normalization="imagenet")
    out = tmp_path / "timelines"
    command = [sys.executable, "-m", "tcclip_jax.predict", "--checkpoint", checkpoint,
               "--video", long_video["path"], str(tmp_path / "missing.mp4"),
               "--classes", *synthetic.CLASS_NAMES, "--timeline", "--window", "1",
               "--stride", "0.5", "--output", str(out), "--batch-size", "4",
               "--switch-cost", "0.05"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1, result.stderr  # the missing video, named; the other done
    assert "missing.mp4" in result.stderr
    assert "windows:" in result.stdout

    with open(out / "long.windows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    bounds = windows(long_video["duration"], 1.0, 0.5)
    assert len(rows) == len(bounds) == 15
    np.testing.assert_allclose([[float(r["start_s"]), float(r["end_s"])] for r in rows], bounds)
    probs = np.array([[float(r[c]) for c in synthetic.CLASS_NAMES] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    assert [r["top_class"] for r in rows] == [synthetic.CLASS_NAMES[i] for i in probs.argmax(1)]

    # Window 5 scored here: the frames of its two temporal views (predict's default --clips),
    # a centre crop of each, the predictor.
    predictor = Predictor.from_checkpoint(checkpoint)
    index = np.floor(sample_times(bounds[5:6], 4, clips=2)[0] * FPS).astype(int)
    views = [
        transforms.test_crops(
            decode_frames(long_video["path"], lambda n, i=i: i, short_side=36), 1, 32, 36
        )
        for i in index.reshape(2, 4)
    ]
    views = predictor.normalize(np.concatenate(views))[None]  # [1, 2 views, 4, 32, 32, 3]
    expected = class_probabilities(predictor, views, synthetic.CLASS_NAMES)[0]
    np.testing.assert_allclose(probs[5], expected, rtol=1e-4, atol=1e-5)

    document = json.loads((out / "long.timeline.json").read_text())
    segments = document["segments"]
    assert document["switch_cost"] == 0.05  # reached the Timeline, whose segments use it:
    assert segments[0]["start"] == 0 and segments[-1]["end"] == pytest.approx(8.0)
    assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:], strict=False))
    assert [s["windows"][0] for s in segments][0] == 0 and segments[-1]["windows"][1] == 14
    with Image.open(out / "long.timeline.png") as image:
        assert image.size[0] >= 800

    # --resume skips the done video (only the missing one is tried again).
    (out / "long.windows.csv").write_text("kept")
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 1 and (out / "long.windows.csv").read_text() == "kept"


def test_smoothing_averages_neighbours_and_removes_a_flicker():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05], [0.4, 0.6], [0.1, 0.9]])
    smooth = smoothed(probs, 3)
    np.testing.assert_allclose(smooth[0], probs[:2].mean(0))
    np.testing.assert_allclose(smooth[2], probs[1:4].mean(0))
    np.testing.assert_allclose(smooth[-1], probs[-2:].mean(0))
    assert smooth.argmax(1).tolist() == [0, 0, 0, 0, 1, 1]  # window 2's flicker is gone
    assert smoothed(probs, 1) is probs


@pytest.mark.parametrize("cost", [0.3, 1.0, 4.0])
def test_class_path_is_the_best_sequence_of_all(cost):
    """Viterbi's path scores best among all C^W class sequences (log-probabilities minus `cost`
    per change), in float64 on random probabilities: the brute force is the definition."""
    rng = np.random.default_rng(int(cost * 10))
    probs = rng.dirichlet(np.full(3, 0.7), size=7)
    logp = np.log(probs)

    def score(seq):
        return logp[np.arange(7), seq].sum() - cost * np.count_nonzero(np.diff(seq))

    sequences = np.array(list(itertools.product(range(3), repeat=7)))
    scores = np.array([score(q) for q in sequences])
    path = class_path(probs, cost)
    assert score(path) == pytest.approx(scores.max(), abs=1e-12)
    assert path.tolist() == sequences[scores.argmax()].tolist()  # the optimum is unique here


def test_class_path_removes_flickers_that_cost_less_than_two_switches():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05], [0.2, 0.8], [0.1, 0.9]])
    assert class_path(probs, 0).tolist() == [0, 0, 1, 0, 1, 1]
    # window 2 gains log(0.7 / 0.3) = 0.85 nats as class 1: worth two switches only below 0.42
    assert class_path(probs, 0.4).tolist() == [0, 0, 1, 0, 1, 1]
    assert class_path(probs, 0.5).tolist() == [0, 0, 0, 0, 1, 1]
    # one switch is worth it while the last two windows gain more than it costs
    assert class_path(probs, 10.0).tolist() == [0] * 6


def test_timeline_segments_follow_the_class_path():
    """A Timeline's segments (what predict writes and prints) merge along `class_path` with its
    switch cost: a one-window flicker is a segment of its own at cost 0 and gone at cost 1."""
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05], [0.2, 0.8], [0.1, 0.9]])
    bounds = windows(6.0, 1.0, 1.0)
    make = lambda cost: Timeline(
        "v.mp4", 6.0, 1.0, 1.0, ["a", "b"], bounds, probs, smooth=1, switch_cost=cost
    )
    assert [(s["class"], s["windows"]) for s in make(0.0).segments] == [
        ("a", [0, 1]), ("b", [2, 2]), ("a", [3, 3]), ("b", [4, 5])
    ]  # fmt: skip
    assert [(s["class"], s["windows"]) for s in make(1.0).segments] == [
        ("a", [0, 3]), ("b", [4, 5])
    ]  # fmt: skip


def test_truth_check_tool_runs_predict_and_scores_its_segments(tiny_config, tmp_path):
    """tools/timeline_vs_truth.py on a random model: the video it writes has the segments it
    says (of the `--motions` asked for), and what it reports found is `match_segments` over the
    timeline `predict` wrote."""
    checkpoint = str(tmp_path / "ckpt")
    save_model(checkpoint, tiny_config, random_params(tiny_config, 3), normalization="imagenet")
    work = tmp_path / "work"
    command = [sys.executable, os.path.join(REPO, "tools", "timeline_vs_truth.py"),
               "--checkpoint", checkpoint, "--workdir", str(work), "--minutes", "0.1",
               "--clips-per-segment", "2", "--clip-frames", "25"]  # fmt: skip
    refused = subprocess.run([*command, "--motions", "3", "3"], capture_output=True, text=True,
                             cwd=REPO, timeout=300)  # fmt: skip
    assert refused.returncode == 2 and "--motions: two or more distinct" in refused.stderr
    command += ["--motions", "1", "4", "6"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    found, total = map(int, re.search(r"(\d+) of (\d+) segments found", result.stdout).groups())
    assert total == 3  # 6 s of 2-second segments
    document = json.loads((work / "timelines" / "motions_0.1min.timeline.json").read_text())
    assert document["window_s"] == document["stride_s"] == 1.0 and len(document["windows"]) == 6
    assert document["duration_s"] == pytest.approx(6.0, abs=0.05)
    spec = importlib.util.spec_from_file_location("tool", command[1])
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    order = tool._class_order(total, [1, 4, 6], 0)
    assert set(order) <= {1, 4, 6} and all(a != b for a, b in zip(order, order[1:], strict=False))
    assert "video of 3 motions" in result.stdout
    truth = [{"index": c, "start": 2.0 * i, "end": 2.0 * (i + 1)} for i, c in enumerate(order)]
    matched = match_segments(document["segments"], truth, 1.0)
    assert found == sum(matched)
    # The segments reported missed are those of this order: the video was made of it.
    missed = re.findall(r"not found: .* s (.+)", result.stdout)
    names = synthetic.CLASS_NAMES
    assert missed == [names[c] for c, ok in zip(order, matched, strict=True) if not ok]
