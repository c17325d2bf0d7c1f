"""Hugging Face Hub model folders: a model shared as `config.json` + `model.safetensors` +
`README.md` (its model card), read from a folder or a Hub repo id.

`config.json` holds the model config and the preprocessing the weights expect (normalisation,
frames, resolution). `model.safetensors` holds the parameters under the released TC-CLIP /
ViFi-CLIP state-dict names (`module.*`, the layout table of `weights.layout`, as
`weights.pytorch.released_state_dict` writes them), plus `token_embedding.weight` (OpenAI CLIP's
name), which the released files leave to CLIP: so the folder is complete, and PyTorch code reads
its tensors with `safetensors.torch.load_file`. Parameters keep their dtype, so a folder read back
gives the same arrays, bit for bit.

A repo id (`owner/name`) is fetched by `huggingface_hub.snapshot_download` into its cache (with
`HF_HUB_OFFLINE=1`, only the cache is read). The orbax directory of `weights.checkpoint` stays the
training format; this one is for sharing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import numpy as np

from tcclip_jax.data.config import normalization_stats
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.params import check_params
from tcclip_jax.runtime import storage
from tcclip_jax.weights.checkpoint import MODEL_CONFIG_FILE, CheckpointError, check_new_directory
from tcclip_jax.weights.hf import hub_snapshot, read_json, read_safetensors
from tcclip_jax.weights.layout import ConversionError
from tcclip_jax.weights.pytorch import finetuned_params, released_state_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
LIBRARY = "tcclip_jax"
FORMAT_VERSION = 1
# The one tensor the released layout lacks, under OpenAI CLIP's name.
TOKEN_EMBEDDING_KEY = "token_embedding.weight"
INSTALL = "pip install 'tcclip-jax[hub]'"
# "owner/name" or "name", as the Hub spells repo ids.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def preprocessing(config: ModelConfig, normalization: str) -> dict:
    """What a caller does to frames before the model: uint8 RGB -> (x / 255 - mean) / std."""
    mean, std = normalization_stats(normalization)
    return {
        "normalization": normalization,
        "mean": list(mean),
        "std": list(std),
        "num_frames": config.num_frames,
        "image_size": config.image_resolution,
        "resize_short_side": int(256 / 224 * config.image_resolution),
    }


def save_pretrained(
    directory: str,
    config: ModelConfig,
    params: Any,
    normalization: str,
    card: str,
    info: dict | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write `params` as a Hub model folder (config.json, model.safetensors, README.md = `card`)
    into a new `directory`; `info` (the orbax directory's provenance record) goes into
    config.json. Written beside and then moved, so a failure leaves no partial folder. Returns
    the paths written."""
    try:
        from safetensors.numpy import save_file
    except ImportError as e:
        raise CheckpointError(f"writing a Hub folder needs safetensors ({INSTALL})") from e
    check_new_directory(directory, overwrite)
    flat = {k: np.asarray(v) for k, v in released_state_dict(config, params).items()}
    flat[TOKEN_EMBEDDING_KEY] = np.asarray(params["token_embedding"]["embedding"])
    flat = {k: np.require(v, requirements="C") for k, v in flat.items()}  # 0-d stays 0-d
    record = {
        "library_name": LIBRARY,
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "preprocessing": preprocessing(config, normalization),
    }
    if info is not None:
        record["provenance"] = info
    directory = os.path.abspath(directory)
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        save_file(flat, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        with open(os.path.join(tmp, CARD_FILE), "w") as f:
            f.write(card)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [os.path.join(directory, name) for name in FILES]


def is_hub_source(source: str) -> bool:
    """A folder with a config.json or model.safetensors and no orbax model config, or a name
    that is no local path and may be a Hub repo id."""
    if os.path.isdir(source):
        has = [os.path.isfile(os.path.join(source, n)) for n in (CONFIG_FILE, WEIGHTS_FILE)]
        return any(has) and not os.path.isfile(os.path.join(source, MODEL_CONFIG_FILE))
    return not os.path.exists(source) and _REPO_ID.fullmatch(source) is not None


def source_name(source: str) -> str:
    """How records name a model source: a path made absolute, a Hub repo id as given."""
    if os.path.exists(source) or storage.is_remote(source) or not _REPO_ID.fullmatch(source):
        return storage.abspath(source)
    return source


def resolve(source: str) -> str:
    """The folder of `source`: itself, or the snapshot of Hub repo id `source` in the local
    Hugging Face cache, downloaded first unless there (or unless `HF_HUB_OFFLINE=1`)."""

    def failure(where: str, e: Exception) -> str:
        from huggingface_hub import constants

        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        return f"no such model on the Hugging Face Hub or in its cache {where}{offline}: {reason}"

    return hub_snapshot(
        source, CheckpointError, "no such folder", INSTALL, failure, allow_patterns=list(FILES)
    )


def read_record(directory: str) -> tuple[ModelConfig, str]:
    """(model config, normalisation) from a Hub folder's config.json."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: not a tcclip_jax model folder (no {CONFIG_FILE})")
    record = read_json(path, CheckpointError)
    if not isinstance(record, dict) or "model_config" not in record:
        raise CheckpointError(
            f"{path}: not a tcclip_jax model config (no 'model_config'; a Hugging Face CLIP "
            "directory converts with tools/convert_torch_weights.py --clip)"
        )
    try:
        config = ModelConfig.from_dict(record["model_config"])
        normalization = record["preprocessing"]["normalization"]
        normalization_stats(normalization)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config: {type(e).__name__}: {e}") from None
    return config, normalization


def load_pretrained(source: str) -> tuple[ModelConfig, dict, str]:
    """(config, params as NumPy arrays, normalisation) of a Hub folder or repo id; a
    CheckpointError naming the file for a missing, damaged or incomplete one."""
    directory = resolve(source)
    config, normalization = read_record(directory)
    path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: has a {CONFIG_FILE} but no {WEIGHTS_FILE}")
    try:
        sd = read_safetensors(path)
        if TOKEN_EMBEDDING_KEY not in sd:
            raise CheckpointError(f"{path}: missing key {TOKEN_EMBEDDING_KEY}")
        embedding = sd.pop(TOKEN_EMBEDDING_KEY)
        params = finetuned_params(sd, config, path)
    except ConversionError as e:
        raise CheckpointError(str(e)) from None
    params["token_embedding"] = {"embedding": embedding}
    check_params(params, config, path, CheckpointError)
    return config, params, normalization
