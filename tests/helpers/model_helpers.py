"""Helpers of the model tests: random parameters without compiling `init`, and the
cross-entropy step whose logits, intermediates and gradients the tests compare."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from tcclip_jax.models import ModelConfig, VideoCLIP

CLASSNAMES = ["brush hair", "cartwheel", "clap"]


def cross_entropy_step(model: VideoCLIP):
    """jit(value_and_grad) of the mean cross-entropy; aux = (logits, video outputs)."""

    def loss(params, clips, tokens, labels):
        logits, video = model.apply({"params": params}, clips, tokens, return_attention=True)
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(log_probs[jnp.arange(len(labels)), labels]), (logits, video)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def random_params(cfg: ModelConfig, seed: int) -> dict:
    """Random float32 parameters for `VideoCLIP(cfg)`, drawn with NumPy.

    Compiling `model.init` costs several times a forward pass (random number generation for every
    parameter), so tests fill the abstract tree instead. LayerNorm scales, biases and bias tables
    are random too, so a parameter used in the wrong place changes the output.
    """
    clips = jax.ShapeDtypeStruct((1, cfg.num_frames, *(cfg.image_resolution,) * 2, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, cfg.context_length), jnp.int32)
    abstract = jax.eval_shape(VideoCLIP(cfg).init, jax.random.key(0), clips, tokens)["params"]
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in traverse_util.flatten_dict(abstract, sep="/").items():
        z = rng.standard_normal(leaf.shape)
        if path == "logit_scale":
            value = np.log(1 / 0.07) + 0.1 * z
        elif path.endswith("/scale"):
            value = 1 + 0.1 * z
        elif path.endswith("/bias") or path.endswith("bias_table"):
            value = 0.1 * z
        elif path.endswith(("embedding", "ctx")):
            value = 0.05 * z
        elif re.search(r"[qkv]_proj/kernel$", path):
            value = z / np.sqrt(leaf.shape[0])
        else:
            value = z / np.sqrt(np.prod(leaf.shape[:-1]))
        flat[path] = jnp.asarray(value, jnp.float32)
    return traverse_util.unflatten_dict(flat, sep="/")
