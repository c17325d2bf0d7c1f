"""Video embeddings on disk and text-to-video search over them (`embed`, `search`).

An embedding folder holds, for every video, what the model needs to score it against any text
without seeing the video again: the video embedding of each test view [V, E] and, for TC-CLIP,
the view's context tokens [V, k, D] (VP's input).

  meta.json          the checkpoint, its model, normalisation and the views
  index.jsonl        one line per video: {"video", "shard", "row", "views", "duration"}
  shards/NNNNN.npz   video_embedding [B, V, E], context_tokens [B, V, k, D] (TC-CLIP)
  classes.npz        with --classes: names and their text embeddings [C, E] (without VP)

Shards are written whole (a temporary file renamed) before their index lines, so an interrupted
run leaves only complete, indexed rows, and `--resume` carries on.

With VP a text's embedding depends on the video, so search ranks in two stages: the text
embedded without VP (the learned prompts alone) against every view, one matrix product over the
index; then the best `rerank` videos re-scored with VP from their stored context tokens. The
stage-2 score is the model's logit, exp(logit_scale) cos(video, text | video), averaged over the
views: what `Predictor.logits` gives for that text. CLIP and ViFi-CLIP have no VP: stage 1 is
exact and there is no stage 2.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from tcclip_jax.apps import collection
from tcclip_jax.apps.inference import Predictor
from tcclip_jax.runtime.errors import UsageError
from tcclip_jax.weights import hub

META_FILE, INDEX_FILE, CLASSES_FILE = "meta.json", "index.jsonl", "classes.npz"


# Writing -----------------------------------------------------------------------------------


def store_meta(predictor: Predictor, checkpoint: str, clips: int, crops: int) -> dict:
    return {
        "checkpoint": hub.source_name(checkpoint),
        "model": predictor.config.model,
        "normalization": predictor.normalization,
        "views": {"clips": clips, "crops": crops},
        "num_frames": predictor.config.num_frames,
        "dtype": str(jnp.dtype(predictor.dtype)),
    }


def check_output(directory: str, resume: bool) -> None:
    """A non-empty embedding folder is only added to with `resume`."""
    if os.path.isdir(directory) and os.listdir(directory) and not resume:
        raise UsageError(
            f"--output {directory} is not empty; pass --resume to add to it, or use another folder"
        )


class EmbeddingWriter:
    """Shards and index lines of an embedding folder, appended batch by batch.

    With `resume`, the folder's index is kept (a cut last line dropped) if it was written with
    the same checkpoint and views; `done` holds its videos. Without, a non-empty folder is an
    error rather than overwritten.
    """

    def __init__(self, directory: str, meta: dict, resume: bool):
        self.directory = directory
        self.shards = os.path.join(directory, "shards")
        meta_path = os.path.join(directory, META_FILE)
        check_output(directory, resume)
        if resume and os.path.isfile(meta_path):
            with open(meta_path) as f:
                old = json.load(f)
            changed = [k for k in meta if k != "dtype" and old.get(k) != meta[k]]
            if changed:
                raise UsageError(
                    f"--output {directory} was written with other settings "
                    f"({', '.join(changed)}: {[old.get(k) for k in changed]}); use another folder"
                )
        os.makedirs(self.shards, exist_ok=True)
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=2)
        self.index = collection.ResultFile(os.path.join(directory, INDEX_FILE), 0, resume=True)
        self.done = self.index.done
        existing = glob.glob(os.path.join(self.shards, "*.npz"))
        self._next = 1 + max((int(os.path.basename(p)[:-4]) for p in existing), default=-1)

    def write(self, items: Sequence[dict], arrays: dict[str, np.ndarray]) -> None:
        """One shard: `arrays` [len(items), ...] row i of `items[i]`'s video."""
        name = f"{self._next:05d}"
        self._next += 1
        tmp = os.path.join(self.shards, name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.shards, name + ".npz"))
        for row, item in enumerate(items):
            self.index.write(
                {"video": item["video"], "shard": name, "row": row,
                 "views": int(item["views"].shape[0]), "duration": item["duration"]}
            )  # fmt: skip

    def close(self) -> None:
        self.index.close()


def embed_batch(predictor: Predictor, views: np.ndarray) -> dict[str, np.ndarray]:
    """[B, V, T, H, W, 3] normalised views -> per-view `video_embedding` [B, V, E] and, for
    TC-CLIP, `context_tokens` [B, V, k, D]."""
    b, v = views.shape[:2]
    out = predictor.encode_video(views.reshape(b * v, *views.shape[2:]))
    arrays = {"video_embedding": out["video_embedding"]}
    if predictor.config.is_temporal:
        arrays["context_tokens"] = out["context_embeddings"]
    return {k: np.asarray(x).reshape(b, v, *x.shape[1:]) for k, x in arrays.items()}


