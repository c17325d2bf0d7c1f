"""Convert PyTorch CLIP / TC-CLIP weights into a tcclip_jax checkpoint directory.

OpenAI CLIP as released (TorchScript `ViT-B-16.pt`) or a plain state dict, optionally with a
released TC-CLIP (or ViFi-CLIP) checkpoint:

  python tools/convert_torch_weights.py --clip ViT-B-16.pt --output ckpt/clip_b16 --model clip
  python tools/convert_torch_weights.py --clip ViT-B-16.pt --output ckpt/tcclip_init
  python tools/convert_torch_weights.py --clip ViT-B-16.pt --tcclip zero_shot_k400.pth \
      --output ckpt/tcclip_k400

--clip also takes a Hugging Face CLIP model directory (config.json + model.safetensors or
pytorch_model.bin), or a model id already in the local Hugging Face cache (nothing is downloaded):

  python tools/convert_torch_weights.py --clip openai/clip-vit-base-patch16 --arch ViT-B/16 \
      --output ckpt/tcclip_init

Without --tcclip, TC-CLIP / ViFi-CLIP is initialised from CLIP as the published code does
before training. Model options default to the released TC-CLIP. The checkpoint records the input
normalisation its weights expect (preprocessing.json): ImageNet's with --tcclip (the released
checkpoints were trained with it), CLIP's without; --normalization overrides it. The reverse,
our CLIP towers as a Hugging Face directory: tools/export_hf_weights.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import jax

from tcclip_jax.data.config import NORMALIZATIONS
from tcclip_jax.models.config import ARCH_NAMES, MODEL_KINDS, check_arch
from tcclip_jax.runtime import cli
from tcclip_jax.weights.checkpoint import check_new_directory, save_model
from tcclip_jax.weights.convert import convert, source_normalization
from tcclip_jax.weights.pytorch import ConversionError


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated block numbers: {text!r}") from e


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--clip",
        required=True,
        help="OpenAI CLIP weights (.pt TorchScript or state dict), or a Hugging Face CLIP\n"
        "directory or model id (local cache only)",
    )
    p.add_argument("--arch", choices=ARCH_NAMES, help="fail unless the CLIP towers are these")
    p.add_argument("--tcclip", help="released TC-CLIP / ViFi-CLIP checkpoint (.pth)")
    p.add_argument("--output", required=True, help="new checkpoint directory to write")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists and is not empty"
    )
    p.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    p.add_argument("--model", choices=MODEL_KINDS, default="tc_clip")
    p.add_argument("--num-frames", type=int, help="T (default 16)")
    p.add_argument("--positional-embedding", choices=("space", "joint"))
    p.add_argument("--context-tokens", type=int, help="k (default 96)")
    p.add_argument("--seed-ratio", type=float, help="alpha (default 0.3)")
    p.add_argument("--merge-r", type=int, help="r (default 100)")
    p.add_argument("--tc-layers", type=_layers, help="1-based blocks with TC, e.g. 4,8,12")
    p.add_argument("--context-length", type=int, help="prompt tokens (30 for TC-CLIP, 77 else)")
    p.add_argument("--seed", type=int, default=0, help="rng seed for freshly initialised params")
    p.add_argument(
        "--normalization",
        choices=sorted(NORMALIZATIONS),
        help="input normalisation the weights expect (default: imagenet with --tcclip, else clip)",
    )
    return p.parse_args(argv)


def write(output: str, cfg, params, info: dict, normalization: str) -> None:
    """Write the checkpoint into a temporary folder beside `output`, renamed at the end: a
    failed conversion leaves nothing half-written, `--overwrite` replaces `output` whole."""
    output = os.path.abspath(output)
    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        save_model(tmp, cfg, params, info=info, normalization=normalization)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.quiet_libraries()
    return cli.guarded(lambda: convert_and_write(args), args.debug)


def convert_and_write(args: argparse.Namespace) -> int:
    options = {
        "model": args.model,
        "num_frames": args.num_frames,
        "positional_embedding": args.positional_embedding,
        "context_tokens": args.context_tokens,
        "seed_ratio": args.seed_ratio,
        "merge_r": args.merge_r,
        "tc_layers": args.tc_layers,
        "context_length": args.context_length,
    }
    options = {k: v for k, v in options.items() if v is not None}
    check_new_directory(args.output, overwrite=args.overwrite)  # before the conversion
    cfg, params = convert(args.clip, tcclip_path=args.tcclip, seed=args.seed, **options)
    if args.arch:
        try:
            check_arch(cfg, args.arch, args.clip)
        except ValueError as e:
            raise ConversionError(str(e)) from None
    clip = os.path.abspath(args.clip) if os.path.exists(args.clip) else args.clip  # model id
    info = {"clip": clip, "seed": args.seed}
    if args.tcclip:
        info["tcclip"] = os.path.abspath(args.tcclip)
    normalization = args.normalization or source_normalization(args.tcclip)
    write(args.output, cfg, params, info, normalization)
    n = sum(v.size for v in jax.tree.leaves(params))
    print(
        f"wrote {args.output}: {cfg.model}, {n / 1e6:.1f}M parameters, {normalization} "
        "normalisation"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
