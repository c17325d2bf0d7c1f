"""The model a training run builds: its ModelConfig and initial weights.

`config.model_variant` picks the architecture on top of the initial checkpoint's towers:

* `tc_clip`: TC in every vision block after the first, VP, learnable prompts (the released model);
* `tc_clip_light`: TC-CLIP§ of the paper, TC at blocks L/3, 2L/3 and L only ((4, 8, 12) for
  ViT-B); our reading of the paper, which the released code does not contain (see
  `ModelConfig.tc_layers`);
* `vifi_clip`: the same towers with per-frame attention, no prompts, no VP.

Weights carry over by name. Every variant has CLIP's parameters under the same names, so any
CLIP / ViFi-CLIP / TC-CLIP checkpoint initialises any variant: what the target has and the
checkpoint lacks is initialised as the published code does before training (prompt vectors from
the token embeddings of "a photo of a", VP as a copy of the last text block, bias tables
trunc-normal(0.02), a `joint` positional table as CLIP's repeated over frames; see
`tcclip_jax.convert.init_from_clip`). The local/global bias table of a block is loaded when the
checkpoint has one for that block: TC-CLIP -> TC-CLIP§ keeps the tables of blocks 4, 8 and 12 and
drops the others; TC-CLIP§ -> TC-CLIP loads those three and initialises the rest. What the target
does not use (e.g. VP when training ViFi-CLIP) is dropped and logged.
"""

from __future__ import annotations

import dataclasses

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tcclip_jax.convert import check_params, init_from_clip
from tcclip_jax.models import ModelConfig, VideoCLIP

VARIANTS = ("tc_clip", "tc_clip_light", "vifi_clip")
# Parameters a CLIP checkpoint does not have, by path fragment.
_TEMPORAL_ONLY = ("prompt_learner", "prompt_generation_layer", "local_global_bias_table")


def light_tc_layers(num_layers: int) -> tuple[int, ...]:
    """TC-CLIP§'s blocks: L/3, 2L/3 and L (rounded; block 1 cannot read context tokens)."""
    return tuple(sorted({b for b in (round(num_layers * i / 3) for i in (1, 2, 3)) if b >= 2}))


def variant_config(base: ModelConfig, variant: str, **overrides) -> ModelConfig:
    """`base` with the architecture of `variant` and field `overrides` (None = keep)."""
    if variant not in VARIANTS:
        raise ValueError(f"config.model_variant must be one of {VARIANTS}, got {variant!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    layers = overrides.get("vision_layers", base.vision_layers)
    changes = {
        "tc_clip": {"model": "tc_clip", "tc_layers": None},
        "tc_clip_light": {"model": "tc_clip", "tc_layers": light_tc_layers(layers)},
        "vifi_clip": {"model": "vifi_clip", "tc_layers": None},
    }[variant]
    # TC-CLIP prompts with 30 tokens; ViFi-CLIP with CLIP's full 77.
    changes["context_length"] = 30 if variant != "vifi_clip" else base.positional_table_length
    return dataclasses.replace(base, **{**changes, **overrides})


def _flat(tree: dict) -> dict[str, np.ndarray]:
    return flax.traverse_util.flatten_dict(tree, sep="/")


def adapt_params(
    source_config: ModelConfig, source_params: dict, config: ModelConfig, seed: int = 0
) -> dict:
    """Initial weights of `config` from a checkpoint of `source_config` (see the module doc)."""
    src = _flat(jax.tree.map(np.asarray, source_params))
    clip_part = {k: v for k, v in src.items() if not any(t in k for t in _TEMPORAL_ONLY)}
    if config.positional_embedding == "space" and src["visual/positional_embedding"].ndim == 3:
        raise ValueError(
            "the checkpoint has a per-frame ('joint') positional embedding; set "
            "config.model.positional_embedding='joint'"
        )
    clip_tree = flax.traverse_util.unflatten_dict(clip_part, sep="/")
    params = _flat(init_from_clip(clip_tree, config, seed))
    carried = sorted(k for k in src if k in params and src[k].shape == params[k].shape)
    params.update({k: src[k] for k in carried})
    dropped = sorted(set(src) - set(params))
    if dropped:
        logging.info("Initial checkpoint: not used by %s: %s", config.model, dropped)
    fresh = sorted(set(params) - set(carried) - set(clip_part))
    if fresh:
        logging.info("Initialised as before training (not in the checkpoint): %s", fresh)
    params = flax.traverse_util.unflatten_dict(params, sep="/")
    check_params(params, config, f"initial weights for {config.model}")
    return params


def random_params(config: ModelConfig, seed: int) -> dict:
    """Random weights (no checkpoint), as NumPy arrays; for the demo and tests.

    A `joint` positional table starts as one spatial table shared by all frames (as when it is
    made from CLIP's) plus one random vector per frame: space + time, so that every frame has
    the same spatial code and frames are told apart from the first step. Independent random
    tables per frame would have to learn T spatial codes from scratch.
    """
    model = VideoCLIP(config)
    clips = jnp.zeros((1, config.num_frames, config.image_resolution, config.image_resolution, 3))
    tokens = jnp.zeros((1, config.context_length), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(seed), clips, tokens)["params"]
    params = jax.tree.map(np.asarray, jax.device_get(params))
    if config.positional_embedding == "joint":
        table = params["visual"]["positional_embedding"]  # [T, N, W]
        time = np.random.default_rng(seed).standard_normal((table.shape[0], 1, table.shape[2]))
        params["visual"]["positional_embedding"] = table[:1] + (time * table.std()).astype(
            table.dtype
        )
    return params
