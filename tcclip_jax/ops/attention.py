"""How the vision blocks attend: a fused kernel where the backend has one.

The explicit form (einsum, softmax, einsum; `models.vision.TCBlock`) keeps every block's
[Q, K] probabilities for the backward pass, in float32: about 44 MB per clip per ViT-B/16
block. cuDNN's flash attention (NVIDIA GPUs, bfloat16 / float16) keeps only their log-sum-exp
and recomputes the rest. TC reads one row of those probabilities, the CLS query's (it picks the
seeds), so a fused block computes that row on its own from the CLS queries and the keys: 1/197
of the score work, the same maths as the explicit row.

Implementations (`ModelConfig.attention`):
  "explicit": the einsum form, where intermediates are needed and on CPU;
  "xla": jax's XLA form of `dot_product_attention` (its softmax is float32 even for float64
         inputs, so it is not the float64 reference);
  "cudnn": cuDNN's kernel (GPU only; with a bias in training it needs even query and key
           lengths, so both are padded: padded queries are zero rows whose outputs are dropped,
           padded keys are masked by the bias).
  "pallas": TC's own Pallas TPU kernel (`ops.tc_attention`): the context keys read per clip,
            the bias inside; run by Pallas's interpreter off TPU (exact, slow: for tests).
None picks "pallas" when the program is traced for a TPU (where the kernel's blocks fit VMEM and
the batch can be split: one device, or a mesh in context), "cudnn" when it is traced for a GPU
in bfloat16 or float16 and jax accepts the kernel for the block's shapes there
(`cudnn_accepts`), else "explicit".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import logging

from tcclip_jax.ops import platform, tc_attention

IMPLEMENTATIONS = ("explicit", "xla", "cudnn", "pallas")
# Bias of padded keys: exp(-1e4) is 0 in every float type, so they take no weight.
MASKED = -1e4


def choose(implementation: str | None, dtype, shapes: tuple[int, int, int, int]) -> str:
    """The implementation to trace now: `implementation`, or for None the fused kernel where
    the platform traced for has one at this compute dtype and jax accepts it for `shapes`
    (queries, keys, heads, head width; `cudnn_accepts`), else "explicit"."""
    if implementation is not None:
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        return implementation
    dtype = jnp.dtype(dtype)
    if platform.current() == "tpu":
        return _tpu_choice(dtype, shapes)
    if platform.current() != "gpu" or dtype not in (
        jnp.dtype(jnp.bfloat16),
        jnp.dtype(jnp.float16),
    ):
        return "explicit"
    if cudnn_accepts(dtype, *shapes):
        return "cudnn"
    _fall_back_once(dtype, shapes)
    return "explicit"


def _tpu_choice(dtype, shapes: tuple[int, int, int, int]) -> str:
    """TC's kernel where its blocks fit VMEM and it can be placed: one device, or a mesh in
    context to split the batch over (XLA does not partition a Mosaic kernel)."""
    queries, keys, heads, dim = shapes
    if not tc_attention.head_group(queries, queries, keys - queries, heads, dim, dtype.itemsize):
        _explicit_on_tpu_once(f"one head of {queries} x {keys} does not fit its VMEM budget")
        return "explicit"
    if jax.sharding.get_abstract_mesh().empty and jax.device_count() > 1:
        _explicit_on_tpu_once(
            "no mesh in context to split the batch over (trace under jax.set_mesh; the "
            "train, evaluate and aot commands do)"
        )
        return "explicit"
    return "pallas"


@functools.cache
def _explicit_on_tpu_once(why: str) -> None:
    logging.info("TC's Pallas attention is not used: %s; using the explicit attention", why)


@functools.cache
def _fall_back_once(dtype, shapes: tuple[int, int, int, int]) -> None:
    logging.warning(
        "cuDNN attention is not available here for %s queries x %s keys (%s heads of %s) in %s "
        "(no GPU, cuDNN missing or too old, or shapes it refuses): using the explicit attention",
        *shapes,
        jnp.dtype(dtype).name,
    )


@functools.cache
def cudnn_accepts(dtype, num_q: int, num_k: int, heads: int, dim: int) -> bool:
    """Whether jax traces cuDNN's kernel, forward and backward with a bias, for these shapes
    here (it checks the cuDNN version, the GPU and the shapes when tracing: no GPU, no kernel)."""
    q = jax.ShapeDtypeStruct((1, num_q, heads, dim), dtype)
    k = jax.ShapeDtypeStruct((1, num_k, heads, dim), dtype)
    bias = jax.ShapeDtypeStruct((heads, 1, num_k), dtype)
    loss = lambda q, k, v, b: fused_attention(q, k, v, b, "cudnn").astype(jnp.float32).sum()
    try:
        jax.eval_shape(jax.grad(loss, (0, 1, 2, 3)), q, k, k, bias)
    except Exception:  # jax raises RuntimeError, ValueError or NotImplementedError
        return False
    return True


def _pad(a: jax.Array, axis: int, length: int) -> jax.Array:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, length - a.shape[axis])
    return jnp.pad(a, widths)


def fused_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    implementation: str,
    even_lengths: bool | None = None,
) -> jax.Array:
    """Softmax attention of pre-scaled queries by `jax.nn.dot_product_attention`.

    q: [..., Q, heads, H]; k, v: [..., K, heads, H]; bias: [heads, 1 or Q, K] or None (added
    to the logits). Returns [..., Q, heads, H]. `even_lengths` (default: for "cudnn") pads Q
    and K to even lengths first.
    """
    if implementation not in ("xla", "cudnn"):
        raise ValueError(f"fused_attention runs 'xla' or 'cudnn', not {implementation!r}")
    lead, (num_q, heads, dim), num_k = q.shape[:-3], q.shape[-3:], k.shape[-3]
    q, k, v = (a.reshape(-1, *a.shape[-3:]) for a in (q, k, v))  # [B', L, heads, H]
    if bias is None:
        bias = jnp.zeros((heads, 1, num_k), q.dtype)
    if even_lengths is None:
        even_lengths = implementation == "cudnn"
    if even_lengths:
        q_len, k_len = num_q + num_q % 2, num_k + num_k % 2
        q, k, v = _pad(q, 1, q_len), _pad(k, 1, k_len), _pad(v, 1, k_len)
        bias = jnp.concatenate(
            [bias, jnp.full((heads, bias.shape[1], k_len - num_k), MASKED, bias.dtype)], axis=-1
        )
    bias = jnp.broadcast_to(bias, (heads, q.shape[1], k.shape[1]))[None].astype(q.dtype)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, scale=1.0, implementation=implementation)
    return out[:, :num_q].reshape(*lead, num_q, heads, dim)
