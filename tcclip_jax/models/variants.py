"""Model variants a training run can build on any checkpoint's towers (`config.model_variant`).

* `tc_clip`: TC in every vision block after the first, VP, learnable prompts (the released model);
* `tc_clip_light`: TC-CLIP§ of the paper, TC at blocks L/3, 2L/3 and L only ((4, 8, 12) for
  ViT-B); our reading of the paper, which the released code does not contain (see
  `ModelConfig.tc_layers`);
* `vifi_clip`: the same towers with per-frame attention, no prompts, no VP.
"""

from __future__ import annotations

import dataclasses

from tcclip_jax.models.config import ModelConfig

VARIANTS = ("tc_clip", "tc_clip_light", "vifi_clip")


def light_tc_layers(num_layers: int) -> tuple[int, ...]:
    """TC-CLIP§'s blocks: L/3, 2L/3 and L (rounded; block 1 cannot read context tokens)."""
    return tuple(sorted({b for b in (round(num_layers * i / 3) for i in (1, 2, 3)) if b >= 2}))


def variant_config(base: ModelConfig, variant: str, **overrides) -> ModelConfig:
    """`base` with the architecture of `variant` and field `overrides` (None = keep)."""
    if variant not in VARIANTS:
        raise ValueError(f"config.model_variant must be one of {VARIANTS}, got {variant!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    layers = overrides.get("vision_layers", base.vision_layers)
    changes = {
        "tc_clip": {"model": "tc_clip", "tc_layers": None},
        "tc_clip_light": {"model": "tc_clip", "tc_layers": light_tc_layers(layers)},
        "vifi_clip": {"model": "vifi_clip", "tc_layers": None},
    }[variant]
    # TC-CLIP prompts with 30 tokens; ViFi-CLIP with CLIP's full 77.
    changes["context_length"] = 30 if variant != "vifi_clip" else base.positional_table_length
    return dataclasses.replace(base, **{**changes, **overrides})
