"""Classify video files against any class names with a converted or trained checkpoint.

  python -m tcclip_jax.predict --checkpoint checkpoints/tcclip_k400 --video a.mp4 b.mp4 \
      --classes "juggling balls" "playing guitar" "riding a bike"
  python -m tcclip_jax.predict --checkpoint DIR --video a.mp4 --labels classes.csv --json

Each video is decoded and sampled as evaluation does (`load_test_views`: the published test
views, short side resize + centre crop(s)) at the checkpoint's frame count and resolution, and
normalised as the checkpoint records (`--normalization` overrides it);
its class probabilities are the per-view softmax averaged over the views (the evaluation's
softmax sum, divided by the number of views so that it sums to 1). Works for TC-CLIP, ViFi-CLIP
and CLIP checkpoints alike.

Exit status: 0 when every video was classified; 1 when some could not be read (each is named on
stderr, the others are still classified); 2 for unusable arguments (no class names, a path that is
not a model checkpoint).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tcclip_jax import allocator, cli
from tcclip_jax.data.classes import AnnotationError, load_class_names, read_text
from tcclip_jax.data.pipeline import load_test_views
from tcclip_jax.errors import UserError
from tcclip_jax.inference import (
    DTYPES,
    NORMALIZATION_CHOICES,
    Predictor,
    load_predictor,
    prompt_tokens,
    view_config,
)


class UsageError(UserError):
    """Arguments the command cannot run with; reported as one line, exit status 2."""


# Inputs ------------------------------------------------------------------------------------


def read_class_names(path: str) -> list[str]:
    """Class names from a class CSV (`id,name`), the LLM JSON (`{"0": name}`) or a plain text
    file with one name per line (blank lines skipped)."""
    if path.lower().endswith((".csv", ".json")):
        return load_class_names(path)
    if not os.path.isfile(path):
        raise AnnotationError(f"class list {path} does not exist")
    names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not names:
        raise AnnotationError(f"{path}: the class list is empty")
    return names


def check_class_names(names: Sequence[str], origin: str) -> list[str]:
    names = [n.strip() for n in names]
    if not names:
        raise UsageError(f"no class names given ({origin})")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        raise UsageError(f"class names {blank} ({origin}, 1-based) are empty")
    repeated = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    if repeated:
        _warn(f"duplicate class names ({origin}): {repeated}; they share their probability")
    return names


def check_prompts(predictor: Predictor, names: Sequence[str], origin: str) -> None:
    """Every class name fits the model's prompt (checked before any video is decoded)."""
    for i, name in enumerate(names):
        try:
            prompt_tokens(predictor.config, [name])
        except ValueError as e:
            raise UsageError(f"class {i + 1} ({origin}): {e}") from None


# Scoring -----------------------------------------------------------------------------------


def class_probabilities(predictor: Predictor, views: np.ndarray, classnames: Sequence[str]):
    """[V, T, H, W, 3] normalised views -> [C] probabilities: per-view softmax, averaged."""
    logits = predictor.logits(views, classnames)  # [V, C]
    return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1).mean(axis=0))


@dataclasses.dataclass
class VideoResult:
    video: str
    top: list[dict] | None = None  # [{"rank", "index", "class", "probability"}], best first.
    error: str | None = None


def top_classes(probs: np.ndarray, classnames: Sequence[str], k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[: min(k, len(classnames))]
    return [
        {"rank": r + 1, "index": int(i), "class": classnames[i], "probability": float(probs[i])}
        for r, i in enumerate(order)
    ]


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
        description="Classify video files with a TC-CLIP / ViFi-CLIP / CLIP checkpoint.",
    )
    parser.add_argument("--checkpoint", required=True, help="Model checkpoint directory.")
    parser.add_argument("--video", required=True, nargs="+", help="Video files (or frame folders).")
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument("--classes", nargs="*", help="Class names.")
    names.add_argument(
        "--labels", help="Class list: CSV 'id,name', JSON {\"0\": name}, or one name per line."
    )
    parser.add_argument("--top-k", type=int, default=5, help="Classes shown per video.")
    parser.add_argument("--json", action="store_true", help="Print one JSON document instead.")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--clips", type=int, default=2, help="Temporal views per video.")
    parser.add_argument("--crops", type=int, default=1, choices=(1, 3), help="Spatial views.")
    parser.add_argument(
        "--normalization",
        choices=NORMALIZATION_CHOICES,
        default="checkpoint",
        help="Input normalisation: the one the checkpoint records (default), or this one.",
    )
    parser.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return parser


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cli.quiet_libraries()
    return cli.guarded(lambda: predict(args), args.debug)


def predict(args: argparse.Namespace) -> int:
    """Classify `args.video`; bad arguments raise a UserError before any video is decoded."""
    if args.top_k < 1 or args.clips < 1:
        raise UsageError(f"--top-k and --clips must be positive, got {args.top_k}, {args.clips}")
    origin = args.labels if args.labels is not None else "--classes"
    names = read_class_names(args.labels) if args.labels is not None else args.classes
    classnames = check_class_names(names, origin)
    predictor = load_predictor(args.checkpoint, args.dtype, args.normalization)
    check_prompts(predictor, classnames, origin)
    cfg = view_config(predictor.config, args.clips, args.crops, predictor.normalization)

    results = []
    for video in args.video:

        def short(n: int, video: str = video) -> None:
            _warn(f"{video}: {n} frames, fewer than the model's {cfg.num_frames}; some repeat")

        try:
            views = load_test_views(video, cfg, on_short=short)
        except (ValueError, OSError) as e:  # VideoReadError and friends name the file
            message = str(e) if video in str(e) else f"{video}: {e}"
            _error(message)
            results.append(VideoResult(video, error=message))
            continue
        probs = class_probabilities(predictor, views, classnames)
        results.append(VideoResult(video, top=top_classes(probs, classnames, args.top_k)))

    if args.json:
        document = {
            "checkpoint": os.path.abspath(args.checkpoint),
            "model": predictor.config.model,
            "num_classes": len(classnames),
            "views": {"clips": args.clips, "crops": args.crops},
            "normalization": predictor.normalization,
            "results": [dataclasses.asdict(r) for r in results],
        }
        print(json.dumps(document, indent=2))
    else:
        print(format_predictions(results))
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    allocator.configure()
    sys.exit(main())
