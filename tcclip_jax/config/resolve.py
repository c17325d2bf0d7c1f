"""A run's config before anything runs: paths resolved, data prepared, every field checked.

Shared by training and evaluation, so both read the same lists and fail on the same mistakes:
each error names the config field to set.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import jax
import ml_collections

from tcclip_jax.data import workers
from tcclip_jax.data.classes import AnnotationError, ListSummary, check_list
from tcclip_jax.data.pipeline import ClipSpec
from tcclip_jax.data.readers import READERS
from tcclip_jax.evaluation.specs import SELECT, EvalPlan, eval_plan
from tcclip_jax.models import ModelConfig
from tcclip_jax.models.variants import VARIANTS, variant_config
from tcclip_jax.runtime import storage
from tcclip_jax.runtime.errors import UserError
from tcclip_jax.train.optim import StepPlan
from tcclip_jax.weights.checkpoint import CheckpointError, load_config


class ConfigError(UserError):
    """A config that cannot run; the message names the field to set."""


# Config ------------------------------------------------------------------------------------


def _resolve(config: ml_collections.ConfigDict, path: str) -> str:
    if not path or storage.isabs(path) or not config.splits_dir:
        return path
    return storage.join(config.splits_dir, path)


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
    """A copy of `config` with resolved paths, after its `prepare_data` hook (if any) ran.
    Values out of range fail first, before the hook runs."""
    problems = _range_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))
    _check_storage(config)  # before the data hook reads or writes anything
    plan(config)  # a protocol and evaluations that exist
    config = resolve_paths(config)
    if config.prepare_data:
        with config.unlocked():
            _data_hook(config)(config, workdir)
    return config


_PATH_FIELDS = (
    "splits_dir", "init_checkpoint", "clip_checkpoint", "data.root", "data.train_list",
    "data.val_list", "data.class_list", "data.novel_val_list", "data.novel_class_list",
    "data.tfds_dir",
)  # fmt: skip


def _check_storage(config: ml_collections.ConfigDict) -> None:
    """A ConfigError naming the field of the first path on a storage this installation cannot
    read (`runtime.storage.check`)."""
    fields = []
    for field in _PATH_FIELDS:
        node = config
        for part in field.split("."):
            node = node.get(part) if node is not None else None
        fields.append((field, node))
    for i, dataset in enumerate(config.eval.get("datasets", ())):
        fields.append((f"eval.datasets[{i}].root", dataset.get("root")))
        for j, split in enumerate(dataset.get("splits") or ()):
            fields.append((f"eval.datasets[{i}].splits[{j}]", split))
    for field, path in fields:
        if isinstance(path, str) and path:
            _stored(path, field)


def prepare_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """`resolve`, then `check_config`: what a training run starts with."""
    config = resolve(config, workdir)
    check_config(config)
    return config


def _stored(path: str, field: str) -> str:
    """`path`, if its storage can be read here (a ConfigError naming the field otherwise)."""
    try:
        storage.check(path)
    except storage.StorageError as e:
        raise ConfigError(f"config.{field}: {e}") from None
    return path


def _need_file(path: str, field: str, what: str, splits_dir: str) -> None:
    if not path:
        raise ConfigError(f"config.{field} is not set: the {what}")
    if not storage.isfile(_stored(path, field)):
        if splits_dir and path.startswith(splits_dir):
            hint = f" (under config.splits_dir={splits_dir!r})"
        elif not storage.isabs(path):
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
    if not storage.isdir(_stored(path, field)):
        raise ConfigError(f"config.{field}: {what} {path!r} is not a directory")


def run_model_config(
    config: ml_collections.ConfigDict, base: ModelConfig | None = None
) -> ModelConfig:
    """The model a run builds: `base` (the towers it starts from: the initial checkpoint's;
    CLIP ViT-B/16's when None) as the config's variant, with the config's `model` fields, frames
    and resolution. The one place a run config becomes a ModelConfig."""
    overrides = {k: v for k, v in config.model.items() if v is not None}
    overrides |= {"num_frames": config.data.num_frames, "image_resolution": config.data.image_size}
    return variant_config(base or ModelConfig(), config.model_variant, **overrides)


def starting_model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """`run_model_config` from the initial checkpoint's recorded towers (CheckpointError if it
    cannot be read)."""
    base = load_config(config.init_checkpoint) if config.init_checkpoint else None
    return run_model_config(config, base)


# (field, lowest allowed value, whether the lowest value itself is allowed, highest or None).
_RANGES = (
    ("optim.lr", 0, False, None),
    ("optim.min_lr", 0, True, None),
    ("optim.weight_decay", 0, True, None),
    ("optim.b1", 0, True, 1),
    ("optim.b2", 0, True, 1),
    ("optim.eps", 0, False, None),
    ("optim.fast_lr_multiplier", 0, False, None),
    ("published.gpus", 1, True, None),
    ("published.gpu_batch", 1, True, None),
    ("num_epochs", 1, True, None),
    ("warmup_epochs", 0, True, None),
    ("batch_size", 1, True, None),
    ("grad_accum_steps", 1, True, None),
    ("eval.batch_size", 1, True, None),
    ("eval.every_epochs", 0, True, None),
    ("log_every_steps", 1, True, None),
    ("profile_steps", 0, True, None),
    ("checkpoint.every_steps", 1, True, None),
    ("checkpoint.keep_last", 1, True, None),
    ("checkpoint.keep_best", 0, True, None),
    ("shots", 0, True, None),
    ("label_smoothing", 0, True, 1),
    ("mixup.mixup_alpha", 0, True, None),
    ("mixup.cutmix_alpha", 0, True, None),
    ("mixup.switch_prob", 0, True, 1),
    ("wise_ft", 0, True, 1),
    ("data.image_size", 1, True, None),
    ("data.resize_size", 1, True, None),
    ("data.color_jitter_p", 0, True, 1),
    ("data.grayscale_p", 0, True, 1),
    ("data.max_bad_videos", 0, True, None),
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
    try:
        workers.num_workers(config.data.num_workers, 1)
    except ValueError as e:
        problems.append(f"config.data.{e}")
    try:  # the clip's geometry and views, as the pipeline checks them
        clip = ClipSpec.from_config(config.data, validate=False)
        problems += [f"config.data.{p}" for p in clip.problems()]
    except TypeError as e:
        problems.append(f"config.data: {e}")
    return problems


def _model_problem(config: ml_collections.ConfigDict) -> str | None:
    """Whether the model the run would build is possible (sizes, k, alpha, r, heads)."""
    try:
        base = load_config(config.init_checkpoint) if config.init_checkpoint else None
        run_model_config(config, base)
        if config.get("pretraining") and base is not None and base.model == "clip":
            return (
                f"config.init_checkpoint: {config.init_checkpoint} is CLIP, but "
                f"config.pretraining={config.pretraining!r} starts from a model already trained "
                "on it (e.g. the zero-shot K-400 run's model/ directory)"
            )
    except CheckpointError as e:
        return f"config.init_checkpoint: {e}"
    except (ValueError, TypeError) as e:
        return f"config.model / config.data: the model cannot be built: {e}"
    return None


def plan(config: ml_collections.ConfigDict) -> EvalPlan:
    """`specs.eval_plan(config)`, its problems as ConfigErrors."""
    try:
        return eval_plan(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_sources(uses: list[ListUse], splits_dir: str, need_videos: bool) -> None:
    for use in uses:
        reader = READERS[use.format]
        if reader.uses_root and (need_videos or use.root):
            _need_dir(use.root, use.root_field, f"video folder of the {use.name} list")
        _need_file(use.class_list, use.class_field, "class list", splits_dir)
        if not reader.carries_list:
            _need_file(use.annotation_file, use.field, f"{use.name} list", splits_dir)


def check_eval_lists(config: ml_collections.ConfigDict, *, need_videos: bool = True) -> None:
    """The lists, class lists and folders of the run's tests exist (`evaluate`), each missing
    one named by its config field. `need_videos=False` accepts unset video folders; set ones
    must exist."""
    _check_sources(list_uses(config, training=False), config.splits_dir, need_videos)


def check_config(config: ml_collections.ConfigDict, *, need_videos: bool = True) -> None:
    """Raise a ConfigError naming the field for anything in a resolved config (`resolve`, which
    checked the value ranges) that would fail later.

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
        if not storage.isfile(storage.join(config.init_checkpoint, "model_config.json")):
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
    _check_sources(list_uses(config), config.splits_dir, need_videos)
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
    problem = StepPlan.from_config(config, num_videos=0).geometry_problem()
    if problem:
        raise ConfigError(problem)
    problem = _model_problem(config)
    if problem:
        raise ConfigError(problem)


