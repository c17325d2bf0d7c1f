"""What a TC-CLIP model looks at: seed tokens, context tokens, CLS attention (paper Figs. 6, 7, 9).

  python -m tcclip_jax.visualize --checkpoint checkpoints/tcclip_k400 --video a.mp4 --output viz/

writes, for the centre clip and centre crop of the video (the model's own input frames):

  seeds.png, context_tokens.png, attention.png, explanation.gif and explanation.npz
  (see `tcclip_jax.visualization.render`).

All of it comes from one summarising vision block (`--block`, default the last, as the paper
shows): its seeds are the top-n_s patches of the CLS attention drawn in attention.png. The
Python API is `tcclip_jax.visualization.explain.explain(predictor, clip) -> Explanation`
plus the `render_*` functions of `tcclip_jax.visualization.render`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tcclip_jax.apps.inference import DTYPES, NORMALIZATION_CHOICES, load_predictor, view_config
from tcclip_jax.data.pipeline import load_test_views
from tcclip_jax.runtime import allocator, cli
from tcclip_jax.runtime.errors import UserError
from tcclip_jax.visualization.explain import explain, summary_block
from tcclip_jax.visualization.render import write_figures
from tcclip_jax.weights.checkpoint import CheckpointError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcclip_jax.visualize",
        description="Seed tokens, context tokens and CLS attention of a TC-CLIP checkpoint.",
    )
    parser.add_argument("--checkpoint", required=True, help="TC-CLIP checkpoint directory.")
    parser.add_argument("--video", required=True, help="Video file (or frame folder).")
    parser.add_argument("--output", required=True, help="Directory for the images.")
    parser.add_argument(
        "--block",
        type=int,
        default=-1,
        help="Summarising vision block (1-based), or negative from the last (default -1).",
    )
    parser.add_argument(
        "--highlight", type=int, help="Context token drawn red (default: the most widespread)."
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument(
        "--normalization",
        choices=NORMALIZATION_CHOICES,
        default="checkpoint",
        help="Input normalisation: the one the checkpoint records (default), or this one.",
    )
    parser.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cli.quiet_libraries()
    return cli.guarded(lambda: visualize(args), args.debug)


def visualize(args: argparse.Namespace) -> int:
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output {args.output}: cannot create it ({e.strerror})") from None
    if not os.access(args.output, os.W_OK):
        raise UserError(f"--output {args.output}: not writable")
    try:
        predictor = load_predictor(args.checkpoint, args.dtype, args.normalization)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        layer = summary_block(predictor.config, args.block)
        k = predictor.config.context_tokens
        if args.highlight is not None and not 0 <= args.highlight < k:
            raise ValueError(
                f"--highlight must be a context token id in [0, {k}), got {args.highlight}"
            )
    except ValueError as e:
        print(f"error: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    cfg = view_config(predictor.config, clips=1, crops=1, normalization=predictor.normalization)
    cfg.uint8_output = True
    try:
        frames = load_test_views(args.video, cfg)[0]  # the centre clip and crop.
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    exp = explain(predictor, predictor.normalize(frames), layer)
    for path in write_figures(args.output, frames, exp, args.highlight).values():
        print(path)
    return 0


if __name__ == "__main__":
    allocator.configure()
    sys.exit(main())
