"""What a restarted run may change: the new config against the work directory's `config.json`.

A work directory that holds checkpoints belongs to the run that wrote them. Restarting it with
another config resumes only when the differences leave the checkpoints meaning the same thing:
fields that change shapes or the recipe (model, data sampling, optimiser, losses, seed) refuse;
the length of the run, the evaluation and the data's location may change when named in
`--resume_changed`; logging, checkpoint keeping and loader threads may always change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import ml_collections

from tcclip_jax.config.resolve import ConfigError
from tcclip_jax.runtime import storage

# Fields that change nothing a checkpoint means.
FREE = (
    "progress_bar",
    "log_every_steps",
    "profile_steps",
    "checkpoint.",
    "data.num_workers",
    "data.num_threads",
    "data.prefetch",
    "data.decode_threads",
    "data.max_bad_videos",
    "eval.batch_size",
)
# Fields that may change when named: the run's length, what is evaluated, where data lives.
SAFE = (
    "num_epochs",
    "eval.",
    "wise_ft",
    "clip_checkpoint",
    "init_checkpoint",
    "pretraining",
    "dataset_name",
    "splits_dir",
    "data.root",
    "data.train_list",
    "data.val_list",
    "data.class_list",
    "data.novel_val_list",
    "data.tfds_dir",
    "data.test_clips",
    "data.test_crops",
    "data.test_clip_sampling",
    "dtype",
    "remat",
    "scan_blocks",
    "sharding.",
    "grad_accum_steps",
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _as_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _matches(field: str, patterns: Iterable[str]) -> bool:
    return any(field == p or (p.endswith(".") and field.startswith(p)) for p in patterns)


def changed_fields(saved: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """{field: (saved value, new value)} for the fields that differ (FREE ones left out)."""
    old, new = _flat(saved), _flat(_as_json(config))
    return {
        f: (old.get(f), new.get(f))
        for f in sorted(old.keys() | new.keys())
        if old.get(f) != new.get(f) and not _matches(f, FREE)
    }


def check_resume(path: str, config: ml_collections.ConfigDict, allowed: Iterable[str]) -> None:
    """Raise a ConfigError unless `config` may resume the run whose config is at `path`."""
    try:
        saved = json.loads(storage.read_text(path))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); resume with the run's own config") from e
    changed = changed_fields(saved, config)
    if not changed:
        return
    unsafe = [f for f in changed if not _matches(f, SAFE)]
    named = [f for f in changed if f not in unsafe and f not in set(allowed)]

    def listing(fields):
        return ", ".join(f"{f} ({changed[f][0]!r} -> {changed[f][1]!r})" for f in fields)

    workdir = storage.dirname(path)
    if unsafe:
        raise ConfigError(
            f"{workdir} holds a run with another config; these fields change shapes or the "
            f"recipe: {listing(unsafe)}; use a new --workdir (or the run's config)"
        )
    if named:
        raise ConfigError(
            f"{workdir} holds a run with another config: {listing(named)}; to resume with it, "
            f"pass --resume_changed={','.join(named)}"
        )
