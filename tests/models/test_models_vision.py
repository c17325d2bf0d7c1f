"""The vision tower's blocks (`tcclip_jax.models.vision`): the TC block against the published
formulation (re-implemented below, with context keys repeated for every frame), the last block's
CLS-only computation, and the patch embedding against CLIP's convolution."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tcclip_jax.models.vision import PatchEmbedding, TCBlock
from tcclip_jax.ops.token_merging import merge_to_k

# The TC block against the published formulation -----------------------------------------


def layer_norm(x: np.ndarray, p: dict) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def dense(x: np.ndarray, p: dict) -> np.ndarray:
    """A q/k/v/out projection with the per-head kernel flattened back to PyTorch's [W, W]."""
    kernel = p["kernel"].reshape(x.shape[-1], -1)
    return x @ kernel + p["bias"].reshape(-1)


def mlp(x: np.ndarray, p: dict) -> np.ndarray:
    h = x @ p["c_fc"]["kernel"] + p["c_fc"]["bias"]
    h = h / (1 + np.exp(-1.702 * h))
    return h @ p["c_proj"]["kernel"] + p["c_proj"]["bias"]


def reference_tc_block(x, context, p, heads, use_context, summarize, num_seeds, k, r):
    """The released code's TC block: every frame's keys concatenated with the k context keys,
    repeated per frame ([B*T, N+k, W]), bias as a [heads, N, N+k] matrix, then seeds, merging and
    a shared FFN. Returns (x, context or None, cls_attention [B, T, P], seed_index or None)."""
    b, t, n, w = x.shape
    hd = w // heads
    frames = x.reshape(b * t, n, w)
    h = layer_norm(frames, p["ln_1"])
    keys_in = h
    if use_context:
        h_ctx = np.repeat(layer_norm(context, p["ln_1"]), t, axis=0)  # [B*T, k, W]
        keys_in = np.concatenate([h, h_ctx], axis=1)
    split = lambda y: y.reshape(*y.shape[:2], heads, hd).transpose(0, 2, 1, 3)  # [BT, h, L, hd]
    q = split(dense(h, p["attn"]["q_proj"]))
    key = split(dense(keys_in, p["attn"]["k_proj"]))
    value = split(dense(keys_in, p["attn"]["v_proj"]))
    logits = q @ key.transpose(0, 1, 3, 2) / np.sqrt(hd)  # [BT, heads, N, N (+k)]
    if use_context and "local_global_bias_table" in p["attn"]:
        table = p["attn"]["local_global_bias_table"]  # [heads, 1, 2]
        bias = np.concatenate(
            [np.repeat(table[:, :, :1], n, axis=2), np.repeat(table[:, :, 1:], k, axis=2)], axis=2
        )  # [heads, 1, N + k]
        logits = logits + np.broadcast_to(bias, (heads, n, n + k))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True)
    out = (probs @ value).transpose(0, 2, 1, 3).reshape(b * t, n, w)
    frames = (
        frames + out @ p["attn"]["out_proj"]["kernel"].reshape(w, w) + p["attn"]["out_proj"]["bias"]
    )
    cls_attention = probs[:, :, 0, 1:n].mean(axis=1).reshape(b, t, n - 1)
    new_context = seed_index = None
    if summarize:
        seed_index = np.argsort(-cls_attention, axis=-1, kind="stable")[..., :num_seeds]
        patches = frames.reshape(b, t, n, w)[:, :, 1:]
        seeds = np.take_along_axis(patches, seed_index[..., None], axis=2).reshape(b, -1, w)
        new_context = np.asarray(merge_to_k(jnp.asarray(seeds), k, r)[0])
        new_context = new_context + mlp(layer_norm(new_context, p["ln_2"]), p["mlp"])
    frames = frames + mlp(layer_norm(frames, p["ln_2"]), p["mlp"])
    return frames.reshape(b, t, n, w), new_context, cls_attention, seed_index


