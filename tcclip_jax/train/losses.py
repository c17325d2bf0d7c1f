"""Training targets and loss: label smoothing, mixup / cutmix on device, soft-target CE.

As in the published code (X-CLIP's `CutmixMixupBlending`), every group of clips is either mixed
up (lambda ~ Beta(0.8, 0.8), clips and labels blended) or, with probability 0.5, cut-mixed
(lambda ~ Beta(1, 1); one box of relative area 1 - lambda pasted at the same place in every frame,
labels weighted by the pasted area), after labels are smoothed, with a partner from a random
permutation of the group (a clip can pair with itself).

The published code draws once per micro-batch of 4 clips on each GPU (its per-GPU batch). Here the
groups are `group_size` consecutive clips of the step's batch (micro-batch-major), each drawing from
`fold_in(step rng, group number)`, so the draws and pairs depend on neither the number of devices
nor the gradient accumulation: a sharded or accumulated step equals the single-device one.
`group_size` = the global batch gives one draw per step over the whole batch.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """Beta concentrations (0 disables a kind), the probability of cutmix when both are on, and
    the clips that share one draw (the published per-GPU batch)."""

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    group_size: int = 4

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def smooth_labels(
    labels: jax.Array, num_classes: int, smoothing: float, dtype=jnp.float32
) -> jax.Array:
    """One-hot [..., C] with 1 - smoothing + smoothing / C on, smoothing / C off."""
    return optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=dtype), smoothing)


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over the batch of -sum_c targets_c * log_softmax(logits)_c, in >= float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
    return -jnp.mean(jnp.sum(targets * log_probs, axis=-1))


def group_partners(x: jax.Array, perm: jax.Array) -> jax.Array:
    """The mixing partner of every clip of a step batch x [A, b, ...] (A micro-batches of b).

    `perm` [A, b // S, S] holds, for each group of S consecutive clips, the position in the group
    of each clip's partner. Written as S selects so that the clip axis keeps its sharding.
    """
    groups = x.reshape(x.shape[0], perm.shape[1], perm.shape[2], *x.shape[2:])
    which = perm.reshape(perm.shape + (1,) * (groups.ndim - 3))
    out = jnp.zeros_like(groups)
    for j in range(perm.shape[2]):
        out = jnp.where(which == j, groups[:, :, j : j + 1], out)
    return out.reshape(x.shape)


@flax.struct.dataclass
class Mix:
    """Mixing weights: `keep` [..., H, W], the weight of the clip itself per pixel (a constant
    lambda for mixup, a 0/1 box mask for cutmix), and `label_weight` [...], its label's weight."""

    keep: jax.Array
    label_weight: jax.Array

    def clips(self, clips: jax.Array, partner: jax.Array) -> jax.Array:
        """clips, partner: [..., T, H, W, C] float, `...` the leading axes of `keep`."""
        keep = self.keep[..., None, :, :, None].astype(clips.dtype)
        return keep * clips + (1 - keep) * partner

    def targets(self, targets: jax.Array, partner: jax.Array) -> jax.Array:
        weight = jnp.asarray(self.label_weight)[..., None]
        return weight * targets + (1.0 - weight) * partner


def _cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
    """timm's `rand_bbox`: a box of sides int(side * sqrt(1 - lam)) centred uniformly, clipped.

    Returns the keep mask [H, W] (0 inside the box)."""
    ry, rx = jax.random.split(rng)
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    cy = jax.random.randint(ry, (), 0, height)
    cx = jax.random.randint(rx, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    ys = jnp.arange(height)[:, None]
    xs = jnp.arange(width)[None, :]
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    return jnp.where(inside, 0.0, 1.0)


def sample_mix(rng: jax.Array, height: int, width: int, config: MixConfig) -> Mix:
    """Draws mixup or cutmix for one group (the identity when both are disabled)."""
    r_switch, r_mixup, r_cutmix, r_box = jax.random.split(rng, 4)
    draws = []
    if config.mixup_alpha > 0:
        lam = jax.random.beta(r_mixup, config.mixup_alpha, config.mixup_alpha)
        draws.append(Mix(keep=jnp.full((height, width), lam), label_weight=lam))
    if config.cutmix_alpha > 0:
        lam = jax.random.beta(r_cutmix, config.cutmix_alpha, config.cutmix_alpha)
        keep = _cutmix_box(r_box, lam, height, width)
        draws.append(Mix(keep=keep, label_weight=keep.mean()))
    if not draws:
        return Mix(keep=jnp.ones((height, width)), label_weight=jnp.float32(1.0))
    if len(draws) == 1:
        return draws[0]
    use_cutmix = jax.random.uniform(r_switch) < config.switch_prob
    return jax.tree.map(lambda m, c: jnp.where(use_cutmix, c, m), draws[0], draws[1])


def sample_group_mixes(
    rng: jax.Array, batch_shape: tuple[int, int], height: int, width: int, config: MixConfig
) -> tuple[Mix, jax.Array]:
    """(Mix per clip [A, b], partner positions [A, b // S, S]) for a step batch of A x b clips.

    Group g (clips S g .. S g + S - 1, micro-batch-major) draws its Mix and permutation from
    `fold_in(rng, g)`.
    """
    num_micro, micro = batch_shape
    size = config.group_size
    if size < 1 or micro % size:
        raise ValueError(
            f"mixup groups of {size} clips do not divide micro-batches of {micro} clips"
        )
    keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(num_micro * micro // size))
    mix_keys, perm_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    mixes = jax.vmap(lambda k: sample_mix(k, height, width, config))(mix_keys)
    perm = jax.vmap(lambda k: jax.random.permutation(k, size))(perm_keys)
    per_clip = jax.tree.map(
        lambda m: jnp.repeat(m, size, axis=0).reshape(batch_shape + m.shape[1:]), mixes
    )
    return per_clip, perm.reshape(num_micro, micro // size, size)
