"""Multi-view top-1 / top-5 accuracy of a model on one annotation list.

An `Evaluator` owns one dataset (one class set, one annotation file). Each call evaluates one set
of weights: the class embeddings are computed once and reused for every batch; every video is
scored from the softmax of each of its views (temporal clips x spatial crops), summed over views,
as the published code does. Padding rows (`valid` False) never count and every annotation line
must be scored exactly once, across all processes, or the call fails: a silently dropped video
would change the accuracy without any sign.

Unreadable videos (a truncated file, a missing frame folder) are counted as misses, never left
out: the denominator stays the number of listed videos, so the accuracy is never inflated. Each
is named in the log (by the process that met it) and listed in `Evaluator.unreadable` (the
results file lists them per evaluated list). Past `data.max_bad_videos` of them in one list
(all processes together) the evaluation stops with a `RunError` naming the first; every process
stops with the same line (`runtime.agreement`).

Accuracies are percentages, as the paper reports them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from tcclip_jax.data.config import normalization_stats
from tcclip_jax.data.normalize import normalize_on_device
from tcclip_jax.data.pipeline import create_eval_dataset
from tcclip_jax.data.readers import make_reader
from tcclip_jax.models.prompts import prompt_tokens, text_encoder
from tcclip_jax.models.video_clip import VideoCLIP
from tcclip_jax.runtime import agreement, sharding
from tcclip_jax.runtime.errors import RunError

TOP_K = 5


# Accuracy ----------------------------------------------------------------------------------


def multiview_scores(logits: jax.Array) -> jax.Array:
    """[b, V, C] logits of V views -> [b, C]: softmax per view, summed over the views."""
    return jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1).sum(1)


def topk_hits(scores: jax.Array, labels: jax.Array, k: int = TOP_K) -> tuple[jax.Array, jax.Array]:
    """Whether each row's label is its best class, and among its k best (all, if C <= k)."""
    _, best = jax.lax.top_k(scores, min(k, scores.shape[-1]))
    hits = best == labels[:, None]
    return hits[:, 0], hits.any(axis=-1)


# One dataset -------------------------------------------------------------------------------


def place_params(params: Any, mesh: Mesh) -> Any:
    """Arrays already laid out on `mesh` (e.g. FSDP-sharded training state) stay as they are;
    anything else is replicated over it. One layout per leaf keeps the eval step compiled once."""
    replicated = sharding.replicated(mesh)

    def place(x):
        if isinstance(x, jax.Array) and getattr(x.sharding, "mesh", None) == mesh:
            return x
        return sharding.put_replicated_value(np.asarray(x), replicated)

    return jax.tree.map(place, params)


def tally(
    counts: np.ndarray, index: np.ndarray, valid: np.ndarray, top1: np.ndarray, top5: np.ndarray
) -> None:
    """Adds one batch to `counts` [3, num_videos]: times scored, top-1 hits, top-5 hits.

    Rows are placed by their annotation index, so padding (`valid` False) and duplicates can be
    told apart from real rows.
    """
    valid = np.asarray(valid, bool)
    index = np.asarray(index)[valid]
    np.add.at(counts[0], index, 1)
    np.add.at(counts[1], index, np.asarray(top1)[valid])
    np.add.at(counts[2], index, np.asarray(top5)[valid])