@pytest.mark.parametrize(
    "block, use_context, summarize, bias",
    [
        (1, True, True, True),  # the released TC block.
        (1, True, False, False),  # context without the bias table.
        (0, False, True, False),  # block 1: plain CLIP attention, summarises for block 2.
    ],
)
def test_tc_block_matches_published_formulation(tiny, block, use_context, summarize, bias):
    cfg, params, *_ = tiny
    p = dict(params["visual"]["transformer"][f"resblocks_{block}"])
    if not bias:
        p["attn"] = {k: v for k, v in p["attn"].items() if k != "local_global_bias_table"}
    # Perturb every parameter (LayerNorms start at 1 and 0, the bias table near 0) so that a
    # parameter used in the wrong place shows.
    leaves, tree = jax.tree.flatten(p)
    rng = np.random.default_rng(2)
    p = jax.tree.unflatten(
        tree, [np.asarray(x, np.float64) + 0.3 * rng.standard_normal(x.shape) for x in leaves]
    )
    b, t, n, w, k = 2, cfg.num_frames, cfg.num_patches + 1, cfg.vision_width, cfg.context_tokens
    x = rng.standard_normal((b, t, n, w))
    context = rng.standard_normal((b, k, w)) if use_context else None
    module = TCBlock(
        w,
        cfg.vision_heads,
        use_context=use_context,
        summarize=summarize,
        local_global_bias=bias,
        num_seeds=cfg.seeds_per_frame,
        num_context=k,
        merge_r=cfg.merge_r,
        dtype=jnp.float64,
    )
    with jax.enable_x64(True):
        got_x, got_context, aux = jax.jit(module.apply)({"params": p}, x, context)
        want_x, want_context, want_attention, want_seeds = reference_tc_block(
            x, context, p, cfg.vision_heads, use_context, summarize, cfg.seeds_per_frame, k,
            cfg.merge_r,
        )  # fmt: skip
    np.testing.assert_allclose(got_x, want_x, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(aux["cls_attention"], want_attention, rtol=1e-10, atol=1e-12)
    if summarize:
        np.testing.assert_array_equal(aux["seed_index"], want_seeds)
        np.testing.assert_allclose(got_context, want_context, rtol=1e-10, atol=1e-10)
    else:
        assert got_context is None


def _block_case(tiny, use_context: bool, summarize: bool, bias: bool, **changes):
    """(block fields, perturbed float64 params, x [B, T, N, W], context [B, k, W] or None)."""
    cfg, params, *_ = tiny
    p = dict(params["visual"]["transformer"]["resblocks_1"])
    if not bias:
        p["attn"] = {k: v for k, v in p["attn"].items() if k != "local_global_bias_table"}
    rng = np.random.default_rng(3)
    leaves, tree = jax.tree.flatten(p)
    p = jax.tree.unflatten(
        tree, [np.asarray(x, np.float64) + 0.3 * rng.standard_normal(x.shape) for x in leaves]
    )
    b, t, n, w, k = 2, cfg.num_frames, cfg.num_patches + 1, cfg.vision_width, cfg.context_tokens
    x = rng.standard_normal((b, t, n, w))
    context = rng.standard_normal((b, k, w)) if use_context else None
    fields = dict(
        width=w,
        heads=cfg.vision_heads,
        use_context=use_context,
        summarize=summarize,
        local_global_bias=bias,
        num_seeds=cfg.seeds_per_frame,
        num_context=k,
        merge_r=cfg.merge_r,
        dtype=jnp.float64,
        **changes,
    )
    return fields, p, x, context


def _assert_same_block(want: TCBlock, got: TCBlock, p: dict, x, context) -> None:
    """In float64: `got`'s CLS tokens, context tokens, choices and every gradient (params, x,
    context) of a loss on them equal `want`'s."""
    rng = np.random.default_rng(4)
    w = x.shape[-1]
    weights = rng.standard_normal((x.shape[1], w)), rng.standard_normal((want.num_context, w))

    def outputs(module, p, x, context):
        y, new_context, aux = module.apply({"params": p}, x, context)
        loss = jnp.sum(y[:, :, 0] * weights[0])
        if new_context is not None:
            loss = loss + jnp.sum(new_context * weights[1])
        return loss, (y[:, :, :1], new_context, aux)

    with jax.enable_x64(True):
        grad = lambda m: jax.jit(
            jax.grad(functools.partial(outputs, m), argnums=(0, 1, 2), has_aux=True)
        )
        (want_grads, (want_y, want_context, want_aux)) = grad(want)(p, x, context)
        (got_grads, (got_y, got_context, got_aux)) = grad(got)(p, x, context)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-12, atol=1e-12)
    assert got_aux.keys() == want_aux.keys()
    np.testing.assert_allclose(got_aux["cls_attention"], want_aux["cls_attention"], atol=1e-15)
    if want.summarize:
        np.testing.assert_array_equal(got_aux["seed_index"], want_aux["seed_index"])
        np.testing.assert_array_equal(got_aux["assignment"], want_aux["assignment"])
        np.testing.assert_allclose(got_context, want_context, rtol=1e-12, atol=1e-12)
    else:
        assert got_context is None
    for path, g in traverse_util.flatten_dict(want_grads[0], sep="/").items():
        got_grad = traverse_util.flatten_dict(got_grads[0], sep="/")[path]
        np.testing.assert_allclose(got_grad, g, rtol=1e-10, atol=1e-12, err_msg=path)
    np.testing.assert_allclose(got_grads[1], want_grads[1], rtol=1e-10, atol=1e-12)
    if context is not None:
        np.testing.assert_allclose(got_grads[2], want_grads[2], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "use_context, summarize, bias",
    [
        (True, True, True),  # TC-CLIP's last block.
        (False, True, False),  # a one-block TC tower: plain attention, summarises.
        (False, False, False),  # CLIP / ViFi-CLIP's last block.
    ],
)
def test_last_block_computes_only_what_its_outputs_need(tiny, use_context, summarize, bias):
    """`cls_only` (the last vision block) computes the CLS queries, the seeds' queries and the
    FFN of the CLS and context tokens only: in float64, its outputs and all gradients equal the
    full block's (sliced to the CLS tokens)."""
    fields, p, x, context = _block_case(tiny, use_context, summarize, bias)
    full, last = TCBlock(**fields), TCBlock(**fields, cls_only=True)
    with jax.enable_x64(True):
        cls_tokens = jax.eval_shape(lambda: last.apply({"params": p}, x, context)[0])
    assert cls_tokens.shape == (*x.shape[:2], 1, x.shape[-1])
    _assert_same_block(full, last, p, x, context)


