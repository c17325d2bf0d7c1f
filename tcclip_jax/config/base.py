"""What every training config shares: the recipe's fields, defaults and the dataset layout.

The protocol configs (`configs/fewshot.py`, `zeroshot.py`, `base2novel.py`, `fully_supervised.py`,
`demo.py`) import this module (`from tcclip_jax.config import base`), start from `base_config` and
set the recipe of the TC-CLIP paper (spec, "Training and evaluation recipe"). What a config
evaluates is declared by its fields (`data.val_list`, `data.novel_val_list`, `eval.datasets`,
`wise_ft`) and read once, by `tcclip_jax.evaluation.specs.eval_plan`. Every field can be
overridden on the command line (`--config.optim.lr=1e-5`); configs are locked, so a misspelt
field is an error.

Paths. `data.root` is the folder the annotation lists' video paths are relative to. List and
class-list paths that are relative are taken relative to `splits_dir`, a copy of the published
ViFi-CLIP / TC-CLIP `datasets_splits/` and `labels/` folders; absolute paths are used as they are.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections.config_dict import placeholder

from tcclip_jax.data.config import default_data_config
from tcclip_jax.evaluation.specs import check_protocol
from tcclip_jax.models.config import ModelConfig

# The published split lists and class lists, relative to `splits_dir`. Base-to-novel lists number
# the base classes 0..B-1 against `base_classes` and the novel ones 0..N-1 against `novel_classes`;
# `llm` holds FROSTER's LLM-rephrased names of the same classes (none for SSv2: the paper does
# not rephrase its labels).
_LLM = "labels/labels_froster"
DATASETS = {
    "hmdb51": dict(
        class_list="labels/hmdb_51_labels.csv",
        base_classes="labels/hmdb_51_base_labels.csv",
        novel_classes="labels/hmdb_51_novel_labels.csv",
        llm=dict(
            class_list=f"{_LLM}/hmdb_51_llm_labels.json",
            base_classes=f"{_LLM}/hmdb_51_base_llm_labels.json",
            novel_classes=f"{_LLM}/hmdb_51_novel_llm_labels.json",
        ),
        lists="datasets_splits/hmdb_splits",
        base2novel="datasets_splits/base2novel_splits/hmdb_splits",
        val="val{split}.txt",
    ),
    "ucf101": dict(
        class_list="labels/ucf_101_labels.csv",
        base_classes="labels/ucf_101_base_labels.csv",
        novel_classes="labels/ucf_101_novel_labels.csv",
        llm=dict(
            class_list=f"{_LLM}/ucf_101_llm_labels.json",
            base_classes=f"{_LLM}/ucf_101_base_llm_labels.json",
            novel_classes=f"{_LLM}/ucf_101_novel_llm_labels.json",
        ),
        lists="datasets_splits/ucf_splits",
        base2novel="datasets_splits/base2novel_splits/ucf_splits",
        val="val{split}.txt",
    ),
    "ssv2": dict(
        class_list="labels/ssv2_labels.csv",
        base_classes="labels/ssv2_174_base_labels.csv",
        novel_classes="labels/ssv2_174_novel_labels.csv",
        llm=None,
        lists="datasets_splits/ssv2_splits",
        base2novel="datasets_splits/base2novel_splits/ssv2_splits",
        val="validation.txt",
    ),
    "k400": dict(
        class_list="labels/kinetics_400_labels.csv",
        base_classes="labels/kinetics_400_base_labels.csv",
        novel_classes="labels/kinetics_400_novel_labels.csv",
        llm=dict(
            class_list=f"{_LLM}/kinetics_400_llm_labels.json",
            base_classes=f"{_LLM}/kinetics_400_base_llm_labels.json",
            novel_classes=f"{_LLM}/kinetics_400_novel_llm_labels.json",
        ),
        lists="datasets_splits/k400_splits",
        base2novel="datasets_splits/base2novel_splits/k400_splits",
        val="val.txt",
    ),
}
# LLM-rephrased names are sentences: prompts get CLIP's full 77 tokens.
LLM_CONTEXT_LENGTH = 77
# Something-Something v2's classes say "left" and "right": never flip its clips.
NO_FLIP = ("ssv2",)


def _model_overrides() -> ml_collections.ConfigDict:
    """Every ModelConfig field but `model` (see `model_variant`) and `num_frames` (from
    `data.num_frames`); None keeps the initial checkpoint's value."""
    types = {"int": int, "float": float, "str": str, "bool": bool}
    c = ml_collections.ConfigDict()
    for field in dataclasses.fields(ModelConfig):
        if field.name in ("model", "num_frames"):
            continue
        kind = field.type.split(" ")[0]
        c[field.name] = placeholder(tuple if kind.startswith("tuple") else types[kind])
    return c


