"""Evaluation: multi-view top-1 / top-5 accuracy, the paper's protocols, and WiSE-FT.

An `Evaluator` owns one dataset (one class set, one annotation file). Each call evaluates one set
of weights: the class embeddings are computed once and reused for every batch; every video is
scored from the softmax of each of its views (temporal clips x spatial crops), summed over views,
as the published code does. Padding rows (`valid` False) never count and every annotation line
must be scored exactly once, across all processes, or the call fails: a silently dropped video
would change the accuracy without any sign.

Accuracies are percentages, as the paper reports them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from tcclip_jax import sharding
from tcclip_jax.checkpoints import load_model
from tcclip_jax.data.classes import AnnotationError, load_class_names
from tcclip_jax.data.normalize import normalize_on_device
from tcclip_jax.data.pipeline import create_eval_dataset, make_reader
from tcclip_jax.data.readers import entries_from_list
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.video_clip import VideoCLIP
from tcclip_jax.tokenizer import tokenize_prompts, trim_padding

TOP_K = 5
PROTOCOLS = ("fewshot", "zeroshot", "base2novel", "fully_supervised", "demo")


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
def _compiled(model: VideoCLIP, mesh: Mesh, mean: tuple, std: tuple) -> tuple[Any, Any]:
    """The jitted text encoder and eval step, shared by all evaluators of the same model, so
    that evaluating many datasets or splits compiles once per shape, not once per list."""
    replicated = sharding.replicated(mesh)
    batch_sharding = sharding.batch_sharding(mesh)

    def encode_text(params: Any, tokens: jax.Array) -> Any:
        return model.apply({"params": params}, tokens, method="encode_text")

    def step(params: Any, text: Any, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(params, class-embedding cache, batch) -> top-1 and top-5 hits [b]."""
        video = batch["video"]
        b, v = video.shape[:2]
        clips = video.reshape(b * v, *video.shape[2:])
        if clips.dtype == jnp.uint8:
            clips = normalize_on_device(clips, mean, std)
        variables = {"params": params}
        encoded = model.apply(variables, clips, method="encode_video")
        logits = model.apply(variables, encoded, text, method="logits")
        return topk_hits(multiview_scores(logits.reshape(b, v, -1)), batch["label"])

    return (
        jax.jit(encode_text, out_shardings=replicated),
        jax.jit(
            step, in_shardings=(None, replicated, batch_sharding), out_shardings=batch_sharding
        ),
    )


