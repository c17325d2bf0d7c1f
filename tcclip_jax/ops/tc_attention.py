"""TC's attention as one Pallas TPU kernel: each frame's queries over its own keys and the
clip's context keys, with the local/global bias, without the probabilities ever in HBM.

The explicit form writes every block's [Q, N + k] probabilities to HBM in float32 and reads
them back (2.8 MB per frame per ViT-B/16 block), and concatenates the context keys onto every
frame's. Here a grid step holds one frame and a group of heads in VMEM (per head, 197 queries
against 197 + 96 keys): scores, softmax and products stay on chip, and the context keys are read
once per clip, not copied per frame. On request the forward pass also returns the first
query's probabilities (the CLS row that picks TC's seeds) from the scores it computes anyway:
XLA would otherwise read the keys again for them. The backward pass recomputes the
probabilities from q and k (no residual but the inputs) and accumulates the context keys' and
the bias's gradients over the frames of a clip in VMEM.

The local/global bias [heads, 2] adds one constant per head to the scores of the frame's keys
and another to those of the context keys; its gradient is the sum of the score gradients over
each key group. Off TPU the same kernel runs through Pallas's interpreter (exact in float64:
the tests compare it with the einsum form).
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
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_LANES = 128
# VMEM a grid step may fill: TPU v4's 16 MiB of scoped VMEM (the least of the chips), less
# headroom for Mosaic's own buffers.
VMEM_BUDGET = 12 << 20


def _stat(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _bias_rows(heads: int) -> int:
    """Rows of the bias gradient's tile: one per head, rounded up to TPU's 8 sublanes."""
    return -(-heads // 8) * 8


def _split(refs, has_ctx: bool, has_bias: bool):
    """(q, [k...], [v...], bias, the rest) refs from the flat argument list."""
    q, k, v, *rest = refs
    keys, values = [k], [v]
    if has_ctx:
        keys.append(rest.pop(0))
        values.append(rest.pop(0))
    bias = rest.pop(0) if has_bias else None
    return q, keys, values, bias, rest


def _frame(ref, h):
    """Head h's rows [L, H] of a frame block [1, 1, heads, L, H] or a clip block [1, heads, L,
    H]."""
    return ref[0, 0, h] if len(ref.shape) == 5 else ref[0, h]


def _probabilities(q, keys, bias_ref, h, stat):
    # h: the head's index in the whole table (its group's first head + its place in the group)
    """Softmax of q [Q, H] over the concatenated key groups (plus the group's bias), in `stat`
    precision, returned per group [Q, K_g]."""
    scores = []
    for g, key in enumerate(keys):
        s = _dot(q, key, _NT, stat)
        scores.append(s if bias_ref is None else s + bias_ref[h, g].astype(stat))
    m = functools.reduce(jnp.maximum, [s.max(axis=-1, keepdims=True) for s in scores])
    e = [jnp.exp(s - m) for s in scores]
    inv = 1 / functools.reduce(jnp.add, [x.sum(axis=-1, keepdims=True) for x in e])
    return [x * inv for x in e]


def _precision(dtype) -> jax.lax.Precision | None:
    """Full float32 products for float32 operands unless the model asked for JAX's fast default
    (`ModelConfig.matmul_precision`, through `jax.default_matmul_precision`), as XLA's products
    around the kernel; Mosaic has no middle ("high") setting, so that one is full too."""
    fast = jax.config.jax_default_matmul_precision in (None, "default", "bfloat16", "fastest")
    return None if jnp.dtype(dtype).itemsize < 4 or fast else jax.lax.Precision.HIGHEST


def _dot(a, b, dims, stat):
    return jax.lax.dot_general(
        a, b, dims, precision=_precision(a.dtype), preferred_element_type=stat
    )


def _sum_products(pairs, dtype, stat, dims=None):
    """sum_g a_g @ b_g (a_g cast to `dtype`, products accumulated in `stat`)."""
    dims = dims or (((1,), (0,)), ((), ()))
    return functools.reduce(jnp.add, [_dot(a.astype(dtype), b, dims, stat) for a, b in pairs])


def _forward_kernel(*refs, has_ctx: bool, has_bias: bool):
    q_ref, k_refs, v_refs, bias_ref, (o_ref, *row_refs) = _split(refs, has_ctx, has_bias)
    dtype, stat = q_ref.dtype, _stat(q_ref.dtype)
    first = pl.program_id(1) * q_ref.shape[2]  # the head group's first head
    for h in range(q_ref.shape[2]):  # the group's heads, unrolled
        q = _frame(q_ref, h)
        probs = _probabilities(q, [_frame(r, h) for r in k_refs], bias_ref, first + h, stat)
        values = [_frame(r, h) for r in v_refs]
        o_ref[0, 0, h] = _sum_products(zip(probs, values, strict=True), dtype, stat).astype(
            o_ref.dtype
        )
        if row_refs:  # the first query's row, per key group
            for row_ref, p in zip(row_refs, probs, strict=True):
                row_ref[0, 0, h] = p[:1].astype(row_ref.dtype)


def _backward_kernel(*refs, has_ctx: bool, has_bias: bool):
    q_ref, k_refs, v_refs, bias_ref, rest = _split(refs, has_ctx, has_bias)
    do_ref, dq_ref, dk_ref, dv_ref, *sums = rest
    dtype, stat = q_ref.dtype, _stat(q_ref.dtype)
    first = pl.program_id(1) * q_ref.shape[2]  # the head group's first head

    @pl.when(pl.program_id(2) == 0)
    def _():  # the sums over a clip's frames start from zero
        for ref in sums:
            ref[...] = jnp.zeros(ref.shape, ref.dtype)

    for h in range(q_ref.shape[2]):  # the group's heads, unrolled
        q, do = _frame(q_ref, h), _frame(do_ref, h)
        keys = [_frame(r, h) for r in k_refs]
        values = [_frame(r, h) for r in v_refs]
        probs = _probabilities(q, keys, bias_ref, first + h, stat)
        dprobs = [_dot(do, v, _NT, stat) for v in values]
        delta = functools.reduce(
            jnp.add,
            [(p * dp).sum(axis=-1, keepdims=True) for p, dp in zip(probs, dprobs, strict=True)],
        )
        dscores = [p * (dp - delta) for p, dp in zip(probs, dprobs, strict=True)]
        dq_ref[0, 0, h] = _sum_products(zip(dscores, keys, strict=True), dtype, stat).astype(
            dq_ref.dtype
        )
        dk = [_sum_products([(ds, q)], dtype, stat, _TN) for ds in dscores]
        dv = [_sum_products([(p, do)], dtype, stat, _TN) for p in probs]
        dk_ref[0, 0, h] = dk[0].astype(dk_ref.dtype)
        dv_ref[0, 0, h] = dv[0].astype(dv_ref.dtype)
        acc = list(sums)
        if has_ctx:  # the context keys' and values' gradients, summed over the frames
            dkc_ref, dvc_ref, *acc = acc
            dkc_ref[0, h] += dk[1].astype(dkc_ref.dtype)
            dvc_ref[0, h] += dv[1].astype(dvc_ref.dtype)
        if has_bias:  # row h, lane g: the sum of key group g's score gradients
            (dbias_ref,) = acc
            shape = dbias_ref.shape[2:]
            row = jax.lax.broadcasted_iota(jnp.int32, shape, 0)
            lane = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
            tile = jnp.zeros(shape, stat)
            for g, ds in enumerate(dscores):
                tile = jnp.where((row == h) & (lane == g), ds.sum(), tile)
            dbias_ref[0, 0] += tile.astype(dbias_ref.dtype)


def _interpret() -> bool:
    return platform.current() != "tpu"


def head_group(num_q: int, num_k: int, num_ctx: int, heads: int, dim: int, itemsize: int) -> int:
    """Heads per grid step: the most (a divisor of `heads`) whose blocks fit `VMEM_BUDGET`, or
    0 if not even one head's do (the einsum form is then the only one)."""
    rows = lambda n: -(-n // 16) * 16  # sublanes, packed 16-bit rows rounded up
    lanes = max(dim, _LANES)
    # Per head, the backward pass (the larger): q, k, v, do in and dq, dk, dv out, double
    # buffered; the context keys and values in and their float32 sums out. One head at a time:
    # ~6 float32 [Q, K] score arrays.
    frame = 2 * (rows(num_q) * 3 + rows(num_k) * 4) * lanes * itemsize
    clip = 2 * rows(num_ctx) * lanes * (2 * itemsize + 2 * 4) if num_ctx else 0
    scores = 6 * rows(num_q) * -(-(num_k + num_ctx) // _LANES) * _LANES * 4
    fits = [
        g
        for g in range(1, heads + 1)
        if heads % g == 0 and g * (frame + clip) + scores <= VMEM_BUDGET
    ]
    return max(fits, default=0)


def _group(q, k, k_ctx) -> int:
    b, t, heads, num_q, dim = q.shape
    num_ctx = 0 if k_ctx is None else k_ctx.shape[-2]
    group = head_group(num_q, k.shape[-2], num_ctx, heads, dim, q.dtype.itemsize)
    if not group:
        raise ValueError(
            f"TC's Pallas attention: one head of {num_q} queries x {k.shape[-2]} + {num_ctx} keys "
            f"does not fit {VMEM_BUDGET >> 20} MiB of TPU VMEM; use attention='explicit'"
        )
    return group


def _specs(q, k, k_ctx, has_bias: bool):
    """Blocks of one frame and head group (q, k, v, do, the per-frame gradients), of one clip
    and head group (the context keys and values and their gradients), and the whole bias table
    in SMEM. The grid is (clips, head groups, frames): a clip's frames in order, innermost."""
    (_, _, heads, num_q, dim), num_k = q.shape, k.shape[-2]
    g = _group(q, k, k_ctx)
    frame = lambda n: pl.BlockSpec((1, 1, g, n, dim), lambda b, h, t: (b, t, h, 0, 0))
    clip = lambda n: pl.BlockSpec((1, g, n, dim), lambda b, h, t: (b, h, 0, 0))
    ins = [frame(num_q), frame(num_k), frame(num_k)]
    if k_ctx is not None:
        ins += [clip(k_ctx.shape[-2])] * 2
    if has_bias:
        ins.append(pl.BlockSpec(memory_space=pltpu.SMEM))
    return ins, frame, clip, (q.shape[0], heads // g, q.shape[1])


def _cost(q, k, k_ctx, passes: int, arrays) -> pl.CostEstimate:
    """Products of `passes` [Q, K, H] matmuls per frame and head; each array read or written
    once."""
    b, t, heads, num_q, dim = q.shape
    num_k = k.shape[-2] + (0 if k_ctx is None else k_ctx.shape[-2])
    pairs = b * t * heads * num_q * num_k
    return pl.CostEstimate(
        flops=2 * passes * pairs * dim,
        transcendentals=pairs,
        bytes_accessed=sum(a.size * a.dtype.itemsize for a in arrays),
    )


def _params(*semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics)


def _forward_call(has_ctx: bool, has_bias: bool, cls_row: bool, *args):
    """The output [B, T, heads, Q, H]; with `cls_row`, also the first query's probabilities
    over each key group ([B, T, heads, 1, K_g] in >= float32)."""
    q, k = args[:2]
    k_ctx = args[3] if has_ctx else None
    ins, frame, _, grid = _specs(q, k, k_ctx, has_bias)
    outs, out_specs = [jax.ShapeDtypeStruct(q.shape, q.dtype)], [frame(q.shape[-2])]
    if cls_row:
        stat, g = _stat(q.dtype), ins[0].block_shape[2]
        for n in [k.shape[-2]] + ([k_ctx.shape[-2]] if has_ctx else []):
            outs.append(jax.ShapeDtypeStruct((*q.shape[:3], 1, n), stat))
            out_specs.append(pl.BlockSpec((1, 1, g, 1, n), lambda b, h, t: (b, t, h, 0, 0)))
    return pl.pallas_call(
        functools.partial(_forward_kernel, has_ctx=has_ctx, has_bias=has_bias),
        out_shape=outs,
        grid=grid,
        in_specs=ins,
        out_specs=out_specs,
        compiler_params=_params("parallel", "parallel", "arbitrary"),
        cost_estimate=_cost(q, k, k_ctx, 2, [*args, *outs]),
        interpret=_interpret(),
        name="tc_attention_fwd",
    )(*args)


def _backward_call(has_ctx: bool, has_bias: bool, *args):
    q, k = args[:2]
    k_ctx = args[3] if has_ctx else None
    ins, frame, clip, grid = _specs(q, k, k_ctx, has_bias)
    stat = _stat(q.dtype)
    outs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args[:3]]
    out_specs = [frame(q.shape[-2]), frame(k.shape[-2]), frame(k.shape[-2])]
    if has_ctx:
        outs += [jax.ShapeDtypeStruct(k_ctx.shape, stat)] * 2
        out_specs += [clip(k_ctx.shape[-2])] * 2
    if has_bias:
        # row h of a clip's and head group's tile, lane g: head h's sum for key group g
        tile = (_bias_rows(ins[0].block_shape[2]), _LANES)
        outs.append(jax.ShapeDtypeStruct((grid[0], grid[1], *tile), stat))
        out_specs.append(pl.BlockSpec((1, 1, *tile), lambda b, h, t: (b, h, 0, 0)))
    return pl.pallas_call(
        functools.partial(_backward_kernel, has_ctx=has_ctx, has_bias=has_bias),
        out_shape=outs,
        grid=grid,
        in_specs=[*ins, frame(q.shape[-2])],
        out_specs=out_specs,
        compiler_params=_params("parallel", "parallel", "arbitrary"),
        cost_estimate=_cost(q, k, k_ctx, 5, [*args, *outs]),
        interpret=_interpret(),
        name="tc_attention_bwd",
    )(*args)


def _forward(q, k, v, k_ctx, v_ctx, bias, cls_row):
    has_ctx, has_bias = k_ctx is not None, bias is not None
    args = [a for a in (q, k, v, k_ctx, v_ctx, bias) if a is not None]
    out, *rows = _forward_call(has_ctx, has_bias, cls_row, *args)
    if not cls_row:
        return out
    return out, jnp.concatenate(rows, axis=-1)[:, :, :, 0]  # [B, T, heads, N (+ k)]


def _backward(q, k, v, k_ctx, v_ctx, bias, do):
    has_ctx, has_bias = k_ctx is not None, bias is not None
    args = [a for a in (q, k, v, k_ctx, v_ctx, bias) if a is not None] + [do]
    grads = _backward_call(has_ctx, has_bias, *args)
    dq, dk, dv, *rest = grads
    dk_ctx = dv_ctx = dbias = None
    if has_ctx:
        dk_ctx, dv_ctx, *rest = rest
        dk_ctx, dv_ctx = dk_ctx.astype(k_ctx.dtype), dv_ctx.astype(v_ctx.dtype)
    if has_bias:
        groups = 2 if has_ctx else 1
        heads = q.shape[2]
        group = heads // rest[0].shape[1]
        dbias = rest[0][:, :, :group, :groups].sum(axis=0).reshape(heads, groups)
        dbias = jnp.pad(dbias, ((0, 0), (0, bias.shape[1] - groups))).astype(bias.dtype)
    return dq, dk, dv, dk_ctx, dv_ctx, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attention(q, k, v, k_ctx, v_ctx, bias, cls_row):
    return _forward(q, k, v, k_ctx, v_ctx, bias, cls_row)


def _attention_fwd(q, k, v, k_ctx, v_ctx, bias, cls_row):
    return _forward(q, k, v, k_ctx, v_ctx, bias, cls_row), (q, k, v, k_ctx, v_ctx, bias)


def _attention_bwd(cls_row, residuals, cotangent):
    # The CLS row carries no gradient (`tc_attention` stops it): only the output's counts.
    return _backward(*residuals, cotangent[0] if cls_row else cotangent)


_attention.defvjp(_attention_fwd, _attention_bwd)


def tc_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    k_ctx: jax.Array | None = None,
    v_ctx: jax.Array | None = None,
    bias: jax.Array | None = None,
    cls_row: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Softmax attention of pre-scaled queries over each frame's keys and its clip's context keys.

    q: [B, T, heads, Q, H]; k, v: [B, T, heads, N, H]; k_ctx, v_ctx: [B, heads, k, H] (shared by
    the clip's frames) or None; bias: [heads, 2] (added to the scores of the frame's keys,
    column 0, and of the context keys, column 1) or None. Returns [B, T, heads, Q, H]; with
    `cls_row`, also the first query's probabilities [B, T, heads, N (+ k)] in >= float32, as
    a value without gradient (TC picks its seeds from them). Differentiable in every argument.
    Traced under a mesh (`jax.set_mesh`, `jax.sharding.use_abstract_mesh`), the batch is split
    over all its axes and each device runs the kernel on its clips; without one, a program for
    several devices fails to compile (XLA does not partition Mosaic kernels).
    """
    if (k_ctx is None) != (v_ctx is None):
        raise ValueError("k_ctx and v_ctx come together")
    # XLA cannot split a Mosaic kernel: each device runs it on its own clips.
    run = lambda *args: _attention(*args, cls_row)
    out = sharding.per_device(run, q, k, v, k_ctx, v_ctx, bias, whole=(5,))
    return (out[0], jax.lax.stop_gradient(out[1])) if cls_row else out
