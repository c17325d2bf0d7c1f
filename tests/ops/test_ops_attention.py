"""The fused attention path (`ops.attention`): jax's kernel against the explicit attention, the
padding cuDNN needs, the separate CLS row, and a whole TC-CLIP on that path in float64.

jax's XLA form of `dot_product_attention` computes its softmax in float32 even for float64
inputs, so the float64 tests run the fused path with an exact float64 kernel in its place: what
they prove is everything of ours around the kernel (layouts, padding and masking, the CLS row
that picks the seeds, gradients through all of it). jax's XLA kernel itself is compared with the
explicit attention at float32 tolerance; cuDNN's needs a GPU even to be traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from model_helpers import cross_entropy_step, random_params

from tcclip_jax.models import ModelConfig, VideoCLIP
from tcclip_jax.models.vision import TCTransformer
from tcclip_jax.ops import attention, platform


def explicit(q, k, v, bias):
    """Softmax attention of pre-scaled q [B, Q, N, H] over k, v [B, K, N, H], bias [N, 1|Q, K]."""
    logits = jnp.einsum("BQNH,BKNH->BNQK", q, k) + bias
    return jnp.einsum("BNQK,BKNH->BQNH", jax.nn.softmax(logits, axis=-1), v)


def exact_kernel(query, key, value, bias=None, scale=None, implementation=None):
    """`jax.nn.dot_product_attention`'s maths in the inputs' own precision (float64 here)."""
    assert implementation in ("xla", "cudnn") and scale == 1.0
    return explicit(query, key, value, bias[0])


def operands(dtype, q_len=7, k_len=11, heads=3, dim=8, lead=(2, 3)):
    rng = np.random.default_rng(q_len + k_len)
    draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
    q, k, v = (draw(*lead, n, heads, dim) for n in (q_len, k_len, k_len))
    return q, k, v, 0.5 * draw(heads, 1, k_len)


def flat(a):
    return a.reshape(-1, *a.shape[-3:])


@pytest.mark.parametrize("even_lengths", [False, True])
def test_xla_kernel_equals_explicit_attention_in_float32(even_lengths):
    q, k, v, bias = operands(jnp.float32)
    want = explicit(flat(q), flat(k), flat(v), bias).reshape(q.shape)
    got = attention.fused_attention(q, k, v, bias, "xla", even_lengths=even_lengths)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)

    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
    ours = jax.grad(
        loss(lambda *a: attention.fused_attention(*a, "xla", even_lengths)), (0, 1, 2, 3)
    )
    ref = jax.grad(
        loss(lambda q, k, v, b: explicit(flat(q), flat(k), flat(v), b).reshape(q.shape)),
        (0, 1, 2, 3),
    )
    for g, w in zip(ours(q, k, v, bias), ref(q, k, v, bias), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_padding_to_even_lengths_changes_nothing_in_float64(monkeypatch):
    """Zero query rows dropped, zero keys masked by the bias: values and every gradient (bias
    included) equal the unpadded attention's to float64 rounding."""
    monkeypatch.setattr(attention.jax.nn, "dot_product_attention", exact_kernel)
    with jax.enable_x64(True):
        q, k, v, bias = operands(jnp.float64)
        loss = lambda even: (
            lambda *a: jnp.sum(jnp.sin(attention.fused_attention(*a, "cudnn", even_lengths=even)))
        )
        value_and_grad = lambda even: jax.value_and_grad(loss(even), (0, 1, 2, 3))(q, k, v, bias)
        (padded, padded_grads), (plain, plain_grads) = value_and_grad(True), value_and_grad(False)
        want = jnp.sum(jnp.sin(explicit(flat(q), flat(k), flat(v), bias)))
    np.testing.assert_allclose(padded, plain, rtol=1e-13)
    np.testing.assert_allclose(plain, want, rtol=1e-13)
    for g, w in zip(padded_grads, plain_grads, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


def test_cudnn_pads_odd_lengths_and_masks_the_padded_keys(monkeypatch):
    seen = []

    def kernel(query, key, value, bias=None, **kw):
        seen.append((query.shape, key.shape, bias))
        return exact_kernel(query, key, value, bias, **kw)

    monkeypatch.setattr(attention.jax.nn, "dot_product_attention", kernel)
    q, k, v, bias = operands(jnp.float32, q_len=197, k_len=293, heads=2, lead=(1,))
    out = attention.fused_attention(q, k, v, bias, "cudnn")
    ((q_shape, k_shape, padded_bias),) = seen
    assert out.shape == q.shape and q_shape[1] == 198 and k_shape[1] == 294
    assert padded_bias.shape == (1, 2, 198, 294)
    assert np.all(np.asarray(padded_bias[..., -1]) == attention.MASKED)
    np.testing.assert_array_equal(
        padded_bias[0, :, :197, :293], jnp.broadcast_to(bias, (2, 197, 293))
    )


@pytest.mark.parametrize(
    "target, dtype, want",
    [
        ("cuda", jnp.bfloat16, "cudnn"),
        ("gpu", jnp.float16, "cudnn"),
        ("cuda", jnp.float32, "explicit"),  # cuDNN's flash attention is for 16-bit floats
        ("tpu", jnp.bfloat16, "pallas"),  # TC's kernel (one device here)
        ("tpu", jnp.float32, "pallas"),
        ("cpu", jnp.bfloat16, "explicit"),
    ],
)
def test_automatic_choice_follows_the_platform_and_dtype(monkeypatch, target, dtype, want):
    monkeypatch.setattr(attention, "cudnn_accepts", lambda *a: True)  # as on a GPU jax accepts
    with platform.traced_for(target):
        assert attention.choose(None, dtype, (197, 293, 12, 64)) == want
        assert attention.choose("xla", dtype, (197, 293, 12, 64)) == "xla"  # a setting is kept
    with pytest.raises(ValueError, match="attention must be one of"):
        attention.choose("flash", jnp.float32, (197, 293, 12, 64))
    with pytest.raises(ValueError, match="attention must be one of"):
        ModelConfig(attention="flash")


def test_automatic_choice_on_tpu_needs_a_mesh_on_several_devices_and_vmem(monkeypatch):
    """On several devices TC's kernel is chosen only under a mesh (XLA cannot split it); a
    head too large for VMEM gets the explicit attention."""
    shapes = (197, 293, 12, 64)
    monkeypatch.setattr(attention.jax, "device_count", lambda: 8)
    with platform.traced_for("tpu"):
        assert attention.choose(None, jnp.bfloat16, shapes) == "explicit"
        mesh = jax.sharding.AbstractMesh((8,), ("data",))
        with jax.sharding.use_abstract_mesh(mesh):
            assert attention.choose(None, jnp.bfloat16, shapes) == "pallas"
            assert attention.choose(None, jnp.bfloat16, (577, 673, 16, 64)) == "explicit"


def test_automatic_choice_is_explicit_where_jax_refuses_the_kernel():
    """Without a GPU jax refuses to trace cuDNN's kernel (it checks for cuDNN when tracing): a
    program traced for a GPU here, e.g. lowered ahead of time, gets the explicit attention."""
    with platform.traced_for("gpu"):
        assert not attention.cudnn_accepts(jnp.dtype(jnp.bfloat16), 197, 293, 12, 64)
        assert attention.choose(None, jnp.bfloat16, (197, 293, 12, 64)) == "explicit"
        stack = TCTransformer(ModelConfig(), jnp.bfloat16)  # ViT-B/16: 197 queries, 293 keys
        assert stack.attention_shapes == (197, 293, 12, 64)
        assert stack.block_fields(2)["attention"] == "explicit"


def tc_clip_case(tiny_config):
    """Three vision blocks in float64: plain; TC summarising, all queries; the last, whose CLS
    query and (VP reads this block) seed queries are all it computes. N = 17 tokens, K = 21."""
    cfg = tiny_config.replace(vision_layers=3, vp_context_layer=3)
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda p: np.asarray(p, np.float64), random_params(cfg, 4))
    clips = rng.standard_normal((2, 4, 32, 32, 3))
    return cfg, params, clips, rng.integers(1, 400, (3, cfg.context_length)), np.array([0, 2])


