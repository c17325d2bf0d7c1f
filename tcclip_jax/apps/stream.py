"""Live video classified as it plays (`predict --stream`, the app's webcam).

Frames are decoded as they arrive (RTSP/HTTP/TCP streams, capture devices, a file still being
written) and a rolling window is classified every stride, with the windows, frame times and views
of `predict --timeline` (`tcclip_jax.apps.timeline`): window w spans [w * stride, w * stride +
window) seconds from the first frame, and its frames are those on screen at `sample_times`. A
window is classified as soon as the frame after its last sample time arrives; its latency runs from
that frame's arrival to its probabilities. Decoding runs in a thread ahead of the model, so a model
slower than the stream shows as a growing latency, not as a stalled connection.

A stream that ends or drops is opened again, up to `reconnect` times in a row; its clock goes on
through the gap (the last frame before it stays on screen), so windows keep their times.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import av
import ml_collections
import numpy as np

from tcclip_jax.apps.collection import top_classes, warn
from tcclip_jax.apps.inference import Predictor, class_probabilities
from tcclip_jax.apps.segments import sample_times
from tcclip_jax.apps.timeline import clock, decode_short_side, window_views
from tcclip_jax.data.video_decode import rgb_converter
from tcclip_jax.data.video_windows import in_thread
from tcclip_jax.runtime.errors import RunError


@dataclasses.dataclass
class Window:
    index: int
    start: float  # seconds from the first frame
    end: float
    frames: np.ndarray  # uint8 [C * T, h, w, 3], view by view
    ready: float  # time.monotonic() when the frame that completed it arrived


class RollingWindows:
    """Frames in, complete windows out, holding only the frames of the windows in progress.

    `push(t, frame)` for each frame in time order; the frame on screen at a sample time s is the
    last one at or before s (the first frame before it), as `data.video_windows` takes them.
    """

    def __init__(self, window: float, stride: float, num_frames: int, clips: int = 1):
        self.window, self.stride = window, stride
        self.num_frames, self.clips = num_frames, clips
        self._open: dict[int, list] = {}  # window -> its frames so far (None: not yet)
        self._next = 0  # the next window to open
        self._prev: tuple[float, object, Callable] | None = None  # (t, frame, to_rgb)
        self._prev_rgb: np.ndarray | None = None
        self.interval = 0.0  # seconds between the last two frames
        self.emitted = 0

    def times(self, w: int) -> np.ndarray:
        """[C * T] seconds at which window w's frames are taken."""
        start = w * self.stride
        bounds = np.array([[start, start + self.window]])
        return sample_times(bounds, self.num_frames, self.clips)[0]

    @property
    def last_time(self) -> float | None:
        return None if self._prev is None else self._prev[0]

    def push(
        self, t: float, frame: object, to_rgb: Callable = np.asarray, now: float | None = None
    ) -> list[Window]:
        """The frame on screen from `t` seconds (converted by `to_rgb` only if a window takes
        it), arrived at `now` (time.monotonic()): the windows it completes, in order. A frame
        not after the previous one is dropped."""
        now = time.monotonic() if now is None else now
        if self._prev is not None and t <= self._prev[0]:
            return []
        done = []
        if self._prev is not None:
            self.interval = t - self._prev[0]
            while self.times(self._next)[0] < t:
                self._open[self._next] = [None] * (self.num_frames * self.clips)
                self._next += 1
            # a window is done when its frames are known and it fits in the stream so far (which
            # lasts at least one frame interval past `t`), as it fits in a file's duration
            done = self._fill(lambda s: s < t, now, t + self.interval)
        self._prev, self._prev_rgb = (t, frame, to_rgb), None
        return done

    def finish(self, now: float | None = None) -> list[Window]:
        """At the end of the stream: the windows that fit in it (it lasts one frame interval past
        its last frame, as a file's duration does), their frames past the end the last one."""
        if self._prev is None:
            return []
        duration = self._prev[0] + self.interval
        while (self._next * self.stride + self.window) <= duration + 1e-9:
            self._open[self._next] = [None] * (self.num_frames * self.clips)
            self._next += 1
        for w in [w for w in self._open if w * self.stride + self.window > duration + 1e-9]:
            del self._open[w]
        return self._fill(lambda s: True, time.monotonic() if now is None else now, duration)

    def _fill(self, take: Callable[[float], bool], now: float, played: float) -> list[Window]:
        """Slots at times `take` accepts get the previous frame; the windows complete and ending
        by `played` seconds, in order."""
        for w, frames in self._open.items():
            for i, s in enumerate(self.times(w)):
                if frames[i] is None and take(s):
                    if self._prev_rgb is None:
                        _, frame, to_rgb = self._prev
                        self._prev_rgb = to_rgb(frame)
                    frames[i] = self._prev_rgb
        done = []
        while self.emitted in self._open and all(f is not None for f in self._open[self.emitted]):
            w = self.emitted
            start = w * self.stride
            if start + self.window > played + 1e-9:
                break
            frames = np.stack(self._open.pop(w))
            done.append(Window(w, start, start + self.window, frames, now))
            self.emitted += 1
        return done


