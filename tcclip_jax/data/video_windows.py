"""A long video decoded window by window with PyAV (`predict --timeline`).

Each window's frames are the frames on screen at given times. The video is decoded once from
start to end, keeping only the frames of the windows in progress, so memory does not grow with the
video; gaps of more than `SEEK_GAP` seconds between windows (stride > window) are crossed by
seeking instead of decoding through. `in_thread` runs the decoding (and whatever is chained to
it) ahead of its consumer.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator

import av
import numpy as np

from tcclip_jax.data.video_decode import VideoReadError, rgb_converter

# Windows further apart than this (seconds) are reached by seeking rather than decoding through:
# a seek restarts decoding at the keyframe before its target, so over a short gap it saves little.
SEEK_GAP = 10.0


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


def in_thread(items: Iterator, size: int, on_stop: Callable[[], None] | None = None) -> Iterator:
    """`items` produced by a thread, up to `size` ahead (decoding overlaps whatever consumes
    them, e.g. the model); an exception there is raised here. A consumer that stops early
    (an exception, Ctrl-C, `close()`) calls `on_stop` (which should make `items` end soon) and
    waits for the thread to end, so that no decoder is left running as the process exits."""
    buffer: queue.Queue = queue.Queue(size)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    break
                buffer.put(item)
        except BaseException as e:  # handed to the consumer, raised there
            buffer.put(e)
        buffer.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if thread.is_alive():
            stop.set()
            if on_stop is not None:
                on_stop()
            while thread.is_alive():  # make room for a producer waiting to put
                with contextlib.suppress(queue.Empty):
                    buffer.get(timeout=0.1)
