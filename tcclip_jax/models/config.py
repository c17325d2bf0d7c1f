"""Model configuration: one frozen dataclass that fully describes an architecture.

It is saved as JSON beside the parameters of every converted or trained checkpoint, so a
checkpoint directory is self-describing (see `tcclip_jax.weights.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from tcclip_jax.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from tcclip_jax.ops.token_merging import MERGE_FORMS

MODEL_KINDS = ("tc_clip", "vifi_clip", "clip")
MATMUL_PRECISIONS = (None, "default", "high", "highest")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a CLIP / ViFi-CLIP / TC-CLIP model.

    Defaults are the released TC-CLIP (ViT-B/16, 16 frames, k=96, alpha=0.3, r=100).
    """

    model: str = "tc_clip"  # one of MODEL_KINDS.
    embed_dim: int = 512  # E: joint embedding width.
    # Vision tower.
    image_resolution: int = 224
    vision_patch_size: int = 16
    vision_width: int = 768  # W.
    vision_layers: int = 12
    vision_heads: int = 12
    # Text tower.
    vocab_size: int = 49408
    text_width: int = 512  # D.
    text_layers: int = 12
    text_heads: int = 8
    positional_table_length: int = 77  # rows of CLIP's text positional table (kept whole).
    context_length: int = 30  # tokens per prompt actually used (<= positional_table_length).
    # Video / temporal contextualization.
    num_frames: int = 16  # T, needed for the `joint` positional embedding only.
    positional_embedding: str = "space"  # "space": CLIP's [N, W]; "joint": [T, N, W].
    context_tokens: int = 96  # k.
    seed_ratio: float = 0.3  # alpha: n_s = int(P * alpha) seeds per frame.
    merge_r: int = 100  # r: merges per bipartite soft-matching step.
    # 1-based vision blocks whose attention uses context tokens; None: every block after the first
    # (the released TC-CLIP). (4, 8, 12) is the paper's light TC-CLIP§.
    tc_layers: tuple[int, ...] | None = None
    local_global_bias: bool = True  # learnable per-head bias on local/global keys.
    # Video-conditional prompting (tc_clip only).
    prompt_length: int = 4  # learnable prompt vectors replacing "a photo of a".
    prompt_init: str = "a photo of a"
    prompt_template: str = "a photo of a {}."
    # 1-based vision block whose context tokens feed VP; None: the block with the index of the
    # last text block, as the released code does (equal to the last block for equal depths).
    vp_context_layer: int | None = None
    # Precision of every matmul (attention, dense layers, seed-selecting CLS row, bipartite
    # similarity, logits), as `jax.default_matmul_precision` names it: "default" (TPU: one
    # bfloat16 pass; A100/H100: TF32), "high" or "highest" (full float32). None: "highest" when
    # the model computes in float32 (as the published float32 code does: seeds and merges are
    # discrete choices that a bfloat16 product can change), "default" in bfloat16.
    matmul_precision: str | None = None
    # Vision attention (`ops.attention`): "explicit" (einsums, all probabilities kept), "xla" or
    # "cudnn" (jax.nn.dot_product_attention; only the CLS row's probabilities computed apart).
    # None: "cudnn" when traced for a GPU in bfloat16 / float16 where jax accepts the kernel for
    # the block's shapes, else "explicit".
    attention: str | None = None
    # TC's context summarisation (`ops.token_merging`): "gather" (sort, gather and scatter-add
    # per matching step) or "dense" (matching on values by comparisons and one-hot products,
    # then one product; no sort, gather or scatter). Equal values; None: "gather" when traced
    # for a CPU, "dense" on accelerators.
    merge: str | None = None

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        if self.positional_embedding not in ("space", "joint"):
            raise ValueError(
                "positional_embedding must be 'space' or 'joint', got "
                f"{self.positional_embedding!r}"
            )
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(
                f"matmul_precision must be one of {MATMUL_PRECISIONS}, got "
                f"{self.matmul_precision!r}"
            )
        if self.attention is not None and self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention must be one of {ATTENTION_IMPLEMENTATIONS} or None, got "
                f"{self.attention!r}"
            )
        if self.merge is not None and self.merge not in MERGE_FORMS:
            raise ValueError(f"merge must be one of {MERGE_FORMS} or None, got {self.merge!r}")
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(
                f"image_resolution {self.image_resolution} is not a multiple of the patch size "
                f"{self.vision_patch_size}"
            )
        for name, width, heads in (
            ("vision", self.vision_width, self.vision_heads),
            ("text", self.text_width, self.text_heads),
        ):
            if width % heads:
                raise ValueError(f"{name} width {width} is not divisible by {heads} heads")
        if self.context_length > self.positional_table_length:
            raise ValueError(
                f"context_length {self.context_length} exceeds the positional table "
                f"({self.positional_table_length} rows)"
            )
        if self.tc_layers is not None:
            object.__setattr__(self, "tc_layers", tuple(int(i) for i in self.tc_layers))
            bad = [i for i in self.tc_layers if not 2 <= i <= self.vision_layers]
            if bad:
                raise ValueError(
                    f"tc_layers {bad} out of range: context tokens exist from block 2 to "
                    f"{self.vision_layers} (1-based)"
                )
        if self.model == "tc_clip":
            if not 1 <= self.vp_layer <= self.vision_layers:
                raise ValueError(
                    f"VP reads context tokens of vision block {self.vp_layer}, but the vision "
                    f"tower has {self.vision_layers} blocks; set vp_context_layer"
                )
            if self.embed_dim != self.text_width:
                raise ValueError(
                    f"VP attends from text width {self.text_width} to projected context tokens "
                    f"of width {self.embed_dim}; they must be equal"
                )
            if self.seeds_per_frame < 1:
                raise ValueError(f"seed_ratio {self.seed_ratio} selects no seed token per frame")
            if self.num_frames * self.seeds_per_frame < self.context_tokens:
                raise ValueError(
                    f"{self.num_frames} frames x {self.seeds_per_frame} seeds cannot be merged "
                    f"into {self.context_tokens} context tokens; lower context_tokens"
                )
        if self.model == "tc_clip" and self.context_length < self.prompt_length + 3:
            raise ValueError("context_length too short for SOT, prompt vectors, a name and EOT")

    # Derived quantities -------------------------------------------------------------------

    @property
    def grid_size(self) -> int:
        return self.image_resolution // self.vision_patch_size

    @property
    def num_patches(self) -> int:  # P.
        return self.grid_size**2

    @property
    def seeds_per_frame(self) -> int:  # n_s.
        return int(self.num_patches * self.seed_ratio)

    @property
    def is_temporal(self) -> bool:
        return self.model == "tc_clip"

    @property
    def context_layers(self) -> tuple[int, ...]:
        """1-based blocks whose attention reads context tokens (empty for CLIP / ViFi-CLIP)."""
        if not self.is_temporal:
            return ()
        if self.tc_layers is None:
            return tuple(range(2, self.vision_layers + 1))
        return tuple(sorted(set(self.tc_layers)))

    def precision(self, dtype: Any) -> str | None:
        """The matmul precision of a model computing in `dtype` (None: JAX's default)."""
        precision = self.matmul_precision
        if precision is None:
            precision = "default" if jnp.dtype(dtype).itemsize < 4 else "highest"
        return None if precision == "default" else precision

    @property
    def vp_layer(self) -> int:
        return self.vp_context_layer or self.text_layers

    @property
    def summary_layers(self) -> tuple[int, ...]:
        """1-based blocks that select seeds and summarise them into context tokens."""
        if not self.is_temporal:
            return ()
        return tuple(sorted({i - 1 for i in self.context_layers} | {self.vp_layer}))

    # Serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["tc_layers"] is not None:
            d["tc_layers"] = list(d["tc_layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {unknown}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# OpenAI CLIP towers by name. Text towers are the same for the ViT-B models.
_ARCHS = {
    "ViT-B/32": dict(
        embed_dim=512, vision_patch_size=32, vision_width=768, vision_layers=12, vision_heads=12,
        text_width=512, text_layers=12, text_heads=8,
    ),
    "ViT-B/16": dict(
        embed_dim=512, vision_patch_size=16, vision_width=768, vision_layers=12, vision_heads=12,
        text_width=512, text_layers=12, text_heads=8,
    ),
    "ViT-L/14": dict(
        embed_dim=768, vision_patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16,
        text_width=768, text_layers=12, text_heads=12,
    ),
}  # fmt: skip
_ARCHS["ViT-L/14-336"] = {**_ARCHS["ViT-L/14"], "image_resolution": 336}

ARCH_NAMES = tuple(_ARCHS)
# What makes a checkpoint's towers one of the architectures (the frame and prompt settings don't).
_TOWER_FIELDS = (
    "embed_dim", "image_resolution", "vision_patch_size", "vision_width", "vision_layers",
    "vision_heads", "vocab_size", "text_width", "text_layers", "text_heads",
    "positional_table_length",
)  # fmt: skip


def arch_config(name: str, **overrides) -> ModelConfig:
    """An OpenAI CLIP architecture (`ViT-B/16`, ...) as a ModelConfig, with overrides."""
    if name not in _ARCHS:
        raise ValueError(f"unknown architecture {name!r}; known: {ARCH_NAMES}")
    return ModelConfig(**{**_ARCHS[name], **overrides})


def check_arch(config: ModelConfig, name: str, source: str) -> None:
    """ValueError unless the towers of `config` are OpenAI's `name`, naming the first field
    that differs (e.g. weights given as ViT-B/16 that are ViT-B/32)."""
    want = arch_config(name)
    for field in _TOWER_FIELDS:
        if getattr(config, field) != getattr(want, field):
            raise ValueError(
                f"{source}: architecture {name} has {field} {getattr(want, field)}, these "
                f"weights {getattr(config, field)}"
            )
