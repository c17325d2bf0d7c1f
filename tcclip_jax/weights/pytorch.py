"""PyTorch weights in and out: OpenAI CLIP and released TC-CLIP / ViFi-CLIP checkpoints.

Both directions go through the one rename-and-transpose table of `weights.layout`. Import names
unused or missing keys (`weights.convert` then checks the whole tree against the model's shapes),
so a wrong option fails at conversion, not in the middle of a training run. Export writes what
the published code loads: the released `{"model": {"module.*": ...}}` checkpoint and OpenAI
CLIP's state dict, whose conversion gives back identical parameters.

Pickled checkpoints are read with `torch.load(weights_only=True)`; OpenAI's TorchScript archives
as data (`read_torchscript`: tensors and plain values only, no torch needed, none of the
archive's code runs).
"""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.params import flatten, unflatten
from tcclip_jax.weights import layout
from tcclip_jax.weights.layout import ConversionError, StateDict

# The published code's parameter-name fragments of the modules it trains at 10x the learning
# rate (its optimiser groups, as the bench's run of it builds them); tests check that they pick
# the released names of our `models.params.FAST_MODULES`.
PUBLISHED_FAST_PARTS = ("prompt_learner", "VPT", "prompt_generation")


# Reading -----------------------------------------------------------------------------------


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


# TorchScript archives, read as data ------------------------------------------------------------
#
# An archive is a zip: `data.pkl` pickles the module tree (objects of classes `__torch__.*`
# whose attributes are submodules, tensors and plain values), `data/N` hold the tensors' bytes,
# and `code/` the TorchScript source, whose `__parameters__` / `__buffers__` lines say which
# tensor attributes the state dict has. `torch.jit.load` would run the archive's scripted
# `__setstate__` methods; this reader rebuilds tensors as NumPy arrays and modules as plain
# records, and refuses every other global a pickle names.

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Module:
    """A scripted module as data: its class name and its attributes (BUILD's state)."""

    qualified_name = ""
    attributes: dict = {}  # noqa: RUF012 - replaced, never mutated

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f"{self.qualified_name} is pickled with a custom state ({type(state).__name__}); "
                "only plain modules can be read as data"
            )
        self.attributes = state


def _module_class(qualified_name: str) -> type:
    return type("_Module", (_Module,), {"qualified_name": qualified_name})


def _rebuild_tensor(storage, offset, size, stride, *_) -> np.ndarray:
    if not isinstance(storage, np.ndarray) or len(size) != len(stride):
        raise pickle.UnpicklingError("a tensor without storage or with a malformed shape")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if offset < 0 or min(stride, default=0) < 0 or (0 not in size and last >= storage.size):
        raise pickle.UnpicklingError(f"a tensor of shape {tuple(size)} outside its storage")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, *_) -> np.ndarray:
    return data


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, name: str):
        super().__init__(io.BytesIO(archive.read(prefix + name)))
        self._archive, self._prefix, self._name = archive, prefix, name

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "__torch__" or module.startswith("__torch__."):
            return _module_class(f"{module}.{name}")
        raise pickle.UnpicklingError(
            f"{self._name} names {module}.{name}, which is not tensor data; refusing to load it"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._name}: unexpected persistent id {pid!r}")
        _, storage_type, key, _, numel = pid
        raw = self._archive.read(f"{self._prefix}data/{key}")
        dtype = _STORAGE_DTYPES.get(storage_type)
        if dtype is None:
            raise pickle.UnpicklingError(f"{self._name}: unknown storage type {storage_type!r}")
        if dtype == "bfloat16":  # the upper half of a float32
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype, count=numel)