@pytest.mark.parametrize("cls_only", [False, True])
@pytest.mark.parametrize("use_context", [True, False])
def test_shared_ffn_equals_an_ffn_per_token_set(tiny, use_context, cls_only):
    """`shared_ffn` (one FFN over the frame tokens and the new context tokens, as the unrolled
    stack runs it) gives the two separate FFNs' outputs and gradients in float64."""
    fields, p, x, context = _block_case(tiny, use_context, True, use_context, cls_only=cls_only)
    _assert_same_block(TCBlock(**fields), TCBlock(**fields, shared_ffn=True), p, x, context)


@pytest.mark.parametrize("patch", [2, 4])
def test_patch_embedding_equals_clips_convolution(patch):
    """`conv1` as a matrix product of flattened patches equals CLIP's strided convolution
    (`nn.Conv`, same HWIO kernel) in float64: outputs and the kernel and input gradients."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        images = rng.standard_normal((2, 3, 8, 12, 3))  # [B, T, H, W, C]
        kernel = rng.standard_normal((patch, patch, 3, 5))
        conv = nn.Conv(5, (patch, patch), strides=(patch, patch), padding="VALID",
                       use_bias=False, dtype=jnp.float64)  # fmt: skip
        ours = PatchEmbedding(5, patch, jnp.float64)
        assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), images)) == {
            "params": {"kernel": kernel.shape}
        }
        cotangent = rng.standard_normal((2, 3, 8 // patch, 12 // patch, 5))

        def loss(module, k, x):
            out = module.apply({"params": {"kernel": k}}, x)
            return jnp.sum(out.reshape(cotangent.shape) * cotangent)

        # Ours takes the clips as they are; the convolution takes their frames as images.
        flat = lambda k, x: loss(conv, k, x.reshape(-1, *x.shape[-3:]))
        for got, want in zip(
            (
                loss(ours, kernel, images),
                *jax.grad(functools.partial(loss, ours), (0, 1))(kernel, images),
            ),
            (flat(kernel, images), *jax.grad(flat, (0, 1))(kernel, images)),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
