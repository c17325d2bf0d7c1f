"""Initial weights: CLIP's towers extended to TC-CLIP / ViFi-CLIP, or random ones.

Weights carry over by name. Every variant (`tcclip_jax.models.variants`) has CLIP's parameters
under the same names, so any CLIP / ViFi-CLIP / TC-CLIP checkpoint initialises any variant: what
the target has and the checkpoint lacks is initialised as the published code does before
training (`init_from_clip`: prompt vectors from the token embeddings of "a photo of a", VP as a
copy of the last text block, bias tables trunc-normal(0.02), a `joint` positional table as CLIP's
repeated over frames). The local/global bias table of a block is loaded when the checkpoint has
one for that block: TC-CLIP -> TC-CLIP§ keeps the tables of blocks 4, 8 and 12 and drops the
others; TC-CLIP§ -> TC-CLIP loads those three and initialises the rest. What the target does not
use (e.g. VP when training ViFi-CLIP) is dropped and logged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tcclip_jax.models import params as P
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.tokenizer import get_tokenizer
from tcclip_jax.models.video_clip import VideoCLIP


def _truncated_normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    x = rng.standard_normal(shape)
    while np.any(bad := np.abs(x) > 2):
        x[bad] = rng.standard_normal(int(bad.sum()))
    return (x * std).astype(np.float32)


def init_from_clip(clip: dict, cfg: ModelConfig, seed: int = 0) -> dict:
    """A TC-CLIP / ViFi-CLIP tree initialised from CLIP as the published code does before
    training: prompt vectors = token embeddings of `prompt_init` (random normal(0.02) for any
    extra vectors), VP = copy of CLIP's last text block (`ln_1_kv` = `ln_1`), local/global bias
    tables trunc-normal(0.02), a `joint` positional embedding = CLIP's table repeated T times."""
    params = jax.tree.map(np.array, clip)
    rng = np.random.default_rng(seed)
    vis = params["visual"]
    if cfg.positional_embedding == "joint" and vis["positional_embedding"].ndim == 2:
        vis["positional_embedding"] = np.repeat(
            vis["positional_embedding"][None], cfg.num_frames, axis=0
        )
    if not cfg.is_temporal:
        return params
    for i in cfg.context_layers:
        if cfg.local_global_bias:
            attn = vis["transformer"][f"resblocks_{i - 1}"]["attn"]
            attn["local_global_bias_table"] = _truncated_normal(rng, (cfg.vision_heads, 1, 2), 0.02)
    words = get_tokenizer().encode(cfg.prompt_init)
    if len(words) > cfg.prompt_length:
        raise ValueError(
            f"prompt_init {cfg.prompt_init!r} has {len(words)} tokens, more than prompt_length "
            f"{cfg.prompt_length}"
        )
    table = params["token_embedding"]["embedding"]
    ctx = table[np.asarray(words, int)]
    extra = rng.normal(0.0, 0.02, (cfg.prompt_length - len(words), table.shape[1]))
    params["prompt_learner"] = {"ctx": np.concatenate([ctx, extra.astype(ctx.dtype)])}
    last = params["transformer"][f"resblocks_{cfg.text_layers - 1}"]
    vp = jax.tree.map(np.array, last)
    vp["ln_1_kv"] = jax.tree.map(np.array, last["ln_1"])
    params["prompt_generation_layer"] = vp
    return params


def adapt_params(
    source_config: ModelConfig, source_params: dict, config: ModelConfig, seed: int = 0
) -> dict:
    """Initial weights of `config` from a checkpoint of `source_config` (see the module doc)."""
    src = P.flatten(jax.tree.map(np.asarray, source_params))
    clip_part = {k: v for k, v in src.items() if not P.is_tc_only(k)}
    if config.positional_embedding == "space" and src["visual/positional_embedding"].ndim == 3:
        raise ValueError(
            "the checkpoint has a per-frame ('joint') positional embedding; set "
            "config.model.positional_embedding='joint'"
        )
    params = P.flatten(init_from_clip(P.unflatten(clip_part), config, seed))
    carried = sorted(k for k in src if k in params and src[k].shape == params[k].shape)
    params.update({k: src[k] for k in carried})
    dropped = sorted(set(src) - set(params))
    if dropped:
        logging.info("Initial checkpoint: not used by %s: %s", config.model, dropped)
    fresh = sorted(set(params) - set(carried) - set(clip_part))
    if fresh:
        logging.info("Initialised as before training (not in the checkpoint): %s", fresh)
    params = P.unflatten(params)
    P.check_params(params, config, f"initial weights for {config.model}")
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
