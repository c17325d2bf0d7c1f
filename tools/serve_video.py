"""Serve a video file as a live MPEG-TS stream over TCP: `predict --stream` without a camera.

  python tools/serve_video.py clip.mp4 --port 8554 --realtime
  python -m tcclip_jax.predict --checkpoint DIR --stream tcp://127.0.0.1:8554 --labels k.csv

Waits for a client, then sends the file's video packets as they are (no re-encoding: H.264,
HEVC or MPEG video, which MPEG-TS carries), at the video's pace with `--realtime`, else as fast
as the client reads. `--drop-after S` cuts the connection S seconds into the video (a dropped
stream); `--connections N` serves N clients in turn (a reconnecting one gets the video again).
"""

from __future__ import annotations

import argparse
import time

import av


def serve(path: str, port: int, realtime: bool = False, drop_after: float | None = None) -> None:
    """One client on tcp://127.0.0.1:`port`, sent `path`'s video packets."""
    print(f"listening on tcp://127.0.0.1:{port}", flush=True)
    with (
        av.open(path) as src,
        av.open(f"tcp://127.0.0.1:{port}?listen=1", "w", format="mpegts") as out,
    ):
        video = src.streams.video[0]
        stream = out.add_stream_from_template(video)
        start = None  # when the first packet went out: a client is connected
        t0 = video.start_time or 0
        for packet in src.demux(video):
            if packet.dts is None:
                continue
            t = float((packet.pts - t0) * video.time_base) if packet.pts is not None else 0.0
            if drop_after is not None and t >= drop_after:
                return
            if realtime and start is not None:
                time.sleep(max(0.0, start + t - time.monotonic()))
            packet.stream = stream
            out.mux(packet)
            start = time.monotonic() - t if start is None else start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", help="A video file (H.264, HEVC or MPEG video).")
    parser.add_argument("--port", type=int, default=8554, help="TCP port on 127.0.0.1.")
    parser.add_argument("--realtime", action="store_true", help="Send at the video's pace.")
    parser.add_argument("--drop-after", type=float, help="Cut the first connection at S seconds.")
    parser.add_argument("--connections", type=int, default=1, help="Clients served in turn.")
    args = parser.parse_args()
    for n in range(args.connections):
        drop = args.drop_after if n == 0 else None
        try:
            serve(args.video, args.port, args.realtime, drop)
        except (av.error.FFmpegError, OSError) as e:  # the client went away
            print(f"connection {n + 1}: {e}", flush=True)


if __name__ == "__main__":
    main()
