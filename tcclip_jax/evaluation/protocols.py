"""The paper's evaluation protocols: which lists, class sets and summaries each one reports."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from tcclip_jax.config.base import check_protocol
from tcclip_jax.data.classes import load_class_names
from tcclip_jax.evaluation.accuracy import Evaluator, place_params
from tcclip_jax.evaluation.tables import harmonic_mean, summarize_splits
from tcclip_jax.evaluation.wise_ft import wise_ft
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.video_clip import VideoCLIP
from tcclip_jax.weights.checkpoint import load_model


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
    """Evaluates `params` as `config.protocol` prescribes (layout: `tables.format_results`).

    zero-shot: every split of every `config.eval.datasets` entry, and mean / std per dataset;
    few-shot, fully supervised, demo: `config.data.val_list`; base-to-novel: the base and novel
    lists, each over its own classes, and their harmonic mean. With `config.wise_ft` set, the
    weights are first ensembled with CLIP's: `clip_params`, else those of
    `config.clip_checkpoint`, else of `config.init_checkpoint` (where fine-tuning started).
    """
    protocol = config.protocol
    check_protocol(protocol)
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
