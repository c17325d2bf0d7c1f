"""One-call inference: `Predictor.from_checkpoint(DIR).logits(clips, classnames)`.

Class embeddings depend on the class names and the weights only, so they are computed once per
class list and cached; each call then runs the vision tower and (TC-CLIP) VP + the EOT row of
the last text block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tcclip_jax.checkpoints import load_model
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.video_clip import VideoCLIP
from tcclip_jax.tokenizer import tokenize_prompts, trim_padding


def _dtype(dtype: Any) -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "float64 inference needs x64: call jax.config.update('jax_enable_x64', True) first"
        )
    return dtype


class Predictor:
    """A model and its weights, ready to classify clips against any class names."""

    def __init__(self, config: ModelConfig, params: Any, dtype: Any = jnp.float32):
        self.config = config
        self.dtype = _dtype(dtype)
        # float64 runs everything in float64; otherwise parameters stay float32 (master copy)
        # and `dtype` is the compute dtype.
        param_dtype = jnp.float64 if self.dtype == jnp.float64 else jnp.float32
        self.params = jax.tree.map(lambda p: jnp.asarray(p, param_dtype), params)
        self.model = VideoCLIP(config, dtype=self.dtype)
        self._encode_text = jax.jit(
            lambda p, t: self.model.apply({"params": p}, t, method="encode_text")
        )
        self._encode_video = jax.jit(
            lambda p, c, attn: self.model.apply(
                {"params": p}, c, return_attention=attn, method="encode_video"
            ),
            static_argnums=2,
        )
        self._logits = jax.jit(
            lambda p, v, t: self.model.apply({"params": p}, v, t, method="logits")
        )
        self._text_cache: dict[tuple[str, ...], Any] = {}

    @classmethod
    def from_checkpoint(cls, directory: str, dtype: Any = jnp.float32) -> Predictor:
        config, params = load_model(directory)
        return cls(config, params, dtype=dtype)

    def tokens(self, classnames: Sequence[str]) -> np.ndarray:
        """Prompt token ids [C, L] (class names normalised as the published code does)."""
        cfg = self.config
        return tokenize_prompts(
            list(classnames), template=cfg.prompt_template, context_length=cfg.context_length
        )

    def encode_classes(self, classnames: Sequence[str]) -> Any:
        key = tuple(classnames)
        if key not in self._text_cache:
            self._text_cache[key] = self._encode_text(
                self.params, trim_padding(self.tokens(classnames))
            )
        return self._text_cache[key]

    def encode_video(self, clips: np.ndarray, return_attention: bool = False) -> dict:
        """clips [B, T, H, W, 3] normalised -> the vision outputs (see VideoCLIP.encode_video)."""
        clips = jnp.asarray(clips, self.dtype)
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"clips must be [B, T, H, W, 3], got shape {tuple(clips.shape)}")
        return self._encode_video(self.params, clips, return_attention)

    def logits(self, clips: np.ndarray, classnames: Sequence[str]) -> np.ndarray:
        """[B, n_cls] logits, exp(logit_scale) * cosine, as NumPy."""
        video = self.encode_video(clips)
        return np.asarray(self._logits(self.params, video, self.encode_classes(classnames)))

    def predict(self, clips: np.ndarray, classnames: Sequence[str]) -> tuple[dict, np.ndarray]:
        """(vision outputs, logits): for callers that also want embeddings or seed indices."""
        video = self.encode_video(clips)
        logits = self._logits(self.params, video, self.encode_classes(classnames))
        return jax.tree.map(np.asarray, video), np.asarray(logits)
