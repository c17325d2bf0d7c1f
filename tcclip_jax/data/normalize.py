"""Normalisation of uint8 clips on the accelerator.

With `uint8_output` (the default) the pipeline hands over uint8 clips, 4x less host memory and
host-to-device traffic than float32, and the model input is `normalize_on_device(batch["video"],
*normalization_stats(cfg.normalization))` inside the jitted step. Kept apart from the host
pipeline so that grain worker processes never import JAX.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from tcclip_jax.data.config import CLIP_MEAN, CLIP_STD


def normalize_on_device(
    video: jax.Array,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """(video - 255 mean) / (255 std) over the last (RGB) axis of a uint8 [..., 3] array.

    Matches the host path (`uint8_output=False`) to float32 rounding.
    """
    if video.dtype != jnp.uint8:
        raise TypeError(f"expected a uint8 video (uint8_output=True), got {video.dtype}")
    scale = 255.0 * jnp.asarray(std, jnp.float32)
    shift = 255.0 * jnp.asarray(mean, jnp.float32)
    return ((video.astype(jnp.float32) - shift) / scale).astype(dtype)
