"""Building blocks shared by the CLIP, ViFi-CLIP and TC-CLIP towers.

Parameter names follow the PyTorch CLIP state dict (`ln_1`, `attn/q_proj`, `mlp/c_fc`, ...), so
the weight converter is a rename-and-transpose table. Parameters are float32 (float64 under x64
when loaded so); `dtype` is the compute dtype. LayerNorm and softmax statistics are computed in
at least float32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tcclip_jax.ops.dense import flat_dot_general

Dtype = Any


def stat_dtype(dtype: Dtype) -> Dtype:
    """float32, or wider when the compute dtype is wider (float64 under x64)."""
    return jnp.promote_types(dtype, jnp.float32)


def layer_norm(dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    """CLIP's LayerNorm (eps 1e-5). Flax computes its statistics in >= float32 and returns
    `dtype`, as CLIP's fp16-safe LayerNorm does."""
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


class MLP(nn.Module):
    """CLIP's feed-forward network: c_fc (4x), QuickGELU, c_proj."""

    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda width, name: nn.Dense(
            width, dtype=self.dtype, dot_general=flat_dot_general, name=name
        )
        x = quick_gelu(dense(self.width * 4, "c_fc")(x))
        return dense(self.width, "c_proj")(x)


class Projections(nn.Module):
    """Per-head q, k, v input projections and the output projection of CLIP attention.

    Kernels are `[W, heads, head_dim]` (`q_proj`, `k_proj`, `v_proj`) and
    `[heads, head_dim, W]` (`out_proj`), so attention can be written with named einsums.
    """

    width: int
    heads: int
    dtype: Dtype = jnp.float32
    local_global_bias: bool = False  # TC: a per-head bias table, [heads, 1, (local, global)].

    def setup(self):
        if self.local_global_bias:  # trunc-normal(0.02) as the released code initialises it.
            self.local_global_bias_table = self.param(
                "local_global_bias_table",
                nn.initializers.truncated_normal(0.02),
                (self.heads, 1, 2),
                jnp.float32,
            )
        head_dim = self.width // self.heads
        dense = lambda features, axis, name: nn.DenseGeneral(
            features, axis, dtype=self.dtype, dot_general=flat_dot_general, name=name
        )
        self.q_proj, self.k_proj, self.v_proj = (
            dense((self.heads, head_dim), -1, name) for name in ("q_proj", "k_proj", "v_proj")
        )
        self.out_proj = dense(self.width, (-2, -1), "out_proj")

    def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """[..., L, W] -> three [..., L, heads, head_dim]; q is pre-scaled by head_dim^-1/2."""
        return self.q(x), self.k_proj(x), self.v_proj(x)

    def kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.k_proj(x), self.v_proj(x)

    def q(self, x: jax.Array) -> jax.Array:
        return self.q_proj(x) * (self.width // self.heads) ** -0.5

    def out(self, x: jax.Array) -> jax.Array:
        """[..., L, heads, head_dim] -> [..., L, W]."""
        return self.out_proj(x)


def softmax(logits: jax.Array, dtype: Dtype) -> jax.Array:
    """Softmax computed and returned in >= float32 (the attention statistics)."""
    return jax.nn.softmax(logits.astype(stat_dtype(dtype)), axis=-1)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, dtype: Dtype
) -> tuple[jax.Array, jax.Array]:
    """Scaled dot-product attention; q is pre-scaled.

    q: [B, Q, N, H], k/v: [B, K, N, H] (N heads of width H), mask broadcastable to [B, N, Q, K].
    Returns (out [B, Q, N, H], probs [B, N, Q, K] in >= float32).
    """
    logits = jnp.einsum("BQNH,BKNH->BNQK", q, k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = softmax(logits, dtype)
    out = jnp.einsum("BNQK,BKNH->BQNH", probs.astype(dtype), v)
    return out, probs


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-LN transformer block (the text tower's, and VP's template)."""

    width: int
    heads: int
    dtype: Dtype = jnp.float32

    def setup(self):
        self.ln_1 = layer_norm(self.dtype)
        self.attn = Projections(self.width, self.heads, self.dtype)
        self.ln_2 = layer_norm(self.dtype)
        self.mlp = MLP(self.width, self.dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: [B, L, W]; mask broadcastable to [B, heads, L, L] (True = attend)."""
        q, k, v = self.attn.qkv(self.ln_1(x))
        out, _ = attention(q, k, v, mask, self.dtype)
        x = x + self.attn.out(out)
        return self.feed_forward(x)

    def feed_forward(self, x: jax.Array) -> jax.Array:
        return x + self.mlp(self.ln_2(x))


def causal_mask(length: int) -> jax.Array:
    return jnp.tril(jnp.ones((length, length), bool))
