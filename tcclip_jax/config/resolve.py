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
from tcclip_jax.errors import UserError
from tcclip_jax.models import ModelConfig
from tcclip_jax.models.variants import VARIANTS, variant_config
from tcclip_jax.weights.checkpoint import CheckpointError, load_config


class ConfigError(UserError):
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
    """`resolve`, then `check_config`: what a training run starts with (values out of range
    fail before the data hook runs)."""
    problems = _range_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))
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


def model_overrides(config: ml_collections.ConfigDict) -> dict:
    """The ModelConfig fields the run config sets (its `model` fields, frames, resolution)."""
    overrides = {k: v for k, v in config.model.items() if v is not None}
    return {
        **overrides,
        "num_frames": config.data.num_frames,
        "image_resolution": config.data.image_size,
    }


# (field, lowest allowed value, whether the lowest value itself is allowed, highest or None).
_RANGES = (
    ("optim.lr", 0, False, None),
    ("optim.min_lr", 0, True, None),
    ("optim.weight_decay", 0, True, None),
    ("optim.b1", 0, True, 1),
    ("optim.b2", 0, True, 1),
    ("optim.eps", 0, False, None),
    ("optim.fast_lr_multiplier", 0, False, None),
    ("num_epochs", 1, True, None),
    ("warmup_epochs", 0, True, None),
    ("batch_size", 1, True, None),
    ("grad_accum_steps", 1, True, None),
    ("eval.batch_size", 1, True, None),
    ("eval.every_epochs", 0, True, None),
    ("log_every_steps", 1, True, None),
    ("checkpoint.every_steps", 1, True, None),
    ("checkpoint.keep_last", 1, True, None),
    ("checkpoint.keep_best", 0, True, None),
    ("shots", 0, True, None),
    ("label_smoothing", 0, True, 1),
    ("mixup.mixup_alpha", 0, True, None),
    ("mixup.cutmix_alpha", 0, True, None),
    ("mixup.switch_prob", 0, True, 1),
    ("wise_ft", 0, True, 1),
    ("data.num_frames", 1, True, None),
    ("data.image_size", 1, True, None),
    ("data.resize_size", 1, True, None),
    ("data.test_clips", 1, True, None),
    ("data.color_jitter_p", 0, True, 1),
    ("data.grayscale_p", 0, True, 1),
    ("data.max_bad_videos", 0, True, None),
    ("data.num_workers", 0, True, None),
    ("model.embed_dim", 1, True, None),
    ("model.vision_patch_size", 1, True, None),
    ("model.vision_width", 1, True, None),
    ("model.vision_layers", 1, True, None),
    ("model.vision_heads", 1, True, None),
    ("model.text_width", 1, True, None),
    ("model.text_layers", 1, True, None),
    ("model.text_heads", 1, True, None),
    ("model.context_length", 1, True, None),
    ("model.context_tokens", 1, True, None),
    ("model.seed_ratio", 0, False, 1),
    ("model.merge_r", 1, True, None),
    ("model.prompt_length", 0, True, None),
)


def _range_problems(config: ml_collections.ConfigDict) -> list[str]:
    problems = []
    for field, low, low_ok, high in _RANGES:
        node = config
        for part in field.split("."):
            node = node.get(part) if node is not None else None
        if node is None:
            continue  # not set (a placeholder): the checkpoint's or the model's default
        if not isinstance(node, int | float) or isinstance(node, bool):
            problems.append(f"config.{field} must be a number, got {node!r}")
        elif node < low or (node == low and not low_ok) or (high is not None and node > high):
            bound = f">= {low}" if low_ok else f"> {low}"
            if high is not None:
                bound += f" and <= {high}"
            problems.append(f"config.{field} must be {bound}, got {node}")
    if not problems and config.optim.min_lr > config.optim.lr:
        problems.append(
            f"config.optim.min_lr {config.optim.min_lr} is above config.optim.lr {config.optim.lr}"
        )
    if config.data.test_crops not in (1, 3):
        problems.append(f"config.data.test_crops must be 1 or 3, got {config.data.test_crops}")
    return problems


def _model_problem(config: ml_collections.ConfigDict) -> str | None:
    """Whether the model the run would build is possible (sizes, k, alpha, r, heads)."""
    try:
        base = load_config(config.init_checkpoint) if config.init_checkpoint else ModelConfig()
        variant_config(base, config.model_variant, **model_overrides(config))
    except CheckpointError as e:
        return f"config.init_checkpoint: {e}"
    except (ValueError, TypeError) as e:
        return f"config.model / config.data: the model cannot be built: {e}"
    return None


def check_eval_lists(config: ml_collections.ConfigDict, *, need_videos: bool = True) -> None:
    """The lists and folders the protocol's evaluation reads exist (train and evaluate), each
    missing one named by its config field. `need_videos=False` (the dry run) accepts unset
    video folders; set ones must exist."""
    data, splits_dir = config.data, config.splits_dir
    if config.protocol != "zeroshot":
        if data.format != "tfds" and (need_videos or data.root):
            _need_dir(data.root, "data.root", "video folder the annotation lists are relative to")
        _need_file(data.class_list, "data.class_list", "class list", splits_dir)
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


def check_config(config: ml_collections.ConfigDict, *, need_videos: bool = True) -> None:
    """Raise a ConfigError naming the field for anything that would fail later (value ranges:
    one line per problem).

    `need_videos=False` (the dry run) accepts unset video folders; set ones must exist.
    """
    problems = _range_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))
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
    if config.eval.every_epochs > 0:
        _need_file(data.val_list, "data.val_list", "validation list", splits_dir)
    check_eval_lists(config, need_videos=need_videos)
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
    problem = _model_problem(config)
    if problem:
        raise ConfigError(problem)


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
