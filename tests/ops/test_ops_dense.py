"""`flat_dot_general` (dense layers as one 2-D matrix product) equals `lax.dot_general`.

Values and the gradients of both operands, in float64, for the contractions the model's dense
layers make (`Dense` on [B, T, N, W], `DenseGeneral` into heads and back out of them), and
pass-through for contractions that are not a dense layer's. Also checks that the rewrite is what
reaches XLA: the kernel gradient of a 4-D activation is a 2-D product, with no transposed copy
of the output gradient.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tcclip_jax.ops import dense, platform
from tcclip_jax.ops.dense import flat_dot_general

# (lhs shape, rhs shape, dimension numbers): Dense, DenseGeneral into heads, out of heads.
DENSE_CASES = [
    ((2, 3, 5, 8), (8, 6), (((3,), (0,)), ((), ()))),
    ((2, 3, 5, 8), (8, 2, 4), (((3,), (0,)), ((), ()))),
    ((2, 3, 5, 2, 4), (2, 4, 8), (((3, 4), (0, 1)), ((), ()))),
    ((7, 8), (8, 6), (((1,), (0,)), ((), ()))),
]
# Not a dense layer's contraction: left to lax.dot_general as is.
OTHER_CASES = [
    ((2, 5, 4), (2, 4, 3), (((2,), (1,)), ((0,), (0,)))),  # batched.
    ((4, 5), (4, 3), (((0,), (0,)), ((), ()))),  # contracts a leading lhs axis.
    ((5, 4), (3, 4), (((1,), (1,)), ((), ()))),  # contracts a trailing rhs axis.
    ((2, 5, 2, 4), (4, 2, 3), (((2, 3), (1, 0)), ((), ()))),  # axes in another order.
]


def _inputs(lhs_shape, rhs_shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(lhs_shape), rng.standard_normal(rhs_shape)


@pytest.mark.parametrize("lhs_shape, rhs_shape, dims", DENSE_CASES + OTHER_CASES)
def test_values_and_gradients_equal_dot_general(lhs_shape, rhs_shape, dims):
    with jax.enable_x64(True):
        lhs, rhs = _inputs(lhs_shape, rhs_shape)
        ref = lax.dot_general(lhs, rhs, dims)
        got = flat_dot_general(lhs, rhs, dims)
        assert got.shape == ref.shape and got.dtype == jnp.float64
        np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)
        cotangent = np.random.default_rng(1).standard_normal(ref.shape)

        def grads(f):
            return jax.grad(lambda a, b: jnp.sum(f(a, b, dims) * cotangent), argnums=(0, 1))(
                lhs, rhs
            )

        for g, r in zip(grads(flat_dot_general), grads(lax.dot_general), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-13, atol=1e-13)


def test_flax_layers_give_the_same_outputs_and_parameters():
    """A Dense / DenseGeneral with `dot_general=flat_dot_general` keeps the parameter tree and
    the outputs of the default one."""
    with jax.enable_x64(True):
        x = np.random.default_rng(2).standard_normal((2, 3, 5, 8))
        for make in (
            lambda **kw: nn.Dense(6, param_dtype=jnp.float64, **kw),
            lambda **kw: nn.DenseGeneral((2, 4), param_dtype=jnp.float64, **kw),
        ):
            plain, flat = make(), make(dot_general=flat_dot_general)
            params = plain.init(jax.random.key(0), x)
            assert jax.tree.map(jnp.shape, flat.init(jax.random.key(0), x)) == jax.tree.map(
                jnp.shape, params
            )
            np.testing.assert_allclose(
                flat.apply(params, x), plain.apply(params, x), rtol=1e-13, atol=1e-13
            )


def test_kernel_gradient_is_a_plain_matrix_product():
    """What the op is for: XLA gets `[M, K] x [M, N]` for the kernel gradient, without first
    copying the output gradient into a transposed layout (the N-d form's slow path)."""
    lhs = jax.ShapeDtypeStruct((2, 3, 5, 8), jnp.float32)
    rhs = jax.ShapeDtypeStruct((8, 6), jnp.float32)
    dims = (((3,), (0,)), ((), ()))

    def kernel_grad_hlo(f):
        grad = jax.grad(lambda a, b: jnp.sum(f(a, b, dims) ** 2), argnums=1)
        return jax.jit(grad).lower(lhs, rhs).compile().as_text()

    flat, plain = kernel_grad_hlo(flat_dot_general), kernel_grad_hlo(lax.dot_general)
    transposes = lambda hlo: sum(" transpose(" in line for line in hlo.splitlines())
    assert transposes(flat) < transposes(plain)


@pytest.mark.parametrize("name, folded", [("cpu", True), ("tpu", False), ("cuda", False)])
def test_folding_follows_the_platform_traced_for(name, folded):
    """The 2-D form is for CPUs; a program traced for another platform (e.g. an ahead-of-time
    TPU compile on a CPU host) gets `lax.dot_general` as written."""
    lhs = jax.ShapeDtypeStruct((2, 3, 5, 8), jnp.float32)
    rhs = jax.ShapeDtypeStruct((8, 6), jnp.float32)
    dims = (((3,), (0,)), ((), ()))
    assert dense.flat_products() == (jax.default_backend() == "cpu")
    with platform.traced_for(name):
        assert dense.flat_products() == folded
        jaxpr = jax.make_jaxpr(lambda a, b: flat_dot_general(a, b, dims))(lhs, rhs)
    assert dense.flat_products() == (jax.default_backend() == "cpu")  # restored
    (dot,) = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert [v.aval.ndim for v in dot.invars] == ([2, 2] if folded else [4, 2])
