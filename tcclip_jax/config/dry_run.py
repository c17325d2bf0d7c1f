"""The dry run: everything a run will read, checked and shown, without a video or a device step.

`python -m tcclip_jax.train --config ... --workdir DIR --dry_run` resolves the config, reads every
list and class list the protocol uses (training and evaluation), checks every label against its
class list and every class name against the prompt length, counts the listed videos missing under
their folder (where one is set), prints a table per list and the run's optimiser steps with the
learning rate at steps 0, 1, W (the first after the warm-up) and the last, and writes
`config.json` to the workdir.
Users check a pod job's data this way before paying for it; the first inconsistency is a
ConfigError of one line.
"""

from __future__ import annotations

import os

import ml_collections

from tcclip_jax.config.resolve import (
    ConfigError,
    ListUse,
    check_config,
    check_lists,
    resolve,
    starting_model_config,
)
from tcclip_jax.data.classes import AnnotationError, ListSummary, few_shot_subset
from tcclip_jax.data.pipeline import num_examples
from tcclip_jax.data.readers import READERS
from tcclip_jax.models.params import BASE, FAST
from tcclip_jax.models.tokenizer import tokenize_prompts
from tcclip_jax.runtime.metrics import save_config
from tcclip_jax.train.optim import StepPlan
from tcclip_jax.weights.checkpoint import CheckpointError

FIRST_NAMES = 3
NAME_WIDTH = 40  # LLM-rephrased names are sentences: shown cut


def missing_videos(use: ListUse, summary: ListSummary) -> int | None:
    """How many listed videos are not under `use.root` (None: no folder set)."""
    reader = READERS[use.format]
    if not use.root or not reader.uses_root:
        return None
    return sum(not reader.present(use.root, rel) for rel, _ in summary.annotations)


def check_prompts(config: ml_collections.ConfigDict, checked) -> None:
    """Every class name fits the prompt length the run will use (the variant's, or
    `model.context_length`): e.g. LLM-rephrased names need 77 tokens, not TC-CLIP's 30."""
    try:
        prompts = starting_model_config(config)  # buildable: check_config checked it
    except CheckpointError as e:
        raise ConfigError(f"config.init_checkpoint: {e}") from None
    for use, summary in checked:
        try:
            tokenize_prompts(
                summary.class_names,
                template=prompts.prompt_template,
                context_length=prompts.context_length,
            )
        except ValueError as e:
            raise ConfigError(
                f"config.{use.class_field} ({use.class_list}) / config.model.context_length: {e}"
            ) from None


def _table(use: ListUse, summary: ListSummary, missing: int | None) -> str:
    low, high = summary.label_range
    names = ", ".join(
        repr(n if len(n) <= NAME_WIDTH else n[: NAME_WIDTH - 3] + "...")
        for n in summary.class_names[:FIRST_NAMES]
    )
    rows = [
        ("list", f"{use.annotation_file} (config.{use.field})"),
        ("class list", f"{use.class_list} (config.{use.class_field})"),
        ("videos", str(len(summary.annotations))),
        ("classes", f"{len(summary.class_names)} ({summary.labels_used} with videos)"),
        ("label range", f"{low}..{high}"),
        ("first classes", f"{names}, ..."),
        ("missing videos", "no folder set" if missing is None else f"{missing} under {use.root}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def training_videos(config: ml_collections.ConfigDict, checked) -> int:
    """The number of videos the run trains on (its `shots` per class where set)."""
    for use, summary in checked:
        if use.name == "training":
            if config.shots <= 0:
                return len(summary.annotations)
            try:
                return len(few_shot_subset(summary.annotations, config.shots, config.seed))
            except AnnotationError as e:
                raise ConfigError(f"config.shots / config.{use.field}: {e}") from None
    return num_examples(config.data, "train")  # a format that carries its own list


def schedule_report(config: ml_collections.ConfigDict, num_videos: int) -> str:
    """The run's optimiser steps and the lr of each param group at steps 0, 1, W (the first
    after the warm-up) and the last, as the trainer will compute them (`train.optim`)."""
    plan = StepPlan.from_config(config, num_videos)
    if plan.problem():
        raise ConfigError(f"config.data.train_list / config.batch_size: {plan.problem()}")
    o = config.optim
    if plan.published:
        how = (
            f"{num_videos} training videos -> {plan.micro_per_epoch} micro-batches of "
            f"{plan.gpus} GPUs x {plan.gpu_batch} clips per epoch (config.published), "
            f"{plan.accumulation} per optimiser step of {plan.batch_size} clips: "
            f"{plan.steps_per_epoch} steps per epoch, {plan.dropped_per_epoch} "
            f"micro-batch{'' if plan.dropped_per_epoch == 1 else 'es'} dropped at its end"
        )
    else:
        how = (
            f"{num_videos} training videos -> {plan.steps_per_epoch} optimiser steps of "
            f"{plan.batch_size} clips per epoch"
        )
    w, last = plan.warmup_steps, plan.total_steps - 1
    names = {0: "0", 1: "1", w: f"{w} (W)", last: f"{last} (last)"}
    if w == last:
        names[w] = f"{w} (W, last)"
    rows = [("step", "lr", f"x{o.fast_lr_multiplier:g} group lr")]
    for step in sorted(names):
        lrs = plan.group_lrs(step, o.lr, o.min_lr, o.fast_lr_multiplier)
        rows.append((names[step], f"{float(lrs[BASE]):.12g}", f"{float(lrs[FAST]):.12g}"))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    table = "\n".join(f"  {r[0].ljust(width[0])}  {r[1].ljust(width[1])}  {r[2]}" for r in rows)
    return (
        f"lr schedule {plan.schedule} (config.optim.schedule): {how}; {plan.total_steps} steps, "
        f"{w} of warm-up (W)\n{table}"
    )


def dry_run(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The dry run's report (one table per list); raises ConfigError at the first problem."""
    config = resolve(config, workdir)
    check_config(config, need_videos=False)
    checked = check_lists(config)
    check_prompts(config, checked)
    tables, counts = [], []
    for use, summary in checked:
        missing = missing_videos(use, summary)
        if missing is not None:
            counts.append(missing)
        tables.append(_table(use, summary, missing))
    schedule = schedule_report(config, training_videos(config, checked))
    save_config(workdir, config)
    videos = (
        f"{sum(counts)} listed videos missing"
        if counts
        else "videos not looked for (no folder set)"
    )
    head = (
        f"protocol {config.protocol}: {len(checked)} lists checked, every label within its class "
        f"list; {videos}; config written to {os.path.join(workdir, 'config.json')}"
    )
    return "\n\n".join([head, *tables, schedule])
