"""TC's two summarisation forms (`ModelConfig.merge`) in the model: the dense form (no sort,
gather or scatter) gives the gather form's logits, seeds, merges and gradients in float64,
unrolled, scanned and rematerialised; a rematerialised dense block does not redo the matching in
the backward pass (its choices are saved: `vision.KEEP_CHOICES`)."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from model_helpers import cross_entropy_step, random_params

from tcclip_jax.models import VideoCLIP
from tcclip_jax.models.vision import TCTransformer
from tcclip_jax.ops import platform

# Runs [1, 2] (plain blocks) and [4, 5] (context blocks after the first summary block 3)
# scanned; VP reads block 6, the last.
SCANNED = {"vision_layers": 6, "text_layers": 1, "vp_context_layer": 6, "tc_layers": (4, 5, 6)}


@pytest.fixture(scope="module")
def float64_runs(tiny):
    """{(merge, options): ((loss, (logits, video)), grads)} of the float64 step."""
    cfg, _, clips, tokens, labels = tiny
    cfg = cfg.replace(**SCANNED)
    out = {}
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), random_params(cfg, 1))
        clips = jnp.asarray(clips, jnp.float64)
        remat_scan = (("remat", True), ("scan", True))
        for merge, options in (("gather", ()), ("dense", remat_scan), ("pallas", remat_scan)):
            model = VideoCLIP(cfg.replace(merge=merge), jnp.float64, **dict(options))
            out[merge, options] = cross_entropy_step(model)(params, clips, tokens, labels)
    return out


@pytest.mark.parametrize("merge", ["dense", "pallas"])
def test_dense_merge_and_kernel_give_the_gather_forms_step(float64_runs, merge):
    """The unrolled gather form against the scanned, rematerialised dense form and TC's
    matching kernel (the op-level equality of the forms, unrolled, is tests/ops')."""
    (_, (logits, video)), grads = float64_runs["gather", ()]
    (_, (logits_d, video_d)), grads_d = float64_runs[merge, (("remat", True), ("scan", True))]
    np.testing.assert_allclose(logits_d, logits, rtol=1e-12, atol=1e-12)
    for key in ("seed_index", "assignment"):
        np.testing.assert_array_equal(video_d[key], video[key])
    np.testing.assert_allclose(
        video_d["context_embeddings"], video["context_embeddings"], rtol=1e-12, atol=1e-12
    )
    flat_d = traverse_util.flatten_dict(grads_d, sep="/")
    for path, g in traverse_util.flatten_dict(grads, sep="/").items():
        np.testing.assert_allclose(flat_d[path], g, rtol=1e-9, atol=1e-12, err_msg=path)


def _argmaxes(jaxpr) -> int:
    """argmax equations in a jaxpr and all its sub-jaxprs (one per matching step)."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "argmax"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _argmaxes(sub)
    return count


@pytest.mark.parametrize("merge, recomputed", [("dense", False), ("gather", True)])
def test_rematerialised_backward_redoes_the_matching_only_for_gather(tiny, merge, recomputed):
    cfg, _, clips, tokens, _ = tiny
    cfg = cfg.replace(**SCANNED, merge=merge)
    params = random_params(cfg, 1)
    model = VideoCLIP(cfg, remat=True, scan=True)
    loss = lambda p: model.apply({"params": p}, clips, tokens)[0].sum()
    forward = _argmaxes(jax.make_jaxpr(loss)(params).jaxpr)
    step = _argmaxes(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)
    assert forward > 0
    assert (step > forward) == recomputed, (forward, step)


@pytest.mark.parametrize(
    "traced_for, want", [("cpu", "gather"), ("tpu", "pallas"), ("gpu", "dense")]
)
def test_the_platform_picks_the_form(tiny, traced_for, want):
    cfg, params, clips, tokens, _ = tiny
    with platform.traced_for(traced_for):
        assert TCTransformer(cfg).merge_form == want
    if want == "pallas":  # TC's kernels need a TPU's lowering (tests/ops, tests/bench)
        return
    # Lowered here for the CPU: the einsum attention.
    cfg = cfg.replace(attention="explicit")
    apply = lambda p: VideoCLIP(cfg).apply({"params": p}, clips, tokens)
    with platform.traced_for(traced_for):
        hlo = jax.jit(apply).lower(params).as_text()
    assert ("stablehlo.sort" in hlo) == (want == "gather")


def _dots(jaxpr) -> list:
    """Every dot_general equation of a jaxpr and its sub-jaxprs."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out.extend(_dots(sub))
    return out


@pytest.mark.parametrize("merge", ["gather", "dense"])
def test_bfloat16_choices_are_made_from_float32_products(tiny, merge):
    """In a bfloat16 model the CLS row that picks the seeds is accumulated and kept in float32
    (a separate product from the rounded attention logits), and the merge similarities are
    float32 products of float32 tokens at the highest precision."""
    cfg, params, clips, _, _ = tiny
    model = VideoCLIP(cfg.replace(merge=merge), jnp.bfloat16)
    encode = lambda p: model.apply({"params": p}, clips, method="encode_video")
    dots = _dots(jax.make_jaxpr(encode)(params).jaxpr)
    summaries = len(cfg.summary_layers)
    cls_rows = [
        e
        for e in dots
        if e.params["preferred_element_type"] == jnp.float32
        and all(v.aval.dtype == jnp.bfloat16 for v in e.invars)
        and e.outvars[0].aval.shape[-2] == 1  # one query: the CLS token
    ]
    assert len(cls_rows) >= summaries, [str(e) for e in dots]
    highest = jax.lax.Precision.HIGHEST
    similarities = [
        e
        for e in dots
        if all(v.aval.dtype == jnp.float32 for v in e.invars)
        and e.params["precision"] == (highest, highest)
    ]
    assert len(similarities) >= summaries
