"""Bipartite soft matching (ToMe) with size-weighted merging, as a standalone functional op.

TC-CLIP merges the seed tokens of all frames into k context tokens with repeated bipartite soft
matching. The number of merges per step is fixed at trace time from static shapes
(`merge_schedule`). Works on any leading batch dimensions: `x` is `[..., M, W]`.

Two forms compute the same thing (`MERGE_FORMS`, tests/ops/test_token_merging.py proves it in
float64, ties included):
- "gather": each step argsorts the scores, gathers the merged tokens and scatter-adds them into
  their partners, differentiated step by step (XLA:CPU runs it fastest);
- "dense": size-weighted merging has a closed form, every context token is the plain mean of the
  original tokens merged into it, and which tokens merge depends only on values (the scores
  carry no gradient). So the matching runs on `stop_gradient` values with the sort replaced by
  pairwise comparisons and each step's merge by a one-hot product, giving an integer
  `assignment`; the context tokens are then one product, one-hot(assignment)^T @ tokens /
  counts, and the backward pass is that product's transpose. No sort, gather or scatter: what
  TPUs and GPUs run at matrix speed.
Both keep the merged tokens in >= float32 between steps, so bfloat16 runs choose from float32
values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from tcclip_jax.ops import platform, tc_matching

MERGE_FORMS = ("gather", "dense", "pallas")
# One-hot products must not round their other operand (on TPU, default precision is one bfloat16
# pass): a 0/1 matrix times float32 values is exact at the highest precision.
_EXACT = jax.lax.Precision.HIGHEST
# The name of TC's discrete choices (seed indices, merge assignments) for `jax.checkpoint`
# policies: saved, the backward pass of a rematerialised block does not redo the matching.
CHOICES = "tc_choices"


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
    metric = jax.lax.stop_gradient(x).astype(stat_dtype)  # the choices carry no gradient
    metric = metric / jnp.linalg.norm(metric, axis=-1, keepdims=True)
    # [na, nb] cosine similarity, A -> B.
    scores = jnp.matmul(metric[0::2], metric[1::2].T, precision=_EXACT)
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


def choose_form(form: str | None, num_tokens: int = 0, width: int = 0) -> str:
    """`form`, or for None the one for the platform traced for: "gather" on a CPU; on a TPU
    TC's kernel ("pallas") where a clip's `num_tokens` x `width` tokens fit its VMEM and the
    batch can be split (one device, or a mesh in context), else "dense"; "dense" elsewhere."""
    if form is not None:
        return form
    where = platform.current()
    if where == "cpu":
        return "gather"
    splittable = not jax.sharding.get_abstract_mesh().empty or jax.device_count() == 1
    if where == "tpu" and splittable and tc_matching.fits(num_tokens, width, 4):
        return "pallas"
    return "dense"


def merge_to_k(
    x: jax.Array, k: int, r: int, sizes: jax.Array | None = None, form: str = "gather"
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Merge `[..., M0, W]` tokens down to exactly `k` with the static `merge_schedule`.

    Returns `(tokens [..., k, W] in x's dtype, sizes [..., k], assignment [..., M0])` where
    `assignment[i]` is the output token that input token i was merged into. `form` is one of
    `MERGE_FORMS` (the same values; see the module docstring).
    """
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    if sizes is None:
        sizes = jnp.ones(x.shape[:-1], stat_dtype)
    if form in ("dense", "pallas"):
        return _merge_dense(x, k, r, sizes.astype(stat_dtype), kernel=form == "pallas")
    if form != "gather":
        raise ValueError(f"merge form {form!r} is not one of {MERGE_FORMS}")
    out = x.astype(stat_dtype)  # no rounding to a 16-bit dtype between steps
    assignment = jnp.broadcast_to(jnp.arange(x.shape[-2], dtype=jnp.int32), x.shape[:-1])
    for step in merge_schedule(x.shape[-2], k, r):
        out, sizes, position = bipartite_soft_matching(out, sizes, step)
        assignment = jnp.take_along_axis(position, assignment, axis=-1)
    return out.astype(x.dtype), sizes, assignment


def descending_ranks(v: jax.Array) -> jax.Array:
    """[..., n] -> int32 [..., n]: each entry's place in a stable descending sort (the inverse of
    `jnp.argsort(v, descending=True)`: equal values keep their order), by pairwise comparisons."""
    n = v.shape[-1]
    before = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # [i, j]: j comes before i.
    vi, vj = v[..., :, None], v[..., None, :]
    return ((vj > vi) | ((vj == vi) & before)).sum(axis=-1, dtype=jnp.int32)


def _one_hot(index: jax.Array, n: int, dtype) -> jax.Array:
    """int [..., M] -> [..., M, n] with a 1 at each row's index (by comparison, no scatter)."""
    return (index[..., None] == jnp.arange(n, dtype=index.dtype)).astype(dtype)


