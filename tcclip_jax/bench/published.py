"""The published PyTorch code (github.com/naver-ai/tc-clip) timed in a child process, alternately
with ours, for same-run ratios.

`--compare-published PATH` (PATH: a checkout, with torch, einops and timm installed) times the
published step (default malloc settings, as its users run it) and ours alternately, `--rounds`
rounds of one untimed and `--steps` timed calls each, and prints the ratio of the best calls
with the per-round ratios as its spread. Between rounds each process returns its free heap to
the kernel, so that both fit in memory (a ViT-B/16 training step holds ~12 GiB on our side,
~9 GiB on theirs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import multiprocessing
import os
import sys
import types

from tcclip_jax.bench.steps import Timed, class_names
from tcclip_jax.bench.timing import Samples, cpu_seconds, max_rss_bytes, release_memory, time_calls
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.weights.pytorch import PUBLISHED_FAST_PARTS

PUBLISHED_PACKAGES = ("clip", "tome", "trainers", "datasets")


class PublishedCodeError(RuntimeError):
    """The published code cannot be imported from the given path."""


def import_published(path: str) -> types.SimpleNamespace:
    """Import the published TC-CLIP (naver-ai/tc-clip) model code from a checkout at `path`.

    Its top-level packages (`clip`, `tome`, `trainers`, `datasets`) are directories without
    `__init__.py`; they are bound to `path` explicitly, so that installed packages of the same
    name (openai-clip's `clip`, Hugging Face `datasets`) do not shadow them.
    """
    path = os.path.abspath(path)
    missing = [p for p in PUBLISHED_PACKAGES if not os.path.isdir(os.path.join(path, p))]
    if missing:
        raise PublishedCodeError(
            f"{path} is not a checkout of github.com/naver-ai/tc-clip (no {', '.join(missing)}/)"
        )
    if path not in sys.path:
        sys.path.insert(0, path)
    for name in PUBLISHED_PACKAGES:
        folder = os.path.join(path, name)
        if not os.path.isfile(os.path.join(folder, "__init__.py")):
            package = types.ModuleType(name)
            package.__path__ = [folder]
            sys.modules[name] = package
    try:
        return types.SimpleNamespace(
            CLIP=importlib.import_module("clip.model").CLIP,
            TCCLIP=importlib.import_module("trainers.tc_clip").TCCLIP,
            blending=importlib.import_module("datasets.blending"),
        )
    except ImportError as e:
        raise PublishedCodeError(
            f"cannot import the published code from {path}: {e} (it needs torch, einops, "
            f"timm, ftfy and regex)"
        ) from e


class _Config(dict):
    """The attribute + `.get` access the published code expects of its (omegaconf) config."""

    __getattr__ = dict.__getitem__


def published_step(path: str, mode: str, cfg: ModelConfig, batch: int, num_classes: int):
    """(call, description) of the published code's inference or training step, as its
    `engine.py` runs them, on random weights and inputs, float32 (`opt_level` O0) on the CPU.

    Inference: `model(images)` under `no_grad`. Training: `CutmixMixupBlending` (mixup 0.8,
    cutmix 1.0, smoothing 0.1), `model(images)`, soft-target cross-entropy, backward, AdamW with
    the x10 group of `utils/optimizer.build_optimizer` (betas 0.9/0.98, weight decay 1e-3).
    """
    import torch
    import torch.nn.functional as F

    code = import_published(path)
    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    design = dict(
        vision_model="TCVisionTransformer",
        vision_block="TCAttentionBlock",
        text_block="ResidualAttentionBlock",
        use_custom_attention=True,
        context_length=cfg.context_length,
        temporal_length=cfg.num_frames,
        vision_depth=0,
        language_depth=1,
        vision_ctx=0,
        language_ctx=0,
        positional_embedding_type="space",
        local_global_bias=True,
        context_token_k=cfg.context_tokens,
        seed_token_a=cfg.seed_ratio,
        tome_r=cfg.merge_r,
        tome_d=0,
    )
    config = _Config(
        opt_level="O0",
        n_ctx=4,
        ctx_init="a photo of a",
        im_stop_grad=True,
        prompt_generation_layer_level=cfg.vp_layer,
        prompt_generation_layer_init="clip",
        context_length=cfg.context_length,
    )
    quiet = logging.getLogger("tcclip_jax.bench.published")
    quiet.setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its positional embedding kind.
        clip_model = code.CLIP(
            cfg.embed_dim, cfg.image_resolution, cfg.vision_layers, cfg.vision_width,
            cfg.vision_patch_size, cfg.context_length, cfg.vocab_size, cfg.text_width,
            cfg.text_heads, cfg.text_layers, design,
        )  # fmt: skip
        model = code.TCCLIP(config, class_names(num_classes), clip_model, quiet).float()
    size = cfg.image_resolution
    images = torch.randn(batch, cfg.num_frames, 3, size, size)
    if mode == "infer":
        model.eval()

        @torch.no_grad()
        def call():
            return model(images)["logits"]

        return call, "model(images) under no_grad"

    model.train()
    mix = code.blending.CutmixMixupBlending(
        num_classes=num_classes, smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5
    )
    labels = torch.randint(0, num_classes, (batch,))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    new_parts = PUBLISHED_FAST_PARTS
    groups = [{"params": [p for n, p in trainable if not any(k in n for k in new_parts)]}]
    for part in new_parts:
        params = [p for n, p in trainable if part in n]
        if params:
            groups.append({"params": params, "lr": 1e-4})
    optimizer = torch.optim.AdamW(groups, lr=1e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=1e-3)

    def call():
        mixed, targets = mix(images.clone(), labels)
        logits = model(mixed)["logits"]
        loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return call, "mixup/cutmix, forward, soft-target cross-entropy, backward, AdamW"


def _published_worker(conn, path: str, mode: str, cfg: ModelConfig, batch: int, classes: int):
    """Runs in its own process (spawned: default malloc settings, as users run the published
    code): builds the step, then answers ("time", n) with the Samples of n calls."""
    try:
        call, what = published_step(path, mode, cfg, batch, classes)
    except Exception as e:  # reported by the parent, which exits with the message.
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", what))
    while True:
        command, n = conn.recv()
        if command == "stop":
            conn.send(("rss", max_rss_bytes()))
            return
        call()  # untimed: the first call after idling maps its memory afresh.
        samples = time_calls(call, n)
        release_memory()  # while the other side runs.
        conn.send(("samples", samples))


class PublishedProcess:
    """The published step in a child process, timed on request."""

    def __init__(self, path: str, mode: str, cfg: ModelConfig, batch: int, classes: int):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_published_worker, args=(child, path, mode, cfg, batch, classes), daemon=True
        )
        self.process.start()
        kind, self.description = self.conn.recv()
        if kind == "error":
            self.process.join()
            raise PublishedCodeError(self.description)

    def time(self, n: int) -> Samples:
        self.conn.send(("time", n))
        return self.conn.recv()[1]

    def close(self) -> float:
        """Stops the child; returns its max RSS in bytes."""
        self.conn.send(("stop", 0))
        rss = self.conn.recv()[1]
        self.process.join()
        return rss


def compare_published(args, cfg: ModelConfig, ours: Timed, mode: str, matmul_flops: float) -> None:
    """Times the published code and ours alternately, `args.rounds` rounds of one untimed and
    `args.steps` timed calls each, and prints the same-run ratio of the best calls with the
    per-round ratios as its spread."""
    published = PublishedProcess(args.compare_published, mode, cfg, args.batch, args.classes)
    mine, theirs, ratios = Samples(), Samples(), []
    for r in range(args.rounds):
        # Each side: one untimed call, then the timed ones. In between, each process hands its
        # free heap back to the kernel so that both fit in memory (the untimed call maps it again).
        ours.call()
        a = time_calls(ours.call, args.steps)
        release_memory()
        b = published.time(args.steps)
        mine.extend(a)
        theirs.extend(b)
        ratios.append(min(b.wall) / min(a.wall))
        print(
            f"compare {mode} round {r + 1}: published best {min(b.wall):.3f} s, tcclip-jax best "
            f"{min(a.wall):.3f} s: x{ratios[-1]:.2f}",
            flush=True,
        )
    rss = published.close()
    clips = args.batch
    print(f"published {mode} ({published.description}): {theirs.summary(clips)}; max RSS "
          f"{rss / 2**30:.2f} GiB", flush=True)  # fmt: skip
    rate = ours.stats["flops"] / min(mine.wall)
    print(f"tcclip-jax {ours.name}: {mine.summary(clips)}; best call {rate / 1e9:.1f} GFLOP/s "
          f"= {100 * rate / matmul_flops:.0f}% of the matmul rate", flush=True)  # fmt: skip
    print(
        f"same-run ratio, {mode}, {args.classes} classes, batch {args.batch}: x"
        f"{min(theirs.wall) / min(mine.wall):.2f} (published best {min(theirs.wall) / clips:.3f}"
        f" s/clip / tcclip-jax best {min(mine.wall) / clips:.3f} s/clip; per round x"
        f"{min(ratios):.2f}-x{max(ratios):.2f}, {args.rounds} rounds of {args.steps} calls); "
        f"by process CPU time per call (best of each) "
        f"x{cpu_seconds(theirs) / cpu_seconds(mine):.2f}",
        flush=True,
    )


def check_comparable(args: argparse.Namespace) -> None:
    """The published code is TC-CLIP ViT-B/16 at 224 px only (it hard-codes 196 patches and a
    512-wide prompt generation layer)."""
    if args.model != "tc_clip" or args.arch != "ViT-B/16" or args.dtype != "float32":
        raise PublishedCodeError(
            "the published code is compared as TC-CLIP ViT-B/16 in float32: use --model tc_clip "
            "--arch ViT-B/16 --dtype float32"
        )
    if args.depth is not None and args.depth < 2:
        raise PublishedCodeError("the published code needs --depth >= 2")
