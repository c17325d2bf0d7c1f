"""Write a tcclip_jax checkpoint in the released PyTorch formats (the reverse of
tools/convert_torch_weights.py).

  python tools/export_torch_weights.py --checkpoint runs/fs_hmdb_16/model \
      --tcclip tcclip_fs_hmdb_16.pth --clip ViT-B-16-towers.pt

--tcclip: the authors' released checkpoint layout, `{"model": {"module.*": tensor}}` (TC-CLIP's
for tc_clip models, ViFi-CLIP's for vifi_clip and clip), which the published code loads with
`--resume` / `resume=` and tools/convert_torch_weights.py reads back. Like the released files it
holds no token embedding: the published code takes that from CLIP.
--clip: OpenAI CLIP's state dict of the checkpoint's CLIP towers (a `ViT-B-16.pt` replacement:
`clip.build_model` and tools/convert_torch_weights.py --clip read it); TC-CLIP's prompt
vectors, VP and local/global bias tables have no place there (listed).

Converting both files back gives the same parameters, bit for bit. Needs torch.
"""

from __future__ import annotations

import argparse
import os
import sys

from tcclip_jax.weights.checkpoint import CheckpointError, load_model
from tcclip_jax.weights.pytorch import (
    ConversionError,
    openai_state_dict,
    released_state_dict,
    save_torch,
    summarize_paths,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="tcclip_jax checkpoint directory")
    p.add_argument("--tcclip", help="released-format checkpoint (.pth) to write")
    p.add_argument("--clip", help="OpenAI CLIP state dict (.pt) of the CLIP towers to write")
    args = p.parse_args(argv)
    if not (args.tcclip or args.clip):
        p.error("nothing to write: give --tcclip and/or --clip")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg, params = load_model(args.checkpoint)
        outputs = []
        if args.tcclip:
            outputs.append((args.tcclip, released_state_dict(cfg, params, args.checkpoint), True))
        left_out = []
        if args.clip:
            sd, left_out = openai_state_dict(cfg, params, args.checkpoint)
            outputs.append((args.clip, sd, False))
        for path, _, _ in outputs:
            if os.path.exists(path):
                raise ConversionError(f"{path} exists; choose a new file name")
        for path, sd, wrap in outputs:
            save_torch(path, sd, wrap)
    except (ConversionError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, sd, wrap in outputs:
        kind = f"released {cfg.model} checkpoint" if wrap else "OpenAI CLIP state dict"
        print(f"wrote {path}: {kind}, {len(sd)} tensors")
    if left_out:
        print(f"left out of {args.clip} (no place in CLIP): {summarize_paths(left_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
