"""Windows and segments of a long video, pure arithmetic on seconds and probabilities
(`predict --timeline`).

Windows are `window` seconds long, one every `stride` seconds. A window's frames are sampled by
time, C temporal views of T frames: frame i of view c of a window [a, b) is the frame on screen
at a + (i + (c + 0.5)/C)(b - a)/T (one view: the centres of T equal segments, as the test views
sample a clip). For segments, window w stands for the `stride` seconds around its centre (the
first from 0, the last to the video's end), so segments tile the video without overlapping.
`smoothed` averages the probabilities over K neighbouring windows, and `class_path` takes the most
probable class sequence when each change of class costs C nats: a flicker of a few windows
costs less than the switches around it, so it is not a segment of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def windows(duration: float, window: float, stride: float) -> np.ndarray:
    """[W, 2] (start, end) seconds: one every `stride` from 0 while it fits in the video (a
    video shorter than `window` is one window)."""
    if duration <= window:
        return np.array([[0.0, duration]])
    starts = np.arange(0.0, duration - window + 1e-9, stride)
    return np.stack([starts, starts + window], axis=1)


def sample_times(bounds: np.ndarray, num_frames: int, clips: int = 1) -> np.ndarray:
    """[W, clips * T] seconds at which each window's frames are taken, view by view: frame i of
    temporal view c at (i + (c + 0.5) / clips) / T through the window (one view: the centres
    of T equal segments)."""
    start, end = bounds[:, :1], bounds[:, 1:]
    offsets = (np.arange(clips)[:, None] + 0.5) / clips + np.arange(num_frames)  # [C, T]
    return start + offsets.reshape(-1) * (end - start) / num_frames


def merge_segments(
    top: Sequence[int], bounds: np.ndarray, stride: float, duration: float
) -> list[dict]:
    """Runs of windows with the same top class: {"index", "start", "end", "windows": [first,
    last]}, where window w stands for [centre - stride / 2, centre + stride / 2] (the first from
    0, the last to `duration`)."""
    centres = bounds.mean(axis=1)
    lo = np.concatenate([[0.0], centres[1:] - stride / 2])
    hi = np.concatenate([centres[:-1] + stride / 2, [duration]])
    segments: list[dict] = []
    for w, c in enumerate(top):
        if segments and segments[-1]["index"] == int(c):
            segments[-1]["end"], segments[-1]["windows"][1] = float(hi[w]), w
        else:
            segments.append({"index": int(c), "start": float(lo[w]), "end": float(hi[w]),
                             "windows": [w, w]})  # fmt: skip
    return segments


def smoothed(probabilities: np.ndarray, width: int) -> np.ndarray:
    """[W, C] each window's probabilities averaged with its neighbours, `width` windows
    centred on it (fewer at the ends): single-window flickers do not split a segment."""
    if width <= 1:
        return probabilities
    half = width // 2
    padded = np.cumsum(np.pad(probabilities, ((1, 0), (0, 0))), axis=0)
    idx = np.arange(len(probabilities))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(probabilities))
    return (padded[hi] - padded[lo]) / (hi - lo)[:, None]


def class_path(probabilities: np.ndarray, switch_cost: float) -> np.ndarray:
    """[W] the class sequence maximising the sum of the windows' log-probabilities minus
    `switch_cost` per change of class (Viterbi over a chain whose transitions all cost the
    same, so each step is O(C)); 0: each window's top class. Ties go to the lower class index
    and to staying."""
    if switch_cost <= 0:
        return probabilities.argmax(axis=1)
    logp = np.log(np.maximum(probabilities, np.finfo(probabilities.dtype).tiny))
    num_windows = len(logp)
    came_from = np.empty(logp.shape, dtype=np.int64)  # the class at w - 1 on the best path
    score = logp[0].copy()
    stay = np.arange(logp.shape[1])
    for w in range(1, num_windows):
        best = int(score.argmax())
        switch = score[best] - switch_cost
        moves = score < switch  # strictly better to come from `best` than to stay
        came_from[w] = np.where(moves, best, stay)
        score = np.where(moves, switch, score) + logp[w]
    path = np.empty(num_windows, dtype=np.int64)
    path[-1] = score.argmax()
    for w in range(num_windows - 1, 0, -1):
        path[w - 1] = came_from[w, path[w]]
    return path
