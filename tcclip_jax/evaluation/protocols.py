"""A run's test: every `test` evaluation of its plan (`specs.eval_plan`), and the summaries."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import Mesh

from tcclip_jax.data.classes import load_class_names
from tcclip_jax.evaluation.accuracy import Evaluator, place_params
from tcclip_jax.evaluation.analysis import write_analysis
from tcclip_jax.evaluation.results import Accuracy, Results, summarize
from tcclip_jax.evaluation.specs import (
    PLAIN,
    TEST,
    WISE_FT,
    EvalPlan,
    EvalSpec,
    eval_batch_size,
    eval_plan,
)
from tcclip_jax.evaluation.wise_ft import wise_ft
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.video_clip import VideoCLIP
from tcclip_jax.runtime import agreement, storage
from tcclip_jax.weights.checkpoint import load_model


def evaluate_protocol(
    config: ml_collections.ConfigDict,
    params: Any,
    mesh: Mesh,
    *,
    model_config: ModelConfig,
    clip_params: Any = None,
    analysis_dir: str | None = None,
) -> dict:
    """Evaluates `params` on every test list of `config` (see `specs.eval_plan`), with the
    plan's summaries; returns the results file's layout (`results.Results.to_json`).

    With `config.wise_ft` set, the weights are evaluated as they are and again ensembled with
    CLIP's (the paper reports both, under `with_wise_ft`): `clip_params`, else those of
    `config.clip_checkpoint`, else of `config.init_checkpoint` (where fine-tuning started).
    With `analysis_dir`, each evaluated list's predictions, per-class accuracy and confusion
    matrix go to a folder of it named after the evaluation (`analysis.write_analysis`; WiSE-FT's
    under `with_wise_ft/`).
    """
    plan = eval_plan(config)
    model = VideoCLIP(model_config, dtype=jnp.dtype(config.dtype))
    header = {
        "protocol": config.protocol,
        # What `python -m tcclip_jax.report` groups runs by (seeds of one setting).
        "dataset": config.get("dataset_name", ""),
        "train_list": os.path.basename(config.data.get("train_list", "")),
        "class_list": os.path.basename(config.data.class_list),
        "wise_ft": plan.wise_ft,
    }
    if config.get("pretraining"):
        header["pretraining"] = config.pretraining
    weights = {PLAIN: params}
    if WISE_FT in plan.weights:
        if clip_params is None:
            source = config.get("clip_checkpoint") or config.get("init_checkpoint")
            if not source:
                raise ValueError(
                    f"config.wise_ft={plan.wise_ft} needs CLIP's weights: set "
                    "config.clip_checkpoint"
                )
            _, clip_params = load_model(source)
        weights[WISE_FT] = wise_ft(clip_params, params, plan.wise_ft)
    results = {}
    for name, w in weights.items():
        folder = analysis_dir
        if analysis_dir and name != PLAIN:
            folder = storage.join(analysis_dir, name)
        lists = _evaluate_lists(config, plan, place_params(w, mesh), model, mesh, folder)
        results[name] = summarize(plan, lists)
    return Results(header, results).to_json()


_ROUNDED: set[tuple[int, int]] = set()


def run_eval_batch(config: ml_collections.ConfigDict, mesh: Mesh) -> int:
    """The videos per evaluation step of this run on `mesh` (logged once when rounded up)."""
    requested, devices = config.eval.batch_size, mesh.devices.size
    batch = eval_batch_size(requested, devices, jax.process_count())
    if batch != requested and (requested, batch) not in _ROUNDED:
        _ROUNDED.add((requested, batch))
        logging.info(
            "config.eval.batch_size %d rounded up to %d videos per evaluation step (a multiple of "
            "the %d devices, %d per device)",
            requested, batch, devices, batch // devices,
        )  # fmt: skip
    return batch


def spec_evaluator(
    config: ml_collections.ConfigDict,
    spec: EvalSpec,
    model: VideoCLIP,
    mesh: Mesh,
    class_names: list[str] | None = None,
) -> Evaluator:
    """The evaluator of one evaluation of the run's plan: its list and views, the run's
    evaluation batch (`config.eval.batch_size` rounded up to the mesh: `eval_batch_size`), this
    process's share of the videos. `class_names` default to the spec's class list."""
    return Evaluator(
        model,
        mesh,
        spec.data_config(config.data),
        annotation_file=spec.list_file,
        class_names=load_class_names(spec.class_list) if class_names is None else class_names,
        batch_size=run_eval_batch(config, mesh),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def _evaluate_lists(
    config: ml_collections.ConfigDict,
    plan: EvalPlan,
    params: Any,
    model: VideoCLIP,
    mesh: Mesh,
    analysis_dir: str | None = None,
) -> dict[str, Accuracy]:
    out = {}
    for spec in plan.role(TEST):
        evaluator = spec_evaluator(config, spec, model, mesh)
        out[spec.key] = Accuracy(
            **evaluator(params),
            annotation_file=evaluator.annotation_file,
            unreadable=evaluator.unreadable or None,
        )
        if analysis_dir:
            folder = storage.join(analysis_dir, spec.key.replace("/", "_"))
            with agreement.agreed():  # process 0 writes; a failure there stops all
                if jax.process_index() == 0:
                    write_analysis(folder, evaluator.videos, evaluator.labels, evaluator.scores,
                                   evaluator.class_names,
                                   unreadable=evaluator.unreadable_mask)  # fmt: skip
    return out
