"""Rank embedded videos by how well they match a text.

  python -m tcclip_jax.search --index emb/ "someone juggling balls" [--top 10] [--json]

`emb/` is written by `python -m tcclip_jax.embed`; the text is scored with the checkpoint the
embeddings were made with (or `--checkpoint`). TC-CLIP's video-conditioned prompts make a text's
embedding depend on the video, so the ranking has two stages (`tcclip_jax.apps.retrieval`): the text
without VP against every video, then the best `--rerank` re-scored with VP from their stored
context tokens; the score is the model's logit for the text, averaged over the views.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tcclip_jax.apps import retrieval
from tcclip_jax.apps.collection import check_prompts
from tcclip_jax.apps.inference import DTYPES, load_predictor
from tcclip_jax.runtime import allocator, cli
from tcclip_jax.runtime.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcclip_jax.search", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("query", nargs="+", help="The text (several words are one text).")
    parser.add_argument("--index", required=True, help="Embedding folder (tcclip_jax.embed).")
    parser.add_argument("--checkpoint", help="Model checkpoint (default: the index's).")
    parser.add_argument("--top", type=int, default=10, help="Videos listed.")
    parser.add_argument(
        "--rerank", type=int, default=100, help="Videos re-scored with VP (0: stage 1 only)."
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    parser.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.top < 1 or args.rerank < 0:
        raise UsageError(f"--top must be positive, --rerank 0 or more: {args.top}, {args.rerank}")
    query = " ".join(args.query).strip()
    if not query:
        raise UsageError("the query is empty")
    index = retrieval.EmbeddingIndex.load(args.index)
    predictor = load_predictor(args.checkpoint or index.meta["checkpoint"], args.dtype)
    check_prompts(predictor, [query], "the query")
    results = retrieval.search(predictor, index, query, args.top, args.rerank)
    if args.json:
        print(json.dumps({"query": query, "index": args.index, "results": results}, indent=2))
    else:
        print(f"{'rank':>4}  {'score':>8}  {'stage 1':>8}  video")
        for r in results:
            print(f"{r['rank']:>4}  {r['score']:8.3f}  {r['stage1']:8.3f}  {r['video']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_argparse(_parser(), run, argv)


if __name__ == "__main__":
    allocator.configure()
    sys.exit(main())