class Evaluator:
    """Top-1 / top-5 accuracy of a model on one annotation list, data parallel over `mesh`.

    `batch_size` is the global number of videos per step (each process loads
    `batch_size // process_count`); a video of V views costs V clips of model batch.
    `class_ids` restricts the candidates to those classes of `class_names` (base-to-novel:
    each half is scored over its own class set); labels of the list must then be among them.
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
        class_ids: Sequence[int] | None = None,
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
        if data_cfg.format == "tfds":  # the list the shards were packed from
            entries = make_reader(data_cfg, "val").entries()
        else:
            entries = entries_from_list(annotation_file, len(class_names))
        # The denominator: every entry of the list, whatever the loader does.
        self.num_videos = len(entries)
        self._where = [e.where for e in entries]
        class_ids = list(range(len(class_names))) if class_ids is None else list(class_ids)
        if len(set(class_ids)) != len(class_ids) or not all(
            0 <= i < len(class_names) for i in class_ids
        ):
            raise ValueError(
                f"class_ids must be distinct ids in 0..{len(class_names) - 1}, got {class_ids}"
            )
        self._label_map = np.full(len(class_names), -1, np.int32)
        self._label_map[class_ids] = np.arange(len(class_ids))
        for e in entries:
            if not 0 <= e.label < len(class_names) or self._label_map[e.label] < 0:
                raise AnnotationError(f"{e.where}: label {e.label} is not an evaluated class")
        self.class_names = [class_names[i] for i in class_ids]
        cfg = model.config
        # Padding after the longest prompt's EOT is dropped: exact (causal text tower), cheaper.
        self.tokens = trim_padding(
            tokenize_prompts(
                self.class_names, template=cfg.prompt_template, context_length=cfg.context_length
            )
        )
        self._batch_sharding = sharding.batch_sharding(mesh)
        # One compiled step per model, however it was built: rematerialisation only matters
        # for gradients, and `jnp.float32` / `jnp.dtype("float32")` hash differently.
        model = model.clone(dtype=jnp.dtype(model.dtype), remat=False)
        self._encode_text, self._step = _compiled(
            model, mesh, tuple(data_cfg.mean), tuple(data_cfg.std)
        )

    def text_cache(self, params: Any) -> Any:
        """Everything that depends on the class names and weights only (see `encode_text`)."""
        return self._encode_text(params, self.tokens)

    def __call__(self, params: Any) -> dict:
        params = place_params(params, self.mesh)
        text = self.text_cache(params)
        counts = np.zeros((3, self.num_videos), np.int32)  # this process's share
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
        try:
            for batch in batches:
                valid = np.asarray(batch["valid"], bool)
                labels = np.where(valid, self._label_map[np.where(valid, batch["label"], 0)], 0)
                inputs = sharding.put_process_batch(
                    {"video": batch["video"], "label": labels}, self._batch_sharding
                )
                hits = self._step(params, text, inputs)
                if pending is not None:
                    self._tally(counts, *pending)
                pending = (batch["index"], valid, hits)
        finally:
            batches.close()  # stops worker processes, if any
        if pending is not None:
            self._tally(counts, *pending)
        if self.process_count > 1:
            counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
        self._check_coverage(counts[0])
        return {
            "top1": float(100.0 * counts[1].sum() / self.num_videos),
            "top5": float(100.0 * counts[2].sum() / self.num_videos),
            "num_videos": self.num_videos,
        }

    def _tally(self, counts: np.ndarray, index: np.ndarray, valid: np.ndarray, hits) -> None:
        top1, top5 = multihost_utils.global_array_to_host_local_array(
            hits, self.mesh, self._batch_sharding.spec
        )
        tally(counts, index, valid, top1, top5)

    def _check_coverage(self, seen: np.ndarray) -> None:
        missing, repeated = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
        if missing.size or repeated.size:
            raise RuntimeError(
                f"evaluation must score each of the {self.num_videos} listed videos once; "
                f"{missing.size} never scored ({[self._where[i] for i in missing[:5]]}), "
                f"{repeated.size} scored more than once ({[self._where[i] for i in repeated[:5]]})"
            )


# WiSE-FT -----------------------------------------------------------------------------------

# Parameters that only the fine-tuned model has a meaning for, whatever the CLIP tree holds.
_FINETUNED_ONLY_ROOTS = ("prompt_learner", "prompt_generation_layer")
_FINETUNED_ONLY_LEAVES = ("local_global_bias_table",)


def _key_path(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def wise_ft(clip_params: Any, finetuned_params: Any, weight: float) -> Any:
    """Weight-space ensemble `(1 - weight) * CLIP + weight * fine-tuned` (Wortsman et al.).

    Every parameter CLIP has is mixed; the prompt vectors, the VP module, the local/global bias
    tables and anything else CLIP lacks come from the fine-tuned model. A `joint` positional
    embedding [T, N, W] mixes with CLIP's [N, W] broadcast over the T frames. The result has the
    fine-tuned tree's structure and dtypes.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"WiSE-FT weight must be in [0, 1], got {weight}")
    clip = {_key_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(clip_params)}
    finetuned_keys = set()

    def mix(path: tuple, tuned: Any) -> Any:
        key = _key_path(path)
        finetuned_keys.add(key)
        if (
            key not in clip
            or key.split("/")[0] in _FINETUNED_ONLY_ROOTS
            or key.split("/")[-1] in _FINETUNED_ONLY_LEAVES
        ):
            return tuned
        base = clip[key]
        shape = np.shape(tuned)
        if key == "visual/positional_embedding" and len(shape) == np.ndim(base) + 1:
            shape = shape[1:]  # joint [T, N, W] against CLIP's [N, W]: broadcast over T.
        if shape != np.shape(base):
            raise ValueError(
                f"WiSE-FT: parameter {key} has shape {np.shape(tuned)} in the fine-tuned model "
                f"but {np.shape(base)} in CLIP"
            )
        dtype = jnp.result_type(tuned)
        return ((1.0 - weight) * jnp.asarray(base, dtype) + weight * tuned).astype(dtype)

    mixed = jax.tree_util.tree_map_with_path(mix, finetuned_params)
    absent = sorted(set(clip) - finetuned_keys)
    if absent:
        raise ValueError(
            f"WiSE-FT: CLIP parameters missing from the fine-tuned model (different "
            f"architectures?): {absent[:10]}{' ...' if len(absent) > 10 else ''}"
        )
    return mixed


