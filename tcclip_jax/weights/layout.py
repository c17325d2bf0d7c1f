"""The one layout table between our parameter tree and PyTorch state dicts, read both ways.

Each `Entry` pairs parameter paths of ours ("/"-joined) with state-dict keys and a `Transform`
that maps the PyTorch arrays to ours and back: Linear weights [out, in] <-> kernels [in, out]
(attention: [in, heads, head_dim] and [heads, head_dim, out]), the fused `in_proj` [3W, W] <->
three q, k, v kernels, `conv1` OIHW <-> HWIO; LayerNorm `weight` <-> `scale` is a rename. Tables
are built from a `ModelConfig` for OpenAI CLIP's state dict (`clip_table`) and for the released
TC-CLIP / ViFi-CLIP checkpoints (`released_table`); importing (`weights.pytorch`), exporting and
Hugging Face's layout (`weights.hf`, via OpenAI's) all go through them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from tcclip_jax.models.config import ModelConfig
from tcclip_jax.runtime.errors import UserError

StateDict = dict[str, np.ndarray]
Arrays = tuple[np.ndarray, ...]


class ConversionError(UserError):
    """A checkpoint that cannot be converted; the message says what and where."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """PyTorch arrays -> our arrays (`to_ours`) and back (`to_torch`), as tuples."""

    to_ours: Callable[..., Arrays]
    to_torch: Callable[..., Arrays]


@dataclasses.dataclass(frozen=True)
class Entry:
    """Our parameter paths <-> state-dict keys (several on one side for a fused in_proj)."""

    ours: tuple[str, ...]
    torch: tuple[str, ...]
    transform: Transform


SAME = Transform(lambda a: (a,), lambda a: (a,))
LINEAR = Transform(lambda w: (w.T,), lambda k: (k.T,))  # [out, in] <-> [in, out]
CONV = Transform(lambda w: (w.transpose(2, 3, 1, 0),), lambda k: (k.transpose(3, 2, 0, 1),))


def heads_in(heads: int) -> Transform:
    """q/k/v weight [out, in] <-> kernel [in, heads, head_dim]."""
    return Transform(
        lambda w: (w.T.reshape(w.shape[1], heads, w.shape[0] // heads),),
        lambda k: (k.reshape(k.shape[0], -1).T,),
    )


def heads_out(heads: int) -> Transform:
    """out_proj weight [out, in] <-> kernel [heads, head_dim, out]."""
    return Transform(
        lambda w: (w.T.reshape(heads, w.shape[1] // heads, w.shape[0]),),
        lambda k: (k.reshape(-1, k.shape[-1]).T,),
    )


def head_bias(heads: int) -> Transform:
    """q/k/v bias [out] <-> [heads, head_dim]."""
    return Transform(lambda b: (b.reshape(heads, -1),), lambda b: (b.reshape(-1),))


def fused(part: Transform) -> Transform:
    """One array holding q, k, v stacked on axis 0 (`in_proj_*`) <-> three, each by `part`."""
    return Transform(
        lambda a: tuple(part.to_ours(x)[0] for x in np.split(a, 3)),
        lambda *xs: (np.concatenate([part.to_torch(x)[0] for x in xs]),),
    )


# Tables ------------------------------------------------------------------------------------


def _ln(ours: str, theirs: str) -> list[Entry]:
    return [
        Entry((f"{ours}/scale",), (f"{theirs}.weight",), SAME),
        Entry((f"{ours}/bias",), (f"{theirs}.bias",), SAME),
    ]


def _dense(ours: str, theirs: str) -> list[Entry]:
    return [
        Entry((f"{ours}/kernel",), (f"{theirs}.weight",), LINEAR),
        Entry((f"{ours}/bias",), (f"{theirs}.bias",), SAME),
    ]


def _attention(ours: str, theirs: str, heads: int, fuse: bool, bias_table: bool) -> list[Entry]:
    table = []
    if bias_table:
        name = "local_global_bias_table"
        table.append(Entry((f"{ours}/{name}",), (f"{theirs}.{name}",), SAME))
    qkv = [f"{ours}/{n}_proj" for n in "qkv"]
    if fuse:
        table += [
            Entry(tuple(p + "/kernel" for p in qkv), (f"{theirs}.in_proj_weight",),
                  fused(heads_in(heads))),
            Entry(tuple(p + "/bias" for p in qkv), (f"{theirs}.in_proj_bias",),
                  fused(head_bias(heads))),
        ]  # fmt: skip
    else:
        for n, p in zip("qkv", qkv, strict=True):
            table += [
                Entry((p + "/kernel",), (f"{theirs}.{n}_proj.weight",), heads_in(heads)),
                Entry((p + "/bias",), (f"{theirs}.{n}_proj.bias",), head_bias(heads)),
            ]
    return table + [
        Entry((f"{ours}/out_proj/kernel",), (f"{theirs}.out_proj.weight",), heads_out(heads)),
        Entry((f"{ours}/out_proj/bias",), (f"{theirs}.out_proj.bias",), SAME),
    ]


def _block(
    ours: str, theirs: str, heads: int, fuse: bool = True, bias_table: bool = False,
    extra_ln: tuple[str, ...] = (),
) -> list[Entry]:  # fmt: skip
    table = _attention(f"{ours}/attn", f"{theirs}.attn", heads, fuse, bias_table)
    for name in ("ln_1", *extra_ln):
        table += _ln(f"{ours}/{name}", f"{theirs}.{name}")
    table += _dense(f"{ours}/mlp/c_fc", f"{theirs}.mlp.c_fc")
    table += _dense(f"{ours}/mlp/c_proj", f"{theirs}.mlp.c_proj")
    return table + _ln(f"{ours}/ln_2", f"{theirs}.ln_2")


def _vision(cfg: ModelConfig, theirs: str, fuse: bool, bias_tables: bool) -> list[Entry]:
    """`theirs` is "visual" (OpenAI CLIP) or "image_encoder" (released checkpoints)."""
    table = [
        Entry(("visual/class_embedding",), (f"{theirs}.class_embedding",), SAME),
        Entry(("visual/positional_embedding",), (f"{theirs}.positional_embedding",), SAME),
        Entry(("visual/proj",), (f"{theirs}.proj",), SAME),
        Entry(("visual/conv1/kernel",), (f"{theirs}.conv1.weight",), CONV),
        *_ln("visual/ln_pre", f"{theirs}.ln_pre"),
    ]
    for i in range(cfg.vision_layers):
        bias_table = bias_tables and cfg.local_global_bias and i + 1 in cfg.context_layers
        table += _block(
            f"visual/transformer/resblocks_{i}", f"{theirs}.transformer.resblocks.{i}",
            cfg.vision_heads, fuse, bias_table,
        )  # fmt: skip
    return table + _ln("visual/ln_post", f"{theirs}.ln_post")


def _text_blocks(cfg: ModelConfig, theirs: str) -> list[Entry]:
    table = []
    for i in range(cfg.text_layers):
        table += _block(f"transformer/resblocks_{i}", f"{theirs}transformer.resblocks.{i}",
                        cfg.text_heads)  # fmt: skip
    return table


def clip_table(cfg: ModelConfig) -> list[Entry]:
    """OpenAI CLIP's state dict (`ViT-B-16.pt`), in its order: CLIP's towers of any model."""
    return [
        Entry(("positional_embedding",), ("positional_embedding",), SAME),
        Entry(("text_projection",), ("text_projection",), SAME),
        Entry(("logit_scale",), ("logit_scale",), SAME),
        *_vision(cfg, "visual", fuse=True, bias_tables=False),
        Entry(("token_embedding/embedding",), ("token_embedding.weight",), SAME),
        *_text_blocks(cfg, ""),
        *_ln("ln_final", "ln_final"),
    ]


def released_table(cfg: ModelConfig, fused_vision: bool | None = None) -> list[Entry]:
    """A released TC-CLIP / ViFi-CLIP checkpoint's `model` dict without `module.`, in its order.

    The token embedding is not in it (the published model keeps it as buffers of class-name
    embeddings). Vision attention is q/k/v_proj in TC-CLIP (the published `use_custom_attention`)
    and a fused in_proj in ViFi-CLIP; `fused_vision` overrides that.
    """
    if fused_vision is None:
        fused_vision = not cfg.is_temporal
    table = [Entry(("logit_scale",), ("logit_scale",), SAME)]
    if cfg.is_temporal:
        table.append(Entry(("prompt_learner/ctx",), ("prompt_learner.ctx",), SAME))
    table += [
        *_vision(cfg, "image_encoder", fused_vision, bias_tables=True),
        Entry(("positional_embedding",), ("text_encoder.positional_embedding",), SAME),
        Entry(("text_projection",), ("text_encoder.text_projection",), SAME),
        *_text_blocks(cfg, "text_encoder."),
        *_ln("ln_final", "text_encoder.ln_final"),
    ]
    if cfg.is_temporal:
        table += _block(
            "prompt_generation_layer", "text_encoder.prompt_generation_layer.0", cfg.text_heads,
            extra_ln=("ln_1_kv",),
        )  # fmt: skip
    return table


# Applying a table --------------------------------------------------------------------------


def to_ours(
    sd: Mapping[str, np.ndarray], table: list[Entry], source: str,
    dtype: Callable[[np.ndarray], np.ndarray] = np.asarray,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Flat {path: array} of our parameters from state dict `sd`; a missing key fails naming it."""
    out = {}
    for entry in table:
        missing = [k for k in entry.torch if k not in sd]
        if missing:
            raise ConversionError(f"{source}: missing key {missing[0]}")
        arrays = entry.transform.to_ours(*(dtype(sd[k]) for k in entry.torch))
        out.update(zip(entry.ours, arrays, strict=True))
    return out


def to_torch(flat: Mapping[str, np.ndarray], table: list[Entry], source: str) -> StateDict:
    """State dict (in the table's order) from our flat {path: array}."""
    out = {}
    for entry in table:
        missing = [p for p in entry.ours if p not in flat]
        if missing:
            raise ConversionError(f"{source}: missing parameter {missing[0]}")
        arrays = entry.transform.to_torch(*(np.asarray(flat[p]) for p in entry.ours))
        out.update(zip(entry.torch, arrays, strict=True))
    return out


def torch_keys(table: list[Entry]) -> list[str]:
    return [k for entry in table for k in entry.torch]


def our_paths(table: list[Entry]) -> list[str]:
    return [p for entry in table for p in entry.ours]
