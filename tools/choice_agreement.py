"""How often a 16-bit forward pass makes TC's discrete choices as float64 does: the seeds each
frame picks and the context token each seed merges into, per summarising block.

  python tools/choice_agreement.py --checkpoint CK [--dtype bfloat16] [--videos 8] [--seed 0]

Clips are random (standard normal after normalisation) unless --clips FILE.npy ([B, T, H, W, 3],
normalised) is given. A seed agrees when float64 picks it too (as a set per frame); a merge
agrees when the seed's float64 context token holds the same float64 seeds as its 16-bit one.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np


def _groups(seed_index: np.ndarray, assignment: np.ndarray) -> list[set[frozenset]]:
    """Per (video, block): the context tokens as sets of (frame, patch) seeds."""
    b, blocks, t, _ = seed_index.shape
    out = []
    for v in range(b):
        for k in range(blocks):
            tokens: dict[int, set] = {}
            for f in range(t):
                for s, patch in enumerate(seed_index[v, k, f]):
                    tokens.setdefault(int(assignment[v, k, f, s]), set()).add((f, int(patch)))
            out.append({frozenset(members) for members in tokens.values()})
    return out


def agreement(low: dict, exact: dict) -> dict[str, float]:
    """Shares of seeds and of seed merges that `low`'s choices share with `exact`'s."""
    n_s = exact["seed_index"].shape[-1]
    same_seeds, seeds = 0, 0
    for a, b in zip(
        low["seed_index"].reshape(-1, n_s), exact["seed_index"].reshape(-1, n_s), strict=True
    ):
        same_seeds += len(set(a.tolist()) & set(b.tolist()))
        seeds += len(b)
    same_merges, merges = 0, 0
    for mine, theirs in zip(
        _groups(low["seed_index"], low["assignment"]),
        _groups(exact["seed_index"], exact["assignment"]),
        strict=True,
    ):
        same_merges += sum(len(g) for g in mine & theirs)
        merges += sum(len(g) for g in theirs)
    return {"seeds": same_seeds / seeds, "merges": same_merges / merges}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a converted checkpoint directory")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", help="normalised clips [B, T, H, W, 3] as .npy")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    from tcclip_jax.apps.inference import Predictor

    exact = Predictor.from_checkpoint(args.checkpoint, dtype="float64")
    low = Predictor(exact.config, exact.params, dtype=args.dtype)
    cfg = exact.config
    if args.clips:
        clips = np.load(args.clips)
    else:
        size = (args.videos, cfg.num_frames, cfg.image_resolution, cfg.image_resolution, 3)
        clips = np.random.default_rng(args.seed).standard_normal(size)
    outputs = {}
    for name, predictor in (("exact", exact), ("low", low)):
        video = predictor.encode_video(clips)
        outputs[name] = {k: np.asarray(video[k]) for k in ("seed_index", "assignment")}
    shares = agreement(outputs["low"], outputs["exact"])
    print(json.dumps({"dtype": args.dtype, "videos": len(clips), **shares}))


if __name__ == "__main__":
    main()
