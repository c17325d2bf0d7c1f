"""How well `search` finds a labelled collection's classes, and how often its two stages give
the exhaustive answer.

  python -m tcclip_jax.embed --checkpoint runs/demo/model --video runs/demo/synthetic/val.txt \
      --output /tmp/emb_val
  python tools/search_recall.py --index /tmp/emb_val --list runs/demo/synthetic/val.txt \
      --labels runs/demo/synthetic/classes.csv

Every class name is a query. Printed: precision@5 (of the five videos returned, the share of the
queried class) of stage 1 alone, of two-stage search and of exhaustive VP scoring (every video
re-scored), and, per
stage-1 pool size N, the share of the exhaustive top 5 that stage 1's best N hold (1.0: the
two-stage ranking equals the exhaustive one).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from measures import stage_one_recall

from tcclip_jax.apps import retrieval
from tcclip_jax.apps.collection import read_class_names
from tcclip_jax.apps.inference import load_predictor
from tcclip_jax.data.classes import read_annotations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--list", required=True, help="The annotation list embedded (labels).")
    parser.add_argument("--labels", required=True, help="Class list.")
    parser.add_argument("--pools", type=int, nargs="+", default=[5, 10, 20, 50])
    args = parser.parse_args()
    index = retrieval.EmbeddingIndex.load(args.index)
    predictor = load_predictor(index.meta["checkpoint"])
    names = read_class_names(args.labels)
    base = os.path.dirname(os.path.abspath(args.list))
    label_of = {os.path.normpath(os.path.join(base, p)): y for p, y in read_annotations(args.list)}
    labels = np.array([label_of[os.path.normpath(v)] for v in index.videos])

    exact = retrieval.vp_scores(predictor, index, names, np.arange(len(labels))).T  # [Q, N]
    two_stage = [retrieval.search(predictor, index, n, 5, rerank=20) for n in names]
    row_of = {v: i for i, v in enumerate(index.videos)}
    p_two = np.mean([[labels[row_of[r["video"]]] == q for r in res]
                     for q, res in enumerate(two_stage)])  # fmt: skip
    p_exact = np.mean([labels[np.argsort(-e)[:5]] == q for q, e in enumerate(exact)])
    stage1 = retrieval.stage_one_scores(
        index,
        predictor.text_embeddings_without_vp(names),
        predictor.logit_multiplier(),
    )
    p_one = np.mean([labels[np.argsort(-s)[:5]] == q for q, s in enumerate(stage1)])
    recall = stage_one_recall(predictor, index, names, k=5, pools=args.pools)
    print(f"{len(labels)} videos, {len(names)} class-name queries")
    print(
        f"precision@5: stage 1 alone {p_one:.3f}, two-stage (pool 20) {p_two:.3f}, "
        f"exhaustive VP {p_exact:.3f}"
    )
    for pool, r in recall.items():
        print(f"exhaustive top-5 held by stage 1's best {pool}: {r:.3f}")


if __name__ == "__main__":
    main()
