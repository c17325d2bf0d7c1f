"""What the measuring tools compute from a model's outputs (`timeline_vs_truth.py`,
`search_recall.py`), kept apart from the scripts so that the tests check it.

The scripts run as `python tools/NAME.py`, which puts this folder first on `sys.path`; the tests
find it through pytest's `pythonpath` (pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tcclip_jax.apps import retrieval
from tcclip_jax.apps.inference import Predictor


def match_segments(found: Sequence[dict], truth: Sequence[dict], tolerance: float) -> list[bool]:
    """For every true segment ({"index", "start", "end"} in seconds), whether a found segment
    has its class and both ends within `tolerance` seconds of its ends (for a generated video
    whose segments are known). An end exactly one tolerance away counts: the times are sums of
    window strides and frame times in floats, so "exactly" is compared to a microsecond."""
    limit = tolerance + 1e-6
    return [
        any(
            f["index"] == t["index"]
            and abs(f["start"] - t["start"]) <= limit
            and abs(f["end"] - t["end"]) <= limit
            for f in found
        )
        for t in truth
    ]


def stage_one_recall(
    predictor: Predictor,
    index: retrieval.EmbeddingIndex,
    texts: Sequence[str],
    k: int,
    pools: Sequence[int],
) -> dict[int, float]:
    """For each pool size N: the fraction of the exhaustive VP top-k (every video re-scored)
    that stage 1's best N hold, averaged over `texts`: how often two-stage search gives the
    exhaustive answer."""
    everything = np.arange(len(index.videos))
    exact = retrieval.vp_scores(predictor, index, texts, everything).T  # [Q, N]
    stage1 = retrieval.stage_one_scores(
        index, predictor.text_embeddings_without_vp(texts), predictor.logit_multiplier()
    )
    out = {}
    for pool in pools:
        hits = [
            len(set(np.argsort(-e)[:k]) & set(np.argsort(-s)[:pool])) / k
            for e, s in zip(exact, stage1, strict=True)
        ]
        out[pool] = float(np.mean(hits))
    return out
