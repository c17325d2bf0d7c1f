"""Carrying checkpoint weights into model variants (models/initialization.py)."""

import flax.traverse_util
import numpy as np
import pytest

from tcclip_jax.models import ModelConfig, initialization
from tcclip_jax.models.params import expected_shapes
from tcclip_jax.models.tokenizer import get_tokenizer
from tcclip_jax.models.variants import variant_config

TINY = dict(
    vision_layers=6,
    text_layers=2,
    num_frames=4,
    vision_width=32,
    vision_heads=2,
    text_width=32,
    text_heads=2,
    embed_dim=32,
    image_resolution=32,
    vision_patch_size=8,
    context_tokens=4,
)


def fake_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random weights of the right shapes (no model init, so no compilation)."""
    rng = np.random.default_rng(seed)
    flat = {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(cfg).items()}
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def flat(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


def bias_blocks(params) -> set[int]:
    return {
        int(k.split("resblocks_")[1].split("/")[0]) + 1
        for k in flat(params)
        if k.endswith("local_global_bias_table")
    }


def test_clip_checkpoint_initialises_tc_clip_as_the_published_code():
    clip_cfg = ModelConfig(model="clip", context_length=77, **TINY)
    clip = fake_params(clip_cfg)
    cfg = variant_config(clip_cfg, "tc_clip", positional_embedding="joint")
    params = initialization.adapt_params(clip_cfg, clip, cfg)
    got, src = flat(params), flat(clip)
    for key, value in src.items():
        if key != "visual/positional_embedding":
            np.testing.assert_array_equal(got[key], value, err_msg=key)
    # joint positions: CLIP's table for every frame.
    pos = got["visual/positional_embedding"]
    assert pos.shape[0] == 4 and all(
        np.array_equal(p, src["visual/positional_embedding"]) for p in pos
    )
    # prompt vectors: token embeddings of "a photo of a"; VP: a copy of the last text block.
    words = get_tokenizer().encode("a photo of a")
    np.testing.assert_array_equal(
        params["prompt_learner"]["ctx"], clip["token_embedding"]["embedding"][words]
    )
    vp = flat(params["prompt_generation_layer"])
    last = flat(clip["transformer"]["resblocks_1"])
    for key, value in last.items():
        np.testing.assert_array_equal(vp[key], value)
    np.testing.assert_array_equal(vp["ln_1_kv/scale"], last["ln_1/scale"])
    assert bias_blocks(params) == {2, 3, 4, 5, 6}


def test_tc_clip_to_light_keeps_the_bias_tables_of_its_tc_blocks():
    full_cfg = ModelConfig(**TINY)
    full = fake_params(full_cfg)
    light_cfg = variant_config(full_cfg, "tc_clip_light")
    light = initialization.adapt_params(full_cfg, full, light_cfg)
    assert bias_blocks(light) == {2, 4, 6}
    got = flat(light)
    for key, value in got.items():  # everything, bias tables included, comes from the checkpoint
        np.testing.assert_array_equal(value, flat(full)[key], err_msg=key)

    # Back to the full model: blocks 2, 4, 6 load, blocks 3 and 5 are initialised afresh.
    back = flat(initialization.adapt_params(light_cfg, light, full_cfg, seed=1))
    table = "visual/transformer/resblocks_{}/attn/local_global_bias_table"
    for block in (2, 4, 6):
        np.testing.assert_array_equal(back[table.format(block - 1)], got[table.format(block - 1)])
    for block in (3, 5):
        fresh = back[table.format(block - 1)]
        assert fresh.shape == (2, 1, 2) and np.abs(fresh).max() <= 0.04  # trunc-normal(0.02)


def test_tc_clip_to_vifi_clip_drops_prompting():
    cfg = ModelConfig(**TINY)
    vifi_cfg = variant_config(cfg, "vifi_clip")
    params = initialization.adapt_params(cfg, fake_params(cfg), vifi_cfg)
    assert "prompt_learner" not in params and "prompt_generation_layer" not in params
    assert not bias_blocks(params)


def test_joint_checkpoint_into_space_model_fails_with_the_field():
    cfg = ModelConfig(positional_embedding="joint", **TINY)
    with pytest.raises(ValueError, match="positional_embedding"):
        initialization.adapt_params(cfg, fake_params(cfg), ModelConfig(**TINY))


def test_random_joint_positions_are_space_plus_time():
    cfg = ModelConfig(positional_embedding="joint", **{**TINY, "vision_layers": 2})
    pos = initialization.random_params(cfg, seed=0)["visual"]["positional_embedding"]  # [T, N, W]
    offsets = pos - pos[:1]
    # One spatial table for all frames, plus one vector per frame shared by its tokens.
    np.testing.assert_allclose(offsets, np.broadcast_to(offsets[:, :1], offsets.shape), atol=1e-6)
    assert np.all(np.abs(offsets[1:, 0]).max(axis=-1) > 0)
