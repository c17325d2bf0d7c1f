"""The text side every consumer of a model shares: prompt tokens of class names, and the jitted
text encoder whose output (the class-embedding cache) depends on class names and weights only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.tokenizer import tokenize_prompts, trim_padding
from tcclip_jax.models.video_clip import VideoCLIP


def prompt_tokens(config: ModelConfig, classnames: Sequence[str], trim: bool = True) -> np.ndarray:
    """Prompt token ids [C, L] of `classnames` (normalised as the published code does).

    With `trim`, the padding after the longest prompt's EOT is dropped: exact (the text tower is
    causal and reads the EOT row), and the text tower runs on ~30 tokens instead of 77.
    """
    tokens = tokenize_prompts(
        list(classnames), template=config.prompt_template, context_length=config.context_length
    )
    return trim_padding(tokens) if trim else tokens


def text_encoder(model: VideoCLIP, **jit_kwargs) -> Callable[[Any, jax.Array], Any]:
    """`encode_text(params, tokens)` under jit: the class-embedding cache of a class set."""
    return jax.jit(
        lambda params, tokens: model.apply({"params": params}, tokens, method="encode_text"),
        **jit_kwargs,
    )
