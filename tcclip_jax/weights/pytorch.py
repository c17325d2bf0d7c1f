"""PyTorch -> JAX weight conversion: OpenAI CLIP and released TC-CLIP / ViFi-CLIP checkpoints.

The model's parameter names follow the PyTorch state dict, so conversion is a rename table plus
transposes: linear weights [out, in] -> kernels [in, out] (attention: [in, heads, head_dim] and
[heads, head_dim, out]), the fused `in_proj` split into q, k, v, `conv1` OIHW -> HWIO, and
LayerNorm `weight` -> `scale`. Unused or missing keys are named (`weights.convert` then checks
the whole tree against the model's shapes), so a wrong option fails at conversion, not in the
middle of a training run.

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

from tcclip_jax.errors import UserError
from tcclip_jax.models.config import ModelConfig

StateDict = dict[str, np.ndarray]


class ConversionError(UserError):
    """A checkpoint that cannot be converted; the message says what and where."""


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


def _count_blocks(sd: StateDict, prefix: str) -> int:
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
        vision_layers=_count_blocks(sd, "visual.transformer.resblocks."),
        vision_heads=vision_width // 64,
        vocab_size=sd["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_layers=_count_blocks(sd, "transformer.resblocks."),
        text_heads=text_width // 64,
        positional_table_length=sd["positional_embedding"].shape[0],
    )


# Renaming ----------------------------------------------------------------------------------


def _dtype(a: np.ndarray) -> np.ndarray:
    """float32 master weights; float64 sources stay float64 (exact float64 parity)."""
    return a.astype(np.float64 if a.dtype == np.float64 else np.float32)


def _linear(w: np.ndarray) -> np.ndarray:
    return w.T


def _heads_in(w: np.ndarray, heads: int) -> np.ndarray:
    """q/k/v weight [out, in] -> kernel [in, heads, head_dim]."""
    return w.T.reshape(w.shape[1], heads, w.shape[0] // heads)


def _heads_out(w: np.ndarray, heads: int) -> np.ndarray:
    """out_proj weight [out, in] -> kernel [heads, head_dim, out]."""
    return w.T.reshape(heads, w.shape[1] // heads, w.shape[0])


class _Reader:
    """Takes tensors out of a state dict by key, remembering which were used."""

    def __init__(self, sd: StateDict, path: str):
        self.sd, self.path, self.used = sd, path, set()

    def __contains__(self, key: str) -> bool:
        return key in self.sd

    def __call__(self, key: str) -> np.ndarray:
        if key not in self.sd:
            raise ConversionError(f"{self.path}: missing key {key}")
        self.used.add(key)
        return _dtype(self.sd[key])

    def unused(self) -> list[str]:
        return sorted(set(self.sd) - self.used)


def _attention(r: _Reader, prefix: str, heads: int) -> dict:
    """`attn` params from fused `in_proj_*` or separate `q_proj/k_proj/v_proj`."""
    out = {}
    if prefix + "in_proj_weight" in r:
        ws = np.split(r(prefix + "in_proj_weight"), 3)
        bs = np.split(r(prefix + "in_proj_bias"), 3)
    else:
        ws = [r(f"{prefix}{n}_proj.weight") for n in "qkv"]
        bs = [r(f"{prefix}{n}_proj.bias") for n in "qkv"]
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), ws, bs, strict=True):
        out[name] = {"kernel": _heads_in(w, heads), "bias": b.reshape(heads, -1)}
    out["out_proj"] = {
        "kernel": _heads_out(r(prefix + "out_proj.weight"), heads),
        "bias": r(prefix + "out_proj.bias"),
    }
    if prefix + "local_global_bias_table" in r:
        out["local_global_bias_table"] = r(prefix + "local_global_bias_table")
    return out


def _ln(r: _Reader, prefix: str) -> dict:
    return {"scale": r(prefix + "weight"), "bias": r(prefix + "bias")}


def _block(r: _Reader, prefix: str, heads: int, extra_ln: tuple[str, ...] = ()) -> dict:
    out = {
        "attn": _attention(r, prefix + "attn.", heads),
        "ln_1": _ln(r, prefix + "ln_1."),
        "ln_2": _ln(r, prefix + "ln_2."),
        "mlp": {
            n: {"kernel": _linear(r(f"{prefix}mlp.{n}.weight")), "bias": r(f"{prefix}mlp.{n}.bias")}
            for n in ("c_fc", "c_proj")
        },
    }
    for name in extra_ln:
        out[name] = _ln(r, prefix + name + ".")
    return out


def _vision(r: _Reader, prefix: str, cfg: ModelConfig) -> dict:
    out = {
        "conv1": {"kernel": r(prefix + "conv1.weight").transpose(2, 3, 1, 0)},
        "class_embedding": r(prefix + "class_embedding"),
        "positional_embedding": r(prefix + "positional_embedding"),
        "ln_pre": _ln(r, prefix + "ln_pre."),
        "ln_post": _ln(r, prefix + "ln_post."),
        "proj": r(prefix + "proj"),
        "transformer": {
            f"resblocks_{i}": _block(r, f"{prefix}transformer.resblocks.{i}.", cfg.vision_heads)
            for i in range(cfg.vision_layers)
        },
    }
    return out


def _text(r: _Reader, prefix: str, cfg: ModelConfig) -> dict:
    return {
        "positional_embedding": r(prefix + "positional_embedding"),
        "ln_final": _ln(r, prefix + "ln_final."),
        "text_projection": r(prefix + "text_projection"),
        "transformer": {
            f"resblocks_{i}": _block(r, f"{prefix}transformer.resblocks.{i}.", cfg.text_heads)
            for i in range(cfg.text_layers)
        },
    }


def clip_params(sd: StateDict, cfg: ModelConfig, path: str = "CLIP weights") -> dict:
    """The CLIP part of the parameter tree, from an OpenAI CLIP state dict."""
    r = _Reader(sd, path)
    params = {
        "visual": _vision(r, "visual.", cfg),
        "token_embedding": {"embedding": r("token_embedding.weight")},
        "logit_scale": r("logit_scale"),
        **_text(r, "", cfg),
    }
    ignored = {"input_resolution", "context_length", "vocab_size"}
    unused = [k for k in r.unused() if k not in ignored]
    if unused:
        raise ConversionError(f"{path}: unexpected keys for this architecture: {unused[:20]}")
    return params


def finetuned_params(sd: StateDict, cfg: ModelConfig, path: str = "TC-CLIP checkpoint") -> dict:
    """Parameters of a released TC-CLIP / ViFi-CLIP checkpoint (`module.` keys).

    The token embedding is not in these checkpoints (it comes from CLIP), and the
    `prompt_learner.token_prefix/token_suffix` buffers depend on the training class names: both
    are left out.
    """
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("prompt_learner.token_")}
    if not any(k.startswith("image_encoder.") for k in sd):
        raise ConversionError(
            f"{path}: unknown architecture: expected 'module.image_encoder.*' keys of a released "
            "TC-CLIP / ViFi-CLIP checkpoint"
        )
    r = _Reader(sd, path)
    params = {
        "visual": _vision(r, "image_encoder.", cfg),
        "logit_scale": r("logit_scale"),
        **_text(r, "text_encoder.", cfg),
    }
    if cfg.is_temporal:
        params["prompt_learner"] = {"ctx": r("prompt_learner.ctx")}
        params["prompt_generation_layer"] = _block(
            r, "text_encoder.prompt_generation_layer.0.", cfg.text_heads, extra_ln=("ln_1_kv",)
        )
    unused = r.unused()
    if unused:
        raise ConversionError(f"{path}: unexpected keys for this model config: {unused[:20]}")
    return params
