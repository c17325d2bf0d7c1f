"""Write the CLIP towers of a tcclip_jax checkpoint as a Hugging Face CLIP model directory.

  python tools/export_hf_weights.py --checkpoint ckpt/tcclip_k400 --output hf/tcclip_k400

The directory (config.json + model.safetensors) loads with
`transformers.CLIPModel.from_pretrained("hf/tcclip_k400")`: vision and text towers, projections
and logit scale. TC-CLIP's prompt vectors, VP layer and local/global bias tables have no place in
a CLIPModel and are left out (listed); a `joint` positional embedding (one table per frame) is
refused. Needs safetensors (`pip install -e ".[hf]"`), not torch or transformers.
"""

from __future__ import annotations

import argparse
import sys

from tcclip_jax.runtime import cli
from tcclip_jax.weights.checkpoint import load_model
from tcclip_jax.weights.hf import export_hf
from tcclip_jax.weights.pytorch import summarize_paths


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="tcclip_jax checkpoint directory")
    p.add_argument("--output", required=True, help="new Hugging Face model directory to write")
    p.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.quiet_libraries()
    return cli.guarded(lambda: export(args), args.debug)


def export(args: argparse.Namespace) -> int:
    cfg, params = load_model(args.checkpoint)
    left_out = export_hf(args.output, cfg, params, source=args.checkpoint)
    print(f"wrote {args.output}: the CLIP towers of {cfg.model}")
    if left_out:
        print(f"left out (no place in a CLIPModel): {summarize_paths(left_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
