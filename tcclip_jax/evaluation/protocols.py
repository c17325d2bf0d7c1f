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
from tcclip_jax.evaluation.analysis import write_analysis
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
    analysis_dir: str | None = None,
) -> dict:
    """Evaluates `params` as `config.protocol` prescribes (layout: `tables.format_results`).

    zero-shot: every split of every `config.eval.datasets` entry, and mean / std per dataset;
    few-shot, fully supervised, demo: `config.data.val_list`; base-to-novel: the base list
    (`data.val_list` against `data.class_list`) and the novel list (`data.novel_val_list` against
    `data.novel_class_list`), and their harmonic mean. With `config.wise_ft` set, the weights are
    evaluated as they are and again ensembled with CLIP's (the paper reports both, under
    `with_wise_ft`): `clip_params`, else those of `config.clip_checkpoint`, else of
    `config.init_checkpoint` (where fine-tuning started). With `analysis_dir`, each evaluated
    list's predictions, per-class accuracy and confusion matrix go to a folder of it named after
    the list (`analysis.write_analysis`; WiSE-FT's under `with_wise_ft/`).
    """
    check_protocol(config.protocol)
    model = VideoCLIP(model_config, dtype=jnp.dtype(config.dtype))
    metrics = {
        "protocol": config.protocol,
        # What `python -m tcclip_jax.report` groups runs by (seeds of one setting).
        "dataset": config.get("dataset_name", ""),
        "train_list": os.path.basename(config.data.get("train_list", "")),
        "class_list": os.path.basename(config.data.class_list),
        "wise_ft": config.get("wise_ft"),
        **_evaluate_weights(config, place_params(params, mesh), model, mesh, analysis_dir),
    }
    weight = config.get("wise_ft")
    if weight is not None:
        if clip_params is None:
            source = config.get("clip_checkpoint") or config.get("init_checkpoint")
            if not source:
                raise ValueError(
                    f"config.wise_ft={weight} needs CLIP's weights: set config.clip_checkpoint"
                )
            _, clip_params = load_model(source)
        ensembled = place_params(wise_ft(clip_params, params, weight), mesh)
        wise_dir = analysis_dir and os.path.join(analysis_dir, "with_wise_ft")
        metrics["with_wise_ft"] = _evaluate_weights(config, ensembled, model, mesh, wise_dir)
    return metrics


def _evaluate_weights(
    config: ml_collections.ConfigDict,
    params: Any,
    model: VideoCLIP,
    mesh: Mesh,
    analysis_dir: str | None = None,
) -> dict:
    """{'results': {name: accuracy}} (+ 'harmonic_mean' for base-to-novel) of one set of weights."""

    def evaluate(data_cfg, annotation_file, class_names, name) -> dict:
        evaluator = Evaluator(
            model,
            mesh,
            data_cfg,
            annotation_file=annotation_file,
            class_names=class_names,
            batch_size=config.eval.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        result = {**evaluator(params), "annotation_file": evaluator.annotation_file}
        if analysis_dir and jax.process_index() == 0:
            write_analysis(os.path.join(analysis_dir, name), evaluator.videos, evaluator.labels,
                           evaluator.scores, class_names)  # fmt: skip
        return result

    data = config.data
    if config.protocol == "zeroshot":
        results = {}
        for k, dataset in enumerate(config.eval.datasets):
            data_cfg = _dataset_data_config(data, dataset)
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
                name = f"split{i + 1}"
                classes = load_class_names(class_list)
                splits[name] = evaluate(data_cfg, split, classes, f"{dataset.name}_{name}")
            results[dataset.name] = {**summarize_splits(list(splits.values())), "splits": splits}
        return {"results": results}
    if config.protocol == "base2novel":
        if not data.get("novel_val_list") or not data.get("novel_class_list"):
            raise ValueError(
                "base-to-novel needs config.data.novel_val_list and config.data.novel_class_list "
                "(the novel classes' list and class list)"
            )
        base = evaluate(data, data.val_list, load_class_names(data.class_list), "base")
        novel_cfg = ml_collections.ConfigDict(data.to_dict())
        novel_cfg.class_list = data.novel_class_list
        novel_classes = load_class_names(data.novel_class_list)
        novel = evaluate(novel_cfg, data.novel_val_list, novel_classes, "novel")
        return {
            "results": {"base": base, "novel": novel},
            "harmonic_mean": harmonic_mean(base["top1"], novel["top1"]),
        }
    name = config.get("dataset_name") or os.path.splitext(os.path.basename(data.val_list))[0]
    classes = load_class_names(data.class_list)
    return {"results": {name: evaluate(data, data.val_list, classes, name)}}
