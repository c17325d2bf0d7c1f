"""CLIP's vision tower, per frame (CLIP, ViFi-CLIP) or with Temporal Contextualization (TC-CLIP).

A TC block (paper Sec. 2.3, released code) does, for frame tokens x [B, T, N, W] and the
context tokens s [B, k, W] summarised by the previous block:

1. attention per frame, the frame's own N keys plus the k context keys shared by all frames,
   with a learnable per-head bias on local vs. global keys;
2. seed selection: the n_s patches with the highest head-averaged CLS attention per frame;
3. context summarisation: those `seed_tokens` of all frames merged into k `context_tokens` by
   bipartite soft matching (`tcclip_jax.ops.token_merging`);
4. the block's FFN on frame and context tokens alike.

As in the published code, the context tokens' keys and values are appended to every frame's
own (they are computed once, then broadcast); TC's Pallas kernel on TPU (`ops.tc_attention`)
reads them once per clip instead, the same maths. Attention runs head-major ([B, T, heads, N, H])
so that the batched matmuls read contiguous rows (docs/performance.md has the measurements).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.layers import MLP, Dtype, Projections, layer_norm, softmax, stat_dtype
from tcclip_jax.ops.attention import choose, fused_attention
from tcclip_jax.ops.dense import flat_dot_general
from tcclip_jax.ops.tc_attention import tc_attention
from tcclip_jax.ops.token_merging import (
    CHOICES,
    choose_form,
    merge_to_k,
    select_rows,
    top_k_indices,
)

# Rematerialised blocks keep TC's seed indices and merge assignments (integers) and recompute
# the rest: with the dense summarisation, the backward pass then never redoes the matching.
KEEP_CHOICES = jax.checkpoint_policies.save_only_these_names(CHOICES)


class TCBlock(nn.Module):
    """One vision block. With `use_context=False, summarize=False` it is CLIP's block per frame."""

    width: int
    heads: int
    use_context: bool = False  # attention reads context tokens from the previous block.
    summarize: bool = False  # this block selects seeds and produces context tokens.
    local_global_bias: bool = True  # learnable [heads, 1, 2] bias (needs use_context).
    num_seeds: int = 58  # n_s seed tokens per frame.
    num_context: int = 96  # k context tokens.
    merge_r: int = 100  # r merges per bipartite matching step.
    merge_form: str = "gather"  # `ops.token_merging.MERGE_FORMS`: the same values either way.
    # The last block: only the CLS tokens (and the context tokens) are used after it, so only
    # the CLS queries and the seeds' queries are computed, and the FFN runs on those tokens.
    cls_only: bool = False
    # A summarising block runs its FFN once over its frame tokens and its new context tokens
    # together (the same per-token maths, the weights read once instead of twice), at the cost
    # of copying the tokens into one array: `TCTransformer` asks for it in an unrolled stack.
    shared_ffn: bool = False
    # "explicit" (einsums; every probability kept), or a fused kernel ("xla", "cudnn", TC's
    # "pallas"; only the CLS row's probabilities computed): `ops.attention`.
    attention: str = "explicit"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None, dict]:
        """x: [B, T, N, W] frame tokens; context: [B, k, W] or None.

        Returns (x, new context tokens [B, k, W] or None, intermediates); x is [B, T, 1, W]
        (the CLS tokens) with `cls_only`.
        """
        b, t, n, _ = x.shape
        with_bias = self.use_context and self.local_global_bias
        attn = Projections(self.width, self.heads, self.dtype, with_bias, name="attn")
        ln_1 = layer_norm(self.dtype, "ln_1")
        head_major = lambda a: jnp.swapaxes(a, -3, -2)  # [..., L, heads, H] -> [..., heads, L, H]
        # The explicit form and TC's kernel run head-major, jax's fused attention takes
        # token-major operands.
        pallas = self.attention == "pallas"
        fused = self.attention in ("xla", "cudnn")
        layout = (lambda a: a) if fused else head_major
        key_axis = -3 if fused else -2
        h = ln_1(x)
        k, v = map(layout, attn.kv(h))  # [B, T, heads, N, H] (fused: [B, T, N, heads, H])
        k_ctx = v_ctx = None
        if self.use_context:
            # [B, heads, k, H] (fused: [B, k, heads, H])
            k_ctx, v_ctx = map(layout, attn.kv(ln_1(context)))
            if not pallas:  # TC's kernel reads them per clip; the others, appended per frame.
                k, v = (
                    jnp.concatenate(
                        [a, jnp.broadcast_to(c[:, None], (b, t, *c.shape[1:]))], axis=key_axis
                    )  # N + k keys along `key_axis`
                    for a, c in ((k, k_ctx), (v, v_ctx))
                )
        num_keys = n + (k_ctx.shape[key_axis] if self.use_context else 0)
        bias = table = None
        if with_bias:  # local (the frame's own keys) / global (context keys), per head.
            table = attn.local_global_bias_table[:, 0]  # [heads, 2]
            is_global = jnp.arange(num_keys) >= n  # [N + k]
            # A select, not an indexed read: no gather forward, no scatter backward.
            bias = jnp.where(is_global, table[:, None, 1:], table[:, None, :1])  # [heads, 1, N + k]

        stat = stat_dtype(self.dtype)

        def probabilities(q: jax.Array, token_major: bool = fused, exact: bool = False):
            """[B, T, heads, R, N (+ k)] of queries [B, T, heads, R, H] (token-major: [B, T, R,
            heads, H]); `exact`: logits accumulated and kept in >= float32, not rounded to a
            16-bit compute dtype."""
            q_axes = "BTQNH" if token_major else "BTNQH"
            spec = f"{q_axes},{'BTKNH' if fused else 'BTNKH'}->BTNQK"
            precision = stat if exact else None
            logits = jnp.einsum(spec, q, k, preferred_element_type=precision)
            if bias is not None:
                logits = logits + bias.astype(logits.dtype)
            return softmax(logits, self.dtype)

        def attend(rows: jax.Array, cls: bool = True) -> tuple[jax.Array, jax.Array | None]:
            """Attention output [B, T, R, W] of the queries of `rows` ([B, T, R, W],
            LayerNormed) over all keys of their frame, and (with `cls`) the CLS query's (the
            first row's) probabilities [B, T, heads, N (+ k)] in >= float32."""
            q = attn.q(rows)  # [B, T, R, heads, H]
            if pallas:  # the CLS row from the kernel's own scores (no second read of the keys)
                operands = (head_major(q), k, v, k_ctx, v_ctx, table)
                if not cls:
                    return attn.out(head_major(tc_attention(*operands))), None
                out, cls_row = tc_attention(*operands, cls_row=True)
                return attn.out(head_major(out)), cls_row
            if fused:
                out = fused_attention(q, k, v, bias, self.attention)
                return attn.out(out), probabilities(q[:, :, :1], exact=True)[:, :, :, 0]
            probs = probabilities(head_major(q))
            out = jnp.einsum("BTNQK,BTNKH->BTNQH", probs.astype(self.dtype), v)
            if self.dtype != stat:
                # The logits were rounded to 16 bits before the softmax (a product's output
                # dtype): the CLS row that picks the seeds is taken again from float32 logits.
                cls_row = probabilities(q[:, :, :1], token_major=True, exact=True)
                return attn.out(head_major(out)), cls_row[:, :, :, 0]
            return attn.out(head_major(out)), probs[:, :, :, 0]

        x_in = x
        if self.cls_only:
            # Only the CLS rows and the seeds' rows (chosen by the CLS rows) are used after
            # this block: the other queries are never computed.
            out, probs = attend(h[:, :, :1])
            x = x[:, :, :1] + out  # [B, T, 1, W]
        else:
            out, probs = attend(h)
            x = x + out
        aux = {"cls_attention": probs[:, :, :, 1:n].mean(axis=2)}  # [B, T, P]
        new_context = None
        if self.summarize:
            attention = jax.lax.stop_gradient(aux["cls_attention"])
            if self.merge_form != "gather":  # no sort and no gather
                seed_index = checkpoint_name(top_k_indices(attention, self.num_seeds), CHOICES)
                # Rows of the whole token array, past the CLS row: slicing it off first makes
                # XLA:TPU stage the frame tokens into VMEM again (160 MB per ViT-B/16 block at
                # 4 clips).
                seeds = lambda a: select_rows(a, seed_index + 1)
            else:
                _, seed_index = jax.lax.top_k(attention, self.num_seeds)  # [B, T, n_s]
                seed_index = checkpoint_name(seed_index, CHOICES)
                seeds = lambda a: jnp.take_along_axis(a, seed_index[..., None] + 1, axis=2)
            # The seeds' post-attention tokens [B, T, n_s, W] (with `cls_only`, from their own
            # queries).
            if self.cls_only:
                seed_tokens = seeds(x_in) + attend(seeds(h), cls=False)[0]
            else:
                seed_tokens = seeds(x)
            new_context, assignment = self.merge_seeds(seed_tokens)
            aux.update(seed_index=seed_index, assignment=assignment)

        ln_2, mlp = layer_norm(self.dtype, "ln_2"), MLP(self.width, self.dtype, name="mlp")
        if new_context is not None and self.shared_ffn:
            frames = x.reshape(b, -1, x.shape[-1])  # [B, T * N (T with cls_only), W]
            both = jnp.concatenate([frames, new_context], axis=1)
            both = both + mlp(ln_2(both))
            x, new_context = both[:, : frames.shape[1]].reshape(x.shape), both[:, frames.shape[1] :]
        else:
            x = x + mlp(ln_2(x))
            if new_context is not None:
                new_context = new_context + mlp(ln_2(new_context))
        return x, new_context, aux

    def merge_seeds(self, seed_tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Bipartite merging of all frames' seed tokens [B, T, n_s, W] (post-attention) into
        k context tokens [B, k, W]; also returns the assignment [B, T, n_s] (which context token
        each seed went into)."""
        b, t, _, w = seed_tokens.shape
        seed_tokens = seed_tokens.reshape(b, t * self.num_seeds, w)  # frame-major.
        context_tokens, _, assignment = merge_to_k(
            seed_tokens, self.num_context, self.merge_r, form=self.merge_form
        )
        return context_tokens, assignment.reshape(b, t, self.num_seeds)


class TCTransformer(nn.Module):
    """The stack of vision blocks (`resblocks_{i}`), threading context tokens between them.

    With `scan` (or `remat`), every run of two or more consecutive blocks of the same kind
    (TC-CLIP: blocks 2..L-1; CLIP and ViFi-CLIP: 1..L-1; the last block, which computes only what
    its CLS tokens and context tokens need, is a kind of its own) goes through one `lax.scan`
    over the run's parameters, stacked at apply time so that the parameter tree keeps PyTorch
    CLIP's names: XLA then compiles one block instead of ten (`python -m tcclip_jax.aot`
    prints the TPU compile time). With `remat` the scan body is also under `jax.checkpoint`:
    the backward pass keeps each block's input and recomputes the rest. (An unrolled
    `nn.remat` saves nothing on XLA:CPU, which merges the recomputation back into the forward
    pass; a scan's backward loop cannot.) Outputs and gradients equal the unrolled stack's
    (tests/models/test_models_video_clip.py).
    """

    config: ModelConfig
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan: bool = False

    def block_fields(self, i: int) -> dict:
        """TCBlock fields of vision block i (1-based)."""
        cfg = self.config
        return dict(
            width=cfg.vision_width,
            heads=cfg.vision_heads,
            use_context=i in cfg.context_layers,
            summarize=i in cfg.summary_layers,
            local_global_bias=cfg.local_global_bias,
            num_seeds=cfg.seeds_per_frame,
            num_context=cfg.context_tokens,
            merge_r=cfg.merge_r,
            merge_form=self.merge_form,
            cls_only=i == cfg.vision_layers,
            # Unrolled, each block's weights are read per product, and TC's own products are
            # small; in the scanned, rematerialised step (docs/tpu.md, 16 clips per chip) the
            # copies cost more than the reads saved.
            shared_ffn=not (self.scan or self.remat),
            attention=choose(cfg.attention, self.dtype, self.attention_shapes),
            dtype=self.dtype,
        )

    @property
    def attention_shapes(self) -> tuple[int, int, int, int]:
        """(queries, keys, heads, head width) of a TC block's attention, per frame."""
        cfg = self.config
        n = cfg.num_patches + 1
        keys = n + (cfg.context_tokens if cfg.context_layers else 0)
        return n, keys, cfg.vision_heads, cfg.vision_width // cfg.vision_heads

    @property
    def merge_form(self) -> str:
        """The TC summarisation traced now (`ops.token_merging.choose_form`)."""
        cfg = self.config
        return choose_form(cfg.merge, cfg.num_frames * cfg.seeds_per_frame, cfg.vision_width)

    def runs(self) -> list[list[int]]:
        """Consecutive blocks of the same kind, split after the VP block (whose context tokens
        are kept); the last block (`cls_only`) is a kind of its own."""
        cfg = self.config
        kind = lambda i: (i in cfg.context_layers, i in cfg.summary_layers, i == cfg.vision_layers)
        runs = [[1]]
        for i in range(2, cfg.vision_layers + 1):
            if kind(i) == kind(i - 1) and i - 1 != cfg.vp_layer:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None, list[dict]]:
        """x: [B, T, N, W] -> (the CLS tokens of the last block [B, T, 1, W], VP block context
        tokens or None, per-block intermediates)."""
        cfg = self.config
        context, vp_context, auxes = None, None, []
        for run in self.runs():
            fields = self.block_fields(run[0])
            # A run of context blocks carries (x, context); a run of plain blocks carries x.
            scan = fields["use_context"] == fields["summarize"] and len(run) > 1
            if (self.scan or self.remat) and scan and not self.is_initializing():
                x, context, run_auxes = self.scan_blocks(run, x, context)
                auxes.extend(run_auxes)
            else:
                block_cls = nn.remat(TCBlock, policy=KEEP_CHOICES) if self.remat else TCBlock
                for i in run:
                    x, context, aux = block_cls(**fields, name=f"resblocks_{i - 1}")(
                        x, context if fields["use_context"] else None
                    )
                    auxes.append(aux)
            if cfg.is_temporal and cfg.vp_layer in run:
                vp_context = context
        return x, vp_context, auxes

    def scan_blocks(
        self, run: list[int], x: jax.Array, context: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None, list[dict]]:
        """Blocks `run` (same kind) by one `lax.scan` over their stacked params (its body
        rematerialised with `remat`)."""
        fields = self.block_fields(run[0])
        template = TCBlock(**fields, parent=None)
        params = self.variables["params"]
        stacked = jax.tree.map(
            lambda *p: jnp.stack(p), *[params[f"resblocks_{i - 1}"] for i in run]
        )

        def body(carry, block_params):
            x, context = carry
            x, context, aux = template.apply({"params": block_params}, x, context)
            return (x, context), aux

        if self.remat:
            # A scan body needs no CSE barrier.
            body = jax.checkpoint(body, prevent_cse=False, policy=KEEP_CHOICES)
        (x, context), aux = jax.lax.scan(body, (x, context), stacked)
        return x, context, [jax.tree.map(lambda a, j=j: a[j], aux) for j in range(len(run))]


