"""Timelines of long videos: every window classified, consecutive windows with the same top class
merged into segments, and a picture of the classes over time (`predict --timeline`).

Windows are `window` seconds long, one every `stride` seconds. A window's frames are sampled by
time, `predict --clips C` temporal views of T frames: frame i of view c of a window [a, b) is
the frame on screen at a + (i + (c + 0.5)/C)(b - a)/T (one view: the centres of T equal
segments, as the test views sample a clip). The video is decoded once from start to end, keeping
only the frames of the windows in progress (memory does not grow with the video), and seeks
ahead over gaps of more than `SEEK_GAP` seconds between windows (stride > window). Each window is
scored as `predict` scores a video (softmax per view, temporal x spatial, averaged). For
segments, window w stands for the `stride` seconds around its centre (the first from 0, the last
to the video's end), so segments tile the video without overlapping;
`--smooth K` merges on the probabilities averaged over K neighbouring windows instead, and
`--switch-cost C` on the most probable class sequence when each change of class costs C nats
(`class_path`: a flicker of a few windows costs less than the switches around it, so it is not a
segment of its own).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import queue
import threading
from collections.abc import Iterator, Sequence

import av
import ml_collections
import numpy as np

from tcclip_jax.apps.inference import Predictor, class_probabilities
from tcclip_jax.data import transforms
from tcclip_jax.data.video_decode import VideoReadError, rgb_converter
from tcclip_jax.runtime.errors import UserError
from tcclip_jax.visualization.plots import timeline_figure

# Windows further apart than this (seconds) are reached by seeking rather than decoding through.
SEEK_GAP = 10.0
# Default window: 0.5 s per model frame (8 s for 16 frames, close to a Kinetics clip's 10 s,
# which the published models sample 16 frames from); default stride: half a window.
SECONDS_PER_FRAME = 0.5


# Windows and segments ----------------------------------------------------------------------


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


def match_segments(found: Sequence[dict], truth: Sequence[dict], tolerance: float) -> list[bool]:
    """For every true segment ({"index", "start", "end"} in seconds), whether a found segment
    has its class and both ends within `tolerance` seconds of its ends (for a generated video
    whose segments are known). An end exactly one tolerance away counts: the times are sums of
    window strides and frame times in floats, so "exactly" is compared to a microsecond."""
    limit = tolerance + 1e-6
    return [
        any(
            f["index"] == t["index"]
            and abs(f["start"] - t["start"]) <= limit
            and abs(f["end"] - t["end"]) <= limit
            for f in found
        )
        for t in truth
    ]


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


# Decoding window by window -----------------------------------------------------------------


def probe(path: str) -> float:
    """A video file's duration in seconds: from its header, else from its last packet's
    timestamp (demuxed, not decoded)."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
            start = stream.start_time or 0
            last = max((p.pts for p in container.demux(stream) if p.pts is not None), default=None)
            if last is None:
                raise VideoReadError(f"{path}: the video has no frames")
            return float((last - start) * stream.time_base)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(f"{path}: cannot open as a video: {e}") from None


