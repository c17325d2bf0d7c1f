"""CLIP's text transformer, the prompt learner and Video-conditional Prompting (VP).

TC-CLIP's text side, computed without waste (spec, "consequences"): with causal attention the
prompt positions never see the class name, so

* text blocks 1..L-1 depend on the class set only (`TextTransformer.prefix`, once per class set),
* VP depends on the video only (once per video, not once per video and class),
* only the EOT row of the last block is used (`TextTransformer.last_block_eot`: one row per
  (video, class) instead of the whole sequence).

`tests/models/test_text_fast_path.py` proves this equals the published per-video computation.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tcclip_jax.models.layers import (
    MLP,
    Dtype,
    Projections,
    ResidualAttentionBlock,
    attention,
    causal_mask,
    layer_norm,
    softmax,
)


class TextTransformer(nn.Module):
    """CLIP's stack of causal text blocks, `resblocks_{i}`."""

    width: int
    layers: int
    heads: int
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        block = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
        self.resblocks = [
            block(self.width, self.heads, self.dtype, name=f"resblocks_{i}")
            for i in range(self.layers)
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        """All blocks, causal. x: [C, L, D]."""
        return self.resblocks[-1](self.prefix(x), causal_mask(x.shape[-2]))

    def prefix(self, x: jax.Array) -> jax.Array:
        """Blocks 1..L-1, causal. x: [C, L, D]."""
        mask = causal_mask(x.shape[-2])
        for block in self.resblocks[:-1]:
            x = block(x, mask)
        return x

    def last_block_eot(self, hidden: jax.Array, eot: jax.Array, prompts: jax.Array) -> jax.Array:
        """The last block's output at the EOT row only, with per-video prompt tokens.

        hidden: [C, L, D] input of the last block for every class, whose positions
          1..n_ctx are replaced by the video's `prompts` [B, n_ctx, D];
        eot: [C] EOT position of every class.
        Returns [B, C, D]: the EOT row of the last block for every (video, class).
        """
        block = self.resblocks[-1]
        c, length, _ = hidden.shape
        n_ctx = prompts.shape[1]
        h = block.ln_1(hidden)
        rows = jnp.arange(c)
        q = block.attn.q(h[rows, eot])  # [C, heads, head_dim]
        k_cls, v_cls = block.attn.kv(h)  # [C, L, heads, head_dim]
        k_vid, v_vid = block.attn.kv(block.ln_1(prompts))  # [B, n_ctx, heads, head_dim]
        pos = jnp.arange(length)
        # Causal row of EOT, without the prompt positions (they come from the video).
        keep = (pos[None, :] <= eot[:, None]) & ((pos < 1) | (pos > n_ctx))[None, :]  # [C, L]
        logits_cls = jnp.einsum("CNH,CKNH->CNK", q, k_cls)
        logits_cls = jnp.where(keep[:, None, :], logits_cls, jnp.finfo(logits_cls.dtype).min)
        logits_vid = jnp.einsum("CNH,BKNH->BCNK", q, k_vid)  # [B, C, heads, n_ctx]
        b = prompts.shape[0]
        logits = jnp.concatenate(
            [jnp.broadcast_to(logits_cls, (b, *logits_cls.shape)), logits_vid], axis=-1
        )
        probs = softmax(logits, self.dtype).astype(self.dtype)  # [B, C, heads, L + n_ctx]
        out = jnp.einsum("BCNK,CKNH->BCNH", probs[..., :length], v_cls)
        out = out + jnp.einsum("BCNK,BKNH->BCNH", probs[..., length:], v_vid)
        x = hidden[rows, eot][None] + block.attn.out(out)  # [B, C, D]
        return block.feed_forward(x)


class PromptGenerationLayer(nn.Module):
    """VP: prompt vectors cross-attend to the video's context tokens, then an FFN.

    p = p + MHA(q=ln_1(p), k=v=ln_1_kv(s)); p = p + mlp(ln_2(p)). Initialised as a copy of
    CLIP's last text block (`ln_1_kv` from `ln_1`) by the converter.
    """

    width: int
    heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, prompts: jax.Array, context: jax.Array) -> jax.Array:
        """prompts: [B, n_ctx, D]; context: [B, k, D] -> [B, n_ctx, D]."""
        attn = Projections(self.width, self.heads, self.dtype, name="attn")
        q = attn.q(layer_norm(self.dtype, "ln_1")(prompts))
        k, v = attn.kv(layer_norm(self.dtype, "ln_1_kv")(context))
        out, _ = attention(q, k, v, None, self.dtype)
        x = prompts + attn.out(out)
        return x + MLP(self.width, self.dtype, name="mlp")(layer_norm(self.dtype, "ln_2")(x))


class PromptLearner(nn.Module):
    """The learnable prompt vectors `ctx` [n_ctx, D] replacing the words of "a photo of a"."""

    length: int
    width: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("ctx", nn.initializers.normal(0.02), (self.length, self.width))
