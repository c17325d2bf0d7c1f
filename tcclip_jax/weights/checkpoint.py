"""Self-describing model checkpoint directories: `model_config.json` + orbax `params/`, and
`preprocessing.json`, the input normalisation the weights expect (`load_normalization`).

Written by `tools/convert_torch_weights.py` and by training (best / final weights); read by
training (initial weights), evaluation, inference and WiSE-FT. Parameters keep their stored
dtype (float32, or float64 from a float64 source) and come back as NumPy arrays, so a float64
checkpoint stays float64 whether or not JAX runs with x64. Directories may be local or on
object storage (`gs://`, `runtime.storage`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from tcclip_jax.data.config import normalization_stats
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.params import check_params
from tcclip_jax.runtime import storage
from tcclip_jax.runtime.errors import UserError

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
INFO_FILE = "info.json"
PREPROCESSING_FILE = "preprocessing.json"


class CheckpointError(UserError):
    """A path that is not a usable model checkpoint directory."""


def check_new_directory(directory: str, overwrite: bool = False) -> None:
    """Raise a CheckpointError unless `directory` can be written as a new checkpoint: absent
    or empty (or any directory, with `overwrite`), inside a folder this process may write."""
    storage.check(directory)
    directory = storage.abspath(directory)
    if storage.isfile(directory):
        raise CheckpointError(f"{directory} exists and is not a directory")
    if storage.isdir(directory) and storage.listdir(directory) and not overwrite:
        raise CheckpointError(
            f"{directory} is not empty; choose a new directory (or --overwrite to replace it)"
        )
    if storage.is_remote(directory):
        return  # object storage: permissions show on the first write
    parent = os.path.dirname(directory)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"{directory}: cannot write in {parent}")


def save_model(
    directory: str,
    config: ModelConfig,
    params: Any,
    info: dict | None = None,
    normalization: str | None = None,
    primary: bool | None = None,
) -> None:
    """Write `config`, `params` (any pytree of arrays), optional provenance `info` and the
    `normalization` (a `data.config.NORMALIZATIONS` name) the weights expect, if known, into a
    new (absent or empty) directory.

    `primary=None` (one process) checks the directory first and writes everything; in a
    multi-process export (`train.checkpoints.export_model`, which checks the directory on every
    process first) every process writes its part of the parameters and only the `primary` one
    the small files."""
    if normalization is not None:
        mean, std = normalization_stats(normalization)
    directory = storage.abspath(directory)
    if primary is None:
        check_new_directory(directory)
    storage.makedirs(directory)
    params = jax.tree.map(np.asarray, jax.device_get(params))
    ocp.PyTreeCheckpointer().save(storage.join(directory, PARAMS_DIR), params)
    if primary is False:
        return
    storage.write_text(storage.join(directory, MODEL_CONFIG_FILE), config.to_json())
    if info is not None:
        storage.write_text(
            storage.join(directory, INFO_FILE), json.dumps(info, indent=2, sort_keys=True)
        )
    if normalization is not None:
        record = {"normalization": normalization, "mean": list(mean), "std": list(std)}
        storage.write_text(
            storage.join(directory, PREPROCESSING_FILE), json.dumps(record, indent=2)
        )


def load_normalization(directory: str) -> str:
    """The input normalisation the checkpoint's weights expect: the name its preprocessing.json
    records. Checkpoints written before that record: 'imagenet' if converted from a released
    TC-CLIP / ViFi-CLIP file (info.json names it under 'tcclip'), else 'clip', which this project
    used for everything until then."""
    path = storage.join(directory, PREPROCESSING_FILE)
    if storage.isfile(path):
        try:
            name = json.loads(storage.read_text(path))["normalization"]
            normalization_stats(name)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: invalid preprocessing record: {e}") from e
        return name
    info = storage.join(directory, INFO_FILE)
    if storage.isfile(info) and "tcclip" in json.loads(storage.read_text(info)):
        return "imagenet"
    return "clip"


def load_config(directory: str) -> ModelConfig:
    try:
        storage.check(directory)
    except storage.StorageError as e:
        raise CheckpointError(str(e)) from None
    path = storage.join(directory, MODEL_CONFIG_FILE)
    if not storage.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not storage.isfile(path):
        raise CheckpointError(
            f"{directory} is not a tcclip_jax checkpoint (no {MODEL_CONFIG_FILE}); convert PyTorch "
            "weights with tools/convert_torch_weights.py"
        )
    try:
        return ModelConfig.from_dict(json.loads(storage.read_text(path)))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from e


def load_model(directory: str) -> tuple[ModelConfig, dict]:
    """Read a checkpoint directory: (ModelConfig, params as a nested dict of NumPy arrays),
    checked against the parameter shapes the config implies."""
    config = load_config(directory)
    path = storage.join(storage.abspath(directory), PARAMS_DIR)
    if not storage.isdir(path):
        raise CheckpointError(f"{directory} has a model config but no {PARAMS_DIR}/ directory")
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(path)
        if metadata is None or metadata.item_metadata is None:
            raise CheckpointError(
                f"{path}: damaged or incomplete parameters (_METADATA is missing or unreadable)"
            )
        tree = metadata.item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        params = checkpointer.restore(path, restore_args=restore_args)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever orbax raises, the files are damaged.
        reason = f"{type(e).__name__}: {str(e).strip()}".splitlines()[0][:300]
        raise CheckpointError(f"{path}: damaged or incomplete parameters ({reason})") from e
    # A config edited by hand, or params from another model, fail here, by name.
    check_params(params, config, path, CheckpointError)
    return config, params
