"""Model variants built on a checkpoint's towers (models/variants.py)."""

import pytest

from tcclip_jax.models import ModelConfig, variants
from tests.models.test_models_initialization import TINY


def test_light_layers_and_variant_configs():
    assert variants.light_tc_layers(12) == (4, 8, 12)
    assert variants.light_tc_layers(24) == (8, 16, 24)
    base = ModelConfig(**TINY)
    light = variants.variant_config(base, "tc_clip_light")
    assert light.model == "tc_clip" and light.tc_layers == (2, 4, 6) and light.context_length == 30
    vifi = variants.variant_config(base, "vifi_clip", num_frames=8)
    assert vifi.model == "vifi_clip" and vifi.context_length == 77 and vifi.num_frames == 8
    with pytest.raises(ValueError, match="model_variant"):
        variants.variant_config(base, "tc-clip")
