"""Conversion of a user's CLIP (+ TC-CLIP) files into our model config and parameter tree.

CLIP comes as OpenAI's files (`weights.pytorch`) or a Hugging Face directory / cached model id
(`weights.hf`, renamed to OpenAI's layout first); a released TC-CLIP / ViFi-CLIP checkpoint is a
PyTorch file. Every converted tree is checked against the shapes the model expects.
"""

from __future__ import annotations

from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.initialization import init_from_clip
from tcclip_jax.models.params import check_params
from tcclip_jax.weights import hf
from tcclip_jax.weights.pytorch import (
    ConversionError,
    clip_architecture,
    clip_params,
    finetuned_params,
    read_torch_file,
)


def convert(
    clip_path: str,
    *,
    tcclip_path: str | None = None,
    seed: int = 0,
    **options,
) -> tuple[ModelConfig, dict]:
    """Convert CLIP weights (+ optionally a released TC-CLIP / ViFi-CLIP checkpoint).

    `clip_path`: OpenAI CLIP (TorchScript archive or state dict), or a Hugging Face CLIP model
    directory or a model id in the local Hugging Face cache (`weights.hf`).

    `options` are ModelConfig fields (model, num_frames, positional_embedding, context_tokens,
    seed_ratio, merge_r, tc_layers, context_length, ...); tower sizes come from the CLIP weights.
    Returns (config, params as NumPy arrays).
    """
    if hf.is_hf_source(clip_path):
        clip_sd, arch = hf.read_hf_clip(clip_path)  # OpenAI layout, heads from config.json.
    else:
        clip_sd = read_torch_file(clip_path)
        arch = clip_architecture(clip_sd, clip_path)
    if options.get("model") == "clip" or options.get("model") == "vifi_clip":
        options.setdefault("context_length", arch["positional_table_length"])
    try:
        cfg = ModelConfig(**{**arch, **options})
    except (TypeError, ValueError) as e:
        raise ConversionError(f"invalid model options: {e}") from e
    clip = clip_params(clip_sd, cfg, clip_path)
    if tcclip_path is None:
        try:
            params = init_from_clip(clip, cfg, seed)
        except ValueError as e:
            raise ConversionError(str(e)) from e
        check_params(params, cfg, clip_path, ConversionError)
        return cfg, params
    params = finetuned_params(read_torch_file(tcclip_path), cfg, tcclip_path)
    params["token_embedding"] = clip["token_embedding"]
    check_params(params, cfg, tcclip_path, ConversionError)
    return cfg, params


def source_normalization(tcclip_path: str | None) -> str:
    """The input normalisation converted weights expect: released TC-CLIP / ViFi-CLIP checkpoints
    were trained and evaluated with ImageNet's statistics; CLIP (OpenAI or Hugging Face, and
    TC-CLIP initialised from it) with CLIP's own."""
    return "imagenet" if tcclip_path else "clip"
