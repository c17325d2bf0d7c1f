"""Decode only the sampled frames of a video with PyAV.

The container is demuxed once (cheap: no decoding) to learn every frame's timestamp and which
packets are keyframes. Frame i is the i-th timestamp in presentation order, which is how decord
(used by the released code) counts frames; `stream.frames` is not trusted (it can be 0 or wrong)
and neither is `frame.index` (wrong under threading). The demuxed packets are then fed to the
decoder directly, so "seeking" is exact (no container seek that could land past the target):
decoding starts at the keyframe before the first wanted frame (one keyframe earlier for a frame
displayed before its keyframe, as in open GOPs), jumps to a later keyframe whenever a keyframe
interval holds no wanted frame, and skips unwanted frames no other frame references (FFmpeg's
`skip_frame=NONREF`, about half the decoding work of typical H.264). AVI has no presentation
timestamps, so there frames are counted in the decoder's output order, decoding from the start;
so are videos whose decoded timestamps turn out not to increase.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from tcclip_jax.data.transforms import short_side_shape

# Jumping ahead drains the decoder's reordering delay, so it only pays off past a few packets.
_MIN_PACKETS_SKIPPED = 4


class VideoReadError(ValueError):
    """A video (file, frame folder or record) that cannot be read; the message names it."""


def _demux(container: av.container.InputContainer, name: str):
    if not container.streams.video:
        raise VideoReadError(f"{name}: no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoReadError(f"{name}: cannot decode codec: FFmpeg has no decoder for this video")
    try:
        packets = [p for p in container.demux(stream) if p.size > 0]
    except av.error.FFmpegError as e:
        raise VideoReadError(f"{name}: cannot demux: {e}") from None
    pts = [p.pts if p.pts is not None else p.dts for p in packets]
    if any(t is None for t in pts):
        raise VideoReadError(f"{name}: packets without timestamps; re-encode the video")
    return stream, packets, pts


def _plan_starts(packets: list, pts: list[int]) -> list[int]:
    """For every packet, the packet where decoding must start to get its frame."""
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    if not keys or keys[0] != 0:
        keys = [0, *keys]
    starts = []
    for pos, t in enumerate(pts):
        k = bisect.bisect_right(keys, pos) - 1
        # A frame displayed before its keyframe (open GOP) references the previous interval.
        while k > 0 and pts[keys[k]] > t:
            k -= 1
        starts.append(keys[k])
    return starts


def rgb_converter(short_side: int | None) -> Callable[[av.VideoFrame], np.ndarray]:
    """Frame -> uint8 RGB, resized in the same swscale pass when `short_side` is given.

    One converter per video and thread: it keeps one swscale context for all the frames of a
    video, converting on the calling thread. `VideoFrame.to_ndarray` makes a new context for
    every frame and lets swscale start threads for it (PyAV's default), which costs many times
    the conversion of a small frame (docs/performance.md); the pixels are the same.
    """
    reformatter = VideoReformatter()

    def to_rgb(frame: av.VideoFrame) -> np.ndarray:
        size = (frame.height, frame.width)
        height, width = size if short_side is None else short_side_shape(*size, short_side)
        return reformatter.reformat(
            frame, width=width, height=height, format="rgb24", interpolation="BILINEAR",
            threads=1,
        ).to_ndarray()  # fmt: skip

    return to_rgb


def duration_seconds(path: str, from_packets: bool = True) -> float | None:
    """A video file's duration in seconds: from its header, else from its last packet's
    timestamp (demuxed, not decoded; None instead when not `from_packets`). A VideoReadError
    names the file when it cannot be opened or has no video stream or no frames."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
            if not from_packets:
                return None
            start = stream.start_time or 0
            last = max((p.pts for p in container.demux(stream) if p.pts is not None), default=None)
            if last is None:
                raise VideoReadError(f"{path}: the video has no frames")
            return float((last - start) * stream.time_base)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(f"{path}: cannot open as a video: {e}") from None


class _UnreliableTimestamps(Exception):
    """Decoded frames do not come out in timestamp order (e.g. H.264 with B-frames in AVI)."""


def decode_frames(
    source: str | bytes,
    pick: Callable[[int], np.ndarray],
    *,
    name: str | None = None,
    threads: int = 1,
    short_side: int | None = None,
) -> np.ndarray:
    """Frames `pick(num_frames)` (any order, repeats allowed) as uint8 [K, H, W, 3] RGB.

    `source` is a path or the bytes of a video file; `name` is what errors call it. `threads` is
    FFmpeg's decoding threads for this video (0: FFmpeg decides; 1: none, best when many videos
    decode in parallel). With `short_side`, frames are resized (bilinear, sizes rounded as
    `transforms.short_side_shape`) while converted to RGB, which costs little more than the
    conversion alone.
    """
    name = name or (source if isinstance(source, str) else "<video bytes>")
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(f"{name}: cannot open as a video: {e}") from None
    with container:
        stream, packets, pts = _demux(container, name)
        order = sorted(set(pts))
        if not order:
            raise VideoReadError(f"{name}: the video has no frames")
        wanted = np.asarray(pick(len(order)))
        to_rgb = rgb_converter(short_side)
        need = set(wanted.tolist())
        codec = stream.codec_context
        if threads != 1:
            codec.thread_type = "AUTO"
            codec.thread_count = threads
        try:
            codec.open(strict=False)
        except av.error.FFmpegError as e:
            raise VideoReadError(f"{name}: cannot decode codec {codec.name!r}: {e}") from None
        frames = None
        # AVI stores no presentation timestamps (with B-frames, packet "pts" are in decode
        # order), so there frames are counted as the decoder outputs them, from the start.
        if "avi" not in container.format.name.split(","):
            try:
                frames = _decode_by_timestamp(codec, packets, pts, order, need, to_rgb)
            except _UnreliableTimestamps:
                codec.flush_buffers()
                codec.skip_frame = "DEFAULT"
        if frames is None:
            frames = _decode_in_output_order(codec, packets, need, to_rgb)
    missing = sorted(need - frames.keys())
    if missing:
        raise VideoReadError(
            f"{name}: could not decode frames {missing[:8]} of {len(order)} (corrupt video?)"
        )
    shapes = {f.shape for f in frames.values()}
    if len(shapes) > 1:
        raise VideoReadError(f"{name}: the frame size changes within the video {sorted(shapes)}")
    return np.stack([frames[i] for i in wanted.tolist()])


def _decode_by_timestamp(codec, packets, pts, order, need, to_rgb) -> dict[int, np.ndarray]:
    """{presentation index: RGB frame} for the indices in `need`, skipping unneeded intervals."""
    rank = {t: i for i, t in enumerate(order)}
    position = {t: i for i, t in enumerate(pts)}
    starts = _plan_starts(packets, pts)
    frames: dict[int, np.ndarray] = {}
    cur = 0  # next packet to send
    run_start = 0  # the keyframe packet decoding last (re)started from
    pending = False  # packets were sent whose frames may still sit in the decoder
    last_pts = None

    wanted_pts = {order[r] for r in need}
    skipping = False

    def send(packet):
        nonlocal last_pts, skipping
        # Unwanted frames that no other frame references need not be decoded at all.
        skip = packet is not None and packet.pts not in wanted_pts
        if skip != skipping:
            codec.skip_frame = "NONREF" if skip else "DEFAULT"
            skipping = skip
        try:
            out = codec.decode(packet)
        except av.error.FFmpegError:
            return  # a damaged packet; the frames it should give are reported missing
        for f in out:
            if f.pts is None or (last_pts is not None and f.pts <= last_pts):
                raise _UnreliableTimestamps
            last_pts = f.pts
            r = rank.get(f.pts)
            # Frames displayed before the start keyframe lack their references: never keep them.
            if r in need and r not in frames and f.pts >= pts[run_start]:
                frames[r] = to_rgb(f)

    def restart(at):
        nonlocal cur, run_start, pending, last_pts
        if pending:
            send(None)  # drain first: pending frames may be wanted
            codec.flush_buffers()
        cur, run_start, pending, last_pts = at, at, False, None

    for target in sorted(need, key=lambda r: position[order[r]]):
        if target in frames:
            continue
        start = starts[position[order[target]]]
        if not pending or start < run_start or start - cur >= _MIN_PACKETS_SKIPPED:
            restart(start)
        while target not in frames and cur < len(packets):
            send(packets[cur])
            cur += 1
            pending = True
        if target not in frames:  # every packet sent: drain what the decoder still holds
            restart(cur)
    restart(cur)
    return frames


def _decode_in_output_order(codec, packets, need, to_rgb) -> dict[int, np.ndarray]:
    """{index: RGB frame} counting frames as the decoder outputs them, from the first packet."""
    frames: dict[int, np.ndarray] = {}
    count, last = 0, max(need)
    for packet in [*packets, None]:
        try:
            out = codec.decode(packet)
        except av.error.FFmpegError:
            continue
        for f in out:
            if count in need:
                frames[count] = to_rgb(f)
            count += 1
        if count > last:
            break
    return frames
