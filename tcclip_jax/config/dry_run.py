"""The dry run: everything a run will read, checked and shown, without a video or a device step.

`python -m tcclip_jax.train --config ... --workdir DIR --dry_run` resolves the config, reads every
list and class list the protocol uses (training and evaluation), checks every label against its
class list and every class name against the prompt length, counts the listed videos missing under
their folder (where one is set), prints a table per list and writes `config.json` to the workdir.
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
from tcclip_jax.data.classes import ListSummary
from tcclip_jax.data.readers import READERS
from tcclip_jax.models.tokenizer import tokenize_prompts
from tcclip_jax.runtime.metrics import save_config
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
    return "\n\n".join([head, *tables])
