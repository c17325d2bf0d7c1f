"""Training targets and loss: label smoothing, mixup / cutmix on device, soft-target CE.

As in the published code (X-CLIP's `CutmixMixupBlending`), every batch is either mixed up
(lambda ~ Beta(0.8, 0.8), clips and labels blended) or, with probability 0.5, cut-mixed
(lambda ~ Beta(1, 1); one box of relative area 1 - lambda pasted at the same place in every frame,
labels weighted by the pasted area), after labels are smoothed.

The published code mixes a batch with a random permutation of itself. Here a sample is mixed with
the previous sample of the step's batch (cyclically): the loader already shuffles, so the pairing
is as random, it does not depend on how the batch is split over devices or micro-batches (a sharded
or accumulated step equals the single-device one), and it moves one clip per device instead of
gathering the batch.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """Beta concentrations (0 disables a kind) and the probability of cutmix when both are on."""

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def smooth_labels(
    labels: jax.Array, num_classes: int, smoothing: float, dtype=jnp.float32
) -> jax.Array:
    """One-hot [..., C] with 1 - smoothing + smoothing / C on, smoothing / C off."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes, dtype=dtype) * (1.0 - smoothing) + off


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over the batch of -sum_c targets_c * log_softmax(logits)_c, in >= float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
    return -jnp.mean(jnp.sum(targets * log_probs, axis=-1))


def previous_sample(x: jax.Array) -> jax.Array:
    """The mixing partner of every sample of a step batch laid out as [micro-batches, b, ...].

    Samples are ordered micro-batch-major; sample i gets sample i - 1 (sample 0 gets the last).
    Written as two rolls so the batch axis (1) keeps its sharding.
    """
    shifted = jnp.roll(x, 1, axis=1)
    return shifted.at[:, 0].set(jnp.roll(x[:, -1], 1, axis=0))


@flax.struct.dataclass
class Mix:
    """One draw for a whole step: `keep` [H, W] weight of the sample itself per pixel (a constant
    lambda for mixup, a 0/1 box mask for cutmix) and `label_weight`, the sample's label weight."""

    keep: jax.Array
    label_weight: jax.Array

    def clips(self, clips: jax.Array, partner: jax.Array) -> jax.Array:
        """clips, partner: [..., H, W, C] float."""
        keep = self.keep[:, :, None].astype(clips.dtype)
        return keep * clips + (1 - keep) * partner

    def targets(self, targets: jax.Array, partner: jax.Array) -> jax.Array:
        return self.label_weight * targets + (1.0 - self.label_weight) * partner


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
    """Draws mixup or cutmix for one step (the identity when both are disabled)."""
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