def check_dataset(name: str) -> dict:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def base_config(protocol: str) -> ml_collections.ConfigDict:
    """Defaults shared by every protocol (unlocked; the protocol config fills it and locks)."""
    check_protocol(protocol)
    c = ml_collections.ConfigDict()
    # What the run evaluates and reports: a name of tcclip_jax.evaluation.specs.PROTOCOLS.
    c.protocol = protocol
    c.dataset_name = ""  # name in the final table
    c.seed = 0

    # Model. A converted checkpoint directory (tools/convert_torch_weights.py): OpenAI CLIP to
    # fine-tune as the paper does, or a TC-CLIP / ViFi-CLIP checkpoint.
    c.init_checkpoint = ""
    # What `init_checkpoint` was fine-tuned on before this run ("" = CLIP's own pre-training;
    # "k400": the authors' "(P)" presets, see `pretrained_on`); recorded with the results.
    c.pretraining = ""
    c.random_init = False  # no init_checkpoint: start from random weights (the demo)
    c.model_variant = "tc_clip"  # tc_clip | tc_clip_light (TC-CLIP§) | vifi_clip
    c.model = _model_overrides()
    c.dtype = "bfloat16"  # compute dtype; parameters and optimiser state are float32
    # Scan + recompute the vision blocks in the backward pass: less memory, ~1/3 more compute.
    # None: on accelerators, where memory bounds the batch per chip (docs/tpu.md gives the largest
    # batch with and without), not on CPU.
    c.remat = placeholder(bool)
    # The vision blocks of the same kind as one `lax.scan` (same values; XLA compiles one block
    # instead of ten). None: on accelerators, not on CPU (XLA:CPU runs the unrolled stack
    # faster).
    c.scan_blocks = placeholder(bool)

    # Data (see tcclip_jax/data/config.py for every field).
    c.splits_dir = ""
    # "module:function" called as function(config, workdir) before any list is read, on a copy of
    # the config it may fill in (the demo generates its dataset: tcclip_jax.data.synthetic:prepare).
    c.prepare_data = ""
    c.data = default_data_config()
    # Base-to-novel: `class_list` holds the base classes (training, base evaluation); the novel
    # classes' list and its class list, numbered 0..N-1 on their own as published.
    c.data.novel_val_list = ""
    c.data.novel_class_list = ""
    # Every list must have videos of every class of its class list (true of all published
    # lists): how a list paired with the wrong class file shows when its labels fit. False for
    # lists of your own that lack some classes.
    c.data.require_every_class = True
    c.shots = 0  # > 0: train on that many videos per class drawn from data.train_list

    # Optimisation: global batch = batch_size = per-device batch x devices x grad_accum_steps.
    c.batch_size = 64
    c.grad_accum_steps = 1
    c.num_epochs = 50
    c.warmup_epochs = 5
    c.optim = ml_collections.ConfigDict(
        dict(
            lr=2e-6,
            min_lr=2e-8,
            weight_decay=0.001,
            b1=0.9,
            b2=0.98,
            eps=1e-8,
            fast_lr_multiplier=10.0,  # prompt learner and VP
            # "published": the published trainer's schedule, counted in its micro-batches (see
            # `published`) and stepped as it steps it; "optimizer_steps": the same warm-up +
            # cosine counted in optimiser steps (train/optim.py, docs/exactness.md).
            schedule="published",
        )
    )
    # The published trainer's geometry (the paper: 4 GPUs, 4 clips each per forward pass), not
    # this run's devices: the "published" schedule counts micro-batches of gpus x gpu_batch clips,
    # batch_size / (gpus x gpu_batch) of them per optimiser step, and drops each epoch's videos
    # after its last full step, as the published trainer does; mixup.group_size is its gpu_batch.
    c.published = ml_collections.ConfigDict(dict(gpus=4, gpu_batch=4))
    c.label_smoothing = 0.1
    # One mixup / cutmix draw and partner permutation per group of `group_size` consecutive clips
    # of a step, as the published code draws per GPU batch of 4 (see train/losses.py); set it to
    # batch_size for one draw per step.
    c.mixup = ml_collections.ConfigDict(
        dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, group_size=4)
    )

    # Model selection as published: validation on data.val_list after epochs 1, 1 + N, 1 + 2N,
    # ... and the last (N = every_epochs; 0 = no validation, the last weights are kept) picks
    # the best checkpoint by top-1; the protocol's full-view test runs on it at the end.
    c.eval = ml_collections.ConfigDict()
    # Videos per evaluation step, all devices together, rounded up to a multiple of the device
    # count (a log line says so): 16 on 8 devices, 32 on a 32-chip slice.
    c.eval.batch_size = 16
    c.eval.every_epochs = 1
    # Views of that validation (temporal clips, spatial crops); None: the test views.
    c.eval.val_clips = placeholder(int)
    c.eval.val_crops = placeholder(int)
    c.eval.datasets = []  # zero-shot: [{name, splits: [lists], class_list, root, ...}]
    c.wise_ft = placeholder(float)  # WiSE-FT weight of the fine-tuned model (zero-shot: 0.7)
    c.clip_checkpoint = ""  # CLIP weights for WiSE-FT; "" = init_checkpoint's

    # Devices.
    c.sharding = ml_collections.ConfigDict(dict(fsdp=False, fsdp_min_size=2**14))

    # Checkpoints and logs.
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep_last=2, keep_best=1))
    c.log_every_steps = 10
    c.progress_bar = True
    # > 0: trace that many training steps (from the second of the run: the first compiles) with
    # jax.profiler into WORKDIR/profile, for TensorBoard's profile tab or Perfetto.
    c.profile_steps = 0
    return c


