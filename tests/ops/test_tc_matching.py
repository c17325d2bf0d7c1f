"""TC's Pallas matching kernel (`ops.tc_matching`) against the gather form (the published
procedure: argsort, gathers, scatter-adds), through Pallas's interpreter here. Gaussian tokens in
float64 have no score ties; tokens drawn from a few standard basis vectors have ties everywhere
(every score exactly 0 or 1 whatever the order of the sums), so the tie rule decides. With
libtpu installed, the kernel is compiled for TPUs at ViT-B/16's shapes.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from xla_env import run_on_devices

from tcclip_jax.ops import platform, tc_matching
from tcclip_jax.ops.token_merging import choose_form, merge_to_k


def gaussian(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def basis_tokens(seed: int, shape: tuple[int, ...], dim: int = 4) -> np.ndarray:
    """Tokens [..., M, dim], each a standard basis vector."""
    return np.eye(dim)[np.random.default_rng(seed).integers(0, dim, shape)]


def kernel_and_gather(x, k, r, sizes=None):
    """merge_to_k's outputs and d sum(tokens * w) / dx for the kernel and the gather form."""
    w = jnp.asarray(gaussian(7, (*x.shape[:-2], k, x.shape[-1])))

    def run(form):
        def loss(xx):
            out = merge_to_k(xx, k, r, sizes, form=form)
            return jnp.sum(out[0] * w), out

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(x)

    return run("pallas"), run("gather")


@pytest.mark.parametrize(
    "tokens, shape, k, r",
    [
        ("gaussian", (2, 58 * 4, 6), 24, 25),  # 9 steps, the last one short
        ("gaussian", (3, 29, 3), 2, 20),  # odd M, r above M // 2
        ("basis", (3, 64), 12, 6),
        ("basis", (2, 33), 9, 4),
    ],
)
@pytest.mark.parametrize("with_sizes", [False, True])
def test_kernel_equals_the_gather_form_in_float64(tokens, shape, k, r, with_sizes):
    """The same assignment (seed by seed), context tokens, sizes and gradient."""
    with jax.enable_x64(True):
        raw = gaussian(1, shape) if tokens == "gaussian" else basis_tokens(shape[-1], shape)
        x = jnp.asarray(raw)
        sizes = None
        if with_sizes:
            sizes = jnp.asarray(np.random.default_rng(2).integers(1, 4, x.shape[:-1]), x.dtype)
        ((_, (kx, ks, ka)), kgrad), ((_, (gx, gs, ga)), ggrad) = kernel_and_gather(x, k, r, sizes)
        np.testing.assert_array_equal(np.asarray(ka), np.asarray(ga))
        np.testing.assert_array_equal(np.asarray(ks), np.asarray(gs))
        np.testing.assert_allclose(np.asarray(kx), np.asarray(gx), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(np.asarray(kgrad), np.asarray(ggrad), rtol=1e-13, atol=1e-15)
        if tokens == "basis":  # the ties were exact: only equal vectors merged
            np.testing.assert_array_equal(np.asarray(kx).max(axis=-1), 1.0)


def test_vmem_bound_decides_the_form_on_a_tpu():
    """ViT-B/16's 16 frames x 58 seeds fit the kernel's VMEM; ViT-L/14's 16 x 76 at width 1024
    do not and take the dense form; a CPU takes the gather form."""
    assert tc_matching.fits(928, 768, 4)
    assert not tc_matching.fits(1216, 1024, 4)
    with platform.traced_for("tpu"):
        assert choose_form(None, 928, 768) == "pallas"
        assert choose_form(None, 1216, 1024) == "dense"
        assert choose_form("gather", 928, 768) == "gather"
    with platform.traced_for("gpu"):
        assert choose_form(None, 928, 768) == "dense"
    with platform.traced_for("cpu"):
        assert choose_form(None, 928, 768) == "gather"


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu")
@pytest.mark.parametrize(
    "topology, seeds, width, k, r",
    [
        ("v5e:2x2", 4 * 16, 128, 12, 10),  # a small model's shapes (~10 s)
        pytest.param("v5e:2x2", 16 * 58, 768, 96, 100, marks=pytest.mark.slow),  # ViT-B/16
        pytest.param("v4:2x2x1", 16 * 58, 768, 96, 100, marks=pytest.mark.slow),
    ],
)
def test_kernel_compiles_for_tpus_with_nothing_of_the_matching_outside(
    topology, seeds, width, k, r
):
    """A block's summarisation (ViT-B/16: 16 frames x 58 seeds of width 768, bfloat16, 2 clips)
    with its gradient: Mosaic accepts the kernel within its VMEM limit, and the compiled
    program holds no sort, gather or scatter and no [M, M - r] merge matrix."""
    from tcclip_jax.bench.ahead_of_time import tpu_devices

    device = tpu_devices(topology)[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((2, seeds, width), jnp.bfloat16, sharding=sharding)
    loss = lambda xx: jnp.sum(merge_to_k(xx, k, r, form="pallas")[0].astype(jnp.float32))
    with platform.traced_for("tpu"):
        compiled = jax.jit(jax.grad(loss)).trace(x).lower().compile()
    hlo = compiled.as_text()
    assert hlo.count('custom_call_target="tpu_custom_call"') == 1
    for op in ("sort(", "gather(", "scatter("):
        assert op not in hlo
    assert f",{seeds},{seeds - r}]" not in hlo


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import NamedSharding, PartitionSpec as P
from tcclip_jax.runtime.sharding import create_mesh
from tcclip_jax.ops.token_merging import merge_to_k

mesh = create_mesh()
x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 40, 6)))
loss = lambda form: lambda xx: jnp.sum(jnp.sin(merge_to_k(xx, 7, 6, form=form)[0]))
step = jax.jit(jax.value_and_grad(loss("pallas")), in_shardings=NamedSharding(mesh, P("data")))
with jax.set_mesh(mesh):
    hlo = step.lower(x).compile().as_text()
    value, grad = step(x)
assert "all-gather" not in hlo, "not split by clip"
want, want_grad = jax.value_and_grad(loss("gather"))(x)
np.testing.assert_allclose(value, want, rtol=1e-13)
np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-13)
print("ok", grad.sharding.spec)
"""


def test_each_device_matches_its_own_clips():
    """Batch split over 4 devices: each runs the kernel on its clip (no all-gather), and the
    values and gradients equal the gather form's on one device."""
    done = run_on_devices(SHARDED, 4, os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.startswith("ok P('data',"), done.stdout
