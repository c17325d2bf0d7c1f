"""Write video embeddings for other tools and for `search`.

  python -m tcclip_jax.embed --checkpoint checkpoints/tcclip_k400 --video clips/ --output emb/
  python -m tcclip_jax.embed --checkpoint DIR --video list.txt --output emb/ --resume \
      --labels classes.csv

Per video (files, frame folders, folders searched recursively, list files; as `predict`), the
video embedding of each test view and, for TC-CLIP, its context tokens, in NumPy shards with a
JSON-lines index (`tcclip_jax.apps.retrieval`); with `--classes`/`--labels`, the classes' text
embeddings too. Written batch by batch; `--resume` carries on an interrupted run.

Exit status: 0 when every video was embedded, 1 when some could not be read (each is named on
stderr), 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from tcclip_jax.apps import collection, retrieval
from tcclip_jax.apps.collection import check_prompts, class_names
from tcclip_jax.apps.inference import DTYPES, NORMALIZATION_CHOICES, load_predictor, view_config
from tcclip_jax.runtime import allocator, cli
from tcclip_jax.runtime.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcclip_jax.embed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="Model checkpoint directory.")
    parser.add_argument(
        "--video", required=True, nargs="+",
        help="Video files, frame folders, folders (searched recursively) or list files.",
    )  # fmt: skip
    parser.add_argument("--output", required=True, help="The embedding folder to write.")
    parser.add_argument("--resume", action="store_true", help="Add to --output's embeddings.")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--classes", nargs="*", help="Also embed these class names.")
    names.add_argument("--labels", help="Also embed this class list (as predict reads it).")
    parser.add_argument("--batch-size", type=int, default=8, help="Videos per model call.")
    parser.add_argument("--workers", type=int, default=None, help="Decoding processes.")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--clips", type=int, default=2, help="Temporal views per video.")
    parser.add_argument("--crops", type=int, default=1, choices=(1, 3), help="Spatial views.")
    parser.add_argument("--normalization", choices=NORMALIZATION_CHOICES, default="checkpoint")
    parser.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return parser


def embed(args: argparse.Namespace) -> int:
    if args.clips < 1 or args.batch_size < 1 or (args.workers or 0) < 0:
        raise UsageError("--clips and --batch-size must be positive, --workers 0 or more")
    retrieval.check_output(args.output, args.resume)
    predictor = load_predictor(args.checkpoint, args.dtype, args.normalization)
    labelled = args.labels is not None or args.classes is not None
    names = class_names(args.labels, args.classes) if labelled else None
    if names is not None:
        check_prompts(predictor, *names)
    cfg = view_config(predictor.config, args.clips, args.crops, predictor.normalization)
    cfg.uint8_output = True
    videos = collection.find_videos(args.video, cfg.frame_template)
    meta = retrieval.store_meta(predictor, args.checkpoint, args.clips, args.crops)
    writer = retrieval.EmbeddingWriter(args.output, meta, args.resume)
    if names is not None:
        embedding = predictor.text_embeddings_without_vp(names[0])
        np.savez(os.path.join(args.output, retrieval.CLASSES_FILE),
                 names=np.array(names[0]), text_embedding=embedding)  # fmt: skip
    todo = [v for v in videos if v not in writer.done]
    if len(todo) < len(videos):
        collection.warn(f"{args.output}: {len(videos) - len(todo)} videos already done, skipped")
    workers = args.workers
    if workers is None:
        workers = collection.default_workers(len(todo), args.batch_size)
    failed = 0
    bar = tqdm(total=len(todo), unit="video", disable=None, file=sys.stderr, dynamic_ncols=True)
    try:
        for batch in collection.view_batches(todo, cfg, workers, args.batch_size):
            readable = [item for item in batch if "views" in item]
            for item in batch:
                if "error" in item:
                    tqdm.write(f"error: {item['error']}", file=sys.stderr)
                    failed += 1
            if readable:
                views = predictor.normalize(collection.stack_views(readable, args.batch_size))
                arrays = retrieval.embed_batch(predictor, views)
                writer.write(readable, {k: a[: len(readable)] for k, a in arrays.items()})
            bar.update(len(batch))
    finally:
        bar.close()
        writer.close()
    print(f"{len(todo) - failed} videos embedded, {failed} unreadable: {args.output}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_argparse(_parser(), embed, argv)


if __name__ == "__main__":
    allocator.configure()
    sys.exit(main())
