"""Classify videos against any class names with a converted or trained checkpoint.

  python -m tcclip_jax.predict --checkpoint checkpoints/tcclip_k400 --video a.mp4 b.mp4 \
      --classes "juggling balls" "playing guitar" "riding a bike"
  python -m tcclip_jax.predict --checkpoint DIR --video a.mp4 --labels classes.csv --json
  python -m tcclip_jax.predict --checkpoint DIR --video clips/ list.txt --labels classes.csv \
      --output results.csv [--resume]

`--video` takes video files, frame folders, folders (searched recursively for both) and list
files (`tcclip_jax.apps.collection`). Each video is decoded and sampled as evaluation does (the
published test views, short side resize + centre crop(s)) at the checkpoint's frame count and
resolution, and normalised as the checkpoint records (`--normalization` overrides it); its class
probabilities are the per-view softmax averaged over the views (the evaluation's softmax sum,
divided by the number of views so that it sums to 1). Works for TC-CLIP, ViFi-CLIP and CLIP
checkpoints alike. Videos are decoded ahead by worker processes while the model classifies
`--batch-size` of them at a time; with `--output`, one row per video (path, duration, views,
top-k classes and probabilities, or the reason it could not be read) is written as it is done,
and `--resume` keeps an interrupted run's rows and skips their videos. `--timeline` classifies every
window of long videos instead (`tcclip_jax.apps.timeline`):

  python -m tcclip_jax.predict --checkpoint DIR --video match.mp4 --labels classes.csv \
      --timeline --output timelines/ [--window 8 --stride 4]

`--stream` classifies a live stream as it plays, a line per window with its latency
(`tcclip_jax.apps.stream`; `tools/serve_video.py` serves a file as one):

  python -m tcclip_jax.predict --checkpoint DIR --stream rtsp://camera/live --labels classes.csv \
      [--window 8 --stride 4 --reconnect 3 --json]

Exit status: 0 when every video was classified; 1 when some could not be read (each is named on
stderr, the others are still classified); 2 for unusable arguments (no class names, a path that is
not a model checkpoint, a folder without videos, an output file that exists without --resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence

from tqdm import tqdm

from tcclip_jax.apps import collection, stream
from tcclip_jax.apps.collection import (
    check_prompts,
    class_names,
    top_classes,
    warn,
)
from tcclip_jax.apps.inference import (
    DTYPES,
    NORMALIZATION_CHOICES,
    Predictor,
    class_probabilities,
    load_predictor,
    view_config,
)
from tcclip_jax.apps.timeline import (
    SECONDS_PER_FRAME,
    format_segments,
    output_stem,
    score_timeline,
    window_and_stride,
    write_timeline,
)
from tcclip_jax.runtime import allocator, cli
from tcclip_jax.runtime.errors import UsageError
from tcclip_jax.weights import hub


@dataclasses.dataclass
class VideoResult:
    video: str
    top: list[dict] | None = None  # [{"rank", "index", "class", "probability"}], best first.
    error: str | None = None
    duration: float | None = None  # seconds, from the container (None for frame folders)
    views: int | None = None


def format_predictions(results: Sequence[VideoResult]) -> str:
    """One block per classified video: rank, probability, class name."""
    blocks = []
    for result in results:
        if result.top is None:
            continue
        lines = [result.video, f"  {'rank':>4}  {'probability':>11}  class"]
        lines += [
            f"  {row['rank']:>4}  {row['probability']:>11.4f}  {row['class']}" for row in result.top
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# Command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcclip_jax.predict",
        description="Classify videos with a TC-CLIP / ViFi-CLIP / CLIP checkpoint.",
    )
    parser.add_argument("--checkpoint", required=True, help="Model checkpoint directory.")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--video",
        nargs="+",
        help="Video files, frame folders, folders (searched recursively) or list files.",
    )
    inputs.add_argument(
        "--stream",
        metavar="URL",
        help="Classify a live stream as it plays, a window every --stride: rtsp://, http://, "
        "tcp://, udp://, a capture device (with --format, e.g. v4l2 /dev/video0) or a file "
        "still being written.",
    )
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument("--classes", nargs="*", help="Class names.")
    names.add_argument(
        "--labels", help="Class list: CSV 'id,name', JSON {\"0\": name}, or one name per line."
    )
    parser.add_argument("--top-k", type=int, default=5, help="Classes shown per video.")
    parser.add_argument("--json", action="store_true", help="Print one JSON document instead.")
    parser.add_argument(
        "--output",
        help="Write one row per video as it is done, to a .csv or .jsonl file (with "
        "--timeline: the folder for each video's timeline files).",
    )
    parser.add_argument(
        "--resume", action="store_true", help="Keep --output's rows and skip their videos."
    )
    parser.add_argument("--batch-size", type=int, default=8, help="Videos per model call.")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Processes decoding videos ahead (default: none for one batch of videos, else up "
        "to 8); 0 decodes in threads of this process.",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--clips", type=int, default=2, help="Temporal views per video.")
    parser.add_argument("--crops", type=int, default=1, choices=(1, 3), help="Spatial views.")
    parser.add_argument(
        "--normalization",
        choices=NORMALIZATION_CHOICES,
        default="checkpoint",
        help="Input normalisation: the one the checkpoint records (default), or this one.",
    )
    timeline = parser.add_argument_group("timeline (long videos)")
    timeline.add_argument(
        "--timeline",
        action="store_true",
        help="Classify every window of each video; write per-window scores, segments and a "
        "PNG into the --output folder.",
    )
    timeline.add_argument(
        "--window", type=float, help=f"Window seconds (default {SECONDS_PER_FRAME} per frame)."
    )
    timeline.add_argument(
        "--stride", type=float, help="Seconds between windows (default: window/2)."
    )
    timeline.add_argument(
        "--smooth",
        type=int,
        default=1,
        help="Segments from probabilities averaged over this many windows (odd; default 1).",
    )
    timeline.add_argument(
        "--switch-cost",
        type=float,
        default=0.0,
        help="Segments along the most probable class sequence when a change of class costs "
        "this many nats (e.g. 2; default 0: each window's top class).",
    )
    live = parser.add_argument_group("live streams (--stream; --window and --stride as above)")
    live.add_argument(
        "--reconnect",
        type=int,
        default=0,
        help="Open a stream that ends or drops again, up to this many times in a row.",
    )
    live.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="Seconds without data before a stream counts as ended (default 10).",
    )
    live.add_argument("--format", help="FFmpeg input format (e.g. v4l2, mpegts, rtsp).")
    live.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="FFmpeg input option, repeatable (e.g. rtsp_transport=tcp, video_size=640x480).",
    )
    parser.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return parser


def _error(message: str) -> None:
    tqdm.write(f"error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_argparse(_parser(), predict, argv)


def classify_videos(
    predictor: Predictor,
    videos: Sequence[str],
    cfg,
    classnames: Sequence[str],
    *,
    top_k: int,
    batch_size: int,
    workers: int,
) -> Iterator[VideoResult]:
    """A VideoResult per video, in order: videos decoded `workers` processes ahead, classified
    `batch_size` at a time (the last batch padded, so the model compiles once)."""
    for batch in collection.view_batches(videos, cfg, workers, batch_size):
        readable = [item for item in batch if "views" in item]
        probs = iter(())
        if readable:
            views = predictor.normalize(collection.stack_views(readable, batch_size))
            probs = iter(class_probabilities(predictor, views, classnames))
        for item in batch:
            if "error" in item:
                yield VideoResult(item["video"], error=item["error"])
                continue
            if item["warning"]:
                warn(item["warning"])
            yield VideoResult(
                item["video"],
                top=top_classes(next(probs), classnames, top_k),
                duration=item["duration"],
                views=item["views"].shape[0],
            )


def _check_args(args: argparse.Namespace) -> None:
    if args.top_k < 1 or args.clips < 1 or args.batch_size < 1:
        raise UsageError(
            f"--top-k, --clips and --batch-size must be positive, got {args.top_k}, "
            f"{args.clips}, {args.batch_size}"
        )
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")
    if args.resume and not args.output:
        raise UsageError("--resume needs --output (the file to carry on)")
    if args.stream is not None:
        _check_stream_args(args)
    elif args.timeline:
        _check_timeline_args(args)
    elif args.json and args.output:
        raise UsageError("--json prints results held in memory; with --output use a .jsonl file")


def _check_windows(args: argparse.Namespace) -> None:
    for flag, seconds in (("--window", args.window), ("--stride", args.stride)):
        if seconds is not None and not seconds > 0:
            raise UsageError(f"{flag} must be positive, got {seconds}")


def _check_timeline_args(args: argparse.Namespace) -> None:
    if not args.output:
        raise UsageError("--timeline needs --output, the folder to write the timelines to")
    if os.path.isfile(args.output):
        raise UsageError(f"--output {args.output}: with --timeline, a folder, not a file")
    _check_windows(args)
    if args.smooth < 1 or args.smooth % 2 == 0:
        raise UsageError(f"--smooth must be an odd number of windows, got {args.smooth}")
    if not args.switch_cost >= 0:
        raise UsageError(f"--switch-cost must be >= 0 nats, got {args.switch_cost}")


def _check_stream_args(args: argparse.Namespace) -> None:
    if args.timeline or args.output:
        raise UsageError("--stream prints a line per window; it takes no --timeline or --output")
    _check_windows(args)
    if args.reconnect < 0 or not args.timeout > 0:
        raise UsageError(
            f"--reconnect must be 0 or more and --timeout positive, got {args.reconnect}, "
            f"{args.timeout}"
        )
    bad = [o for o in args.option if "=" not in o]
    if bad:
        raise UsageError(f"--option takes KEY=VALUE, got {bad[0]!r}")


def timelines(
    predictor: Predictor, videos: Sequence[str], classnames: Sequence[str], cfg, args
) -> int:
    """The timeline of every video into `args.output` (with `args.resume`, videos whose
    timeline is there are skipped); segments printed. Returns the number of unreadable ones."""
    window, stride = window_and_stride(cfg.num_frames, args.window, args.stride)
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
            _error(str(e) if video in str(e) else f"{video}: {e}")
            failed += 1
            continue
        paths = write_timeline(timeline, args.output)
        print(format_segments(timeline))
        print(f"  {len(timeline.bounds)} windows: {paths['windows']}, {paths['png']}", flush=True)
    return failed


def predict(args: argparse.Namespace) -> int:
    """Classify `args.video`; bad arguments raise a UserError before any video is decoded."""
    _check_args(args)
    classnames, origin = class_names(args.labels, args.classes)
    predictor = load_predictor(args.checkpoint, args.dtype, args.normalization)
    check_prompts(predictor, classnames, origin)
    cfg = view_config(predictor.config, args.clips, args.crops, predictor.normalization)
    cfg.uint8_output = True  # normalised here, after the batch is stacked
    if args.stream is not None:
        source = stream.StreamSource(
            args.stream, format=args.format, timeout=args.timeout, reconnect=args.reconnect,
            options=dict(o.split("=", 1) for o in args.option),
        )  # fmt: skip
        window, stride = window_and_stride(cfg.num_frames, args.window, args.stride)
        return stream.run_stream(predictor, source, classnames, cfg, window, stride,
                                 top_k=args.top_k, as_json=args.json)  # fmt: skip
    videos = collection.find_videos(args.video, cfg.frame_template)
    if args.timeline:
        return 1 if timelines(predictor, videos, classnames, cfg, args) else 0

    output = collection.ResultFile(args.output, args.top_k, args.resume) if args.output else None
    todo = [v for v in videos if output is None or v not in output.done]
    if output is not None and len(todo) < len(videos):
        warn(f"{args.output}: {len(videos) - len(todo)} videos already done, skipped")
    workers = args.workers
    if workers is None:
        workers = collection.default_workers(len(todo), args.batch_size)
    results, failed = [], 0
    bar = tqdm(total=len(todo), unit="video", disable=None, file=sys.stderr, dynamic_ncols=True)
    try:
        for result in classify_videos(
            predictor, todo, cfg, classnames,
            top_k=args.top_k, batch_size=args.batch_size, workers=workers,
        ):  # fmt: skip
            if result.error is not None:
                _error(result.error)
                failed += 1
            if output is not None:
                output.write(dataclasses.asdict(result))
            else:
                results.append(result)
            bar.update()
    finally:
        bar.close()
        if output is not None:
            output.close()

    if output is not None:
        print(f"{len(todo) - failed} videos classified, {failed} unreadable: {args.output}")
    elif args.json:
        document = {
            "checkpoint": hub.source_name(args.checkpoint),
            "model": predictor.config.model,
            "num_classes": len(classnames),
            "views": {"clips": args.clips, "crops": args.crops},
            "normalization": predictor.normalization,
            "results": [dataclasses.asdict(r) for r in results],
        }
        print(json.dumps(document, indent=2))
    else:
        print(format_predictions(results))
    return 1 if failed else 0


if __name__ == "__main__":
    allocator.configure()
    sys.exit(main())