@functools.cache
def eval_programs(model: VideoCLIP, mesh: Mesh, mean: tuple, std: tuple) -> tuple[Any, Any]:
    """The jitted text encoder and eval step, shared by all evaluators of the same model, so
    that evaluating many datasets or splits compiles once per shape, not once per list."""
    replicated = sharding.replicated(mesh)
    batch_sharding = sharding.batch_sharding(mesh)

    def step(params: Any, text: Any, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(params, class-embedding cache, batch) -> top-1 and top-5 hits [b], and the
        view-averaged class probabilities [b, C] (for `analysis`)."""
        video = batch["video"]
        b, v = video.shape[:2]
        clips = video.reshape(b * v, *video.shape[2:])
        if clips.dtype == jnp.uint8:
            clips = normalize_on_device(clips, mean, std)
        variables = {"params": params}
        encoded = model.apply(variables, clips, method="encode_video")
        logits = model.apply(variables, encoded, text, method="logits")
        scores = multiview_scores(logits.reshape(b, v, -1))
        return (*topk_hits(scores, batch["label"]), scores / v)

    return (
        text_encoder(model, out_shardings=replicated),
        jax.jit(
            sharding.traced_under(mesh, step),
            in_shardings=(None, replicated, batch_sharding),
            out_shardings=batch_sharding,
        ),
    )


class Evaluator:
    """Top-1 / top-5 accuracy of a model on one annotation list, data parallel over `mesh`.

    `batch_size` is the global number of videos per step (each process loads
    `batch_size // process_count`); a video of V views costs V clips of model batch.
    Labels of the list index `class_names`, the candidates every video is scored over.
    """

    def __init__(
        self,
        model: VideoCLIP,
        mesh: Mesh,
        data_cfg: ml_collections.ConfigDict,
        *,
        annotation_file: str | None,
        class_names: Sequence[str],
        batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        devices = mesh.shape[sharding.DATA_AXIS]
        if batch_size % process_count or batch_size % devices:
            raise ValueError(
                f"eval batch size {batch_size} must be divisible by the number of processes "
                f"({process_count}) and of devices ({devices})"
            )
        self.model = model
        self.mesh = mesh
        self.data_cfg = data_cfg
        self.batch_size = batch_size
        self.process_index = process_index
        self.process_count = process_count
        annotation_file = annotation_file or data_cfg.val_list
        self.annotation_file = annotation_file
        entries = make_reader(data_cfg, "val").entries(annotation_file, len(class_names))
        # The denominator: every entry of the list, whatever the loader does.
        self.num_videos = len(entries)
        self._where = [e.where for e in entries]
        self.videos = [e.path for e in entries]
        self.labels = np.asarray([e.label for e in entries])
        self.scores: np.ndarray | None = None  # [num_videos, C] of the last call
        self.unreadable: list[str] = []  # the videos the last call could not read (misses)
        self.unreadable_mask = np.zeros(self.num_videos, bool)
        self.class_names = list(class_names)
        self.tokens = prompt_tokens(model.config, self.class_names)
        self._batch_sharding = sharding.batch_sharding(mesh)
        # One compiled step per model, however it was built: rematerialisation only matters
        # for gradients, and `jnp.float32` / `jnp.dtype("float32")` hash differently.
        model = model.clone(dtype=jnp.dtype(model.dtype), remat=False)
        self._encode_text, self._step = eval_programs(
            model, mesh, *normalization_stats(data_cfg.normalization)
        )

    def text_cache(self, params: Any) -> Any:
        """Everything that depends on the class names and weights only (see `encode_text`)."""
        return self._encode_text(params, self.tokens)

    def __call__(self, params: Any) -> dict:
        params = place_params(params, self.mesh)
        text = self.text_cache(params)
        counts = np.zeros((3, self.num_videos), np.int32)  # this process's share
        scores = np.zeros((self.num_videos, len(self.class_names)), np.float32)
        batches = iter(
            create_eval_dataset(
                self.data_cfg,
                batch_size=self.batch_size // self.process_count,
                annotation_file=self.annotation_file,
                process_index=self.process_index,
                process_count=self.process_count,
            )
        )
        pending = None  # the previous step's results, fetched once the next step is queued
        bad: dict[int, str] = {}  # position -> message, of the videos this process met
        try:
            for batch in batches:
                for position, message in batch.pop("unreadable"):
                    logging.warning("unreadable evaluation video (counted as a miss): %s", message)
                    bad[position] = message
                valid = np.asarray(batch["valid"], bool)
                labels = np.where(valid, batch["label"], 0)
                inputs = sharding.put_process_batch(
                    {"video": batch["video"], "label": labels}, self._batch_sharding
                )
                hits = self._step(params, text, inputs)
                if pending is not None:
                    self._tally(counts, scores, *pending)
                pending = (batch["index"], valid, hits)
        finally:
            batches.close()  # stops worker processes, if any
        if pending is not None:
            self._tally(counts, scores, *pending)
        unreadable = np.zeros(self.num_videos, bool)
        unreadable[list(bad)] = True
        counts[1:, unreadable] = 0  # a miss, whatever the zeros scored
        scores[unreadable] = 0.0
        if self.process_count > 1:
            counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
            scores = np.asarray(multihost_utils.process_allgather(scores)).sum(axis=0)
            unreadable = np.asarray(multihost_utils.process_allgather(unreadable)).any(axis=0)
        self.scores = scores
        self.unreadable_mask = unreadable
        self.unreadable = [self.videos[i] for i in np.flatnonzero(unreadable)]
        self._check_unreadable(bad, int(unreadable.sum()))
        self._check_coverage(counts[0])
        return {
            "top1": float(100.0 * counts[1].sum() / self.num_videos),
            "top5": float(100.0 * counts[2].sum() / self.num_videos),
            "num_videos": self.num_videos,
        }

    def _check_unreadable(self, mine: dict[int, str], total: int) -> None:
        """Stop (every process, the same line) past `data.max_bad_videos` unreadable videos."""
        limit = self.data_cfg.max_bad_videos
        error = None
        if total > limit and mine:
            first = mine[min(mine)]
            error = RunError(
                f"{total} unreadable videos in {self.annotation_file}, more than "
                f"data.max_bad_videos={limit} (each counts as a miss); the first: {first}"
            )
        if self.process_count > 1:
            agreement.agree(error)
        elif error is not None:
            raise error

    def _tally(self, counts, scores, index: np.ndarray, valid: np.ndarray, outputs) -> None:
        top1, top5, probs = multihost_utils.global_array_to_host_local_array(
            outputs, self.mesh, self._batch_sharding.spec
        )
        tally(counts, index, valid, top1, top5)
        valid = np.asarray(valid, bool)
        scores[np.asarray(index)[valid]] = np.asarray(probs)[valid]

    def _check_coverage(self, seen: np.ndarray) -> None:
        missing, repeated = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
        if missing.size or repeated.size:
            raise RuntimeError(
                f"evaluation must score each of the {self.num_videos} listed videos once; "
                f"{missing.size} never scored ({[self._where[i] for i in missing[:5]]}), "
                f"{repeated.size} scored more than once ({[self._where[i] for i in repeated[:5]]})"
            )
