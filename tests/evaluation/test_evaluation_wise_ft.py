"""WiSE-FT: the mixing formula, its end points, the joint positional table and bad trees."""

import jax
import numpy as np
import pytest

from tcclip_jax.evaluation.wise_ft import wise_ft
from tcclip_jax.models import VideoCLIP

T, N, W = 3, 5, 4


def _trees(seed=0):
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)
    clip = {
        "visual": {"positional_embedding": r(N, W), "conv1": {"kernel": r(2, 2, 3, W)}},
        "logit_scale": np.float32(4.6),
        "positional_embedding": r(7, W),
    }
    tuned = {
        "visual": {
            "positional_embedding": r(T, N, W),  # joint
            "conv1": {"kernel": r(2, 2, 3, W)},
            "transformer": {"resblocks_1": {"attn": {"local_global_bias_table": r(2, 1, 2)}}},
        },
        "logit_scale": np.float32(3.0),
        "positional_embedding": r(7, W),
        "prompt_learner": {"ctx": r(4, W)},
        "prompt_generation_layer": {"ln_1": {"scale": r(W)}},
    }
    return clip, tuned


def _flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_formula_on_every_shared_parameter():
    clip, tuned = _trees()
    w = 0.7
    out = wise_ft(clip, tuned, w)
    assert jax.tree.structure(out) == jax.tree.structure(tuned)
    mix = lambda c, f: (1 - w) * np.float64(c) + w * np.float64(f)
    np.testing.assert_allclose(out["logit_scale"], mix(4.6, 3.0), rtol=1e-6)
    np.testing.assert_allclose(
        out["visual"]["conv1"]["kernel"],
        mix(clip["visual"]["conv1"]["kernel"], tuned["visual"]["conv1"]["kernel"]),
        rtol=1e-6,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        out["positional_embedding"],
        mix(clip["positional_embedding"], tuned["positional_embedding"]),
        rtol=1e-6,
        atol=1e-7,
    )
    # The joint table mixes frame by frame with CLIP's single table.
    joint = np.asarray(out["visual"]["positional_embedding"])
    assert joint.shape == (T, N, W)
    for t in range(T):
        np.testing.assert_allclose(
            joint[t],
            mix(clip["visual"]["positional_embedding"], tuned["visual"]["positional_embedding"][t]),
            rtol=1e-6,
            atol=1e-7,
        )
    # What CLIP lacks comes from the fine-tuned model unchanged.
    np.testing.assert_array_equal(out["prompt_learner"]["ctx"], tuned["prompt_learner"]["ctx"])
    np.testing.assert_array_equal(
        out["prompt_generation_layer"]["ln_1"]["scale"],
        tuned["prompt_generation_layer"]["ln_1"]["scale"],
    )
    bias = ["visual", "transformer", "resblocks_1", "attn", "local_global_bias_table"]
    got, want = out, tuned
    for k in bias:
        got, want = got[k], want[k]
    np.testing.assert_array_equal(got, want)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(out))


def test_end_points():
    clip, tuned = _trees()
    zero, one = _flat(wise_ft(clip, tuned, 0.0)), _flat(wise_ft(clip, tuned, 1.0))
    clip_flat, tuned_flat = _flat(clip), _flat(tuned)
    for key, value in tuned_flat.items():
        np.testing.assert_array_equal(one[key], value)
        if key == "['visual']['positional_embedding']":
            np.testing.assert_array_equal(zero[key], np.broadcast_to(clip_flat[key], value.shape))
        elif key in clip_flat:
            np.testing.assert_array_equal(zero[key], clip_flat[key])
        else:
            np.testing.assert_array_equal(zero[key], value)


def test_finetuned_only_parameters_win_even_when_clip_has_them():
    clip, tuned = _trees()
    clip["prompt_learner"] = {"ctx": np.zeros((4, W), np.float32)}
    out = wise_ft(clip, tuned, 0.0)
    np.testing.assert_array_equal(out["prompt_learner"]["ctx"], tuned["prompt_learner"]["ctx"])


def test_shape_mismatch_names_key_and_shapes():
    clip, tuned = _trees()
    clip["positional_embedding"] = np.zeros((9, W), np.float32)
    with pytest.raises(ValueError, match=r"positional_embedding.*\(7, 4\).*\(9, 4\)"):
        wise_ft(clip, tuned, 0.5)


def test_clip_parameter_missing_from_finetuned_model():
    clip, tuned = _trees()
    clip["ln_final"] = {"scale": np.ones(W, np.float32)}
    with pytest.raises(ValueError, match="ln_final/scale"):
        wise_ft(clip, tuned, 0.5)


def test_weight_out_of_range():
    clip, tuned = _trees()
    with pytest.raises(ValueError, match="weight"):
        wise_ft(clip, tuned, 7)


def test_real_clip_and_tc_clip_trees_align(tiny_config):
    """A CLIP tree and a TC-CLIP tree (joint positions) of the same towers mix without error."""
    clips, tokens = np.zeros((1, 4, 32, 32, 3), np.float32), np.ones((2, 30), np.int32)

    def init(**kw):
        model = VideoCLIP(tiny_config.replace(**kw))
        return jax.eval_shape(model.init, jax.random.key(0), clips, tokens)["params"]

    clip = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), init(model="clip"))
    tuned = jax.tree.map(
        lambda s: np.full(s.shape, 3.0, s.dtype), init(positional_embedding="joint")
    )
    assert tuned["visual"]["positional_embedding"].ndim == 3
    out = _flat(wise_ft(clip, tuned, 0.25))
    clip_keys = set(_flat(clip))
    for key, value in out.items():
        np.testing.assert_allclose(value, 0.75 * 1.0 + 0.25 * 3.0 if key in clip_keys else 3.0)
    assert any("local_global_bias_table" in k for k in out)
    assert "['prompt_learner']['ctx']" in out