# Reading and searching ---------------------------------------------------------------------


@dataclasses.dataclass
class EmbeddingIndex:
    """The videos of an embedding folder and their view embeddings [N, V, E], in memory; context
    tokens are read from the shards only for the videos asked for (`context_tokens`)."""

    videos: list[str]
    video_embedding: np.ndarray  # [N, V, E]
    meta: dict
    locations: list[tuple[str, int]]  # (shard file, row) per video

    @classmethod
    def load(cls, directory: str) -> EmbeddingIndex:
        meta_path = os.path.join(directory, META_FILE)
        index_path = os.path.join(directory, INDEX_FILE)
        if not os.path.isfile(meta_path) or not os.path.isfile(index_path):
            raise UsageError(
                f"{directory} is not an embedding folder (no {META_FILE} and {INDEX_FILE}): "
                "write one with python -m tcclip_jax.embed"
            )
        with open(meta_path) as f:
            meta = json.load(f)
        rows = []
        with open(index_path) as f:
            for number, line in enumerate(f, 1):
                if line.endswith("\n"):  # a cut last line is not a row
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        raise UsageError(f"{index_path}:{number}: not a JSON line") from None
        if not rows:
            raise UsageError(f"{index_path}: no videos embedded yet")
        locations = [
            (os.path.join(directory, "shards", r["shard"] + ".npz"), int(r["row"])) for r in rows
        ]
        embeddings = _read_rows(locations, "video_embedding")
        return cls([r["video"] for r in rows], embeddings, meta, locations)

    def context_tokens(self, rows: np.ndarray) -> np.ndarray | None:
        """[len(rows), V, k, D] TC-CLIP's stored context tokens of videos `rows` (else None)."""
        if self.meta["model"] != "tc_clip":  # no VP, nothing stored
            return None
        return _read_rows([self.locations[i] for i in rows], "context_tokens")


def _read_rows(locations: Sequence[tuple[str, int]], key: str) -> np.ndarray:
    """Array `key` at each (shard file, row), each shard read once."""
    out: list = [None] * len(locations)
    by_shard: dict[str, list[int]] = {}
    for i, (path, _) in enumerate(locations):
        by_shard.setdefault(path, []).append(i)
    for path, positions in by_shard.items():
        try:
            with np.load(path) as data:
                array = data[key]
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"{path}: cannot read {key} from the shard: {e}") from None
        for i in positions:
            out[i] = array[locations[i][1]]
    return np.stack(out)


def stage_one_scores(index: EmbeddingIndex, text: np.ndarray, logit_scale: float) -> np.ndarray:
    """[Q, N] exp(logit_scale) cos(view, text without VP), averaged over views: one product."""
    n, v, e = index.video_embedding.shape
    cos = index.video_embedding.reshape(n * v, e) @ text.T  # [N*V, Q]
    return logit_scale * cos.reshape(n, v, -1).mean(axis=1).T


def vp_scores(
    predictor: Predictor, index: EmbeddingIndex, texts: Sequence[str], rows: np.ndarray
) -> np.ndarray:
    """[len(rows), Q] the model's logits of `texts` for the videos `rows`, VP run on their
    stored context tokens, averaged over views (= `Predictor.logits` on their views)."""
    v = index.video_embedding.shape[1]
    video = {"video_embedding": index.video_embedding[rows].reshape(len(rows) * v, -1)}
    ctx = index.context_tokens(rows)
    if ctx is not None:
        video["context_embeddings"] = ctx.reshape(len(rows) * v, *ctx.shape[2:])
    return predictor.score(video, texts).reshape(len(rows), v, -1).mean(axis=1)


def search(
    predictor: Predictor, index: EmbeddingIndex, query: str, top: int, rerank: int
) -> list[dict]:
    """The `top` best videos for `query`: [{"rank", "video", "score", "stage1"}], best first.
    Stage 1 ranks every video; TC-CLIP's best `rerank` are re-scored with VP (stage 2)."""
    stage1 = stage_one_scores(
        index, predictor.text_embeddings_without_vp([query]), predictor.logit_multiplier()
    )[0]
    pool = np.argsort(-stage1, kind="stable")
    if predictor.config.is_temporal and rerank > 0:
        pool = pool[: max(rerank, top)]
        final = vp_scores(predictor, index, [query], pool)[:, 0]
        score = dict(zip(pool.tolist(), final.tolist(), strict=True))
        pool = pool[np.argsort(-final, kind="stable")]
    else:
        score = {int(i): float(stage1[i]) for i in pool[:top]}
    return [
        {"rank": r + 1, "video": index.videos[i], "score": score[int(i)],
         "stage1": float(stage1[i])}
        for r, i in enumerate(pool[:top])
    ]  # fmt: skip