def top_k_indices(v: jax.Array, k: int) -> jax.Array:
    """int32 [..., k]: the indices of the k largest entries of v [..., n], largest first, equal
    values by index (as `jax.lax.top_k`), by pairwise comparisons."""
    rank = descending_ranks(v)  # [..., n]
    n = v.shape[-1]
    picked = rank[..., None, :] == jnp.arange(k, dtype=jnp.int32)[:, None]  # [..., k, n]
    return (picked * jnp.arange(n, dtype=jnp.int32)).sum(axis=-1, dtype=jnp.int32)


def select_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [..., n, W] rows `index` [..., k] as [..., k, W], by a one-hot product (exact)."""
    picked = _one_hot(index, x.shape[-2], x.dtype)  # [..., k, n]
    return jnp.einsum("...kn,...nw->...kw", picked, x, precision=_EXACT)


def matching_positions(tokens: jax.Array, r: int) -> jax.Array:
    """One bipartite matching step's `position` (see `bipartite_soft_matching`) of tokens
    [..., M, W], without sorting, gathering or scattering."""
    m = tokens.shape[-2]
    na, nb = (m + 1) // 2, m // 2
    metric = tokens / jnp.linalg.norm(tokens, axis=-1, keepdims=True)
    scores = jnp.einsum(
        "...aw,...bw->...ab", metric[..., 0::2, :], metric[..., 1::2, :], precision=_EXACT
    )  # [..., na, nb] cosine similarity, A -> B.
    node_idx = scores.argmax(axis=-1).astype(jnp.int32)  # best B partner of every A token.
    rank = descending_ranks(scores.max(axis=-1))
    pos_a = jnp.where(rank >= r, rank - r, na - r + node_idx)
    pos_b = jnp.broadcast_to(na - r + jnp.arange(nb, dtype=jnp.int32), pos_a[..., :nb].shape)
    interleaved = jnp.stack([pos_a[..., :nb], pos_b], axis=-1).reshape(*pos_b.shape[:-1], 2 * nb)
    return jnp.concatenate([interleaved, pos_a[..., nb:]], axis=-1)  # [..., M]


def _dense_assignment(x: jax.Array, k: int, r: int, sizes: jax.Array) -> jax.Array:
    """`merge_to_k`'s assignment: the matching on values, by comparisons and one-hot products."""
    stat_dtype = sizes.dtype
    tokens = jax.lax.stop_gradient(x).astype(stat_dtype)
    weights = jax.lax.stop_gradient(sizes)
    m0 = x.shape[-2]
    assignment = jnp.broadcast_to(jnp.arange(m0, dtype=jnp.int32), x.shape[:-1])
    for step in merge_schedule(m0, k, r):
        m = tokens.shape[-2]
        position = matching_positions(tokens, step)
        merge = _one_hot(position, m - step, stat_dtype)  # [..., M, M - r]
        new_weights = jnp.einsum("...m,...mn->...n", weights, merge, precision=_EXACT)
        summed = jnp.einsum(
            "...mn,...mw->...nw", merge, tokens * weights[..., None], precision=_EXACT
        )
        tokens, weights = summed / new_weights[..., None], new_weights
        # assignment <- position[assignment], as a masked sum.
        now = _one_hot(assignment, m, jnp.int32)  # [..., M0, M]
        assignment = (now * position[..., None, :]).sum(axis=-1, dtype=jnp.int32)
    return assignment


def _kernel_assignment(x: jax.Array, k: int, r: int, sizes: jax.Array) -> jax.Array:
    """`_dense_assignment` by TC's Pallas matching kernel (`ops.tc_matching`)."""
    m0, schedule = x.shape[-2], merge_schedule(x.shape[-2], k, r)
    if not schedule:
        return jnp.broadcast_to(jnp.arange(m0, dtype=jnp.int32), x.shape[:-1])
    flat = x.reshape(-1, m0, x.shape[-1])
    flat = tc_matching.matching_assignment(flat, sizes.reshape(-1, m0), schedule)
    return flat.reshape(x.shape[:-1])


def _merge_dense(
    x: jax.Array, k: int, r: int, sizes: jax.Array, kernel: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`merge_to_k` in closed form: the assignment on values, then one product."""
    stat_dtype = sizes.dtype
    assignment = (_kernel_assignment if kernel else _dense_assignment)(x, k, r, sizes)
    assignment = checkpoint_name(assignment, CHOICES)
    members = _one_hot(assignment, k, stat_dtype) * sizes[..., None]  # [..., M0, k]
    counts = members.sum(axis=-2)
    context = jnp.einsum("...mk,...mw->...kw", members, x.astype(stat_dtype), precision=_EXACT)
    return (context / counts[..., None]).astype(x.dtype), counts, assignment
