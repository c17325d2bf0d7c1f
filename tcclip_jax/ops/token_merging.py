"""Bipartite soft matching (ToMe) with size-weighted merging, as a standalone functional op.

TC-CLIP merges the seed tokens of all frames into k context tokens with repeated bipartite soft
matching. The number of merges per step is fixed at trace time from static shapes
(`merge_schedule`), so the whole summarisation is a static sequence of gathers and scatter-adds
that jit, vmap and grad handle. Works on any leading batch dimensions: `x` is `[..., M, W]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def merge_schedule(num_tokens: int, target: int, r: int) -> tuple[int, ...]:
    """Merges per step taking `num_tokens` down to exactly `target` (the released schedule).

    `int((M0 - k) / r)` steps of `min(r, M // 2)`, then steps of `min(M - k, M // 2)` until k.
    For M0 = 928, k = 96, r = 100: eight steps of 100, then one of 32.
    """
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    if num_tokens < target:
        raise ValueError(f"cannot merge {num_tokens} tokens up to {target}")
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    steps = []
    m = num_tokens
    for _ in range(int((num_tokens - target) / r)):
        step = min(r, m // 2)
        steps.append(step)
        m -= step
    while m > target:
        step = min(m - target, m // 2)
        steps.append(step)
        m -= step
    return tuple(steps)


def _match_one(x: jax.Array, sizes: jax.Array, r: int):
    """One step on a single example: x [M, W], sizes [M] -> [M - r, W], [M - r], position [M]."""
    m = x.shape[0]
    na, nb = (m + 1) // 2, m // 2
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    metric = x.astype(stat_dtype)
    metric = metric / jnp.linalg.norm(metric, axis=-1, keepdims=True)
    scores = metric[0::2] @ metric[1::2].T  # [na, nb] cosine similarity, A -> B.
    node_max = scores.max(axis=-1)
    node_idx = scores.argmax(axis=-1)  # best B partner of every A token.
    order = jnp.argsort(node_max, descending=True)  # A tokens by score.
    src_idx, unm_idx = order[:r], order[r:]
    dst_idx = node_idx[src_idx]

    # Weighted sums in >= float32 (bfloat16 sums of up to ~10 tokens would lose precision).
    weighted = x.astype(stat_dtype) * sizes[:, None].astype(stat_dtype)
    a, b = weighted[0::2], weighted[1::2]
    size_a, size_b = sizes[0::2], sizes[1::2]
    b = b.at[dst_idx].add(a[src_idx])
    size_b = size_b.at[dst_idx].add(size_a[src_idx])
    new_sizes = jnp.concatenate([size_a[unm_idx], size_b])
    new_x = jnp.concatenate([a[unm_idx], b]) / new_sizes[:, None].astype(stat_dtype)
    new_x = new_x.astype(x.dtype)

    # Where every input token went: unmerged A tokens keep their sorted rank, merged A tokens
    # join their B partner, B tokens follow the unmerged ones.
    rank = jnp.zeros((na,), jnp.int32).at[order].set(jnp.arange(na, dtype=jnp.int32))
    pos_a = jnp.where(rank >= r, rank - r, na - r + node_idx.astype(jnp.int32))
    pos_b = na - r + jnp.arange(nb, dtype=jnp.int32)
    position = jnp.zeros((m,), jnp.int32).at[0::2].set(pos_a).at[1::2].set(pos_b)
    return new_x, new_sizes, position


def bipartite_soft_matching(
    x: jax.Array, sizes: jax.Array, r: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One bipartite soft-matching step with size-weighted averaging.

    A = even positions, B = odd positions, similarity = cosine of `x` itself. The `r` A tokens
    with the highest best-match score merge into their best B token; output order is the
    unmerged A tokens (by descending score), then all B tokens in their original order.

    Args:
      x: `[..., M, W]` tokens.
      sizes: `[..., M]` how many original tokens each one stands for.
      r: merges (static), at most M // 2.

    Returns:
      `(x [..., M - r, W], sizes [..., M - r], position [..., M])`, where `position[i]` is the
      output index that input token i went into.
    """
    m = x.shape[-2]
    if not 0 <= r <= m // 2:
        raise ValueError(f"r={r} merges impossible on {m} tokens (at most {m // 2})")
    fn = lambda xx, ss: _match_one(xx, ss, r)
    for _ in range(x.ndim - 2):
        fn = jax.vmap(fn)
    return fn(x, sizes)


def merge_to_k(
    x: jax.Array, k: int, r: int, sizes: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Merge `[..., M0, W]` tokens down to exactly `k` with the static `merge_schedule`.

    Returns `(tokens [..., k, W], sizes [..., k], assignment [..., M0])` where `assignment[i]`
    is the output token that input token i was merged into (for visualisation).
    """
    if sizes is None:
        sizes = jnp.ones(x.shape[:-1], jnp.promote_types(x.dtype, jnp.float32))
    assignment = jnp.broadcast_to(jnp.arange(x.shape[-2], dtype=jnp.int32), x.shape[:-1])
    for step in merge_schedule(x.shape[-2], k, r):
        x, sizes, position = bipartite_soft_matching(x, sizes, step)
        assignment = jnp.take_along_axis(position, assignment, axis=-1)
    return x, sizes, assignment
