"""`bench.hbm_traffic` counts what crosses a TPU's HBM in programs compiled for a v5e on this CPU
host (libtpu), where the answer is known: a streamed elementwise op reads and writes its array
once, a loop moves its body's bytes once per trip, a loop over stacked rows reads each row once
and a loop that stacks its outputs writes each once, a prefetch into VMEM moves its array once.
XLA's `bytes accessed` gets every one of these wrong but the first."""

from __future__ import annotations

import importlib.util
import re

import jax
import jax.numpy as jnp
import pytest

from tcclip_jax.bench import ahead_of_time
from tcclip_jax.bench.hbm_traffic import arrays, hbm_traffic

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason='needs pip install "tcclip-jax[tpu]"'
)

MiB = 2**20


def v5e_program(fn, *inputs: tuple, donate: bool = False):
    """`fn` compiled for one v5e chip on abstract inputs given as (shape, dtype)."""
    device = ahead_of_time.tpu_devices("v5e:2x2")[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    args = [jax.ShapeDtypeStruct(s, dtype, sharding=sharding) for s, dtype in inputs]
    return jax.jit(fn, donate_argnums=0 if donate else ()).trace(*args).lower().compile()


def compiled(fn, *shapes, donate: bool = False) -> tuple[float, int, float]:
    """(our count, loops of unknown trip count, XLA's bytes accessed) of `fn` compiled for one
    v5e chip on float32 inputs of `shapes`."""
    program = v5e_program(fn, *((s, jnp.float32) for s in shapes), donate=donate)
    traffic, unknown = hbm_traffic(program.as_text())
    return traffic, unknown, ahead_of_time._cost(program)["bytes accessed"]


@needs_libtpu
def test_a_streamed_elementwise_op_reads_and_writes_its_array_once():
    n = 64 * MiB  # 256 MiB of float32: more than a v5e's VMEM, so it streams through HBM.
    traffic, unknown, xla = compiled(lambda x: x * 2 + 1, (n,))
    assert traffic == 2 * 4 * n and unknown == 0
    assert xla == traffic  # the one case XLA's count gets right
    assert compiled(lambda x: x.sum(), (n,))[0] == 4 * n + 4 + 4  # the sum, written from VMEM


@needs_libtpu
def test_a_loop_moves_its_body_once_per_trip():
    n, trips = 64 * MiB, 5
    loop = lambda x: jax.lax.fori_loop(0, trips, lambda i, x: x * 2 + 1, x)  # noqa: E731
    traffic, unknown, xla = compiled(loop, (n,), donate=True)
    assert unknown == 0
    assert traffic == pytest.approx(trips * 2 * 4 * n, abs=256)  # (and the loop counter)
    assert xla == pytest.approx(2 * 4 * n, abs=2**13)  # XLA: the body once


@needs_libtpu
def test_a_loop_over_stacked_rows_reads_each_row_once():
    rows, width = 16, MiB
    scan = lambda xs: jax.lax.scan(lambda c, row: (c + row, None), jnp.zeros(width), xs)[0]  # noqa: E731
    traffic, _, _ = compiled(scan, (rows, width))
    stack = rows * width * 4
    # Each trip reads its row (a dynamic slice of the stack), not the stack: the stack once,
    # and the running sum written and read at its ends.
    assert stack <= traffic <= stack + 2 * width * 4 + 256


@needs_libtpu
def test_a_loop_that_stacks_its_outputs_writes_each_once():
    rows, width = 16, MiB
    scan = lambda x: jax.lax.scan(lambda c, _: (c * 2 + 1, c), x, None, length=rows)[1]  # noqa: E731
    traffic, _, xla = compiled(scan, (width,))
    stack = rows * width * 4
    # An in-place dynamic-update-slice per trip writes one row (the stack's allocation writes
    # nothing); the first value is read from HBM.
    assert stack <= traffic <= stack + 2 * width * 4 + 256
    assert xla < stack  # XLA: less than the loop must write


@needs_libtpu
def test_a_prefetch_moves_its_array_once_and_vmem_operands_cost_nothing():
    """y = gelu(x @ w) @ w.T for x [12608, 768] bfloat16 and w [768, 3072] float32: XLA keeps
    the [12608, 3072] intermediate in VMEM and prefetches w (its `copy-start` holds both the
    HBM source and the VMEM copy). The HBM traffic is x, w (read by the first product) and w
    again (the prefetch for the second), and y."""
    m, d, f = 12608, 768, 3072
    fn = lambda x, w: jax.nn.gelu(x @ w.astype(x.dtype)) @ w.T.astype(x.dtype)  # noqa: E731
    program = v5e_program(fn, ((m, d), jnp.bfloat16), ((d, f), jnp.float32))
    hlo = program.as_text()
    assert "copy-start" in hlo and re.search(rf"bf16\[{m},{f}\]{{[^}}]*S\(1\)}}", hlo)
    traffic, _ = hbm_traffic(hlo)
    assert traffic == m * d * 2 + 2 * d * f * 4 + m * d * 2
    assert ahead_of_time._cost(program)["bytes accessed"] > 5 * traffic


def test_memory_spaces_are_read_from_layouts():
    """No memory space (or S(0)) is HBM; S(1) VMEM, S(2) SMEM; tuples flatten in order."""
    shape = "((bf16[4,8]{1,0:T(8,128)(2,1)S(1)}), f32[3]{0}, s32[]{:S(2)}, pred[2]{0:S(0)})"
    assert [(a.bytes, a.in_hbm) for a in arrays(shape)] == [
        (64, False),
        (12, True),
        (4, False),
        (2, True),
    ]


def test_a_slice_reads_its_bytes_from_hbm_wherever_it_writes_them():
    """A dynamic-slice of an HBM array into VMEM reads the slice; into HBM it also writes it."""
    module = """HloModule slices

ENTRY %main (p: f32[16,1024]) -> f32[1,1024] {
  %p = f32[16,1024]{1,0} parameter(0)
  %i = s32[]{:S(2)} constant(3)
  %z = s32[]{:S(2)} constant(0)
  ROOT %s = f32[1,1024]{1,0%s} dynamic-slice(%p, %i, %z), dynamic_slice_sizes={1,1024}
}
"""
    assert hbm_traffic(module.replace("0%s}", "0:S(1)}")) == (4096.0, 0)
    assert hbm_traffic(module.replace("0%s}", "0}")) == (2 * 4096.0, 0)