def set_dataset(c: ml_collections.ConfigDict, name: str, split: int = 1) -> None:
    """Class list and flipping for a published dataset; lists are set by the protocol."""
    check_dataset(name)
    c.dataset_name = name
    c.data.class_list = DATASETS[name]["class_list"]
    c.data.hflip = name not in NO_FLIP
    c.data.val_list = f"{DATASETS[name]['lists']}/{DATASETS[name]['val'].format(split=split)}"


def llm_class_list(name: str, key: str = "class_list") -> str:
    """The LLM-rephrased version of DATASETS[name][key]; an error for datasets without one."""
    llm = check_dataset(name)["llm"]
    if llm is None:
        raise ValueError(f"{name} has no LLM-rephrased class names (the paper uses none for it)")
    return llm[key]


def use_llm_names(c: ml_collections.ConfigDict) -> None:
    """Prompts of CLIP's full length, for the LLM-rephrased class lists the caller set."""
    c.model.context_length = LLM_CONTEXT_LENGTH


def parse_arg(
    arg: str | None, names: tuple[str, ...], flags: tuple[str, ...] = ("llm",)
) -> tuple[dict[str, str], frozenset[str]]:
    """'hmdb51,16,llm' -> ({'dataset': 'hmdb51', 'shots': '16'}, {'llm'}) for names
    ('dataset', 'shots'): the values in order, and which of `flags` were among them (`llm`:
    LLM-rephrased class names; `k400_pretrained`: start from a K-400 model, see `pretrained_on`)."""
    values = [v.strip() for v in arg.split(",")] if arg else []
    present = frozenset(v for v in values if v in flags)
    values = [v for v in values if v not in flags]
    if len(values) > len(names):
        raise ValueError(
            f"config argument {arg!r}: expected at most {len(names)} values {names} and "
            f"optionally {' / '.join(map(repr, flags))}"
        )
    return dict(zip(names, values, strict=False)), present


def pretrained_on(c: ml_collections.ConfigDict, dataset: str) -> None:
    """The authors' "(P)" setting (paper, Appendix A, Tables 11-12): fine-tune, with the same
    recipe, a TC-CLIP already fine-tuned on `dataset` (Kinetics-400: the zero-shot K-400
    checkpoint, e.g. `python -m tcclip_jax.train --config configs/zeroshot.py`'s `model/` or the
    released one) instead of CLIP; set `init_checkpoint` to it. `report` gives such runs rows of
    their own."""
    c.pretraining = dataset
