"""Hugging Face CLIP checkpoints in and out (the `transformers.CLIPModel` layout).

In: a directory holding `config.json` and `model.safetensors` (read as NumPy, without torch) or
`pytorch_model.bin` (read with torch), sharded or not, or a model id such as
`openai/clip-vit-base-patch16` found in the local Hugging Face cache (nothing is downloaded).
The keys are renamed to OpenAI's state-dict layout (q/k/v concatenated into `in_proj`, the two
projections transposed), and `weights.pytorch` turns that into our parameters with the one
layout table (`weights.layout`). The architecture comes from `config.json` and is checked
against the tensors.

Out: `export_hf` writes the CLIP towers of one of our checkpoints as a directory that
`transformers.CLIPModel.from_pretrained` loads: our parameters -> OpenAI layout (the layout
table of `weights.layout`, read backwards) -> Hugging Face keys (the table here, read backwards).

Text pooling: our text tower reads the row of the largest token id, OpenAI's EOT (49407, the
last id). transformers pools at the argmax of the ids for legacy configs (`eos_token_id=2`) and
at the first `eos_token_id` otherwise; both agree with ours when that id is the vocabulary's
last, so other values are refused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from tcclip_jax.models.config import ModelConfig
from tcclip_jax.weights.pytorch import (
    ConversionError,
    StateDict,
    clip_architecture,
    count_blocks,
    openai_state_dict,
    read_torch_file,
)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
INDEX_SUFFIX = ".index.json"  # sharded checkpoints: {"weight_map": {key: shard file}}.

# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults, for fields a config.json
# leaves out (tests/weights/test_weights_hf.py checks them against the installed transformers).
TEXT_DEFAULTS = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=49406, eos_token_id=49407,
)  # fmt: skip
VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)  # fmt: skip
PROJECTION_DIM_DEFAULT = 512
LOGIT_SCALE_INIT = 2.6592  # CLIPConfig.logit_scale_init_value, ln(1 / 0.07).

# The rename table: OpenAI state-dict key <-> transformers CLIPModel key, read both ways.
_TOP = (
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ("text_projection", "text_projection.weight"),
    ("logit_scale", "logit_scale"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),  # transformers' spelling.
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
    ("visual.proj", "visual_projection.weight"),
)
# OpenAI multiplies by these ([in, out]); transformers stores them as Linear weights ([out, in]).
_TRANSPOSED = ("text_projection", "visual.proj")
_TOWERS = (
    ("transformer.resblocks.", "text_model.encoder.layers."),
    ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
)
_BLOCK = tuple(
    (f"{openai}.{part}", f"{hf}.{part}")
    for openai, hf in (
        ("attn.out_proj", "self_attn.out_proj"),
        ("ln_1", "layer_norm1"),
        ("ln_2", "layer_norm2"),
        ("mlp.c_fc", "mlp.fc1"),
        ("mlp.c_proj", "mlp.fc2"),
    )
    for part in ("weight", "bias")
)
# OpenAI's fused in-projection is q, k, v stacked along the output axis.
_IN_PROJ = tuple(
    (f"attn.in_proj_{part}", tuple(f"self_attn.{n}_proj.{part}" for n in "qkv"))
    for part in ("weight", "bias")
)
# Buffers older transformers versions saved (0, 1, 2, ...); not parameters.
_POSITION_IDS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


# Key layouts ---------------------------------------------------------------------------------


def hf_to_openai(sd: StateDict, source: str) -> StateDict:
    """An OpenAI-layout CLIP state dict from a transformers `CLIPModel` state dict."""
    for tower, other in (("text_model", "vision"), ("vision_model", "text")):
        if not any(k.startswith(tower + ".") for k in sd):
            raise ConversionError(
                f"{source}: no {tower}.* keys: a {other}-only checkpoint, but CLIP, ViFi-CLIP and "
                "TC-CLIP need both towers (a CLIPModel)"
            )
    used = set()

    def take(key: str) -> np.ndarray:
        if key not in sd:
            raise ConversionError(f"{source}: missing key {key}")
        used.add(key)
        return sd[key]

    out = {o: take(h).T if o in _TRANSPOSED else take(h) for o, h in _TOP}
    for openai_prefix, hf_prefix in _TOWERS:
        for i in range(count_blocks(sd, hf_prefix)):
            o, h = f"{openai_prefix}{i}.", f"{hf_prefix}{i}."
            for openai_key, hf_key in _BLOCK:
                out[o + openai_key] = take(h + hf_key)
            for openai_key, hf_keys in _IN_PROJ:
                out[o + openai_key] = np.concatenate([take(h + k) for k in hf_keys])
    for key in _POSITION_IDS:
        if key in sd:
            ids = np.asarray(sd[key]).reshape(-1)
            if not np.array_equal(ids, np.arange(ids.size)):
                raise ConversionError(f"{source}: {key} is not 0, 1, 2, ...: not supported")
            used.add(key)
    unused = sorted(set(sd) - used)
    if unused:
        raise ConversionError(f"{source}: unexpected keys for a CLIPModel: {unused[:20]}")
    return out


def openai_to_hf(sd: StateDict) -> StateDict:
    """The transformers `CLIPModel` state dict of an OpenAI-layout CLIP state dict."""
    out = {h: sd[o].T if o in _TRANSPOSED else sd[o] for o, h in _TOP}
    for openai_prefix, hf_prefix in _TOWERS:
        for i in range(count_blocks(sd, openai_prefix)):
            o, h = f"{openai_prefix}{i}.", f"{hf_prefix}{i}."
            for openai_key, hf_key in _BLOCK:
                out[h + hf_key] = sd[o + openai_key]
            for openai_key, hf_keys in _IN_PROJ:
                for k, part in zip(hf_keys, np.split(sd[o + openai_key], 3), strict=True):
                    out[h + k] = part
    return out


# Reading -------------------------------------------------------------------------------------

# A Hugging Face model id: "name" or "owner/name".
_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".safetensors", ".npz")


def is_hf_source(path: str) -> bool:
    """A directory, or a name that is no file and may be a model id in the local HF cache."""
    if os.path.isdir(path):
        return True
    if os.path.exists(path) or path.endswith(_FILE_SUFFIXES):
        return False
    return _MODEL_ID.fullmatch(path) is not None


def hub_snapshot(
    source: str,
    error: type[Exception],
    missing: str,
    install: str,
    failure: Callable[[str, Exception], str],
    **download: Any,
) -> str:
    """`source` itself if it is a folder, else the snapshot folder of Hub repo id `source`
    (`huggingface_hub.snapshot_download(source, **download)`). Errors are one `error` line:
    "`source`: `missing`, and `failure(the cache folder looked in, what huggingface_hub
    raised)`", or what to install without huggingface_hub."""
    if os.path.isdir(source):
        return source
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError as e:
        raise error(
            f"{source}: {missing} (reading it as a Hugging Face Hub repo id needs "
            f"huggingface_hub: {install})"
        ) from e
    try:
        return snapshot_download(source, **download)
    except Exception as e:  # noqa: BLE001 - offline, not cached, unknown repo, bad id: one line.
        where = os.path.join(constants.HF_HUB_CACHE, "models--" + source.replace("/", "--"))
        raise error(f"{source}: {missing}, and {failure(where, e)}") from None


def resolve(source: str) -> str:
    """The model directory: `source` itself, or the snapshot of that model id in the local HF
    cache. Nothing is downloaded."""
    return hub_snapshot(
        source,
        ConversionError,
        "no such file or directory",
        "pip install 'tcclip-jax[hf]'",
        lambda where, _: (
            f"no such model in the local Hugging Face cache (looked in {where}; nothing is "
            "downloaded)"
        ),
        local_files_only=True,
    )


def read_json(path: str, error: type[Exception]) -> Any:
    """The JSON value in `path` (a config.json); `error` naming the file if it cannot be read."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def read_hf_config(directory: str) -> tuple[dict, dict, dict]:
    """(config.json, its text config, its vision config), defaults filled in; CLIPModel only."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ConversionError(f"{directory}: not a Hugging Face model directory (no {CONFIG_FILE})")
    config = read_json(path, ConversionError)
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: not a JSON object")
    model_type = config.get("model_type")
    if model_type in ("clip_vision_model", "clip_text_model"):
        tower = model_type.split("_")[1]
        raise ConversionError(
            f"{path}: model_type {model_type!r} is a {tower}-only CLIP checkpoint; CLIP, ViFi-CLIP "
            "and TC-CLIP need both towers (model_type 'clip', a CLIPModel)"
        )
    if model_type != "clip":
        raise ConversionError(
            f"{path}: model_type {model_type!r} is not a CLIP model (expected 'clip', a CLIPModel)"
        )
    # Old configs carry `text_config_dict` / `vision_config_dict`, which win, as in transformers.
    text = {**TEXT_DEFAULTS, **(config.get("text_config") or {})}
    text.update(config.get("text_config_dict") or {})
    vision = {**VISION_DEFAULTS, **(config.get("vision_config") or {})}
    vision.update(config.get("vision_config_dict") or {})
    return config, text, vision


def read_safetensors(path: str) -> StateDict:
    try:
        import safetensors
        from safetensors import safe_open
    except ImportError as e:
        raise ConversionError(
            f"{path}: reading safetensors needs the safetensors package (pip install "
            "'tcclip-jax[hf]')"
        ) from e
    out = {}
    try:
        with safe_open(path, framework="np") as f:
            keys = list(f.keys())
            bf16 = [k for k in keys if f.get_slice(k).get_dtype() == "BF16"]
            for key in keys:
                if key not in bf16:
                    out[key] = f.get_tensor(key)
        if bf16:  # NumPy has no bfloat16: read those through JAX, widened to float32.
            with safe_open(path, framework="flax") as f:
                for key in bf16:
                    out[key] = np.asarray(f.get_tensor(key)).astype(np.float32)
    except (OSError, safetensors.SafetensorError) as e:
        raise ConversionError(f"{path}: not a safetensors file ({e})".splitlines()[0]) from e
    return out


def _read_torch_bin(path: str) -> StateDict:
    try:
        return read_torch_file(path)
    except ModuleNotFoundError as e:
        raise ConversionError(
            f"{path}: reading a {TORCH_FILE} needs torch (pip install 'tcclip-jax[convert]'); a "
            f"{SAFETENSORS_FILE} does not"
        ) from e


def read_hf_weights(directory: str) -> StateDict:
    """The state dict in `model.safetensors` or `pytorch_model.bin` (or their shards)."""
    for name, reader in ((SAFETENSORS_FILE, read_safetensors), (TORCH_FILE, _read_torch_bin)):
        path, index = os.path.join(directory, name), os.path.join(directory, name + INDEX_SUFFIX)
        if os.path.isfile(path):
            return reader(path)
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ConversionError(f"{index}: not a shard index ({type(e).__name__})") from e
            sd = {}
            for shard in shards:
                sd.update(reader(os.path.join(directory, shard)))
            return sd
    raise ConversionError(f"{directory}: holds no {SAFETENSORS_FILE} or {TORCH_FILE} (nor shards)")


def _square(value, field: str, path: str) -> int:
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConversionError(f"{path}: {field} is {value!r}; expected one integer (square)")
    return value


# ModelConfig field -> (config.json field, the transformers key whose shape tells it).
_FIELDS = {
    "vision_width": ("vision_config.hidden_size", "vision_model.post_layernorm.weight"),
    "vision_patch_size": (
        "vision_config.patch_size",
        "vision_model.embeddings.patch_embedding.weight",
    ),
    "image_resolution": (
        "vision_config.image_size",
        "vision_model.embeddings.position_embedding.weight",
    ),
    "vision_layers": ("vision_config.num_hidden_layers", "vision_model.encoder.layers.*"),
    "text_width": ("text_config.hidden_size", "text_model.final_layer_norm.weight"),
    "text_layers": ("text_config.num_hidden_layers", "text_model.encoder.layers.*"),
    "vocab_size": ("text_config.vocab_size", "text_model.embeddings.token_embedding.weight"),
    "positional_table_length": (
        "text_config.max_position_embeddings",
        "text_model.embeddings.position_embedding.weight",
    ),
    "embed_dim": ("projection_dim", "text_projection.weight"),
}


def hf_architecture(config: dict, text: dict, vision: dict, sd: StateDict, path: str) -> dict:
    """ModelConfig tower fields from config.json, checked against the (OpenAI-layout) tensors."""
    for name, sub in (("text_config", text), ("vision_config", vision)):
        if sub["hidden_act"] != "quick_gelu":
            raise ConversionError(
                f"{path}: {name}.hidden_act is {sub['hidden_act']!r}; CLIP's towers use "
                "'quick_gelu'"
            )
        if sub["layer_norm_eps"] != 1e-5:
            raise ConversionError(
                f"{path}: {name}.layer_norm_eps is {sub['layer_norm_eps']}; CLIP's is 1e-05"
            )
        if sub["intermediate_size"] != 4 * sub["hidden_size"]:
            raise ConversionError(
                f"{path}: {name}.intermediate_size is {sub['intermediate_size']}; CLIP's MLP is "
                f"4 x hidden_size = {4 * sub['hidden_size']}"
            )
    if vision["num_channels"] != 3:
        raise ConversionError(f"{path}: vision_config.num_channels is {vision['num_channels']}")
    eot = text["vocab_size"] - 1
    if text["eos_token_id"] not in (2, eot):
        raise ConversionError(
            f"{path}: text_config.eos_token_id is {text['eos_token_id']!r}; transformers pools "
            f"text there, this model at the largest id (EOT {eot}): only 2 (legacy) or {eot} agree"
        )
    arch = dict(
        embed_dim=config.get("projection_dim", PROJECTION_DIM_DEFAULT),
        image_resolution=_square(vision["image_size"], "vision_config.image_size", path),
        vision_patch_size=_square(vision["patch_size"], "vision_config.patch_size", path),
        vision_width=vision["hidden_size"],
        vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"],
        vocab_size=text["vocab_size"],
        text_width=text["hidden_size"],
        text_layers=text["num_hidden_layers"],
        text_heads=text["num_attention_heads"],
        positional_table_length=text["max_position_embeddings"],
    )
    found = clip_architecture(sd, path)
    for field, (config_field, key) in _FIELDS.items():
        if arch[field] != found[field]:
            raise ConversionError(
                f"{path}: {config_field} is {arch[field]!r}, but the weights have "
                f"{found[field]} ({key})"
            )
    return arch


def read_hf_clip(source: str) -> tuple[StateDict, dict]:
    """(OpenAI-layout state dict, ModelConfig tower fields) of a Hugging Face CLIP directory or
    cached model id."""
    directory = resolve(source)
    config, text, vision = read_hf_config(directory)
    sd = hf_to_openai(read_hf_weights(directory), directory)
    arch = hf_architecture(config, text, vision, sd, os.path.join(directory, CONFIG_FILE))
    return sd, arch


# Writing -------------------------------------------------------------------------------------


def hf_config(cfg: ModelConfig, dtype: str = "float32") -> dict:
    """A transformers CLIPConfig (as config.json) for our towers."""
    common = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=cfg.embed_dim)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "dtype": dtype,
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": LOGIT_SCALE_INIT,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.text_width,
            "intermediate_size": 4 * cfg.text_width,
            "num_hidden_layers": cfg.text_layers,
            "num_attention_heads": cfg.text_heads,
            "max_position_embeddings": cfg.positional_table_length,
            # Pool at the first EOT, CLIP's last id (the current transformers convention).
            "bos_token_id": cfg.vocab_size - 2,
            "eos_token_id": cfg.vocab_size - 1,
            "pad_token_id": TEXT_DEFAULTS["pad_token_id"],
            **common,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": cfg.vision_width,
            "intermediate_size": 4 * cfg.vision_width,
            "num_hidden_layers": cfg.vision_layers,
            "num_attention_heads": cfg.vision_heads,
            "image_size": cfg.image_resolution,
            "patch_size": cfg.vision_patch_size,
            "num_channels": 3,
            **common,
        },
    }


def export_hf(
    directory: str, cfg: ModelConfig, params: dict, source: str = "checkpoint"
) -> list[str]:
    """Write `config.json` and `model.safetensors` for the CLIP towers of `params` into a new
    `directory`. Returns the parameter paths left out (see `weights.pytorch.openai_state_dict`)."""
    try:
        from safetensors.numpy import save_file
    except ImportError as e:
        raise ConversionError(
            "writing a Hugging Face directory needs safetensors (pip install 'tcclip-jax[hf]')"
        ) from e
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise ConversionError(f"{directory} exists and is not empty; choose a new directory")
    openai_sd, left_out = openai_state_dict(cfg, params, source)
    sd = openai_to_hf(openai_sd)
    dtype = "float64" if any(v.dtype == np.float64 for v in sd.values()) else "float32"
    sd = {k: np.require(v, dtype, "C") for k, v in sd.items()}  # 0-d stays 0-d
    os.makedirs(directory, exist_ok=True)
    save_file(sd, os.path.join(directory, SAFETENSORS_FILE), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(hf_config(cfg, dtype), f, indent=2, sort_keys=True)
        f.write("\n")
    return left_out
