"""The golden fixture's weight recipe (tests/fixtures/README of shared golden): every tensor is a
pure function of (seed, key, shape). Used to write the real files a user has (an OpenAI-format
CLIP state dict `.pt` and a released-format TC-CLIP `.pth`) for the parity tests."""

from __future__ import annotations

import json
import math
import re
import zlib

import numpy as np

FIXTURE = "tests/fixtures/tcclip_small.npz"


def tensor(seed: int, key: str, shape) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    z = np.asarray(rng.standard_normal(shape))
    last = key.split(".")[-1]
    if key.endswith("logit_scale"):
        return math.log(1 / 0.07) + 0.1 * z
    if re.search(r"(^|\.)(ln_\w+)\.weight$", key):
        return 1 + 0.1 * z
    if last == "bias" or key.endswith("_bias"):
        return 0.02 * z
    if "positional_embedding" in key:
        return 0.01 * z
    if key.endswith("class_embedding"):
        return 0.05 * z
    if "local_global_bias_table" in key:
        return 0.5 * z
    if key.endswith("token_embedding.weight") or key.endswith("prompt_learner.ctx"):
        return 0.02 * z
    if key.endswith("text_projection") or key.endswith("visual.proj"):
        return z / math.sqrt(shape[0])
    return z / math.sqrt(int(np.prod(shape[1:])))


def state_dict(manifest: list, seed: int, dtype, strip: str = "") -> dict[str, np.ndarray]:
    """Tensors named by the manifest's keys, each generated from the key less `strip`."""
    return {
        k: np.asarray(tensor(seed, k.removeprefix(strip), tuple(s)), dtype) for k, s in manifest
    }


def load_fixture(path: str = FIXTURE) -> dict:
    d = np.load(path)
    out = {k: d[k] for k in d.files}
    for k in ("case", "manifest_clip", "manifest_ft"):
        out[k] = json.loads(str(d[k]))
    return out


def clips(seed: int, shape) -> np.ndarray:
    """Input clips [B, T, 3, H, W] (channels first, already normalised)."""
    return np.random.default_rng([seed, 7]).standard_normal(shape)


def write_torch_files(fixture: dict, clip_path: str, tcclip_path: str) -> None:
    """The CLIP state dict (float16, as released) and the TC-CLIP checkpoint (float64).

    The fixture's fine-tuned tensors were generated from their keys without the `module.`
    prefix (shared/golden/README.md says with it; its two check sums for `module.` keys do not
    describe the fixture, which the published PyTorch code reproduces only this way)."""
    import torch

    case = fixture["case"]
    clip_sd = state_dict(fixture["manifest_clip"], case["clip_seed"], np.float16)
    torch.save({k: torch.from_numpy(v) for k, v in clip_sd.items()}, clip_path)
    ft = state_dict(fixture["manifest_ft"], case["ft_seed"], np.float64, strip="module.")
    model = {k: torch.from_numpy(v) for k, v in ft.items()}
    torch.save({"model": model, "epoch": 10}, tcclip_path)


def golden_model(fixture: dict):
    """(ModelConfig, params) of the fixture's TC-CLIP, converted from the recipe's state dicts
    in memory (what tools/convert_torch_weights.py gives from the files, without torch)."""
    from tcclip_jax.models.config import ModelConfig
    from tcclip_jax.weights.pytorch import clip_architecture, clip_params, finetuned_params

    case = fixture["case"]
    clip_sd = state_dict(fixture["manifest_clip"], case["clip_seed"], np.float16)
    ft = state_dict(fixture["manifest_ft"], case["ft_seed"], np.float64, strip="module.")
    cfg = ModelConfig(**clip_architecture(clip_sd), num_frames=case["num_frames"])
    params = finetuned_params(ft, cfg)
    params["token_embedding"] = clip_params(clip_sd, cfg)["token_embedding"]
    return cfg, params