def _state_names(archive: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """{qualified class name: its parameter and buffer names}, read from `code/` as text."""
    names = {}
    for path in archive.namelist():
        if not (path.startswith(prefix + "code/") and path.endswith(".py")):
            continue
        module = path[len(prefix + "code/") : -len(".py")].replace("/", ".")
        cls = None
        for line in archive.read(path).decode("utf-8", "replace").splitlines():
            if m := re.match(r"class (\w+)\(", line):
                cls = f"{module}.{m.group(1)}"
                names[cls] = set()
            elif cls and (m := re.match(r"  __(?:parameters|buffers)__ = (\[.*\])$", line)):
                names[cls] |= set(ast.literal_eval(m.group(1)))
    return names


def _flatten_modules(module: _Module, names: dict[str, set[str]], prefix: str = "") -> StateDict:
    out = {}
    kept = names.get(module.qualified_name)
    for key, value in module.attributes.items():
        if isinstance(value, _Module):
            out.update(_flatten_modules(value, names, f"{prefix}{key}."))
        elif isinstance(value, np.ndarray) and (kept is None or key in kept):
            out[prefix + key] = value
    return out


def read_torchscript(path: str) -> StateDict:
    """The state dict of a TorchScript archive, without torch and without running its code."""
    with zipfile.ZipFile(path) as archive:
        data = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(data) != 1:
            raise ConversionError(f"{path}: not a TorchScript archive (no single */data.pkl)")
        prefix = data[0][: -len("data.pkl")]
        try:
            root = _ArchiveUnpickler(archive, prefix, "data.pkl").load()
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
            raise ConversionError(f"{path}: {e}".splitlines()[0]) from None
        if not isinstance(root, _Module):
            raise ConversionError(f"{path}: data.pkl holds no scripted module")
        return _flatten_modules(root, _state_names(archive, prefix))


def read_torch_file(path: str) -> StateDict:
    """Flat {key: array} from a TorchScript archive, a state dict, or {'model'|'state_dict': sd}."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("constants.pkl") for n in z.namelist()):
                out = read_torchscript(path)
                if not out:
                    raise ConversionError(f"{path}: holds no tensors")
                return out
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means "not a checkpoint".
        raise ConversionError(
            f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})".splitlines()[0]
        ) from e
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{path}: holds no state dict (got {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = _to_numpy(v)
    if not out:
        raise ConversionError(f"{path}: holds no tensors")
    return out


# Architecture ------------------------------------------------------------------------------


def count_blocks(sd: StateDict, prefix: str) -> int:
    """How many numbered blocks `prefix0.`, `prefix1.`, ... the state dict holds."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(ids) + 1 if ids else 0


def clip_architecture(sd: StateDict, path: str = "CLIP weights") -> dict:
    """Tower sizes of an OpenAI CLIP state dict (ViT towers), as ModelConfig fields."""
    if any(k.startswith("visual.layer1.") for k in sd):
        raise ConversionError(f"{path}: unknown architecture: ResNet CLIP towers are not supported")
    required = [
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
        "ln_final.weight",
    ]
    missing = [k for k in required if k not in sd]
    if missing:
        raise ConversionError(
            f"{path}: unknown architecture: not an OpenAI CLIP ViT state dict (missing {missing})"
        )
    conv = sd["visual.conv1.weight"]
    vision_width, _, patch, _ = conv.shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = sd["ln_final.weight"].shape[0]
    return dict(
        embed_dim=sd["text_projection"].shape[1],
        image_resolution=patch * grid,
        vision_patch_size=patch,
        vision_width=vision_width,
        vision_layers=count_blocks(sd, "visual.transformer.resblocks."),
        vision_heads=vision_width // 64,
        vocab_size=sd["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_layers=count_blocks(sd, "transformer.resblocks."),
        text_heads=text_width // 64,
        positional_table_length=sd["positional_embedding"].shape[0],
    )


# Import ------------------------------------------------------------------------------------

# Scalars in OpenAI's TorchScript state dict, not parameters.
_CLIP_SCALARS = ("input_resolution", "context_length", "vocab_size")
# Buffers of released checkpoints that depend on the training class names (the published
# loader drops them too): TC-CLIP's prompt prefix / suffix, ViFi-CLIP's prompt embeddings.
_CLASS_BUFFERS = (
    "prompt_learner.token_prefix",
    "prompt_learner.token_suffix",
    "prompt_learner.complete_text_embeddings",
)
_PREFIX = "module."  # the released checkpoints were saved from DistributedDataParallel.


def _dtype(a: np.ndarray) -> np.ndarray:
    """float32 master weights; float64 sources stay float64 (exact float64 parity)."""
    return a.astype(np.float64 if a.dtype == np.float64 else np.float32)


def _unexpected(sd: StateDict, table: list, path: str, what: str, ignored=()) -> None:
    unused = sorted(set(sd) - set(layout.torch_keys(table)) - set(ignored))
    if unused:
        raise ConversionError(f"{path}: unexpected keys for {what}: {unused[:20]}")


def clip_params(sd: StateDict, cfg: ModelConfig, path: str = "CLIP weights") -> dict:
    """The CLIP part of the parameter tree, from an OpenAI CLIP state dict."""
    table = layout.clip_table(cfg)
    flat = layout.to_ours(sd, table, path, _dtype)
    _unexpected(sd, table, path, "this architecture", _CLIP_SCALARS)
    return unflatten(flat)


def finetuned_params(sd: StateDict, cfg: ModelConfig, path: str = "TC-CLIP checkpoint") -> dict:
    """Parameters of a released TC-CLIP / ViFi-CLIP checkpoint (`module.` keys).

    The token embedding is not in these checkpoints (it comes from CLIP), and the class-name
    buffers are left out. Vision attention may be q/k/v_proj or a fused in_proj.
    """
    sd = {k.removeprefix(_PREFIX): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k not in _CLASS_BUFFERS}
    if not any(k.startswith("image_encoder.") for k in sd):
        raise ConversionError(
            f"{path}: unknown architecture: expected 'module.image_encoder.*' keys of a released "
            "TC-CLIP / ViFi-CLIP checkpoint"
        )
    fused = "image_encoder.transformer.resblocks.0.attn.in_proj_weight" in sd
    table = layout.released_table(cfg, fused_vision=fused)
    flat = layout.to_ours(sd, table, path, _dtype)
    _unexpected(sd, table, path, "this model config")
    return unflatten(flat)


# Export ------------------------------------------------------------------------------------


def _flat(params: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flatten(params).items()}


def openai_state_dict(
    cfg: ModelConfig, params: dict, source: str = "checkpoint"
) -> tuple[StateDict, list[str]]:
    """OpenAI CLIP's state dict of the CLIP towers in `params`, and the parameter paths it leaves
    out (TC-CLIP's prompt vectors, VP and local/global bias tables: CLIP has no place for them)."""
    flat = _flat(params)
    pos = flat.get("visual/positional_embedding")
    if pos is not None and pos.ndim != 2:
        raise ConversionError(
            f"{source}: positional_embedding 'joint' ({list(pos.shape)}) holds a table per frame; "
            "CLIP holds one"
        )
    table = layout.clip_table(cfg)
    sd = layout.to_torch(flat, table, source)
    return sd, sorted(set(flat) - set(layout.our_paths(table)))


def summarize_paths(paths: list[str]) -> str:
    """Parameter paths as their top-level modules, bias tables counted: for messages."""
    tables = [k for k in paths if k.endswith("/local_global_bias_table")]
    named = sorted({k.split("/")[0] for k in paths if k not in tables})
    if tables:
        named.append(f"local_global_bias_table x{len(tables)}")
    return ", ".join(named)


def released_state_dict(cfg: ModelConfig, params: dict, source: str = "checkpoint") -> StateDict:
    """The `model` dict of a released-format checkpoint (`module.` keys): TC-CLIP's for tc_clip,
    ViFi-CLIP's for vifi_clip and clip. Like the released files it holds no token embedding."""
    flat = _flat(params)
    table = layout.released_table(cfg)
    sd = layout.to_torch(flat, table, source)
    extra = sorted(set(flat) - set(layout.our_paths(table)) - {"token_embedding/embedding"})
    if extra:
        raise ConversionError(f"{source}: parameters the {cfg.model} layout lacks: {extra[:20]}")
    return {_PREFIX + k: v for k, v in sd.items()}


def save_torch(path: str, state_dict: StateDict, wrap: bool) -> None:
    """`torch.save` of `state_dict` (as `{"model": ...}` when `wrap`, as the released files are;
    no epoch, so the published code fine-tunes it from its first epoch)."""
    import torch

    # np.require keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d).
    sd = {k: torch.from_numpy(np.require(v, requirements="C")) for k, v in state_dict.items()}
    torch.save({"model": sd} if wrap else sd, path)
