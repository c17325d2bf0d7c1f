"""Write a model for use without tcclip_jax's training code: a Hugging Face Hub model folder, a
`jax.export` artifact or an ONNX file.

  python -m tcclip_jax.export --checkpoint runs/k400/model --format hub --output tcclip-k400
  python -m tcclip_jax.export --checkpoint DIR --format jax --labels classes.csv \
      --output tcclip.jax
  python -m tcclip_jax.export --checkpoint DIR --format onnx --classes "juggling balls" \
      "riding a bike" --output tcclip.onnx

hub: config.json + model.safetensors + a model card (README.md) from an orbax model directory;
`Predictor.from_pretrained`, every command's `--checkpoint` and tools/push_to_hub.py read it.
jax / onnx: uint8 RGB clips [B, T, H, W, 3] -> video embeddings and the logits of the given class
names, normalisation and class text embeddings built in, any batch size
(`tcclip_jax.apps.export`); `--checkpoint` may also be a Hub folder or repo id.

Exit status: 0 when written; 2 for unusable arguments, a path that is not a model, or a model
the format cannot hold (named in one line).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from tcclip_jax.apps import export
from tcclip_jax.apps.collection import check_prompts, class_names
from tcclip_jax.apps.inference import DTYPES, NORMALIZATION_CHOICES, load_predictor
from tcclip_jax.runtime import allocator, cli
from tcclip_jax.runtime.errors import UsageError

PROG = "python -m tcclip_jax.export"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", required=True,
        help="Orbax model directory (hub: required); jax/onnx also take a Hub folder or repo id.",
    )  # fmt: skip
    parser.add_argument("--format", required=True, choices=export.FORMATS)
    parser.add_argument("--output", required=True, help="Folder (hub) or file (jax, onnx).")
    parser.add_argument("--overwrite", action="store_true", help="Replace --output.")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--classes", nargs="*", help="jax/onnx: the class names to score.")
    names.add_argument("--labels", help="jax/onnx: the class list (as predict reads it).")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="jax only.")
    parser.add_argument("--normalization", choices=NORMALIZATION_CHOICES, default="checkpoint")
    parser.add_argument(
        "--platforms", default="cpu",
        help="jax: comma-separated platforms to lower for (cpu, cuda, tpu; default cpu).",
    )  # fmt: skip
    parser.add_argument("--license", default="apache-2.0", help="hub: the model card's license.")
    parser.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return parser


def run(args: argparse.Namespace, command: str) -> int:
    """Write `args.output` in `args.format`; bad arguments raise a UsageError first."""
    if args.format == "hub":
        if args.classes is not None or args.labels:
            raise UsageError("--format hub keeps every class open: drop --classes / --labels")
        paths = export.export_hub(
            args.checkpoint, args.output, command=command, license=args.license,
            overwrite=args.overwrite,
        )  # fmt: skip
        print(f"wrote {os.path.dirname(paths[0])}: " + ", ".join(map(os.path.basename, paths)))
        return 0
    if args.classes is None and not args.labels:
        raise UsageError(f"--format {args.format} bakes in class names: give --classes or --labels")
    if os.path.exists(args.output) and not args.overwrite:
        raise UsageError(f"--output {args.output} exists (--overwrite to replace it)")
    classnames, origin = class_names(args.labels, args.classes)
    predictor = load_predictor(args.checkpoint, args.dtype, args.normalization)
    check_prompts(predictor, classnames, origin)
    if args.format == "jax":
        platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
        size = export.export_jax(predictor, classnames, args.output, platforms)
    else:
        size = export.export_onnx(predictor, classnames, args.output)
    print(f"wrote {args.output}: {size / 1e6:.1f} MB, {len(classnames)} classes")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run_argparse(_parser(), lambda args: run(args, f"{PROG} {shlex.join(argv)}"), argv)


if __name__ == "__main__":
    allocator.configure()
    sys.exit(main())
