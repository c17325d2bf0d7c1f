"""The text fast path (class-set prefix once, VP once per video, EOT row only) equals the
published per-video computation: the whole text encoder run for every (video, class)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcclip_jax.models import ModelConfig, VideoCLIP
from tcclip_jax.models.layers import causal_mask
from tcclip_jax.models.tokenizer import tokenize_prompts, trim_padding

CLASSES = [
    "brush hair",
    "cartwheel",
    "ApplyEyeMakeup",
    "climb_stairs",
    "a very long class name x y",
]


def _tiny(**kw) -> ModelConfig:
    return ModelConfig(
        vision_layers=2, text_layers=2, num_frames=4, vision_width=64, vision_heads=2,
        text_width=32, text_heads=2, embed_dim=32, image_resolution=32, vision_patch_size=8,
        context_tokens=4, **kw,
    )  # fmt: skip


def _naive_logits(m: VideoCLIP, video, tokens):
    """The published computation: per video, the full sequences of every class through all
    text blocks, VP applied to the prompt positions before the last block."""
    n = m.config.prompt_length
    x = m._embed_tokens(tokens)
    mask = causal_mask(tokens.shape[1])
    for block in m.transformer.resblocks[:-1]:
        x = block(x, mask)
    eot = jnp.argmax(tokens, axis=-1)
    rows = []
    for b in range(video["video_embedding"].shape[0]):
        context = jax.lax.stop_gradient(video["context_embeddings"][b])  # published: detach()
        ctx = jnp.broadcast_to(context, (tokens.shape[0], *context.shape))
        prompts = m.prompt_generation_layer(x[:, 1 : 1 + n], ctx)  # per class, as published
        xb = x.at[:, 1 : 1 + n].set(prompts)
        xb = m.transformer.resblocks[-1](xb, mask)
        feats = m._project_text(xb[jnp.arange(xb.shape[0]), eot])
        text = feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)
        rows.append(jnp.exp(m.logit_scale) * text @ video["video_embedding"][b])
    return jnp.stack(rows)


@pytest.mark.parametrize("tc_layers, check_grad", [(None, True), ((2,), False)])
def test_fast_text_path_equals_published_per_video_path(tc_layers, check_grad):
    cfg = _tiny(tc_layers=tc_layers)
    model = VideoCLIP(cfg)
    tokens = jnp.asarray(tokenize_prompts(CLASSES, context_length=cfg.context_length))
    clips = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 32, 32, 3))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), clips, tokens)["params"]
    # Perturb every parameter so no symmetry (e.g. zero biases) hides a mistake.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    fast, video = jax.jit(model.apply)({"params": params}, clips, tokens)
    naive = jax.jit(lambda v: model.apply(v, video, tokens, method=_naive_logits))(
        {"params": params}
    )
    np.testing.assert_allclose(np.asarray(fast), np.asarray(naive), atol=2e-5, rtol=1e-5)
    if not check_grad:
        return
    # Gradients of the text side agree too (training uses the fast path; the vision tower is
    # shared by both paths and left out to keep the compile small).
    video = {k: video[k] for k in ("video_embedding", "context_embeddings")}
    loss = lambda p, fn: jnp.sum(jnp.sin(model.apply({"params": p}, video, tokens, method=fn)))
    fast_fn = lambda m, v, t: m.logits(v, m.encode_text(t))
    g_fast = jax.jit(jax.grad(lambda p: loss(p, fast_fn)))(params)
    g_naive = jax.jit(jax.grad(lambda p: loss(p, _naive_logits)))(params)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_naive), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


def test_class_cache_is_reusable_across_batches():
    cfg = _tiny()
    model = VideoCLIP(cfg)
    tokens = jnp.asarray(tokenize_prompts(CLASSES, context_length=cfg.context_length))
    clips = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 32, 32, 3))
    v = jax.jit(model.init)(jax.random.PRNGKey(0), clips, tokens)
    text = jax.jit(lambda v, t: model.apply(v, t, method="encode_text"))(v, tokens)
    logits = jax.jit(
        lambda v, c, t: model.apply(v, model.apply(v, c, method="encode_video"), t, method="logits")
    )
    whole = logits(v, clips, text)
    parts = [logits(v, clips[i : i + 1], text) for i in range(4)]
    np.testing.assert_allclose(np.asarray(whole), np.concatenate(parts), atol=1e-5)
    # Each video's class embeddings depend on its own context tokens (VP), so they differ.
    video = jax.jit(lambda v, c: model.apply(v, c, method="encode_video"))(v, clips)
    emb = jax.jit(lambda v, t, x: model.apply(v, t, x, method="text_embeddings"))(v, text, video)
    assert emb.shape == (4, len(CLASSES), cfg.embed_dim)
    assert float(jnp.abs(emb[0] - emb[1]).max()) > 1e-4


def test_trim_padding_keeps_every_eot():
    tokens = tokenize_prompts(CLASSES, context_length=30)
    trimmed = trim_padding(tokens)
    longest = max(int(np.argmax(row)) for row in tokens) + 1
    assert trimmed.shape == (len(CLASSES), longest) and longest < 30
    np.testing.assert_array_equal(trimmed, tokens[:, :longest])
    np.testing.assert_array_equal(np.argmax(trimmed, -1), np.argmax(tokens, -1))


@pytest.mark.parametrize("kind", ["tc_clip", "vifi_clip", "clip"])
def test_trimmed_prompts_give_the_same_logits_and_gradients(kind):
    """Dropping the padding after the longest EOT changes nothing (causal text tower), in the
    forward pass and in every gradient: train, evaluate and predict rely on it. In float64, so
    that only the summation order may differ."""
    cfg = _tiny(model=kind)
    model = VideoCLIP(cfg, dtype=jnp.float64)
    tokens = tokenize_prompts(CLASSES, context_length=cfg.context_length)
    trimmed = trim_padding(tokens)
    assert trimmed.shape[1] < tokens.shape[1]
    with jax.enable_x64(True):
        clips = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 32, 32, 3), jnp.float64)
        params = jax.jit(model.init)(jax.random.PRNGKey(0), clips, jnp.asarray(tokens))["params"]
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        loss = jax.jit(
            jax.value_and_grad(
                lambda p, t: jnp.sum(jnp.sin(model.apply({"params": p}, clips, t)[0]))
            )
        )
        full, g_full = loss(params, jnp.asarray(tokens))
        cut, g_cut = loss(params, jnp.asarray(trimmed))
    np.testing.assert_allclose(float(cut), float(full), rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g_cut), jax.tree.leaves(g_full), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12, rtol=1e-10)
