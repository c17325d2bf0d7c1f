"""The parameter tree of a model: its expected shapes, and the one list of parameter groups.

Training, evaluation and WiSE-FT reach parameter groups through the functions here, never by a
parameter's name: a new module that only TC-CLIP has, or a new frozen one, is added here once.
Keys are "/"-joined paths (`visual/transformer/resblocks_0/attn/q_proj/kernel`).
"""

from __future__ import annotations

from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.video_clip import VideoCLIP

# Top-level modules and leaves that only TC-CLIP has (a CLIP checkpoint lacks them; they are
# initialised as the published code does before training, and WiSE-FT takes them unmixed).
TC_ONLY_MODULES = ("prompt_learner", "prompt_generation_layer")
TC_ONLY_LEAVES = ("local_global_bias_table",)
# Top-level modules trained with `fast_lr_multiplier` x the learning rate (the published param
# groups), and those never trained (the released code keeps CLIP's token embedding).
FAST_MODULES = ("prompt_learner", "prompt_generation_layer")
FROZEN_MODULES = ("token_embedding",)
# Parameters with a leading frame axis under `positional_embedding="joint"` ([T, N, W]; CLIP's
# table is [N, W]).
PER_FRAME_PARAMS = ("visual/positional_embedding",)

BASE, FAST, FROZEN = "base", "fast", "frozen"


def key_path(path: tuple) -> str:
    """A jax tree path -> "a/b/c"."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def flatten(params: Any) -> dict[str, Any]:
    return flax.traverse_util.flatten_dict(params, sep="/")


def unflatten(flat: dict[str, Any]) -> dict:
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def is_tc_only(key: str) -> bool:
    """Whether parameter `key` exists only in TC-CLIP (not in CLIP or ViFi-CLIP)."""
    parts = key.split("/")
    return parts[0] in TC_ONLY_MODULES or parts[-1] in TC_ONLY_LEAVES


def is_per_frame(key: str) -> bool:
    return key in PER_FRAME_PARAMS


def param_group(key: str) -> str:
    """BASE, FAST or FROZEN: the optimiser group of parameter `key`."""
    top = key.split("/")[0]
    if top in FROZEN_MODULES:
        return FROZEN
    return FAST if top in FAST_MODULES else BASE


def param_groups(params: Any) -> Any:
    """A tree like `params` holding each leaf's `param_group`."""
    return jax.tree_util.tree_map_with_path(lambda p, _: param_group(key_path(p)), params)


def split_frozen(params: dict) -> tuple[dict, dict]:
    """(trainable, frozen) top-level modules, so gradients are taken of the trainable ones only."""
    trainable = {k: v for k, v in params.items() if k not in FROZEN_MODULES}
    frozen = {k: v for k, v in params.items() if k in FROZEN_MODULES}
    return trainable, frozen


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter key of the model `cfg` describes, with its shape (nothing allocated)."""
    model = VideoCLIP(cfg)
    clips = jax.ShapeDtypeStruct(
        (1, cfg.num_frames, cfg.image_resolution, cfg.image_resolution, 3), jnp.float32
    )
    tokens = jax.ShapeDtypeStruct((2, cfg.context_length), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), clips, tokens)["params"]
    return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def check_params(
    params: dict, cfg: ModelConfig, source: str, error: type[Exception] = ValueError
) -> None:
    """Raise `error` naming missing/unexpected keys and shape mismatches."""
    want = expected_shapes(cfg)
    got = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    missing = sorted(set(want) - set(got))
    if missing:
        raise error(f"{source}: missing keys for this model config: {missing[:20]}")
    unexpected = sorted(set(got) - set(want))
    if unexpected:
        raise error(f"{source}: unexpected keys for this model config: {unexpected[:20]}")
    for k in sorted(want):
        if want[k] != got[k]:
            raise error(
                f"{source}: shape mismatch for {k}: expected {list(want[k])}, got {list(got[k])}"
            )
