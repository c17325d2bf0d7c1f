"""WiSE-FT (Wortsman et al.): a weight-space ensemble of CLIP and a fine-tuned model."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tcclip_jax.models.params import is_per_frame, is_tc_only, key_path


def wise_ft(clip_params: Any, finetuned_params: Any, weight: float) -> Any:
    """Weight-space ensemble `(1 - weight) * CLIP + weight * fine-tuned` (Wortsman et al.).

    Every parameter CLIP has is mixed; the prompt vectors, the VP module, the local/global bias
    tables and anything else CLIP lacks come from the fine-tuned model. A `joint` positional
    embedding [T, N, W] mixes with CLIP's [N, W] broadcast over the T frames. The result has the
    fine-tuned tree's structure and dtypes.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"WiSE-FT weight must be in [0, 1], got {weight}")
    clip = {key_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(clip_params)}
    finetuned_keys = set()

    def mix(path: tuple, tuned: Any) -> Any:
        key = key_path(path)
        finetuned_keys.add(key)
        if key not in clip or is_tc_only(key):
            return tuned
        base = clip[key]
        shape = np.shape(tuned)
        if is_per_frame(key) and len(shape) == np.ndim(base) + 1:
            shape = shape[1:]  # joint [T, N, W] against CLIP's [N, W]: broadcast over T.
        if shape != np.shape(base):
            raise ValueError(
                f"WiSE-FT: parameter {key} has shape {np.shape(tuned)} in the fine-tuned model "
                f"but {np.shape(base)} in CLIP"
            )
        dtype = jnp.result_type(tuned)
        return ((1.0 - weight) * jnp.asarray(base, dtype) + weight * tuned).astype(dtype)

    mixed = jax.tree_util.tree_map_with_path(mix, finetuned_params)
    absent = sorted(set(clip) - finetuned_keys)
    if absent:
        raise ValueError(
            f"WiSE-FT: CLIP parameters missing from the fine-tuned model (different "
            f"architectures?): {absent[:10]}{' ...' if len(absent) > 10 else ''}"
        )
    return mixed
