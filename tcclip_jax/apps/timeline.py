"""The timeline of a long video (`predict --timeline`): every window classified, the segments
merged from the windows' probabilities (`tcclip_jax.apps.segments`), and its files and picture.

Windows are decoded one by one as the video plays (`tcclip_jax.data.video_windows`), in a thread
ahead of the model, and each is scored as `predict` scores a video (softmax per view, temporal x
spatial, averaged).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from tcclip_jax.apps.inference import Predictor, class_probabilities
from tcclip_jax.apps.segments import class_path, merge_segments, sample_times, smoothed, windows
from tcclip_jax.data import transforms
from tcclip_jax.data.video_decode import duration_seconds
from tcclip_jax.data.video_windows import in_thread, window_frames
from tcclip_jax.visualization.plots import timeline_figure

# Default window: 0.5 s per model frame (8 s for 16 frames, close to a Kinetics clip's 10 s, which
# the published models sample 16 frames from); default stride: half a window.
SECONDS_PER_FRAME = 0.5


@dataclasses.dataclass
class Timeline:
    video: str
    duration: float
    window: float
    stride: float
    classes: list[str]
    bounds: np.ndarray  # [W, 2] seconds
    probabilities: np.ndarray  # [W, C]
    smooth: int = 1  # windows averaged for the segments (odd; 1: none)
    switch_cost: float = 0.0  # nats a change of class costs the segments' path (0: top class)

    @property
    def segments(self) -> list[dict]:
        probs = smoothed(self.probabilities, self.smooth)
        path = class_path(probs, self.switch_cost)
        segments = merge_segments(path, self.bounds, self.stride, self.duration)
        for s in segments:
            first, last = s["windows"]
            s["class"] = self.classes[s["index"]]
            s["mean_probability"] = float(probs[first : last + 1, s["index"]].mean())
        return segments


def window_and_stride(
    num_frames: int, window: float | None = None, stride: float | None = None
) -> tuple[float, float]:
    """(window, stride) seconds: as given, else SECONDS_PER_FRAME per model frame and half that."""
    window = window if window is not None else SECONDS_PER_FRAME * num_frames
    return window, stride if stride is not None else window / 2


def decode_short_side(cfg: ml_collections.ConfigDict) -> int:
    """The short side windows are decoded at: what the test views crop from."""
    return cfg.resize_size if cfg.test_crops == 1 else cfg.image_size


def window_views(frames: np.ndarray, cfg: ml_collections.ConfigDict) -> np.ndarray:
    """A window's uint8 frames [C * T, h, w, 3] (C temporal views, decoded at
    `decode_short_side`) -> its test views [C * crops, T, S, S, 3]."""
    return np.concatenate([
        transforms.test_crops(view, cfg.test_crops, cfg.image_size, cfg.resize_size)
        for view in frames.reshape(cfg.test_clips, cfg.num_frames, *frames.shape[1:])
    ])  # fmt: skip


def score_timeline(
    predictor: Predictor,
    path: str,
    classnames: Sequence[str],
    cfg: ml_collections.ConfigDict,
    window: float,
    stride: float,
    batch_size: int,
    smooth: int = 1,
    switch_cost: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> Timeline:
    """Every window of `path` classified, `batch_size` windows per model call; `progress(done,
    total)` after each call."""
    duration = duration_seconds(path)
    bounds = windows(duration, window, stride)
    times = sample_times(bounds, cfg.num_frames, cfg.test_clips)
    probs = np.zeros((len(bounds), len(classnames)), np.float32)

    def batches():
        batch = []
        for w, frames in window_frames(path, times, decode_short_side(cfg)):
            batch.append((w, window_views(frames, cfg)))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    for batch in in_thread(batches(), 2):
        views = np.zeros((batch_size, *batch[0][1].shape), np.uint8)
        views[: len(batch)] = [crops for _, crops in batch]
        p = class_probabilities(predictor, predictor.normalize(views), classnames)
        probs[[w for w, _ in batch]] = p[: len(batch)]
        if progress is not None:
            progress(batch[-1][0] + 1, len(bounds))
    return Timeline(
        path, duration, window, stride, list(classnames), bounds, probs, smooth, switch_cost
    )


def output_stem(directory: str, video: str) -> str:
    return os.path.join(directory, os.path.splitext(os.path.basename(os.path.normpath(video)))[0])


def write_timeline(timeline: Timeline, directory: str) -> dict[str, str]:
    """`<name>.windows.csv` (per-window probabilities), `<name>.timeline.json` (the settings,
    segments and windows) and `<name>.timeline.png`; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    stem = output_stem(directory, timeline.video)
    paths = {"windows": stem + ".windows.csv", "json": stem + ".timeline.json"}
    paths["png"] = stem + ".timeline.png"
    top = timeline.probabilities.argmax(axis=1)
    with open(paths["windows"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["window", "start_s", "end_s", "top_class", *timeline.classes])
        for w, ((a, b), p) in enumerate(zip(timeline.bounds, timeline.probabilities, strict=True)):
            row = [w, f"{a:.3f}", f"{b:.3f}", timeline.classes[top[w]]]
            writer.writerow(row + [f"{x:.6g}" for x in p])
    segments = timeline.segments
    document = {
        "video": timeline.video,
        "duration_s": timeline.duration,
        "window_s": timeline.window,
        "stride_s": timeline.stride,
        "smooth_windows": timeline.smooth,
        "switch_cost": timeline.switch_cost,
        "classes": timeline.classes,
        "segments": segments,
        "windows": [
            {"start": float(a), "end": float(b), "top": int(t)}
            for (a, b), t in zip(timeline.bounds, top, strict=True)
        ],
    }
    tmp = paths["json"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(document, f, indent=1)
    fig = timeline_figure(timeline.bounds, timeline.probabilities, timeline.classes, segments,
                          timeline.duration, title=os.path.basename(timeline.video))  # fmt: skip
    fig.savefig(paths["png"], dpi=100)
    os.replace(tmp, paths["json"])  # last: its presence marks the video done (--resume)
    return paths


def format_segments(timeline: Timeline) -> str:
    lines = [timeline.video, f"  {'start':>9}  {'end':>9}  {'prob':>6}  class"]
    for s in timeline.segments:
        lines.append(
            f"  {clock(s['start']):>9}  {clock(s['end']):>9}  {s['mean_probability']:6.3f}  "
            f"{s['class']}"
        )
    return "\n".join(lines)


def clock(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    return f"{int(minutes)}:{s:05.2f}"