def run_step(cfg, params, clips, tokens, labels, **stack):
    with jax.enable_x64(True):
        model = VideoCLIP(cfg, jnp.float64, **stack)
        args = jax.tree.map(jnp.asarray, (params, clips, tokens, labels))
        return jax.device_get(cross_entropy_step(model)(*args))


@pytest.fixture(scope="module")
def explicit_run(tiny_config):
    cfg, *case = tc_clip_case(tiny_config)
    return run_step(cfg.replace(attention="explicit"), *case)


@pytest.mark.parametrize("implementation", ["xla", "cudnn", "pallas"])
def test_tc_clip_on_the_fused_path_equals_the_explicit_one_in_float64(
    tiny_config, explicit_run, monkeypatch, implementation
):
    """Logits, the CLS attention, seeds, merges and every gradient as on the explicit path
    ('cudnn' pads the odd lengths; 'pallas', TC's own kernel, run by Pallas's interpreter,
    never calls jax's)."""
    query_lengths = []

    def kernel(query, *args, **kw):
        query_lengths.append(query.shape[1])
        return exact_kernel(query, *args, **kw)

    monkeypatch.setattr(attention.jax.nn, "dot_product_attention", kernel)
    cfg, *case = tc_clip_case(tiny_config)
    (_, (fused_logits, fused_video)), fused_grads = run_step(
        cfg.replace(attention=implementation), *case
    )
    # blocks 1, 2: all 17 queries; block 3: the CLS query, then the 4 seeds'
    want = {"xla": [17, 17, 1, 4], "cudnn": [18, 18, 2, 4], "pallas": []}[implementation]
    assert query_lengths == want
    (_, (logits, video)), grads = explicit_run
    np.testing.assert_allclose(fused_logits, logits, rtol=1e-12, atol=1e-12)
    for key in ("seed_index", "assignment"):
        np.testing.assert_array_equal(fused_video[key], video[key])
    np.testing.assert_allclose(fused_video["cls_attention"], video["cls_attention"], atol=1e-14)
    flat_fused = traverse_util.flatten_dict(fused_grads, sep="/")
    for path, g in traverse_util.flatten_dict(grads, sep="/").items():
        np.testing.assert_allclose(flat_fused[path], g, rtol=1e-9, atol=1e-12, err_msg=path)