# Lists -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ListUse:
    """One annotation list a run reads (`name`: 'training' or the evaluation's name), the class
    list its labels index, where its videos are, and the config fields that name them (for
    messages)."""

    name: str
    field: str
    annotation_file: str
    class_field: str
    class_list: str
    root_field: str
    root: str
    format: str


def list_uses(config: ml_collections.ConfigDict, *, training: bool = True) -> list[ListUse]:
    """Every list `config` reads, training (`training`: the training list and the validation)
    and the tests of its evaluation plan, in use order, each list once."""
    data = config.data
    if data.format not in READERS:
        raise ConfigError(
            f"config.data.format must be one of {tuple(READERS)}, got {data.format!r}"
        )
    out = []
    if training:
        out.append(ListUse("training", "data.train_list", data.train_list, "data.class_list",
                           data.class_list, "data.root", data.root, data.format))  # fmt: skip
    for spec in plan(config).specs:
        if spec.role == SELECT and not training:
            continue
        d = spec.data_config(data)
        if d.format not in READERS:
            raise ConfigError(
                f"config.{spec.field('format')} must be one of {tuple(READERS)}, got {d.format!r}"
            )
        if spec.list_field not in {u.field for u in out}:
            out.append(ListUse(spec.name, spec.list_field, spec.list_file, spec.class_field,
                               spec.class_list, spec.field("root"), d.root, d.format))  # fmt: skip
    return out


def protocol_lists(config: ml_collections.ConfigDict, *, training: bool = True) -> list[ListUse]:
    """The lists of `list_uses` that are read: shards (e.g. tfds) carry their own labels."""
    return [u for u in list_uses(config, training=training) if not READERS[u.format].carries_list]


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
