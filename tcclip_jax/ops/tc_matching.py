"""TC's bipartite matching as one Pallas TPU kernel: a clip's seed tokens in, the context token
each seed ends up in out, every matching step in VMEM.

The dense summarisation (`ops.token_merging`, form "dense") makes each of the ~9 matching steps
an XLA program of its own: the merged tokens, their normalised copies, the even and odd halves
and the [M, M - r] merge matrices go through HBM at every step, ~0.1 GB per ViT-B/16 block and
clip, for an output of 928 integers. Here one grid step holds a clip's tokens (928 x 768 in
float32: 2.9 MB) and runs the whole schedule on chip, reading the tokens once.

Each step keeps the two halves apart: A (even places of the current list) and B (odd places).
The scores are A's and B's normalised tokens multiplied; every A token's best B partner and its
place among the A tokens in a stable descending order of their best scores come from
comparisons, as in `token_merging.matching_positions`. The next step's halves are then one-hot
products of this step's halves (a new token's place is even or odd), so no strided or indexed
read is needed, and each original token's place is carried along as a lane vector. Column and
row forms of a vector are exchanged through a masked sum over the diagonal (exact). Off TPU the
same kernel runs through Pallas's interpreter (exact in float64: the tests compare it with the
dense and gather forms).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tcclip_jax.ops import platform
from tcclip_jax.runtime import sharding

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_NN = (((1,), (0,)), ((), ()))  # a @ b
# VMEM the kernel may ask for: above TPU v4's 16 MiB default scoped limit, within every chip's
# VMEM (32 MiB on v4).
VMEM_LIMIT = 32 << 20


def vmem_bytes(num_tokens: int, width: int, itemsize: int) -> int:
    """A bound on the kernel's VMEM for one clip of `num_tokens` x `width` tokens: its inputs
    double buffered, 4 float32 copies of the tokens and 4 [M / 2, M] 32-bit masks of the first
    (largest) step."""
    rows = -(-num_tokens // 16) * 16
    lanes = -(-width // 128) * 128
    half = -(-num_tokens // 2 // 16) * 16
    return 2 * rows * lanes * itemsize + 4 * rows * lanes * 4 + 4 * half * rows * 4


def fits(num_tokens: int, width: int, itemsize: int) -> bool:
    return vmem_bytes(num_tokens, width, itemsize) <= VMEM_LIMIT


def _iota(shape, axis):
    return jax.lax.broadcasted_iota(jnp.int32, shape, axis)


def _row(column: jax.Array) -> jax.Array:
    """[n, 1] -> [1, n], exactly (the diagonal of a broadcast, summed over sublanes)."""
    n = column.shape[0]
    eye = _iota((n, n), 0) == _iota((n, n), 1)
    return jnp.where(eye, column, jnp.zeros((), column.dtype)).sum(axis=0, keepdims=True)


def _column(row: jax.Array) -> jax.Array:
    """[1, n] -> [n, 1], exactly."""
    n = row.shape[1]
    eye = _iota((n, n), 0) == _iota((n, n), 1)
    return jnp.where(eye, row, jnp.zeros((), row.dtype)).sum(axis=1, keepdims=True)


def _precision(dtype) -> jax.lax.Precision | None:
    # One-hot products and the scores in full float32: the choices must not see rounding.
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else None


def _dot(a, b, dims):
    return jax.lax.dot_general(
        a, b, dims, precision=_precision(a.dtype), preferred_element_type=a.dtype
    )


def _normalized(t: jax.Array) -> jax.Array:
    return t / jnp.sqrt((t * t).sum(axis=-1, keepdims=True))


def _half(halves, into, n: int, odd: int):
    """The next step's A (`odd` 0) or B (1) half of n tokens: (token means [n, W], sizes [1, n])
    from this step's halves ((means, sizes) of A and B) and their tokens' output places."""
    sums, weights = 0, 0
    slot = 2 * _iota((n, 1), 0) + odd
    for (means, sizes), places in zip(halves, into, strict=True):
        onto = (slot == places).astype(sizes.dtype)  # [n, na or nb]
        weights = weights + (onto * sizes).sum(axis=1, keepdims=True)
        sums = sums + _dot(onto, means * _column(sizes), _NN)
    return sums / weights, _row(weights)


def _kernel(xa_ref, xb_ref, wa_ref, wb_ref, out_ref, *, schedule: tuple[int, ...]):
    stat = wa_ref.dtype
    ta, tb = xa_ref[0].astype(stat), xb_ref[0].astype(stat)  # [na, W], [nb, W] token means
    wa, wb = wa_ref[0], wb_ref[0]  # [1, na], [1, nb] how many seeds each stands for
    num_tokens = ta.shape[0] + tb.shape[0]
    place = _iota((1, num_tokens), 1)  # every original token's place in the current list
    for i, r in enumerate(schedule):
        na, nb = ta.shape[0], tb.shape[0]
        scores = _dot(_normalized(ta), _normalized(tb), _NT)  # [na, nb] cosine, A -> B
        best = scores.max(axis=1, keepdims=True)  # [na, 1]
        # The first B token reaching the best score (argmax's tie rule).
        partner = jnp.where(scores == best, _iota((na, nb), 1), nb).min(axis=1, keepdims=True)
        # Stable descending rank of the best scores: j comes before i if higher, or equal
        # and earlier.
        best_row = _row(best)
        earlier = _iota((na, na), 1) < _iota((na, na), 0)
        before = (best_row > best) | ((best_row == best) & earlier)
        rank = before.astype(jnp.int32).sum(axis=1, keepdims=True)  # [na, 1]
        pos_a = jnp.where(rank >= r, rank - r, na - r + partner)  # [na, 1] place in the output
        pos_b = na - r + _iota((nb, 1), 0)  # [nb, 1]
        # Where every original token is now: its A or B token's output place.
        from_a = 2 * _iota((na, num_tokens), 0) == place
        from_b = 2 * _iota((nb, num_tokens), 0) + 1 == place
        zero = jnp.zeros((), jnp.int32)
        place = jnp.where(from_a, pos_a, zero).sum(axis=0, keepdims=True) + jnp.where(
            from_b, pos_b, zero
        ).sum(axis=0, keepdims=True)
        if i == len(schedule) - 1:
            break
        # The next step's halves: output places 2e (A) and 2o + 1 (B), as one-hot products.
        size = na + nb - r
        into = (_row(pos_a), na - r + _iota((1, nb), 1))  # [1, na], [1, nb] output places
        halves = ((ta, wa), (tb, wb))
        (ta, wa), (tb, wb) = (
            _half(halves, into, (size + 1) // 2, 0),
            _half(halves, into, size // 2, 1),
        )
    out_ref[0] = place


def _call(xa, xb, wa, wb, schedule: tuple[int, ...]) -> jax.Array:
    b, na, width = xa.shape
    nb = xb.shape[1]
    m0 = na + nb
    spec = lambda *shape: pl.BlockSpec((1, *shape), lambda i: (i, 0, 0))
    flops, m = 0, m0
    for i, r in enumerate(schedule):
        flops += 2 * ((m + 1) // 2) * (m // 2) * width  # scores
        if i < len(schedule) - 1:
            flops += 2 * (m - r) * m * width  # the next step's halves
        m -= r
    out_shape = jax.ShapeDtypeStruct((b, 1, m0), jnp.int32)
    return pl.pallas_call(
        functools.partial(_kernel, schedule=schedule),
        out_shape=out_shape,
        grid=(b,),
        in_specs=[spec(na, width), spec(nb, width), spec(1, na), spec(1, nb)],
        out_specs=spec(1, m0),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",), vmem_limit_bytes=VMEM_LIMIT
        ),
        cost_estimate=pl.CostEstimate(
            flops=b * flops,
            transcendentals=0,
            bytes_accessed=sum(a.size * a.dtype.itemsize for a in (xa, xb, wa, wb, out_shape)),
        ),
        interpret=platform.current() != "tpu",
        name="tc_matching",
    )(xa, xb, wa, wb)[:, 0]


def matching_assignment(x: jax.Array, sizes: jax.Array, schedule: tuple[int, ...]) -> jax.Array:
    """int32 [B, M0]: the place among the final tokens of each of x's [B, M0, W] tokens (of
    `sizes` [B, M0] originals each) after the bipartite matching steps of `schedule` (merges
    per step), as `token_merging.merge_to_k`'s assignment. No gradient (the choices have none).

    Traced under a mesh, the batch is split over all its axes (XLA does not partition a Mosaic
    kernel)."""
    stat = jnp.promote_types(x.dtype, jnp.float32)
    x = jax.lax.stop_gradient(x)
    sizes = jax.lax.stop_gradient(sizes).astype(stat)
    args = (x[:, 0::2], x[:, 1::2], sizes[:, None, 0::2], sizes[:, None, 1::2])
    return sharding.per_device(functools.partial(_call, schedule=schedule), *args)