@pytest.mark.slow  # ~20 s: the kernel and the scan/remat are each proven in the suite
def test_tc_kernel_in_the_scanned_rematerialised_stack_in_float64(tiny_config):
    """The accelerator default: blocks 2..3 of 4 one `lax.scan` under `jax.checkpoint`, with TC's
    kernel (recomputed in the backward pass, its custom VJP inside the scan's) against the
    unrolled explicit stack."""
    cfg, params, *case = tc_clip_case(tiny_config)
    cfg = cfg.replace(vision_layers=4, vp_context_layer=4)
    params = jax.tree.map(lambda p: np.asarray(p, np.float64), random_params(cfg, 4))
    (_, (logits, video)), grads = run_step(cfg.replace(attention="explicit"), params, *case)
    (_, (got_logits, got_video)), got_grads = run_step(
        cfg.replace(attention="pallas"), params, *case, remat=True, scan=True
    )
    np.testing.assert_allclose(got_logits, logits, rtol=1e-12, atol=1e-12)
    for key in ("seed_index", "assignment"):
        np.testing.assert_array_equal(got_video[key], video[key])
    flat = traverse_util.flatten_dict(got_grads, sep="/")
    for path, g in traverse_util.flatten_dict(grads, sep="/").items():
        np.testing.assert_allclose(flat[path], g, rtol=1e-9, atol=1e-12, err_msg=path)
