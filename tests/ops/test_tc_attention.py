"""TC's Pallas attention kernel (`ops.tc_attention`) against the einsum form.

Off TPU the kernel runs through Pallas's interpreter, which evaluates the kernel's own code, so
the float64 tests prove its maths: values and every gradient (queries, keys, values, context
keys and values, the local/global bias) equal the straightforward attention over the frame's
keys with the context keys appended. With libtpu installed, the kernel is also compiled for a
TPU (Mosaic) at ViT-B/16's shapes: no [Q, N + k] array is left in the program.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from xla_env import run_on_devices

from tcclip_jax.ops import platform
from tcclip_jax.ops import tc_attention as kernel
from tcclip_jax.ops.tc_attention import head_group, tc_attention


def reference(q, k, v, k_ctx=None, v_ctx=None, bias=None, probabilities=False):
    """Softmax over [the frame's keys, the context keys broadcast to every frame] + bias (or,
    with `probabilities`, the softmax itself [B, T, heads, Q, N (+ k)])."""
    b, t = q.shape[:2]
    if k_ctx is not None:
        frames = lambda c: jnp.broadcast_to(c[:, None], (b, t, *c.shape[1:]))
        k = jnp.concatenate([k, frames(k_ctx)], axis=-2)
        v = jnp.concatenate([v, frames(v_ctx)], axis=-2)
    logits = jnp.einsum("BTNQH,BTNKH->BTNQK", q, k)
    if bias is not None:
        n = k.shape[-2] - (0 if k_ctx is None else k_ctx.shape[-2])
        is_global = jnp.arange(k.shape[-2]) >= n
        logits = logits + jnp.where(is_global, bias[:, None, 1:], bias[:, None, :1])
    probs = jax.nn.softmax(logits, axis=-1)
    return probs if probabilities else jnp.einsum("BTNQK,BTNKH->BTNQH", probs, v)


def operands(num_q, context: bool, bias: bool, seed=0, b=2, t=3, heads=4, n=7, k=5, dim=8):
    rng = np.random.default_rng(seed)
    draw = lambda *shape: jnp.asarray(rng.standard_normal(shape))
    return (
        draw(b, t, heads, num_q, dim),
        draw(b, t, heads, n, dim),
        draw(b, t, heads, n, dim),
        draw(b, heads, k, dim) if context else None,
        draw(b, heads, k, dim) if context else None,
        draw(heads, 2) if bias else None,
    )


@pytest.mark.parametrize(
    "num_q, context, bias",
    [
        (7, True, True),  # a TC block: every query, context keys, the bias
        (1, True, True),  # the last block's CLS query
        (3, True, False),  # context keys without the bias
        (7, False, False),  # CLIP's / ViFi-CLIP's per-frame attention
    ],
)
def test_kernel_equals_the_einsum_attention_in_float64(num_q, context, bias):
    with jax.enable_x64(True):
        args = operands(num_q, context, bias, seed=num_q)
        weights = jnp.asarray(np.random.default_rng(9).standard_normal(args[0].shape))
        loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)) * weights)
        which = tuple(i for i, a in enumerate(args) if a is not None)
        got, got_grads = jax.value_and_grad(loss(tc_attention), which)(*args)
        want, want_grads = jax.value_and_grad(loss(reference), which)(*args)
        np.testing.assert_allclose(tc_attention(*args), reference(*args), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    names = ("q", "k", "v", "k_ctx", "v_ctx", "bias")
    for i, g, w in zip(which, got_grads, want_grads, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, names[i]
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13, err_msg=names[i])


@pytest.mark.parametrize("context, bias", [(True, True), (True, False), (False, False)])
def test_the_cls_row_comes_from_the_kernel_without_a_gradient(context, bias):
    """`cls_row=True`: the first query's probabilities over the frame's and the context keys
    (TC's seed scores) equal the softmax's first row in float64; the output and every gradient
    are those without it, and the row itself carries no gradient."""
    with jax.enable_x64(True):
        args = operands(6, context, bias, seed=3)
        which = tuple(i for i, a in enumerate(args) if a is not None)
        out, row = tc_attention(*args, cls_row=True)
        assert row.shape == (2, 3, 4, 7 + (5 if context else 0)) and row.dtype == jnp.float64
        np.testing.assert_allclose(row, reference(*args, probabilities=True)[:, :, :, 0],
                                   rtol=1e-13, atol=1e-15)  # fmt: skip
        np.testing.assert_allclose(out, reference(*args), rtol=1e-13, atol=1e-14)
        loss = lambda *a: jnp.sum(jnp.sin(tc_attention(*a, cls_row=True)[0]))
        got = jax.grad(loss, which)(*args)
        want = jax.grad(lambda *a: jnp.sum(jnp.sin(reference(*a))), which)(*args)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)
        row_grads = jax.grad(lambda *a: jnp.sum(tc_attention(*a, cls_row=True)[1]), which)(*args)
        assert all(not np.any(g) for g in row_grads)


@pytest.mark.parametrize("group", [1, 2])
def test_heads_split_into_groups_give_the_same_values_and_gradients(monkeypatch, group):
    """Where a frame's heads do not fit VMEM together, the grid steps over head groups: the
    bias rows, the context sums and the bias gradient still land on the right heads."""
    dims = (7, 7, 5, 4, 8, 8)  # queries, keys, context keys, heads, width, float64 bytes
    for budget in itertools.count(0, 64):  # the least VMEM that fits `group` of the 4 heads
        monkeypatch.setattr(kernel, "VMEM_BUDGET", budget)
        if head_group(*dims) >= group:
            break
    assert head_group(*dims) == group
    with jax.enable_x64(True):
        args = operands(7, True, True)
        loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
        got = jax.value_and_grad(loss(tc_attention), range(6))(*args)
        want = jax.value_and_grad(loss(reference), range(6))(*args)
        row = tc_attention(*args, cls_row=True)[1]
        want_row = reference(*args, probabilities=True)[:, :, :, 0]
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(row, want_row, rtol=1e-13, atol=1e-15)


def test_a_head_that_does_not_fit_vmem_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(kernel, "VMEM_BUDGET", 1024)
    with pytest.raises(
        ValueError, match="does not fit 0 MiB of TPU VMEM; use attention='explicit'"
    ):
        tc_attention(*operands(7, True, True))


def test_head_groups_at_vit_shapes():
    """ViT-B/16 (197 tokens, 96 context tokens, 12 heads of 64, bfloat16): 2 steps of 6 heads
    per frame; its CLS row alone: all 12; ViT-L/14 at 224 px: 4 of 16; at 336 px (577 tokens)
    not even one head fits."""
    assert head_group(197, 197, 96, 12, 64, 2) == 6
    assert head_group(1, 197, 96, 12, 64, 2) == 12
    assert head_group(257, 257, 96, 16, 64, 2) == 4
    assert head_group(577, 577, 96, 16, 64, 2) == 0


def test_bias_moves_weight_between_the_frame_and_the_context_keys():
    """A large global bias sends all weight to the context keys (the frame's are ignored), a
    large local one to the frame's: the kernel reads the right column for each key group."""
    with jax.enable_x64(True):
        q, k, v, k_ctx, v_ctx, _ = operands(5, True, False)
        table = lambda local, context: jnp.tile(jnp.array([local, context]), (4, 1))
        only_context = tc_attention(q, k, v, k_ctx, v_ctx, table(0.0, 80.0))
        only_frame = tc_attention(q, k, v, k_ctx, v_ctx, table(80.0, 0.0))
        frames = lambda c: jnp.broadcast_to(c[:, None], (*q.shape[:2], *c.shape[1:]))
        np.testing.assert_allclose(
            only_context, reference(q, frames(k_ctx), frames(v_ctx)), rtol=1e-10
        )
        np.testing.assert_allclose(only_frame, reference(q, k, v), rtol=1e-10)


def test_context_keys_and_values_come_together():
    q, k, v, k_ctx, _, _ = operands(3, True, False)
    with pytest.raises(ValueError, match="come together"):
        tc_attention(q, k, v, k_ctx, None)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu")
def test_kernel_compiles_for_a_tpu_without_the_probabilities_in_hbm():
    """ViT-B/16's TC block (197 queries, 197 + 96 keys, 12 heads of 64) for a v5e, bfloat16,
    forward (with the CLS row) and backward: Mosaic accepts the kernel, and no [197, 293] (or
    [197, 197], or [197, 96]) array of scores or probabilities exists outside it."""
    from tcclip_jax.bench.ahead_of_time import tpu_devices

    device = tpu_devices("v5e:2x2")[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    spec = lambda *shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    b, t, heads, n, k, dim = 1, 16, 12, 197, 96, 64
    args = (
        spec(b, t, heads, n, dim),
        spec(b, t, heads, n, dim),
        spec(b, t, heads, n, dim),
        spec(b, heads, k, dim),
        spec(b, heads, k, dim),
        spec(heads, 2, dtype=jnp.float32),
    )

    def loss(*a):  # with the CLS row TC's seeds are picked from, as the model runs it
        out, row = tc_attention(*a, cls_row=True)
        return jnp.sum(out.astype(jnp.float32)), row

    step = jax.value_and_grad(loss, range(6), has_aux=True)
    with platform.traced_for("tpu"):
        compiled = jax.jit(step).trace(*args).lower().compile()
    hlo = compiled.as_text()
    assert "f32[1,16,12,1,197]" in hlo and "f32[1,16,12,1,96]" in hlo  # the rows, from Mosaic
    assert hlo.count('custom_call_target="tpu_custom_call"') == 2  # forward, backward
    scores = re.compile(r"\[[\d,]*197,(197|293|96)\]")
    assert not scores.search(hlo), scores.search(hlo).group(0)
    for op in ("sort(", "gather(", "scatter("):
        assert op not in hlo


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import NamedSharding, PartitionSpec as P
from tcclip_jax.runtime.sharding import create_mesh
from tcclip_jax.ops.tc_attention import tc_attention
from test_tc_attention import operands, reference

mesh = create_mesh()
args = operands(5, True, True, b=4)
loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
batch, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
shardings = [batch] * 5 + [whole]
step = jax.jit(jax.value_and_grad(loss(tc_attention), range(6)), in_shardings=shardings)
with jax.set_mesh(mesh):
    hlo = step.lower(*args).compile().as_text()
assert "all-gather" not in hlo and "f64[1,3,4,5,8]" in hlo, "not split by clip"
with jax.set_mesh(mesh):
    value, grads = step(*args)
want, want_grads = jax.value_and_grad(loss(reference), range(6))(*args)
np.testing.assert_allclose(value, want, rtol=1e-13)
for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)
rows = jax.jit(lambda *a: tc_attention(*a, cls_row=True)[1], in_shardings=shardings)
with jax.set_mesh(mesh):
    row = rows(*args)
want_row = reference(*args, probabilities=True)[:, :, :, 0]
np.testing.assert_allclose(row, want_row, rtol=1e-13, atol=1e-15)
assert row.sharding.spec == P("data"), row.sharding.spec
print("ok", grads[0].sharding.spec, grads[5].sharding.spec)
"""


def test_each_device_runs_the_kernel_on_its_own_clips():
    """Batch split over 4 devices: the kernel runs per device on its clip (no all-gather),
    and values, gradients (the bias's summed over all clips) and the CLS row equal the unsplit
    reference."""
    done = run_on_devices(SHARDED, 4, os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.startswith("ok P('data',)"), done.stdout