# Sources ---------------------------------------------------------------------------------


class StreamSource:
    """(t, frame, arrival) for every decoded frame of `url`: t seconds since the first frame,
    arrival its time.monotonic(). A local path is followed as it grows until nothing is added for
    `timeout` seconds; a stream that ends or fails is opened again up to `reconnect` times in a
    row. After iterating, `ended` says how it ended (None: cleanly) and `duration` its seconds."""

    def __init__(
        self,
        url: str,
        *,
        format: str | None = None,
        options: dict[str, str] | None = None,
        timeout: float = 10.0,
        reconnect: int = 0,
    ):
        self.url, self.format, self.timeout, self.reconnect = url, format, timeout, reconnect
        self.options = dict(options or {})
        self.local = os.path.exists(url)
        if self.local and format is None:  # follow the file as it grows (FFmpeg's file protocol)
            self.options.setdefault("follow", "1")
        self.ended: str | None = None
        self.duration = 0.0  # seconds played, set at the end (`stream_windows`)
        self._stop = threading.Event()

    def stop(self) -> None:
        """End the iteration at the next frame (from any thread)."""
        self._stop.set()

    def _open(self) -> av.container.InputContainer:
        local = self.local and self.format is None
        target = "file:" + os.path.abspath(self.url) if local else self.url
        try:
            return av.open(target, format=self.format, options=self.options, timeout=self.timeout)
        except (av.error.FFmpegError, OSError) as e:
            raise RunError(f"{self.url}: cannot open the stream: {_reason(e)}") from None

    def __iter__(self) -> Iterator[tuple[float, av.VideoFrame, float]]:
        last = None  # (t, arrival) of the last frame
        failures = 0  # tries in a row since the last frame that gave none
        retry_error = ""
        while True:
            offset = 0.0 if last is None else last[0] + max(time.monotonic() - last[1], 0.0)
            try:
                container = self._open()
            except RunError as e:
                if last is None:
                    raise
                container, retry_error = None, str(e).split(": ", 2)[-1]
            gave = False
            if container is not None:
                for item in self._frames(container, offset):
                    last, gave = item[::2], True
                    yield item
            failures = 0 if gave else failures + 1
            if self.local or last is None or failures >= self.reconnect or self._stop.is_set():
                break
            if gave:
                what = f"dropped ({self.ended})" if self.ended else "ended"
                warn(f"{self.url}: the stream {what} at {clock(last[0])}; reconnecting")
            time.sleep(min(0.5 * 2**failures, 5.0))
        what = "ended" if self.ended is None else "dropped"
        if self.reconnect and failures >= self.reconnect and last is not None:
            raise RunError(
                f"{self.url}: the stream {what} at {clock(last[0])} and did not come back after "
                f"{self.reconnect} tries ({retry_error or self.ended or 'no frames'})"
            )
        if self.ended is not None:
            at = clock(last[0]) if last is not None else "the start"
            raise RunError(f"{self.url}: the stream dropped at {at}: {self.ended}")

    def _frames(self, container, offset: float) -> Iterator[tuple[float, av.VideoFrame, float]]:
        """One connection's frames, its clock starting at `offset`; sets `ended`."""
        first = None
        self.ended = None
        with container:
            if not container.streams.video:
                raise RunError(f"{self.url}: no video stream")
            stream = container.streams.video[0]
            frames = _decoded(container, stream)
            while True:
                try:
                    frame = next(frames, None)
                except (av.error.FFmpegError, OSError) as e:
                    timed_out = isinstance(e, av.error.ExitError | TimeoutError)
                    if not (self.local and timed_out):  # else: a followed file stopped growing
                        self.ended = _reason(e)
                    frames = iter(_flushed(stream))
                    continue
                if frame is None or self._stop.is_set():
                    break
                if frame.pts is not None:  # frame.time is NaN for the flushed frames
                    t = float(frame.pts * stream.time_base)
                    first = t if first is None else first
                    yield offset + t - first, frame, time.monotonic()