def window_frames(
    path: str, times: np.ndarray, short_side: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(w, uint8 [T, H, W, 3]) for every window w, in order: the frame on screen at each of
    `times` [W, T] (the first frame before the first one), decoded in one pass."""
    flat = times.reshape(-1)
    order = np.argsort(flat, kind="stable")
    num_windows, num_frames = times.shape
    filled = np.zeros(num_windows, np.int64)
    pending: dict[int, list] = {}
    next_window = 0
    to_rgb = rgb_converter(short_side)
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(f"{path}: cannot open as a video: {e}") from None
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = float((stream.start_time or 0) * stream.time_base)
        j = 0  # next target in `order`
        prev, prev_rgb = None, None

        def assign(rgb: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
            nonlocal next_window
            w, i = divmod(int(order[j]), num_frames)
            pending.setdefault(w, [None] * num_frames)[i] = rgb
            filled[w] += 1
            while next_window < num_windows and filled[next_window] == num_frames:
                yield next_window, np.stack(pending.pop(next_window))
                next_window += 1

        def frames_from(seek_to: float | None):
            if seek_to is not None:
                container.seek(int((seek_to + t0) / stream.time_base), stream=stream)
            for packet in container.demux(stream):
                try:
                    yield from packet.decode()
                except av.error.FFmpegError:
                    continue  # a damaged packet: its window takes the frame before

        decoded = frames_from(None)
        while j < len(flat):
            frame = next(decoded, None)
            if frame is None:
                break
            t = float(frame.time) - t0 if frame.time is not None else None
            if t is None:
                continue
            while j < len(flat) and flat[order[j]] < t:
                if prev is None:  # before the first frame: the first frame
                    prev, prev_rgb = frame, None
                if prev_rgb is None:
                    prev_rgb = to_rgb(prev)
                yield from assign(prev_rgb)
                j += 1
            prev, prev_rgb = frame, None
            if j < len(flat) and flat[order[j]] - t > SEEK_GAP:
                decoded = frames_from(flat[order[j]] - 1.0)
                prev = None
        if prev is None and j < len(flat):
            raise VideoReadError(f"{path}: no frames could be decoded")
        while j < len(flat):  # past the last frame: the last frame
            prev_rgb = to_rgb(prev) if prev_rgb is None else prev_rgb
            yield from assign(prev_rgb)
            j += 1


def _ahead(items: Iterator, size: int) -> Iterator:
    """`items` produced by a thread, up to `size` ahead (decoding overlaps the model)."""
    buffer: queue.Queue = queue.Queue(size)
    done = object()

    def produce():
        try:
            for item in items:
                buffer.put(item)
        except BaseException as e:  # handed to the consumer, raised there
            buffer.put(e)
        buffer.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


# Scoring -----------------------------------------------------------------------------------


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
) -> Timeline:
    """Every window of `path` classified, `batch_size` windows per model call."""
    duration = probe(path)
    bounds = windows(duration, window, stride)
    times = sample_times(bounds, cfg.num_frames, cfg.test_clips)
    short_side = cfg.resize_size if cfg.test_crops == 1 else cfg.image_size
    probs = np.zeros((len(bounds), len(classnames)), np.float32)

    def batches():
        batch = []
        for w, frames in window_frames(path, times, short_side):
            crops = np.concatenate([
                transforms.test_crops(view, cfg.test_crops, cfg.image_size, cfg.resize_size)
                for view in frames.reshape(cfg.test_clips, cfg.num_frames, *frames.shape[1:])
            ])  # fmt: skip
            batch.append((w, crops))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    for batch in _ahead(batches(), 2):
        views = np.zeros((batch_size, *batch[0][1].shape), np.uint8)
        views[: len(batch)] = [crops for _, crops in batch]
        p = class_probabilities(predictor, predictor.normalize(views), classnames)
        probs[[w for w, _ in batch]] = p[: len(batch)]
    return Timeline(
        path, duration, window, stride, list(classnames), bounds, probs, smooth, switch_cost
    )


# Files -------------------------------------------------------------------------------------


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
            f"  {_clock(s['start']):>9}  {_clock(s['end']):>9}  {s['mean_probability']:6.3f}  "
            f"{s['class']}"
        )
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    return f"{int(minutes)}:{s:05.2f}"


# Command line (predict --timeline) ---------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("timeline (long videos)")
    group.add_argument(
        "--timeline",
        action="store_true",
        help="Classify every window of each video; write per-window scores, segments and a "
        "PNG into the --output folder.",
    )
    group.add_argument(
        "--window", type=float, help=f"Window seconds (default {SECONDS_PER_FRAME} per frame)."
    )
    group.add_argument("--stride", type=float, help="Seconds between windows (default: window/2).")
    group.add_argument(
        "--smooth",
        type=int,
        default=1,
        help="Segments from probabilities averaged over this many windows (odd; default 1).",
    )
    group.add_argument(
        "--switch-cost",
        type=float,
        default=0.0,
        help="Segments along the most probable class sequence when a change of class costs "
        "this many nats (e.g. 2; default 0: each window's top class).",
    )


def check_arguments(args: argparse.Namespace, num_frames: int) -> tuple[float, float]:
    """(window, stride) in seconds; a UserError for unusable values."""
    if not args.output:
        raise UserError("--timeline needs --output, the folder to write the timelines to")
    if os.path.isfile(args.output):
        raise UserError(f"--output {args.output}: with --timeline, a folder, not a file")
    window = args.window if args.window is not None else SECONDS_PER_FRAME * num_frames
    stride = args.stride if args.stride is not None else window / 2
    if not (window > 0 and stride > 0):
        raise UserError(f"--window and --stride must be positive, got {window}, {stride}")
    if args.smooth < 1 or args.smooth % 2 == 0:
        raise UserError(f"--smooth must be an odd number of windows, got {args.smooth}")
    if not args.switch_cost >= 0:
        raise UserError(f"--switch-cost must be >= 0 nats, got {args.switch_cost}")
    return window, stride


def run(
    predictor: Predictor,
    videos: Sequence[str],
    classnames: Sequence[str],
    cfg: ml_collections.ConfigDict,
    args: argparse.Namespace,
    report_error,
) -> int:
    """The timeline of every video into `args.output` (with `args.resume`, videos whose
    timeline is there are skipped); segments printed. Returns the number of unreadable ones."""
    window, stride = check_arguments(args, cfg.num_frames)
    failed = 0
    for video in videos:
        if args.resume and os.path.isfile(output_stem(args.output, video) + ".timeline.json"):
            continue
        try:
            timeline = score_timeline(
                predictor, video, classnames, cfg, window, stride, args.batch_size, args.smooth,
                args.switch_cost,
            )  # fmt: skip
        except (ValueError, OSError) as e:  # VideoReadError names the file
            report_error(str(e) if video in str(e) else f"{video}: {e}")
            failed += 1
            continue
        paths = write_timeline(timeline, args.output)
        print(format_segments(timeline))
        print(f"  {len(timeline.bounds)} windows: {paths['windows']}, {paths['png']}", flush=True)
    return failed
