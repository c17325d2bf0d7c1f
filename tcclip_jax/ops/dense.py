"""A `dot_general` for dense layers that multiplies as one 2-D matrix product, on CPUs.

Flax's `Dense` / `DenseGeneral` contract an `[B, T, N, W]` activation with a `[W, ...]` kernel
as an N-d `dot_general`. The forward pass is the same either way, but XLA:CPU lowers the
*backward* of the N-d form badly: the kernel gradient contracts over several leading axes, so
XLA first copies the output gradient into a transposed layout and then runs a slow (Eigen)
contraction on it (docs/performance.md). Folding the free axes of each operand into one first
gives XLA plain matrix products in both directions. The product is the same sum in a different
order (`tests/ops/test_ops_dense.py` proves values and gradients equal the N-d form's in float64).
On TPU the folding only adds copies (docs/tpu.md), so the 2-D form is used where the program is
traced for a CPU (`ops.platform.current`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax import lax

from tcclip_jax.ops import platform


def flat_products() -> bool:
    """Whether dense layers traced now multiply as 2-D products (for a CPU)."""
    return platform.current() == "cpu"


def flat_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: tuple[
        tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]
    ],
    precision: lax.PrecisionLike = None,
    preferred_element_type=None,
) -> jax.Array:
    """`lax.dot_general`, computed as `[M, K] @ [K, N]` when the contraction is a dense layer's
    and the program is traced for a CPU (`flat_products`).

    That is: no batch dimensions, the contracted axes are the trailing axes of `lhs` and the
    leading axes of `rhs`, in the same order. Anything else goes to `lax.dot_general` as is.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(lhs_contract)
    dense = (
        flat_products()
        and not lhs_batch
        and not rhs_batch
        and tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim))
        and tuple(rhs_contract) == tuple(range(n))
    )
    if not dense:
        return lax.dot_general(
            lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
        )
    free_shape, out_shape = lhs.shape[: lhs.ndim - n], rhs.shape[n:]
    k = math.prod(lhs.shape[lhs.ndim - n :])
    out = lax.dot_general(
        lhs.reshape(math.prod(free_shape), k),
        rhs.reshape(k, math.prod(out_shape)),
        (((1,), (0,)), ((), ())),
        precision,
        preferred_element_type=preferred_element_type,
    )
    return out.reshape(*free_shape, *out_shape)
