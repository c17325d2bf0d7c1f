"""Write frames to a video file with PyAV (its wheels ship libx264): test and benchmark data."""

from __future__ import annotations

from collections.abc import Iterable

import av
import numpy as np


def encode_video(
    path: str,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 25,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    gop_size: int | None = None,
) -> None:
    """Encode uint8 RGB frames [H, W, 3] (even H and W) to `path`; the container follows the
    extension (.mp4, .avi, .mkv, .webm)."""
    with av.open(path, "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                if gop_size is not None:
                    stream.codec_context.gop_size = gop_size
                stream.options = dict(options or {})
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"{path}: no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
