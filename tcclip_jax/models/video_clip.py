"""CLIP, ViFi-CLIP and TC-CLIP behind one module, `VideoCLIP`.

Parameter tree (PyTorch CLIP names; see `tools/convert_torch_weights.py`):
  visual/...                       vision tower (`tcclip_jax.models.vision`)
  token_embedding/embedding        frozen in training (as in the published code)
  positional_embedding             [77, D], the first `context_length` rows are used
  transformer/resblocks_{i}/...    text blocks
  ln_final, text_projection, logit_scale
  prompt_learner/ctx               TC-CLIP only: learnable prompt vectors
  prompt_generation_layer/...      TC-CLIP only: VP

Methods split the forward pass so evaluation can cache what depends on the class names alone:
`encode_text(tokens)` once per class set, `encode_video(clips)` per batch, `logits(video, text)`.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.layers import Dtype, layer_norm
from tcclip_jax.models.text import PromptGenerationLayer, PromptLearner, TextTransformer
from tcclip_jax.models.vision import VisionTransformer


def _at_model_precision(method):
    """Run a VideoCLIP method with every matmul at the config's precision (`precision`)."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with jax.default_matmul_precision(self.config.precision(self.dtype)):
            return method(self, *args, **kwargs)

    return wrapped


def l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class VideoCLIP(nn.Module):
    """Video classifier by similarity of a video embedding to class-prompt embeddings.

    `model.apply(variables, clips [B, T, H, W, 3], tokens [C, L])` returns
    `(logits [B, C], intermediates dict)`.
    """

    config: ModelConfig
    dtype: Dtype = jnp.float32  # compute dtype; parameters stay as stored (float32).
    remat: bool = False  # rematerialise transformer blocks in the backward pass.
    # Vision blocks of the same kind as one `lax.scan` (compiles in a fraction of the time).
    scan: bool = False

    def setup(self):
        cfg = self.config
        self.visual = VisionTransformer(cfg, self.dtype, self.remat, self.scan)
        self.token_embedding = nn.Embed(
            cfg.vocab_size,
            cfg.text_width,
            embedding_init=nn.initializers.normal(0.02),
            dtype=self.dtype,
        )
        self.positional_embedding = self.param(
            "positional_embedding",
            nn.initializers.normal(0.01),
            (cfg.positional_table_length, cfg.text_width),
        )
        self.transformer = TextTransformer(
            cfg.text_width, cfg.text_layers, cfg.text_heads, self.dtype, self.remat
        )
        self.ln_final = layer_norm(self.dtype)
        self.text_projection = self.param(
            "text_projection",
            nn.initializers.normal(cfg.text_width**-0.5),
            (cfg.text_width, cfg.embed_dim),
        )
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(math.log(1 / 0.07)), ()
        )
        if cfg.is_temporal:
            self.prompt_learner = PromptLearner(cfg.prompt_length, cfg.text_width)
            self.prompt_generation_layer = PromptGenerationLayer(
                cfg.text_width, cfg.text_heads, self.dtype
            )

    # Vision -------------------------------------------------------------------------------

    @_at_model_precision
    def encode_video(self, clips: jax.Array, return_attention: bool = False) -> dict:
        """clips [B, T, H, W, 3] -> dict with `video_embedding` [B, E] (L2-normalised), the
        vision tower's outputs (`frame_embeddings`, `context_embeddings`, `seed_index`, ...)."""
        out = self.visual(clips, return_attention=return_attention)
        out["video_embedding"] = l2_normalize(out["frame_embeddings"].mean(axis=1))
        return out

    @_at_model_precision
    def encode_image(self, images: jax.Array) -> jax.Array:
        """CLIP's `encode_image`: images [B, H, W, 3] -> unnormalised embeddings [B, E].

        For CLIP and ViFi-CLIP; TC needs several frames to summarise context tokens from."""
        return self.visual(images[:, None])["frame_embeddings"][:, 0]

    # Text ---------------------------------------------------------------------------------

    def _embed_tokens(self, tokens: jax.Array) -> jax.Array:
        x = self.token_embedding(tokens)  # [C, L, D]
        if self.config.is_temporal:
            ctx = self.prompt_learner().astype(x.dtype)
            n = ctx.shape[0]
            x = x.at[:, 1 : 1 + n].set(jnp.broadcast_to(ctx, (x.shape[0], *ctx.shape)))
        return x + self.positional_embedding[: tokens.shape[-1]].astype(x.dtype)

    def _project_text(self, x: jax.Array) -> jax.Array:
        return self.ln_final(x) @ self.text_projection.astype(self.dtype)

    @_at_model_precision
    def encode_text(self, tokens: jax.Array) -> dict:
        """Everything that depends on the class names alone. tokens: [C, L] int.

        CLIP / ViFi-CLIP: `text_features` [C, E] (unnormalised) and `text_embedding` [C, E].
        TC-CLIP: `hidden` [C, L, D], the input of the last text block, and `eot` [C].
        """
        x = self._embed_tokens(tokens)
        eot = jnp.argmax(tokens, axis=-1)
        if self.config.is_temporal:
            return {"hidden": self.transformer.prefix(x), "eot": eot}
        x = self.transformer(x)
        features = self._project_text(x[jnp.arange(x.shape[0]), eot])
        return {"text_features": features, "text_embedding": l2_normalize(features)}

    @_at_model_precision
    def text_embeddings(self, text: dict, video: dict) -> jax.Array:
        """[B, C, E] L2-normalised class embeddings for each video (TC-CLIP: conditioned by VP)."""
        if not self.config.is_temporal:
            b = video["video_embedding"].shape[0]
            return jnp.broadcast_to(text["text_embedding"], (b, *text["text_embedding"].shape))
        prompts = self._learned_prompts(text)  # [n_ctx, D]
        context = jax.lax.stop_gradient(video["context_embeddings"])  # [B, k, E]
        prompts = jnp.broadcast_to(prompts, (context.shape[0], *prompts.shape))
        prompts = self.prompt_generation_layer(prompts, context.astype(self.dtype))
        return self._embeddings_with_prompts(text, prompts)

    @_at_model_precision
    def text_embeddings_without_vp(self, text: dict) -> jax.Array:
        """[C, E] L2-normalised class embeddings that need no video: CLIP / ViFi-CLIP's own;
        TC-CLIP's with its learned prompt vectors where VP would put the video-conditioned ones
        (what text-to-video search ranks a whole collection with before VP re-scores)."""
        if not self.config.is_temporal:
            return text["text_embedding"]
        return self._embeddings_with_prompts(text, self._learned_prompts(text)[None])[0]

    def _learned_prompts(self, text: dict) -> jax.Array:
        """[n_ctx, D] the prompt positions' input to the last text block: they see only SOT and
        the prompt vectors, so they are the same for every class."""
        return text["hidden"][0, 1 : 1 + self.config.prompt_length]

    def _embeddings_with_prompts(self, text: dict, prompts: jax.Array) -> jax.Array:
        """prompts [B, n_ctx, D] in the last text block -> [B, C, E] L2-normalised."""
        rows = self.transformer.last_block_eot(text["hidden"], text["eot"], prompts)
        return l2_normalize(self._project_text(rows))

    # Logits -------------------------------------------------------------------------------

    @_at_model_precision
    def logits(self, video: dict, text: dict) -> jax.Array:
        """exp(logit_scale) * cos(video, class) as [B, C] in >= float32."""
        emb = self.text_embeddings(text, video)
        sd = jnp.promote_types(self.dtype, jnp.float32)
        cos = jnp.einsum("BE,BCE->BC", video["video_embedding"].astype(sd), emb.astype(sd))
        return self.logit_multiplier() * cos

    def logit_multiplier(self) -> jax.Array:
        """exp(logit_scale) in >= float32: what every cosine is multiplied by in `logits`."""
        return jnp.exp(self.logit_scale.astype(jnp.promote_types(self.dtype, jnp.float32)))

    @_at_model_precision
    def __call__(
        self, clips: jax.Array, tokens: jax.Array, return_attention: bool = False
    ) -> tuple[jax.Array, dict]:
        video = self.encode_video(clips, return_attention=return_attention)
        text = self.encode_text(tokens)
        return self.logits(video, text), video
