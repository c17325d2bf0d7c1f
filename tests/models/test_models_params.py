"""The one list of parameter groups (models/params.py): optimiser groups, TC-only, frozen."""

import numpy as np

from tcclip_jax.models import params


def _tree(rng):
    return {
        "visual": {
            "proj": rng.standard_normal((4, 3)).astype(np.float32),
            "transformer": {
                "resblocks_1": {
                    "attn": {"local_global_bias_table": np.zeros((2, 1, 2), np.float32)}
                }
            },
        },
        "ln_final": {"bias": rng.standard_normal((3,)).astype(np.float32)},
        "prompt_learner": {"ctx": rng.standard_normal((2, 3)).astype(np.float32)},
        "prompt_generation_layer": {
            "mlp": {"kernel": rng.standard_normal((3, 3)).astype(np.float32)}
        },
        "token_embedding": {"embedding": rng.standard_normal((5, 3)).astype(np.float32)},
    }


def test_param_groups():
    labels = params.param_groups(_tree(np.random.default_rng(0)))
    assert labels["visual"]["proj"] == params.BASE
    assert labels["ln_final"]["bias"] == params.BASE
    assert labels["prompt_learner"]["ctx"] == params.FAST
    assert labels["prompt_generation_layer"]["mlp"]["kernel"] == params.FAST
    assert labels["token_embedding"]["embedding"] == params.FROZEN


def test_tc_only_and_frozen_split():
    flat = params.flatten(_tree(np.random.default_rng(0)))
    tc_only = sorted(k for k in flat if params.is_tc_only(k))
    assert tc_only == [
        "prompt_generation_layer/mlp/kernel",
        "prompt_learner/ctx",
        "visual/transformer/resblocks_1/attn/local_global_bias_table",
    ]
    trainable, frozen = params.split_frozen(_tree(np.random.default_rng(0)))
    assert set(frozen) == {"token_embedding"}
    assert "token_embedding" not in trainable and "visual" in trainable
