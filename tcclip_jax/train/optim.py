"""The published optimiser: AdamW with per-group learning rates and timm's warm-up + cosine.

* AdamW, betas (0.9, 0.98), eps 1e-8, decoupled weight decay on every trainable parameter
  (biases and LayerNorms included), as `torch.optim.AdamW` computes it.
* The prompt learner and the VP module (`tcclip_jax.models.params.FAST_MODULES`) learn 10x
  faster (the published `lr_10x` param groups); their weight decay is scaled with their learning
  rate, as in a PyTorch param group.
* The token embedding is frozen (`FROZEN_MODULES`: the released code never trains it) and gets
  no optimiser state.

Two learning-rate schedules (`config.optim.schedule`), both timm's `CosineLRScheduler`
(`warmup_lr_init=0`, `warmup_prefix=False`, `t_in_epochs=False`: a linear warm-up from 0, then
the cosine of t over the whole run, t counted from its start):

* `published` (the protocol configs): what the published trainer does, counted as it counts.
  Its scheduler runs over micro-batches of `published.gpus` x `published.gpu_batch` clips (the
  paper's 4 GPUs x 4 clips; `len(train_loader)` = M per epoch) and is stepped with
  `step_update(epoch * M + idx)` after each optimiser step, idx the epoch's last micro-batch of
  that step; before the first one it holds the warm-up's start (0). So optimiser step s uses the
  lr of the scheduler time of step s - 1 (`StepPlan.scheduler_time`), e.g. 0, lr A / (A W'),
  lr (2A - 1) / (A W'), ... (A = batch_size / (gpus x gpu_batch) micro-batches per optimiser
  step, W' warm-up micro-batches), whatever devices and `grad_accum_steps` this run has. Each
  group has its own cosine from its own peak down to the same `min_lr` (timm per param group).
  An epoch's micro-batches after its last full group of A are computed and dropped by the
  published loop (`zero_grad` at each epoch start): here they are never read
  (`StepPlan.clips_per_epoch`).
* `optimizer_steps` (the demo): the same curve counted in optimiser steps: step s uses
  f(s) with f over `num_epochs x steps_per_epoch` steps (no lag, step 1 at lr / W), and the fast
  group the whole curve x `fast_lr_multiplier` (its floor included); the data are one endless
  stream (no epoch tail dropped). Simpler, independent of a published geometry, and what the
  demo's figures were measured with.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import optax

from tcclip_jax.models.params import BASE, FAST, FROZEN, param_groups

PUBLISHED, OPTIMIZER_STEPS = "published", "optimizer_steps"
SCHEDULES = (PUBLISHED, OPTIMIZER_STEPS)


def cosine_schedule(
    base_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
    """lr(t): linear 0 -> base_lr over the warm-up, then the cosine of t / total_steps.

    After the warm-up, lr(t) = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / total)) / 2 with
    t counted from step 0 (so the cosine has already advanced by the warm-up when it takes over).
    The `optimizer_steps` schedule (t = the optimiser step), computed in float32.
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


