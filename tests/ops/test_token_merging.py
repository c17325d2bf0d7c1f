"""The token merging op against a plain NumPy loop written from the spec's words.

The reference below re-states bipartite soft matching one token at a time: A = even positions,
B = odd positions, cosine similarity of X with itself, best B per A, A sorted by that score
(descending), the first r merge into their best B with size-weighted averaging, output = the
unmerged A tokens in sorted order, then all B tokens in their original order. Inputs are
Gaussian in float64 with at least two features, so score ties (where orderings could legitimately
differ) do not occur; with one feature every cosine is +-1.

Every form of the op (`MERGE_FORMS`) is held to the reference, and the dense form to the gather
form on tied inputs (tokens drawn from a few vectors: equal scores everywhere), where the order
of equal scores decides.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcclip_jax.ops.token_merging import (
    MERGE_FORMS,
    bipartite_soft_matching,
    descending_ranks,
    merge_schedule,
    merge_to_k,
    select_rows,
    top_k_indices,
)

# Every new shape is a new compilation: hypothesis varies shapes in the single-step test and
# values (seeds) in the multi-step tests, whose shapes come from a short list of cases.
SETTINGS = settings(max_examples=10, deadline=None)
step_jit = jax.jit(bipartite_soft_matching, static_argnums=2)
merge_jit = jax.jit(merge_to_k, static_argnums=(1, 2), static_argnames="form")


def reference_step(x: np.ndarray, sizes: np.ndarray, r: int):
    """One matching step on x [M, W], sizes [M] -> (x [M - r, W], sizes, position [M])."""
    m = len(x)
    a = list(range(0, m, 2))
    b = list(range(1, m, 2))
    best, score = {}, {}
    for i in a:
        sims = []
        for j in b:
            sims.append(x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))
        best[i] = b[int(np.argmax(sims))]
        score[i] = max(sims)
    ordered = sorted(a, key=lambda i: -score[i])
    merged, unmerged = ordered[:r], ordered[r:]
    total = {j: x[j] * sizes[j] for j in b}
    weight = {j: sizes[j] for j in b}
    for i in merged:
        total[best[i]] = total[best[i]] + x[i] * sizes[i]
        weight[best[i]] = weight[best[i]] + sizes[i]
    out = [x[i] for i in unmerged] + [total[j] / weight[j] for j in b]
    out_sizes = [sizes[i] for i in unmerged] + [weight[j] for j in b]
    position = np.zeros(m, np.int64)
    for rank, i in enumerate(unmerged):
        position[i] = rank
    for rank, j in enumerate(b):
        position[j] = len(unmerged) + rank
    for i in merged:
        position[i] = position[best[i]]
    return np.stack(out), np.asarray(out_sizes), position


def reference_schedule(m0: int, k: int, r: int) -> list[int]:
    steps, m = [], m0
    for _ in range(int((m0 - k) / r)):
        steps.append(min(r, m // 2))
        m -= steps[-1]
    while m > k:
        steps.append(min(m - k, m // 2))
        m -= steps[-1]
    return steps


def reference_merge_to_k(x: np.ndarray, k: int, r: int):
    """x [M0, W] -> (tokens [k, W], sizes [k], assignment [M0]) by repeated reference steps."""
    sizes = np.ones(len(x))
    assignment = np.arange(len(x))
    for step in reference_schedule(len(x), k, r):
        x, sizes, position = reference_step(x, sizes, step)
        assignment = position[assignment]
    return x, sizes, assignment


def gaussian(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


@st.composite
def step_case(draw):
    """(batch shape, M, W, r, seed): odd and even M, r from 0 to M // 2."""
    batch = draw(st.sampled_from([(), (2, 3)]))
    m = draw(st.integers(2, 15))
    r = draw(st.integers(0, m // 2))
    return batch, m, draw(st.integers(2, 4)), r, draw(st.integers(0, 2**31))


@SETTINGS
@given(step_case())
def test_step_matches_reference(case):
    batch, m, w, r, seed = case
    x = gaussian(seed, (*batch, m, w))
    sizes = np.random.default_rng(seed + 1).integers(1, 5, (*batch, m)).astype(np.float64)
    with jax.enable_x64(True):
        out, out_sizes, position = step_jit(jnp.asarray(x), jnp.asarray(sizes), r)
        out, out_sizes, position = map(np.asarray, (out, out_sizes, position))
    assert out.shape == (*batch, m - r, w)
    assert out_sizes.shape == (*batch, m - r)
    assert position.shape == (*batch, m)
    flat = zip(x.reshape(-1, m, w), sizes.reshape(-1, m), strict=True)
    for n, (xi, si) in enumerate(flat):
        want_x, want_sizes, want_position = reference_step(xi, si, r)
        np.testing.assert_allclose(out.reshape(-1, m - r, w)[n], want_x, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(out_sizes.reshape(-1, m - r)[n], want_sizes)
        np.testing.assert_array_equal(position.reshape(-1, m)[n], want_position)


MERGE_CASES = {  # name: (batch shape, M0, W, k, r)
    "odd M, r above M // 2": ((), 29, 3, 2, 20),
    "batched, several full steps": ((2, 3), 40, 4, 7, 6),
    "k = M0": ((2,), 9, 2, 9, 3),
    "two features": ((), 12, 2, 5, 4),
}


@pytest.mark.parametrize("form", MERGE_FORMS)
@pytest.mark.parametrize("case", MERGE_CASES.values(), ids=MERGE_CASES.keys())
@SETTINGS
@given(seed=st.integers(0, 2**31))
def test_merge_to_k_matches_reference(case, form, seed):
    batch, m0, w, k, r = case
    x = gaussian(seed, (*batch, m0, w))
    with jax.enable_x64(True):
        out, sizes, assignment = map(np.asarray, merge_jit(jnp.asarray(x), k, r, form=form))
    assert out.shape == (*batch, k, w)
    assert sizes.shape == (*batch, k)
    assert assignment.shape == (*batch, m0)
    flat_x = x.reshape(-1, m0, w)
    for n in range(len(flat_x)):
        want_x, want_sizes, want_assignment = reference_merge_to_k(flat_x[n], k, r)
        np.testing.assert_allclose(out.reshape(-1, k, w)[n], want_x, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(sizes.reshape(-1, k)[n], want_sizes)
        np.testing.assert_array_equal(assignment.reshape(-1, m0)[n], want_assignment)

    # Every output token is the plain mean of the input tokens assigned to it.
    one_hot = assignment[..., None] == np.arange(k)  # [..., M0, k]
    counts = one_hot.sum(axis=-2)
    assert (counts >= 1).all(), "an output token holds no input token"
    np.testing.assert_array_equal(sizes, counts)
    means = np.einsum("...mk,...mw->...kw", one_hot, x) / counts[..., None]
    np.testing.assert_allclose(out, means, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", MERGE_FORMS)
def test_float32_matches_reference(form):
    x = gaussian(0, (2, 24, 16))
    out, sizes, assignment = merge_jit(jnp.asarray(x, jnp.float32), 6, 9, form=form)
    assert out.dtype == jnp.float32
    for n in range(2):
        want_x, want_sizes, want_assignment = reference_merge_to_k(x[n], 6, 9)
        np.testing.assert_allclose(np.asarray(out[n]), want_x, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(sizes[n]), want_sizes)
        np.testing.assert_array_equal(np.asarray(assignment[n]), want_assignment)


@pytest.mark.parametrize(
    "m0, k, r, want",
    [
        (928, 96, 100, (100,) * 8 + (32,)),  # T = 16, n_s = 58: the released model.
        (464, 96, 100, (100, 100, 100, 68)),  # T = 8.
        (10, 1, 100, (5, 2, 1, 1)),  # r above M // 2: halve until k.
        (7, 7, 3, ()),
        (20, 4, 5, (5, 5, 5, 1)),
    ],
)
def test_schedule_examples(m0, k, r, want):
    assert merge_schedule(m0, k, r) == want


@given(st.integers(1, 2000), st.integers(1, 2000), st.integers(1, 300))
def test_schedule_matches_reference(m0, k, r):
    k = min(k, m0)
    steps = merge_schedule(m0, k, r)
    assert list(steps) == reference_schedule(m0, k, r)
    assert sum(steps) == m0 - k
    m = m0
    for step in steps:
        assert 1 <= step <= m // 2
        m -= step


@pytest.mark.parametrize(
    "args, match",
    [
        ((10, 11, 2), "cannot merge 10 tokens up to 11"),
        ((10, 0, 2), "target must be >= 1"),
        ((10, 5, 0), "r must be >= 1"),
    ],
)
def test_schedule_errors(args, match):
    with pytest.raises(ValueError, match=match):
        merge_schedule(*args)


@pytest.mark.parametrize("m, r", [(7, 4), (8, 5), (1, 1), (8, -1)])
def test_impossible_r_raises(m, r):
    with pytest.raises(ValueError, match=f"r={r} merges impossible on {m} tokens"):
        bipartite_soft_matching(jnp.ones((m, 3)), jnp.ones((m,)), r)


def test_merge_to_k_rejects_k_above_input():
    with pytest.raises(ValueError, match="cannot merge 5 tokens up to 6"):
        merge_to_k(jnp.ones((5, 3)), 6, 2)


def test_vmap_matches_batched():
    x = jnp.asarray(gaussian(1, (4, 16, 8)), jnp.float32)
    batched = merge_jit(x, 3, 5)
    vmapped = jax.jit(jax.vmap(lambda xi: merge_to_k(xi, 3, 5)))(x)
    for want, got in zip(batched, vmapped, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(vmapped[2]), np.asarray(batched[2]))


def test_gradient_is_the_merge_weights_and_matches_finite_differences():
    """With the matching fixed, outputs are linear in x: d out_j / d x_i = [i -> j] / size_j."""

    def loss(xx, w):
        out, sizes, assignment = merge_to_k(xx, 6, 4)
        return jnp.sum(out * w), (sizes, assignment)

    loss_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    with jax.enable_x64(True):
        x = jnp.asarray(gaussian(2, (3, 20, 5)))
        w = jnp.asarray(gaussian(3, (3, 6, 5)))
        (_, (sizes, assignment)), grad = loss_and_grad(x, w)
        grad, sizes, assignment = map(np.asarray, (grad, sizes, assignment))
        batch = np.arange(3)[:, None]
        want = np.asarray(w)[batch, assignment] / sizes[batch, assignment][..., None]
        np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-12)

        eps = 1e-6
        for seed in range(3):
            direction = jnp.asarray(gaussian(10 + seed, x.shape))
            values = []
            for sign in (1, -1):
                (value, (_, moved)), _ = loss_and_grad(x + sign * eps * direction, w)
                # The matching must not change inside the finite-difference interval.
                np.testing.assert_array_equal(np.asarray(moved), assignment)
                values.append(float(value))
            numeric = (values[0] - values[1]) / (2 * eps)
            np.testing.assert_allclose(numeric, np.sum(grad * direction), rtol=1e-7)


# The dense form against the gather form ------------------------------------------------------

TIE_VECTORS = np.array([[1.0, 2.0, 0.5], [3.0, -1.0, 1.0], [-2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def tied_tokens(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Tokens [..., M, 3] drawn from four vectors: every score occurs many times."""
    return TIE_VECTORS[np.random.default_rng(seed).integers(0, 4, shape)]


@functools.partial(jax.jit, static_argnums=(1, 2), static_argnames="form")
def merged_and_gradient(x, k, r, sizes, w, form):
    """(merge_to_k's outputs, d sum(tokens * w) / dx)."""

    def loss(xx):
        out = merge_to_k(xx, k, r, sizes, form=form)
        return jnp.sum(out[0] * w), out

    (_, out), grad = jax.value_and_grad(loss, has_aux=True)(x)
    return out, grad


@pytest.mark.parametrize("tokens", ["gaussian", "tied"])
@pytest.mark.parametrize("m0, k, r", [(33, 4, 7), (58 * 4, 24, 25)])
def test_dense_equals_gather_values_assignments_and_gradients(tokens, m0, k, r):
    """float64: the same context tokens, sizes and assignment, and the same gradient, with
    sizes given and not."""
    with jax.enable_x64(True):
        x = gaussian(m0, (3, m0, 3)) if tokens == "gaussian" else tied_tokens(m0, (3, m0))
        x = jnp.asarray(x)
        sizes = jnp.asarray(np.random.default_rng(1).integers(1, 4, (3, m0)), jnp.float64)
        w = jnp.asarray(gaussian(7, (3, k, 3)))
        for given_sizes in (None, sizes):
            outs, grads = {}, {}
            for form in ("gather", "dense"):  # the kernel's: tests/ops/test_tc_matching.py
                outs[form], grads[form] = merged_and_gradient(x, k, r, given_sizes, w, form=form)
            (gx, gs, ga), (dx, ds, da) = outs["gather"], outs["dense"]
            np.testing.assert_array_equal(np.asarray(da), np.asarray(ga))
            np.testing.assert_allclose(np.asarray(ds), np.asarray(gs), rtol=1e-15)
            np.testing.assert_allclose(np.asarray(dx), np.asarray(gx), rtol=1e-13, atol=1e-14)
            np.testing.assert_allclose(
                np.asarray(grads["dense"]), np.asarray(grads["gather"]), rtol=1e-13, atol=1e-15
            )


@pytest.mark.parametrize("form", MERGE_FORMS)
def test_bfloat16_tokens_merge_from_float32_values(form):
    """16-bit tokens are matched and averaged in float32 (no rounding between steps): the
    result is the float32 merge of the same tokens, rounded once."""
    x32 = jnp.asarray(gaussian(4, (2, 48, 8)), jnp.bfloat16).astype(jnp.float32)
    out16, _, a16 = merge_jit(x32.astype(jnp.bfloat16), 6, 9, form=form)
    out32, _, a32 = merge_jit(x32, 6, 9, form=form)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a16), np.asarray(a32))
    np.testing.assert_array_equal(
        np.asarray(out16.astype(jnp.float32)),
        np.asarray(out32.astype(jnp.bfloat16).astype(jnp.float32)),
    )


@pytest.mark.parametrize("values", ["gaussian", "tied"])
def test_ranks_and_top_k_by_comparison(values):
    rng = np.random.default_rng(5)
    v = rng.standard_normal((4, 30)) if values == "gaussian" else rng.integers(0, 5, (4, 30))
    v = jnp.asarray(v, jnp.float32)
    inverse = np.argsort(np.asarray(jnp.argsort(v, axis=-1, descending=True)), axis=-1)
    np.testing.assert_array_equal(np.asarray(descending_ranks(v)), inverse)
    np.testing.assert_array_equal(
        np.asarray(top_k_indices(v, 7)), np.asarray(jax.lax.top_k(v, 7)[1])
    )
    rows = jnp.asarray(rng.standard_normal((4, 30, 3)), jnp.float32)
    index = jax.lax.top_k(v, 7)[1]
    np.testing.assert_array_equal(
        np.asarray(select_rows(rows, index)),
        np.asarray(jnp.take_along_axis(rows, index[..., None], axis=1)),
    )


def test_dense_form_has_no_sort_gather_or_scatter():
    """The dense summarisation and its gradient lower to products and elementwise ops."""
    x = jnp.ones((2, 58 * 4, 16), jnp.float32)
    loss = lambda xx: merge_to_k(xx, 24, 25, form="dense")[0].sum()
    for fn in (lambda xx: merge_to_k(xx, 24, 25, form="dense"), jax.grad(loss)):
        hlo = jax.jit(fn).lower(x).as_text()
        for op in ("sort", "gather", "scatter"):
            assert f"stablehlo.{op}" not in hlo, op
    gather_hlo = jax.jit(lambda xx: merge_to_k(xx, 24, 25, form="gather")).lower(x).as_text()
    assert "stablehlo.sort" in gather_hlo and "stablehlo.scatter" in gather_hlo


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="merge form 'sorted' is not one of"):
        merge_to_k(jnp.ones((8, 3)), 2, 2, form="sorted")
