"""Peak memory of `predict --timeline` as the video grows: it should stay flat.

  python tools/bench_timeline_memory.py --minutes 1 2 5 10 --workdir /tmp/timeline_bench

Writes one synthetic video per length (`synthetic.write_long_video`: the eight motions in turn,
2 s each, 64x64 at 25 fps), then scores each in a fresh process with a small random TC-CLIP
(8 frames, 32 px; the model's size does not change with the video) and prints, per length, the
windows scored, the seconds taken and the process's peak resident memory (`ru_maxrss`). A
decoder that held the video would grow with it; the window-by-window reader holds at most the
frames of the windows in progress.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

FPS = 25
SEGMENT_FRAMES = 50


def _child(video: str, checkpoint: str) -> None:
    from tcclip_jax.apps import timeline
    from tcclip_jax.apps.inference import Predictor, view_config
    from tcclip_jax.data import synthetic

    predictor = Predictor.from_checkpoint(checkpoint)
    cfg = view_config(predictor.config, 1, 1, predictor.normalization)
    start = time.perf_counter()
    result = timeline.score_timeline(
        predictor, video, synthetic.CLASS_NAMES, cfg, window=4.0, stride=2.0, batch_size=8
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"{len(result.bounds)} {seconds:.1f} {peak:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    from tcclip_jax.data import synthetic
    from tcclip_jax.models import ModelConfig
    from tcclip_jax.models.initialization import random_params
    from tcclip_jax.weights.checkpoint import save_model

    os.makedirs(args.workdir, exist_ok=True)
    checkpoint = os.path.join(args.workdir, "model")
    if not os.path.isdir(checkpoint):
        config = ModelConfig(
            num_frames=8, image_resolution=32, vision_patch_size=8, vision_width=64,
            vision_layers=2, vision_heads=2, text_width=32, text_layers=2, text_heads=2,
            embed_dim=32, context_tokens=4,
        )  # fmt: skip
        save_model(checkpoint, config, random_params(config, 0), normalization="imagenet")
    print(f"{'minutes':>8} {'windows':>8} {'seconds':>8} {'peak RSS MiB':>13}")
    for minutes in args.minutes:
        video = os.path.join(args.workdir, f"long_{minutes:g}min.mp4")
        if not os.path.isfile(video):
            n = int(minutes * 60 * FPS / SEGMENT_FRAMES)
            segments = [(k % len(synthetic.CLASS_NAMES), SEGMENT_FRAMES) for k in range(n)]
            synthetic.write_long_video(video, segments, size=(64, 64), fps=FPS)
        out = subprocess.run(
            [sys.executable, __file__, "--workdir", args.workdir, "--child", video, checkpoint],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        print(f"{minutes:>8g} {out[-3]:>8} {out[-2]:>8} {out[-1]:>13}", flush=True)


if __name__ == "__main__":
    main()