# Protocols ---------------------------------------------------------------------------------


def _dataset_data_config(
    data: ml_collections.ConfigDict, dataset: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """`config.data` with a zero-shot dataset's own fields (root, format, ...) swapped in."""
    out = ml_collections.ConfigDict(data.to_dict())
    for key, value in dataset.items():
        if key in ("name", "splits", "class_list"):
            continue
        if key not in out:
            raise ValueError(
                f"config.eval.datasets[{dataset.get('name')!r}]: unknown field {key!r} (allowed: "
                f"name, splits, class_list and the data config fields)"
            )
        out[key] = value
    return out


def _split_class_lists(dataset: ml_collections.ConfigDict) -> list[str]:
    """One class list per split: a single list for all, or one each (K-600's zero-shot splits)."""
    lists = dataset.class_list
    if isinstance(lists, str):
        return [lists] * len(dataset.splits)
    if len(lists) != len(dataset.splits):
        raise ValueError(
            f"config.eval.datasets[{dataset.name!r}]: {len(lists)} class lists for "
            f"{len(dataset.splits)} splits"
        )
    return list(lists)


def evaluate_protocol(
    config: ml_collections.ConfigDict,
    params: Any,
    mesh: Mesh,
    *,
    model_config: ModelConfig,
    clip_params: Any = None,
) -> dict:
    """Evaluates `params` as `config.protocol` prescribes; see `format_table` for the layout.

    zero-shot: every split of every `config.eval.datasets` entry, and mean / std per dataset;
    few-shot, fully supervised, demo: `config.data.val_list`; base-to-novel: the base and novel
    lists, each over its own classes, and their harmonic mean. With `config.wise_ft` set, the
    weights are first ensembled with CLIP's: `clip_params`, else those of
    `config.clip_checkpoint`, else of `config.init_checkpoint` (where fine-tuning started).
    """
    protocol = config.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"config.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    weight = config.get("wise_ft")
    if weight is not None:
        if clip_params is None:
            source = config.get("clip_checkpoint") or config.get("init_checkpoint")
            if not source:
                raise ValueError(
                    f"config.wise_ft={weight} needs CLIP's weights: set config.clip_checkpoint"
                )
            _, clip_params = load_model(source)
        params = wise_ft(clip_params, params, weight)
    params = place_params(params, mesh)
    model = VideoCLIP(model_config, dtype=jnp.dtype(config.dtype))

    def evaluate(data_cfg, annotation_file, class_names, class_ids=None) -> dict:
        evaluator = Evaluator(
            model,
            mesh,
            data_cfg,
            annotation_file=annotation_file,
            class_names=class_names,
            class_ids=class_ids,
            batch_size=config.eval.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        return {**evaluator(params), "annotation_file": evaluator.annotation_file}

    metrics: dict[str, Any] = {"protocol": protocol, "wise_ft": weight, "results": {}}
    if protocol == "zeroshot":
        for k, dataset in enumerate(config.eval.datasets):
            data_cfg = _dataset_data_config(config.data, dataset)
            if data_cfg.format != "tfds" and not os.path.isdir(data_cfg.root):
                raise ValueError(
                    f"config.eval.datasets[{k}].root ({dataset.name} videos): {data_cfg.root!r} "
                    "is not a directory"
                )
            splits = {}
            for i, (split, class_list) in enumerate(
                zip(dataset.splits, _split_class_lists(dataset), strict=True)
            ):
                data_cfg.class_list = class_list
                splits[f"split{i + 1}"] = evaluate(data_cfg, split, load_class_names(class_list))
            summary = summarize_splits(list(splits.values()))
            metrics["results"][dataset.name] = {**summary, "splits": splits}
    elif protocol == "base2novel":
        data = config.data
        class_names = load_class_names(data.class_list)
        if not data.get("base_class_ids") or not data.get("novel_val_list"):
            raise ValueError(
                "base-to-novel needs config.data.base_class_ids (ids of the base classes in "
                "data.class_list) and config.data.novel_val_list (the novel classes' list)"
            )
        base_ids = list(data.base_class_ids)
        novel_ids = [i for i in range(len(class_names)) if i not in set(base_ids)]
        base = evaluate(data, data.val_list, class_names, base_ids)
        novel = evaluate(data, data.novel_val_list, class_names, novel_ids)
        metrics["results"] = {"base": base, "novel": novel}
        metrics["harmonic_mean"] = harmonic_mean(base["top1"], novel["top1"])
    else:
        data = config.data
        name = config.get("dataset_name") or os.path.splitext(os.path.basename(data.val_list))[0]
        metrics["results"][name] = evaluate(data, data.val_list, load_class_names(data.class_list))
    return metrics


# Summaries ---------------------------------------------------------------------------------


def harmonic_mean(base: float, novel: float) -> float:
    """The base-to-novel summary 2 * base * novel / (base + novel); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def summarize_splits(splits: Sequence[dict]) -> dict:
    """Mean and (population) standard deviation of top-1 / top-5 over a dataset's splits."""
    out = {"num_videos": int(sum(s["num_videos"] for s in splits))}
    for key in ("top1", "top5"):
        values = np.array([s[key] for s in splits], np.float64)
        out[key], out[f"{key}_std"] = float(values.mean()), float(values.std())
    return out


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The scalars of `evaluate_protocol`'s output as `dataset/top1`-style names, for logs."""
    out = {
        f"{name}/{key}": value
        for name, result in metrics["results"].items()
        for key, value in result.items()
        if isinstance(value, int | float)
    }
    if "harmonic_mean" in metrics:
        out["harmonic_mean"] = metrics["harmonic_mean"]
    return out


def _cell(result: dict, key: str) -> str:
    if f"{key}_std" in result:
        return f"{result[key]:.2f} ± {result[key + '_std']:.2f}"
    return f"{result[key]:.2f}"


def format_table(metrics: dict) -> str:
    """The metrics of `evaluate_protocol` as a plain-text table, one row per evaluated list."""
    rows = [("dataset", "split", "videos", "top-1", "top-5")]
    for name, result in metrics["results"].items():
        splits = result.get("splits", {})
        for split, r in splits.items():
            rows.append((name, split, str(r["num_videos"]), _cell(r, "top1"), _cell(r, "top5")))
        summary = "mean ± std" if splits else ""
        rows.append(
            (name, summary, str(result["num_videos"]), _cell(result, "top1"), _cell(result, "top5"))
        )
    if "harmonic_mean" in metrics:
        rows.append(("harmonic mean", "", "", f"{metrics['harmonic_mean']:.2f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    # Names left-aligned, numbers right-aligned.
    aligned = [
        [row[i].ljust(w) if i < 2 else row[i].rjust(w) for i, w in enumerate(widths)]
        for row in rows
    ]
    aligned.insert(1, ["-" * w for w in widths])
    title = f"protocol: {metrics['protocol']}"
    if metrics.get("wise_ft") is not None:
        title += f" (WiSE-FT weight {metrics['wise_ft']})"
    return "\n".join([title, *("  ".join(row).rstrip() for row in aligned)])