class PatchEmbedding(nn.Module):
    """CLIP's `conv1`: a bias-free p x p convolution with stride p, i.e. one linear map of each
    patch, computed as a matrix product of the flattened patches: the same sum, which XLA:CPU
    runs faster than a strided convolution, forward and in its kernel gradient. The kernel keeps
    `nn.Conv`'s HWIO layout, [p, p, 3, width]."""

    width: int
    patch_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """images [..., H, W, C] -> [..., H / p, W / p, width]."""
        p, (*lead, h, w, c) = self.patch_size, images.shape
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (p, p, c, self.width), jnp.float32
        )
        patches = images.reshape(*lead, h // p, p, w // p, p, c)
        patches = jnp.swapaxes(patches, -4, -3)  # [..., H / p, W / p, p, p, C], as HWI.
        patches = patches.reshape(*lead, h // p, w // p, p * p * c).astype(self.dtype)
        return flat_dot_general(
            patches, kernel.reshape(p * p * c, self.width).astype(self.dtype),
            (((patches.ndim - 1,), (0,)), ((), ())),
        )  # fmt: skip


class VisionTransformer(nn.Module):
    """CLIP ViT over video frames, with TC blocks where the config asks for them.

    `__call__` takes clips [B, T, H, W, 3] (CLIP-normalised) and returns a dict:
      frame_embeddings [B, T, E]: projected CLS token of every frame (last block);
      context_embeddings [B, k, E]: projected context tokens of the VP block (TC-CLIP only);
      seed_index [B, n_blocks, T, n_s], assignment [B, n_blocks, T, n_s] for the summarising
      blocks (TC-CLIP only); cls_attention [B, L, T, P] when `return_attention`.
    """

    config: ModelConfig
    dtype: Dtype = jnp.float32
    remat: bool = False  # rematerialise each block in the backward pass.
    scan: bool = False  # blocks of the same kind as one `lax.scan` (see `TCTransformer`).

    @nn.compact
    def __call__(self, clips: jax.Array, return_attention: bool = False) -> dict:
        cfg = self.config
        b, t, h, w, _ = clips.shape
        if (h, w) != (cfg.image_resolution, cfg.image_resolution):
            raise ValueError(
                f"clips are {h}x{w}, the model expects {cfg.image_resolution}x"
                f"{cfg.image_resolution}"
            )
        if cfg.is_temporal and t * cfg.seeds_per_frame < cfg.context_tokens:
            need = -(-cfg.context_tokens // cfg.seeds_per_frame)
            raise ValueError(
                f"clips have {t} frames; TC needs at least {need} to merge {t} x "
                f"{cfg.seeds_per_frame} seeds into {cfg.context_tokens} context tokens"
            )
        width = cfg.vision_width
        x = PatchEmbedding(width, cfg.vision_patch_size, self.dtype, name="conv1")(clips)
        x = x.reshape(b, t, cfg.num_patches, width)  # [B, T, P, W]
        scale = width**-0.5
        cls = self.param("class_embedding", nn.initializers.normal(scale), (width,), jnp.float32)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (b, t, 1, width))
        x = jnp.concatenate([cls, x], axis=2)  # [B, T, N, W]
        pos_shape = (cfg.num_patches + 1, width)
        if cfg.positional_embedding == "joint":
            pos_shape = (cfg.num_frames, *pos_shape)
            if t != cfg.num_frames:
                raise ValueError(
                    f"joint positional embedding was built for {cfg.num_frames} frames, got {t}"
                )
        pos = self.param("positional_embedding", nn.initializers.normal(scale), pos_shape)
        x = x + pos.astype(self.dtype)
        x = layer_norm(self.dtype, "ln_pre")(x)

        cls, vp_context, auxes = TCTransformer(
            cfg, self.dtype, self.remat, self.scan, name="transformer"
        )(x)

        ln_post = layer_norm(self.dtype, "ln_post")
        proj = self.param(
            "proj", nn.initializers.normal(scale), (width, cfg.embed_dim), jnp.float32
        ).astype(self.dtype)
        out = {"frame_embeddings": ln_post(cls[:, :, 0]) @ proj}
        if vp_context is not None:
            out["context_embeddings"] = ln_post(vp_context) @ proj
            summaries = [a for a in auxes if "seed_index" in a]
            out["seed_index"] = jnp.stack([a["seed_index"] for a in summaries], axis=1)
            out["assignment"] = jnp.stack([a["assignment"] for a in summaries], axis=1)
        if return_attention:
            out["cls_attention"] = jnp.stack([a["cls_attention"] for a in auxes], axis=1)
        return out