def _decoded(container: av.container.InputContainer, stream) -> Iterator[av.VideoFrame]:
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue  # a damaged packet: its frames stay the one before


def _flushed(stream) -> list[av.VideoFrame]:
    """The frames the decoder still holds after the stream broke off."""
    try:
        return stream.codec_context.decode(None)
    except av.error.FFmpegError:
        return []


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


# Classifying -----------------------------------------------------------------------------


@dataclasses.dataclass
class WindowResult:
    index: int
    start: float
    end: float
    probabilities: np.ndarray  # [C]
    latency: float  # seconds from the frame that completed the window arriving to this result


def classify_window(
    predictor: Predictor, window: Window, classnames: Sequence[str], cfg: ml_collections.ConfigDict
) -> WindowResult:
    """A window scored as `predict --timeline` scores one (softmax per view, averaged)."""
    views = predictor.normalize(window_views(window.frames, cfg)[None])
    probs = class_probabilities(predictor, views, classnames)[0]
    latency = time.monotonic() - window.ready
    return WindowResult(window.index, window.start, window.end, probs, latency)


def stream_windows(
    source: StreamSource, cfg: ml_collections.ConfigDict, window: float, stride: float
) -> Iterator[Window]:
    """The windows of `source` as its frames arrive (frames decoded at the timeline's size)."""
    rolling = RollingWindows(window, stride, cfg.num_frames, cfg.test_clips)
    to_rgb = rgb_converter(decode_short_side(cfg))
    for t, frame, arrival in source:
        yield from rolling.push(t, frame, to_rgb, arrival)
    yield from rolling.finish()
    source.duration = (rolling.last_time or 0.0) + rolling.interval


def format_result(result: WindowResult, classnames: Sequence[str], top_k: int, as_json: bool):
    """One line: the window's times, top class, probability and latency (or a JSON record)."""
    top = top_classes(result.probabilities, classnames, top_k)
    if as_json:
        return json.dumps({"window": result.index, "start": result.start, "end": result.end,
                           "latency_ms": round(result.latency * 1000, 1), "top": top})  # fmt: skip
    best = top[0]
    return (
        f"{result.index:>5}  {clock(result.start):>9}  {clock(result.end):>9}  "
        f"{best['probability']:6.3f}  {best['class']}  ({result.latency * 1000:.0f} ms)"
    )


def run_stream(
    predictor: Predictor,
    source: StreamSource,
    classnames: Sequence[str],
    cfg: ml_collections.ConfigDict,
    window: float,
    stride: float,
    *,
    top_k: int = 5,
    as_json: bool = False,
) -> int:
    """Print one line per window of `source` as it is classified, then how the stream ended
    (on stderr). A stream that drops and does not come back raises a RunError naming it."""
    size = decode_short_side(cfg)  # compiled before the stream is opened
    blank = np.zeros((cfg.num_frames * cfg.test_clips, size, size, 3), np.uint8)
    classify_window(predictor, Window(-1, 0.0, 0.0, blank, time.monotonic()), classnames, cfg)
    if not as_json:
        print(f"{'window':>6}  {'start':>9}  {'end':>9}  {'prob':>6}  class  (latency)", flush=True)
    count = 0
    windows = in_thread(stream_windows(source, cfg, window, stride), 2, on_stop=source.stop)
    try:
        for win in windows:
            result = classify_window(predictor, win, classnames, cfg)
            print(format_result(result, classnames, top_k, as_json), flush=True)
            count += 1
    finally:
        windows.close()  # on Ctrl-C: the decoding thread stopped before the process exits
    note = "" if count else f", shorter than one window ({window:g} s)"
    print(f"end of stream {source.url}: {count} windows in {source.duration:.2f} s{note}",
          file=sys.stderr, flush=True)  # fmt: skip
    return 0
