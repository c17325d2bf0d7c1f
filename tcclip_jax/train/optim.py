"""The published optimiser: AdamW with per-group learning rates and timm's warm-up + cosine.

* AdamW, betas (0.9, 0.98), eps 1e-8, decoupled weight decay on every trainable parameter
  (biases and LayerNorms included), as `torch.optim.AdamW` computes it.
* The prompt learner and the VP module (`tcclip_jax.models.params.FAST_MODULES`) learn 10x
  faster; their weight decay is scaled with their learning rate, as in a PyTorch param group.
* The token embedding is frozen (`FROZEN_MODULES`: the released code never trains it) and gets
  no optimiser state.
* The schedule is timm's `CosineLRScheduler(t_in_epochs=False, warmup_prefix=False)`: counted in
  optimiser steps over the whole run, t from the start of the run, warm-up included.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from tcclip_jax.models.params import BASE, FAST, FROZEN, param_groups


def cosine_schedule(
    base_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
    """lr(t): linear 0 -> base_lr over the warm-up, then the cosine of t / total_steps.

    After the warm-up, lr(t) = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / total)) / 2 with
    t counted from step 0 (so the cosine has already advanced by the warm-up when it takes over).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = base_lr * t / max(warmup_steps, 1)
        frac = jnp.minimum(t, total_steps) / total_steps
        cos = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + jnp.cos(jnp.pi * frac))
        return jnp.where(t < warmup_steps, warm, cos)

    return schedule


def create_optimizer(
    schedule: optax.Schedule,
    *,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-8,
    fast_lr_multiplier: float = 10.0,
) -> optax.GradientTransformation:
    """AdamW over the trainable parameters, `fast_lr_multiplier` x lr for the FAST group."""

    def adamw(multiplier: float) -> optax.GradientTransformation:
        return optax.adamw(
            lambda step: multiplier * schedule(step),
            b1=b1,
            b2=b2,
            eps=eps,
            weight_decay=weight_decay,
        )

    return optax.multi_transform(
        {BASE: adamw(1.0), FAST: adamw(fast_lr_multiplier), FROZEN: optax.set_to_zero()},
        param_groups,
    )
