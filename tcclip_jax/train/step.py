"""The training state and the jitted train step (one optimiser update per call).

A step batch is {"video": [A, b, T, H, W, 3], "label": [A, b]}: A micro-batches (gradient
accumulation) of b clips each, the clip axis split over the mesh. The step

1. draws mixup / cutmix from `fold_in(rng, step)` (so a resumed run repeats the same draws), one
   draw and one pairing per group of `mix.group_size` clips (`losses.sample_group_mixes`),
2. smooths and mixes the labels and mixes the clips (each with its partner in its group),
3. accumulates float32 gradients over the A micro-batches with `lax.scan` (A = 1: no scan),
4. applies AdamW to the trainable parameters (frozen ones, `models.params.FROZEN_MODULES`, get
   no gradient), unless the loss or the update is not finite: then it records the step in
   `nonfinite_step` and leaves the weights alone from then on.

Parameters are float32; the model computes in its own `dtype` (bfloat16 on accelerators).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from tcclip_jax.models import VideoCLIP
from tcclip_jax.models.params import split_frozen
from tcclip_jax.runtime import sharding
from tcclip_jax.train import losses


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimiser steps taken.
    params: Any
    opt_state: Any
    # int32 scalar: the first step whose loss or update was not finite, 0 while none was. That
    # step and the ones after it leave params and opt_state as they were, so the state never
    # holds non-finite weights; the loop reads this when it fetches metrics and before it saves
    # or evaluates (no host sync per step).
    nonfinite_step: jax.Array


def initial_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """The state before the first step (traceable: used under jit and eval_shape)."""
    # Two arrays, not one twice: a donated state must not hold the same buffer in two fields.
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        nonfinite_step=jnp.zeros((), jnp.int32),
    )


def abstract_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """Shapes and dtypes of the state, without allocating it."""
    return jax.eval_shape(lambda p: initial_state(p, tx), params)


def create_train_state(
    params: Any, tx: optax.GradientTransformation, shardings: TrainState
) -> TrainState:
    """A fresh state on the mesh from host `params` (the same full values on every process)."""
    params = sharding.put_replicated_value(params, shardings.params)
    init = jax.jit(
        lambda p: initial_state(p, tx),
        in_shardings=(shardings.params,),
        out_shardings=shardings,
    )
    return init(params)


def batch_loss(
    model: VideoCLIP, trainable: Any, frozen: Any, clips: jax.Array, targets: jax.Array,
    tokens: jax.Array,
) -> jax.Array:  # fmt: skip
    """The training loss of one batch: soft-target cross-entropy of the logits of `clips` [B, T,
    H, W, 3] (model input) against `targets` [B, C] (smoothed, mixed) for the prompts `tokens`."""
    logits, _ = model.apply({"params": {**trainable, **frozen}}, clips, tokens)
    return losses.soft_target_cross_entropy(logits, targets)


def loss_and_grads(
    model: VideoCLIP, trainable: Any, frozen: Any, clips: jax.Array, targets: jax.Array,
    tokens: jax.Array,
) -> tuple[jax.Array, Any]:  # fmt: skip
    """(`batch_loss`, its gradient with respect to `trainable`): what every train step computes
    per micro-batch. `trainable, frozen = models.params.split_frozen(params)`."""
    return jax.value_and_grad(batch_loss, argnums=1)(
        model, trainable, frozen, clips, targets, tokens
    )


def make_train_step(
    model: VideoCLIP,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    num_classes: int,
    label_smoothing: float,
    mix: losses.MixConfig,
    normalize: Callable[[jax.Array], jax.Array],
    param_shardings: Any = None,
) -> Callable:
    """train_step(state, batch, tokens [C, L], rng) -> (state, {"loss", "lr", "grad_norm"}).

    `normalize` maps the loader's clips to model input (uint8 -> CLIP-normalised float32).
    `param_shardings` (optional) pins the accumulated gradients to the parameters' sharding.
    """

    def micro_grads(trainable, frozen, micro, tokens):
        clips, targets = normalize(micro["video"]), micro["targets"]
        if mix.enabled:
            clips = micro["mix"].clips(clips, normalize(micro["partner_video"]))
            targets = micro["mix"].targets(targets, micro["partner_targets"])
        return loss_and_grads(model, trainable, frozen, clips, targets, tokens)

    # The loss's precision (`losses.soft_target_cross_entropy`: float32, or float64 for a float64
    # model), for the targets and the accumulated loss.
    loss_dtype = jnp.promote_types(model.dtype, jnp.float32)

    def train_step(state: TrainState, batch: dict, tokens: jax.Array, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        video = batch["video"]
        height, width = video.shape[-3:-1]
        micro = {"video": video, "targets": losses.smooth_labels(
            batch["label"], num_classes, label_smoothing, loss_dtype
        )}  # fmt: skip
        if mix.enabled:
            micro["mix"], perm = losses.sample_group_mixes(rng, video.shape[:2], height, width, mix)
            micro["partner_video"] = losses.group_partners(video, perm)
            micro["partner_targets"] = losses.group_partners(micro["targets"], perm)
        trainable, frozen = split_frozen(state.params)
        num_micro = video.shape[0]
        if num_micro == 1:
            first = jax.tree.map(lambda x: x[0], micro)
            loss, grads = micro_grads(trainable, frozen, first, tokens)
        else:
            grad_shardings = None
            if param_shardings is not None:
                grad_shardings = split_frozen(param_shardings)[0]

            def accumulate(carry, m):
                loss_sum, grad_sum = carry
                loss, grads = micro_grads(trainable, frozen, m, tokens)
                grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
                if grad_shardings is not None:
                    grad_sum = jax.lax.with_sharding_constraint(grad_sum, grad_shardings)
                return (loss_sum + loss, grad_sum), None

            zeros = jax.tree.map(jnp.zeros_like, trainable)
            (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), loss_dtype), zeros), micro)
            loss, grads = jax.tree.map(lambda x: x / num_micro, (loss, grads))
        full_grads = {**grads, **jax.tree.map(jnp.zeros_like, frozen)}
        updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
        finite = (state.nonfinite_step == 0) & jnp.isfinite(loss)
        finite &= jnp.isfinite(optax.tree.norm(updates))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        params = keep(optax.apply_updates(state.params, updates), state.params)
        opt_state = keep(opt_state, state.opt_state)
        step = state.step + 1
        nonfinite_step = jnp.where(
            (state.nonfinite_step == 0) & ~finite, step, state.nonfinite_step
        )
        metrics = {"loss": loss, "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
        new_state = state.replace(
            step=step, params=params, opt_state=opt_state, nonfinite_step=nonfinite_step
        )
        return new_state, metrics

    return train_step


def jit_train_step(train_step: Callable, mesh: Mesh, state_shardings: TrainState) -> Callable:
    """The step under jit: state donated and kept in its sharding, batch split over `data`,
    class tokens and rng replicated, metrics replicated."""
    replicated = sharding.replicated(mesh)
    return jax.jit(
        sharding.traced_under(mesh, train_step),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh, 1), replicated, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
