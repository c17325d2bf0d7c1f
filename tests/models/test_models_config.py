"""`ModelConfig`'s checks: the errors a bad model config raises."""

import pytest

from tcclip_jax.models import ModelConfig


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(tc_layers=(1, 2)), r"tc_layers \[1\] out of range"),
        (dict(tc_layers=(3,)), r"tc_layers \[3\] out of range"),
        (dict(embed_dim=48), "text width 32 to projected context tokens of width 48"),
        (dict(context_tokens=17), "4 frames x 4 seeds cannot be merged into 17 context tokens"),
        (dict(seed_ratio=0.01), "selects no seed token"),
        (dict(vp_context_layer=3), "VP reads context tokens of vision block 3"),
        (dict(image_resolution=36), "not a multiple of the patch size 8"),
        (dict(vision_heads=3), "vision width 64 is not divisible by 3 heads"),
        (dict(model="tc-clip"), "model must be one of"),
        (dict(positional_embedding="time"), "positional_embedding must be"),
    ],
)
def test_config_errors(tiny_config, changes, match):
    with pytest.raises(ValueError, match=match):
        tiny_config.replace(**changes)


def test_matmul_precision_is_checked():
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        ModelConfig(matmul_precision="fastest")
