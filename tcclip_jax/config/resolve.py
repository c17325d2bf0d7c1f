"""A run's config before anything runs: paths resolved, data prepared, every field checked.

Shared by training and evaluation, so both read the same lists and fail on the same mistakes:
each error names the config field to set.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable

import jax
import ml_collections

from tcclip_jax.config.base import check_protocol
from tcclip_jax.data.classes import AnnotationError, ListSummary, check_list
from tcclip_jax.data.config import FORMATS
from tcclip_jax.models.variants import VARIANTS


class ConfigError(ValueError):
    """A config that cannot run; the message names the field to set."""


# Config ------------------------------------------------------------------------------------


def _resolve(config: ml_collections.ConfigDict, path: str) -> str:
    if not path or os.path.isabs(path) or not config.splits_dir:
        return path
    return os.path.join(config.splits_dir, path)


def resolve_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose relative list / class-list paths are joined to `splits_dir`."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key in ("train_list", "val_list", "class_list", "novel_val_list", "novel_class_list"):
            config.data[key] = _resolve(config, config.data[key])
        for dataset in config.eval.datasets:
            dataset.splits = [_resolve(config, s) for s in dataset.splits]
            if isinstance(dataset.class_list, str):
                dataset.class_list = _resolve(config, dataset.class_list)
            else:
                dataset.class_list = [_resolve(config, c) for c in dataset.class_list]
    return config


def _data_hook(config: ml_collections.ConfigDict) -> Callable:
    module, _, name = config.prepare_data.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            f"config.prepare_data: {config.prepare_data!r} is not an importable "
            f"'module:function' ({e})"
        ) from e


def resolve(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """A copy of `config` with resolved paths, after its `prepare_data` hook (if any) ran."""
    try:
        check_protocol(config.protocol)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    config = resolve_paths(config)
    if config.prepare_data:
        with config.unlocked():
            _data_hook(config)(config, workdir)
    return config


def prepare_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """`resolve`, then `check_config`: what a training run starts with."""
    config = resolve(config, workdir)
    check_config(config)
    return config


def _need_file(path: str, field: str, what: str, splits_dir: str) -> None:
    if not path:
        raise ConfigError(f"config.{field} is not set: the {what}")
    if not os.path.isfile(path):
        if splits_dir and path.startswith(splits_dir):
            hint = f" (under config.splits_dir={splits_dir!r})"
        elif not os.path.isabs(path):
            hint = (
                " (relative list paths are taken from config.splits_dir: set it to the folder "
                "holding datasets_splits/ and labels/)"
            )
        else:
            hint = ""
        raise ConfigError(f"config.{field}: {what} {path!r} does not exist{hint}")


def _need_dir(path: str, field: str, what: str) -> None:
    if not path:
        raise ConfigError(f"config.{field} is not set: the {what}")
    if not os.path.isdir(path):
        raise ConfigError(f"config.{field}: {what} {path!r} is not a directory")


def check_config(config: ml_collections.ConfigDict, *, need_videos: bool = True) -> None:
    """Raise a ConfigError naming the field for anything that would fail later.

    `need_videos=False` (the dry run) accepts unset video folders; set ones must exist.
    """
    if config.model_variant not in VARIANTS:
        raise ConfigError(
            f"config.model_variant must be one of {VARIANTS}, got {config.model_variant!r}"
        )
    if config.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(
            f"config.dtype must be float32, bfloat16 or float16, not {config.dtype!r}"
        )
    if config.init_checkpoint:
        _need_dir(config.init_checkpoint, "init_checkpoint", "converted checkpoint directory")
        if not os.path.isfile(os.path.join(config.init_checkpoint, "model_config.json")):
            raise ConfigError(
                f"config.init_checkpoint: {config.init_checkpoint!r} is not a converted "
                "checkpoint (no model_config.json); convert weights with "
                "tools/convert_torch_weights.py"
            )
    elif not config.random_init:
        raise ConfigError(
            "config.init_checkpoint is not set: the converted CLIP (or TC-CLIP) checkpoint "
            "directory to start from (tools/convert_torch_weights.py)"
        )
    if config.clip_checkpoint:
        _need_dir(config.clip_checkpoint, "clip_checkpoint", "CLIP checkpoint directory")
    data, splits_dir = config.data, config.splits_dir
    if data.format not in FORMATS:
        raise ConfigError(f"config.data.format must be one of {FORMATS}, got {data.format!r}")
    if data.format != "tfds":
        if need_videos or data.root:
            _need_dir(data.root, "data.root", "video folder the annotation lists are relative to")
        _need_file(data.train_list, "data.train_list", "training list", splits_dir)
    _need_file(data.class_list, "data.class_list", "class list", splits_dir)
    if config.eval.every_epochs > 0 or config.protocol != "zeroshot":
        _need_file(data.val_list, "data.val_list", "validation list", splits_dir)
    if config.protocol == "base2novel":
        _need_file(data.novel_val_list, "data.novel_val_list", "novel-class list", splits_dir)
        _need_file(
            data.novel_class_list, "data.novel_class_list", "novel classes' class list", splits_dir
        )
    if config.protocol == "zeroshot":
        if not config.eval.datasets:
            raise ConfigError("config.eval.datasets is empty: zero-shot needs datasets to test")
        for i, ds in enumerate(config.eval.datasets):
            field = f"eval.datasets[{i}]"
            root = ds.get("root", data.root)
            if ds.get("format", data.format) != "tfds" and (need_videos or root):
                _need_dir(root, f"{field}.root", f"{ds.name} video folder")
            for j, split in enumerate(ds.splits):
                _need_file(split, f"{field}.splits[{j}]", f"{ds.name} list", splits_dir)
            lists = [ds.class_list] if isinstance(ds.class_list, str) else ds.class_list
            for c in lists:
                _need_file(c, f"{field}.class_list", f"{ds.name} class list", splits_dir)
    for key in ("val_clips", "val_crops"):
        if config.eval[key] is not None and config.eval[key] < 1:
            raise ConfigError(f"config.eval.{key} must be >= 1 (or None: the test views)")
    if config.grad_accum_steps < 1 or config.batch_size % config.grad_accum_steps:
        raise ConfigError(
            f"config.batch_size {config.batch_size} must be a multiple of "
            f"config.grad_accum_steps {config.grad_accum_steps}"
        )
    micro = config.batch_size // config.grad_accum_steps
    if micro % jax.device_count() or micro % jax.process_count():
        raise ConfigError(
            f"config.batch_size / config.grad_accum_steps = {micro} clips per micro-batch must be "
            f"a multiple of the {jax.device_count()} devices (and {jax.process_count()} "
            "processes); change config.grad_accum_steps or config.batch_size"
        )
    mixing = config.mixup.mixup_alpha > 0 or config.mixup.cutmix_alpha > 0
    if mixing and (config.mixup.group_size < 1 or micro % config.mixup.group_size):
        raise ConfigError(
            f"config.mixup.group_size {config.mixup.group_size} must divide the {micro} clips per "
            "micro-batch (config.batch_size / config.grad_accum_steps)"
        )
    if config.eval.batch_size % jax.device_count():
        raise ConfigError(
            f"config.eval.batch_size {config.eval.batch_size} must be a multiple of the "
            f"{jax.device_count()} devices"
        )


# Lists -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ListUse:
    """One annotation list a protocol reads, the class list its labels index, where its videos
    are, and the config fields that name them (for messages)."""

    field: str
    annotation_file: str
    class_field: str
    class_list: str
    root: str
    format: str


def protocol_lists(config: ml_collections.ConfigDict, *, training: bool = True) -> list[ListUse]:
    """Every list `config` will read, training (`training`) and evaluation, in use order.

    Shards (`format` tfds) carry their own labels: their lists are not read.
    """
    data = config.data
    out = []

    def add(field, path, class_field, class_list, root=data.root, fmt=data.format):
        if fmt != "tfds":
            out.append(ListUse(field, path, class_field, class_list, root, fmt))

    if training:
        add("data.train_list", data.train_list, "data.class_list", data.class_list)
    if config.protocol != "zeroshot" or (training and config.eval.every_epochs > 0):
        add("data.val_list", data.val_list, "data.class_list", data.class_list)
    if config.protocol == "base2novel":
        add("data.novel_val_list", data.novel_val_list, "data.novel_class_list",
            data.novel_class_list)  # fmt: skip
    if config.protocol == "zeroshot":
        for i, ds in enumerate(config.eval.datasets):
            classes = ds.class_list
            one = isinstance(classes, str)
            if not one and len(classes) != len(ds.splits):
                raise ConfigError(
                    f"config.eval.datasets[{i}].class_list: {len(classes)} class lists for "
                    f"{len(ds.splits)} splits (give one, or one per split)"
                )
            for j, split in enumerate(ds.splits):
                add(
                    f"eval.datasets[{i}].splits[{j}]",
                    split,
                    f"eval.datasets[{i}].class_list" + ("" if one else f"[{j}]"),
                    classes if one else classes[j],
                    ds.get("root", data.root),
                    ds.get("format", data.format),
                )
    return out


def check_lists(
    config: ml_collections.ConfigDict, *, training: bool = True
) -> list[tuple[ListUse, ListSummary]]:
    """Reads every list of `protocol_lists` against its class list (`data.classes.check_list`,
    every class needing a video unless `data.require_every_class` is False); the first
    inconsistency raises a ConfigError naming both config fields."""
    out = []
    for use in protocol_lists(config, training=training):
        try:
            summary = check_list(
                use.annotation_file,
                use.class_list,
                every_class=config.data.get("require_every_class", True),
            )
            out.append((use, summary))
        except AnnotationError as e:
            raise ConfigError(f"config.{use.field} / config.{use.class_field}: {e}") from None
    return out