def timm_cosine(t, base_lr: float, min_lr: float, warmup_t: int, t_initial: int, xp=np):
    """timm's `CosineLRScheduler._get_lr(t)` for one param group, with `warmup_lr_init=0`,
    `warmup_prefix=False`, `cycle_limit=1`, `cycle_mul=1`, `k_decay=1`, in the same operations
    (xp: numpy for host floats, jax.numpy under a trace; float64 where x64 is on)."""
    t = xp.asarray(t, dtype=xp.result_type(float))
    warm = t * (base_lr / warmup_t) if warmup_t else t * 0.0
    cycle = xp.floor(t / t_initial)
    t_curr = t - t_initial * cycle
    cos = min_lr + 0.5 * (base_lr - min_lr) * (1 + xp.cos(math.pi * t_curr / t_initial))
    cos = xp.where(cycle < 1, cos, min_lr)
    return xp.where(t < warmup_t, warm, cos)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How a run's epochs of `num_videos` videos become optimiser steps of `batch_size` clips.

    `published`: as the published trainer on `gpus` GPUs of `gpu_batch` clips per forward pass
    (DistributedSampler padding each epoch to a multiple of the GPUs, loaders dropping their last
    incomplete micro-batch, `accumulation` micro-batches per optimiser step, the rest of an
    epoch dropped). `optimizer_steps`: `max(1, num_videos // batch_size)` steps per epoch of an
    endless stream.
    """

    schedule: str
    num_videos: int
    batch_size: int
    num_epochs: int
    warmup_epochs: int
    gpus: int = 1
    gpu_batch: int = 1

    @classmethod
    def from_config(cls, config, num_videos: int) -> StepPlan:
        return cls(
            schedule=config.optim.schedule,
            num_videos=num_videos,
            batch_size=config.batch_size,
            num_epochs=config.num_epochs,
            warmup_epochs=config.warmup_epochs,
            gpus=config.published.gpus,
            gpu_batch=config.published.gpu_batch,
        )

    @property
    def published(self) -> bool:
        return self.schedule == PUBLISHED

    def geometry_problem(self) -> str | None:
        """Why the schedule cannot be built from the config alone (None: it can)."""
        if self.schedule not in SCHEDULES:
            return f"config.optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}"
        if self.published and self.batch_size % (self.gpus * self.gpu_batch):
            return (
                f"config.batch_size {self.batch_size} must be a multiple of config.published.gpus "
                f"x config.published.gpu_batch = {self.gpus * self.gpu_batch} (the published "
                "trainer's micro-batch, which its schedule counts in); set those to a geometry "
                f"that divides it, or config.optim.schedule={OPTIMIZER_STEPS!r}"
            )
        return None

    def problem(self) -> str | None:
        """Why this run cannot follow the plan (None: it can)."""
        problem = self.geometry_problem()
        if problem is None and self.published and self.steps_per_epoch < 1:
            problem = (
                f"{self.num_videos} training videos make {self.micro_per_epoch} micro-batches of "
                f"{self.gpus} x {self.gpu_batch} clips per epoch, fewer than the "
                f"{self.accumulation} of one optimiser step of config.batch_size "
                f"{self.batch_size}: the published trainer would never step"
            )
        return problem

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimiser step (the published `accumulation_steps`)."""
        return self.batch_size // (self.gpus * self.gpu_batch) if self.published else 1

    @property
    def micro_per_epoch(self) -> int:
        """The published `len(train_loader)`: micro-batches per GPU per epoch."""
        if not self.published:
            return self.steps_per_epoch
        return -(-self.num_videos // self.gpus) // self.gpu_batch

    @property
    def steps_per_epoch(self) -> int:
        if not self.published:
            return max(1, self.num_videos // self.batch_size)
        return self.micro_per_epoch // self.accumulation

    @property
    def dropped_per_epoch(self) -> int:
        """Micro-batches per GPU computed and dropped at the end of each epoch (published)."""
        return self.micro_per_epoch - self.steps_per_epoch * self.accumulation

    @property
    def clips_per_epoch(self) -> int | None:
        """Clips of each epoch's shuffle that are trained on, the rest dropped (None: no epoch
        boundary in the data, an endless stream)."""
        return self.steps_per_epoch * self.batch_size if self.published else None

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return self.warmup_epochs * self.steps_per_epoch

    def micro_batches(self, step: int) -> range:
        """The micro-batches (per GPU, numbered over the run, dropped ones included) that
        optimiser step `step` (0-based) sums."""
        epoch, group = divmod(step, self.steps_per_epoch)
        first = epoch * self.micro_per_epoch + group * self.accumulation
        return range(first, first + self.accumulation)

    def scheduler_time(self, step, xp=np):
        """The scheduler time whose lr optimiser step `step` (0-based, array or traced) uses:
        that of `step_update` after step - 1, 0 for step 0 (published); the step itself
        (optimizer_steps)."""
        step = xp.asarray(step)
        if not self.published:
            return step
        epoch, group = xp.divmod(step - 1, self.steps_per_epoch)
        t = epoch * self.micro_per_epoch + (group + 1) * self.accumulation - 1
        return xp.where(step > 0, t, 0)

    def lr(self, step, base_lr: float, min_lr: float, xp=np):
        """The lr at optimiser step `step` of a param group of peak `base_lr` (timm: each group
        its own peak, one `min_lr`), in float64 on the host (xp=np)."""
        if self.published:
            m = self.micro_per_epoch
            warmup_t, t_initial = self.warmup_epochs * m, self.num_epochs * m
        else:
            warmup_t, t_initial = self.warmup_steps, self.total_steps
        t = self.scheduler_time(step, xp)
        return timm_cosine(t, base_lr, min_lr, warmup_t, t_initial, xp)

    def group_lrs(self, step, base_lr: float, min_lr: float, fast_lr_multiplier: float, xp=np):
        """{BASE: lr, FAST: lr} at optimiser step `step` (what `group_schedules` computes; for
        `optimizer_steps` in float64 here, float32 there)."""
        base = self.lr(step, base_lr, min_lr, xp)
        if self.published:
            return {BASE: base, FAST: self.lr(step, fast_lr_multiplier * base_lr, min_lr, xp)}
        return {BASE: base, FAST: fast_lr_multiplier * base}


def group_schedules(
    plan: StepPlan, base_lr: float, min_lr: float, fast_lr_multiplier: float
) -> dict[str, optax.Schedule]:
    """{BASE: schedule, FAST: schedule}: each param group's lr per optimiser step."""
    if not plan.published:
        base = cosine_schedule(base_lr, min_lr, plan.warmup_steps, plan.total_steps)
        return {BASE: base, FAST: lambda step: fast_lr_multiplier * base(step)}

    def schedule(group: str) -> optax.Schedule:
        return lambda step: plan.group_lrs(step, base_lr, min_lr, fast_lr_multiplier, jnp)[group]

    return {BASE: schedule(BASE), FAST: schedule(FAST)}


def create_optimizer(
    schedule: optax.Schedule,
    *,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-8,
    fast_lr_multiplier: float = 10.0,
    fast_schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """AdamW over the trainable parameters: `schedule` for the BASE group, `fast_schedule` for
    the FAST group (None: `fast_lr_multiplier` x `schedule`)."""

    def adamw(lr: optax.Schedule) -> optax.GradientTransformation:
        return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)

    if fast_schedule is None:
        fast_schedule = lambda step: fast_lr_multiplier * schedule(step)  # noqa: E731
    return optax.multi_transform(
        {BASE: adamw(schedule), FAST: adamw(fast_schedule), FROZEN: optax.set_to_zero()},
        param_groups,
    )
