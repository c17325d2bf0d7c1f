"""A run config's optimiser and its jitted, sharded train step: what `train.loop` runs, and what
`tcclip_jax.bench.ahead_of_time` compiles for a TPU topology (the same functions, so the check
compiles the program the trainer would run)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from tcclip_jax.data.config import normalization_stats
from tcclip_jax.data.normalize import normalize_on_device
from tcclip_jax.models import ModelConfig, VideoCLIP
from tcclip_jax.runtime import sharding
from tcclip_jax.train import losses, optim
from tcclip_jax.train.step import TrainState, jit_train_step, make_train_step


def video_model(
    config: ml_collections.ConfigDict, model_config: ModelConfig, platform: str | None = None
) -> VideoCLIP:
    """The model the run trains on `platform` (default: JAX's backend): `model_config` computing
    in `config.dtype`, its vision blocks rematerialised and scanned as `config.remat` and
    `config.scan_blocks` say (None: except on CPU)."""
    accelerator = (platform or jax.default_backend()) != "cpu"
    remat, scan = config.remat, config.scan_blocks
    return VideoCLIP(
        model_config,
        dtype=jnp.dtype(config.dtype),
        remat=accelerator if remat is None else remat,
        scan=accelerator if scan is None else scan,
    )


def optimizer(
    config: ml_collections.ConfigDict, plan: optim.StepPlan
) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """(the BASE group's learning-rate schedule, AdamW with the fast group) as `config.optim`
    says, over the optimiser steps of `plan` (`optim.StepPlan.from_config`)."""
    o = config.optim
    schedules = optim.group_schedules(plan, o.lr, o.min_lr, o.fast_lr_multiplier)
    tx = optim.create_optimizer(
        schedules[optim.BASE],
        fast_schedule=schedules[optim.FAST],
        weight_decay=o.weight_decay,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
    )
    return schedules[optim.BASE], tx


def sharded_train_step(
    config: ml_collections.ConfigDict,
    model: VideoCLIP,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    num_classes: int,
    mesh: Mesh,
    abstract: TrainState,
) -> tuple[Callable, TrainState]:
    """(the jitted train step, the state's shardings) on `mesh`: data parallel, or FSDP as
    `config.sharding` says; `abstract` is the state's shapes (`train.step.abstract_state`)."""
    state_shardings = sharding.state_shardings(
        abstract, mesh, config.sharding.fsdp, config.sharding.fsdp_min_size
    )
    mean, std = normalization_stats(config.data.normalization)
    step = make_train_step(
        model,
        tx,
        schedule,
        num_classes=num_classes,
        label_smoothing=config.label_smoothing,
        mix=losses.MixConfig(**config.mixup),
        normalize=(lambda v: normalize_on_device(v, mean, std))
        if config.data.uint8_output
        else (lambda v: v),
        param_shardings=state_shardings.params,
    )
    return jit_train_step(step, mesh, state_shardings), state_shardings
