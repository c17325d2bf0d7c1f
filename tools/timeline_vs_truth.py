"""How well `predict --timeline` finds the segments of a long generated video with a trained model.

  python -m tcclip_jax.train --config configs/demo.py --workdir runs/demo
  python tools/timeline_vs_truth.py --checkpoint runs/demo/model --minutes 10 --workdir /tmp/tl

Writes a video of `--minutes` of the synthetic motions (`synthetic.write_long_video`): segments
of `--clips-per-segment` clips of one class, `--clip-frames` frames each (the demo's clips: 32
frames of 32x32 at 25 fps, so a clip is 1.28 s), classes in a seeded random order with no class
twice in a row. Then runs the user's command on it, `python -m tcclip_jax.predict --timeline`
(window and stride: one clip, unless given), in a child process whose wall time and peak memory
are the kernel's accounts (`bench.demo.timed`), and compares the segments it wrote with the
truth: a true segment is found when a segment of its class has both ends within one window of
its ends (`measures.match_segments`). Prints the counts, the share of windows whose top class
is the true class at the window's centre, and the segments that were not found. `--motions`
draws the segments from some classes only (e.g. those the model tells apart, as its per-class
accuracy shows); the model still chooses among all eight.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

FPS = 25


def _truth_segments(clips: list[dict]) -> list[dict]:
    """Consecutive clips of one class as one segment."""
    merged: list[dict] = []
    for c in clips:
        if merged and merged[-1]["index"] == c["index"]:
            merged[-1]["end"] = c["end"]
        else:
            merged.append(dict(c))
    return merged


def _class_order(num_segments: int, classes: list[int], seed: int) -> list[int]:
    """`num_segments` draws from `classes`, seeded, never the same class twice in a row."""
    rng = np.random.default_rng(seed)
    order = [classes[rng.integers(len(classes))]]
    while len(order) < num_segments:
        others = [c for c in classes if c != order[-1]]
        order.append(others[rng.integers(len(others))])
    return order


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a trained model (e.g. runs/demo/model)")
    p.add_argument("--workdir", required=True, help="where the video and the outputs go")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clips-per-segment", type=int, default=4)
    p.add_argument("--clip-frames", type=int, default=32)
    p.add_argument("--size", type=int, default=32, help="frame side in pixels (the demo's: 32)")
    p.add_argument("--window", type=float, help="seconds (default: one clip)")
    p.add_argument("--stride", type=float, help="seconds (default: the window)")
    p.add_argument("--smooth", type=int, default=1, help="windows averaged for the segments")
    p.add_argument("--switch-cost", type=float, default=0.0, help="nats per change of class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--motions", nargs="+", type=int, metavar="ID",
        help="class ids the segments are drawn from (default: all eight); predict still "
        "chooses among all eight names",
    )  # fmt: skip
    args = p.parse_args()

    from measures import match_segments

    from tcclip_jax.apps.timeline import output_stem
    from tcclip_jax.bench.demo import timed
    from tcclip_jax.data import synthetic

    os.makedirs(args.workdir, exist_ok=True)
    clip_s = args.clip_frames / FPS
    window = args.window or clip_s
    stride = args.stride or window
    num_segments = int(args.minutes * 60 / (clip_s * args.clips_per_segment))
    names = synthetic.CLASS_NAMES
    motions = sorted(set(args.motions or range(len(names))))  # a repeated id draws no more often
    if len(set(motions)) < 2 or not set(motions) <= set(range(len(names))):
        p.error(f"--motions: two or more distinct class ids in 0..{len(names) - 1}")
    order = _class_order(num_segments, motions, args.seed)
    video = os.path.join(args.workdir, f"motions_{args.minutes:g}min.mp4")
    clips = [(c, args.clip_frames) for c in order for _ in range(args.clips_per_segment)]
    truth = _truth_segments(
        synthetic.write_long_video(video, clips, (args.size, args.size), FPS, args.seed)
    )
    output = os.path.join(args.workdir, "timelines")
    command = [
        sys.executable, "-m", "tcclip_jax.predict", "--checkpoint", args.checkpoint,
        "--video", video, "--classes", *synthetic.CLASS_NAMES, "--timeline",
        "--window", str(window), "--stride", str(stride), "--smooth", str(args.smooth),
        "--switch-cost", str(args.switch_cost), "--output", output,
    ]  # fmt: skip
    run = timed(command, os.getcwd(), dict(os.environ), os.path.join(args.workdir, "predict.log"))
    with open(output_stem(output, video) + ".timeline.json") as f:
        found = json.load(f)
    matched = match_segments(found["segments"], truth, window)
    centres = [(w["start"] + w["end"]) / 2 for w in found["windows"]]
    segment_at = np.searchsorted([t["start"] for t in truth], centres, side="right") - 1
    true_at = [truth[i]["index"] for i in segment_at]
    right = np.mean([w["top"] == t for w, t in zip(found["windows"], true_at, strict=True)])
    print(
        f"{args.minutes:g} min video of {len(motions)} motions, {len(truth)} true segments of "
        f"{args.clips_per_segment} clips ({args.clips_per_segment * clip_s:.2f} s), window "
        f"{window:g} s, stride "
        f"{stride:g} s, smooth {args.smooth}, switch cost {args.switch_cost:g}: "
        f"{sum(matched)} of {len(truth)} segments found "
        f"({100 * np.mean(matched):.1f}%), {len(found['segments'])} segments written; "
        f"{100 * right:.1f}% of {len(centres)} windows right; predict: {run.line()}"
    )
    for t, ok in zip(truth, matched, strict=True):
        if not ok:
            print(f"  not found: {t['start']:7.2f}-{t['end']:7.2f} s {names[t['index']]}")


if __name__ == "__main__":
    main()
