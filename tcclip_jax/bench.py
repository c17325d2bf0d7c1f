"""Throughput and memory of inference and of one training step: `python -m tcclip_jax.bench`.

Random-initialised weights and random inputs (speed does not depend on the values), on whatever
backend JAX finds. Two phases:

* infer: `encode_text` once per class set (what evaluation caches; timed on its own), then
  `encode_video` + `logits` per batch, timed per clip with the text cache excluded.
* train: the trainer's own step (`train.step.make_train_step`) on uint8 clips: mixup / cutmix,
  the full forward (`model.apply`, text re-encoded every step since it is trained), soft-target
  cross-entropy, gradients and AdamW (`optim.create_optimizer`: betas (0.9, 0.98), weight decay
  1e-3, x10 group), jitted with the state donated. The token embedding is frozen, as in the
  published code: it gets neither gradients nor optimiser state.

FLOPs come from XLA's cost analysis (2 per multiply-add; elementwise ops count too; with
`--remat`, of the unrolled program, so recomputation is not counted as useful work), and the
utilisation printed is against the backend's peak from `peak_flops` and against the rate one
plain matrix product reaches here (`matmul_rate`, the practical ceiling). Memory comes
from `compiled.memory_analysis()` (arguments + outputs + temporaries - donated aliases: what the
compiled program needs on the device) and, on CPU, from the process's max RSS, which is
cumulative over the process lifetime (run one `--mode` per process to attribute it).

Each measurement prints the median, best and worst wall time of its calls, the process CPU time
per call split into user and kernel time, and the minor page faults per call: on a shared machine
CPU time is the steadier measure of the work done (wall ~ CPU / cores when the cores are free),
and kernel time is mostly page faults of freshly mapped memory. `python -m tcclip_jax.bench`
applies the CLIs' malloc settings (`tcclip_jax.allocator`; `TCCLIP_MALLOC=0` turns them off, to
measure what they save) and prints which are in force.

`--compare-published PATH` (PATH: a checkout of github.com/naver-ai/tc-clip, with torch, einops
and timm installed) times the published code's step in a child process (default malloc
settings, as its users run it) and ours alternately, `--rounds` rounds of one untimed and
`--steps` timed calls each, and prints the ratio of the best calls with the per-round ratios as
its spread. Between rounds each process returns its free heap to the kernel, so that both fit
in memory (a ViT-B/16 training step holds ~12 GiB on our side, ~9 GiB on theirs).

Example (the CPU figures in the README):
  python -m tcclip_jax.bench --mode infer --batch 2 --classes 400
  python -m tcclip_jax.bench --mode train --batch 2 --classes 51 --steps 2 --warmup 1
  python -m tcclip_jax.bench --mode train --compare-published ~/src/tc-clip --rounds 2 --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import logging
import math
import multiprocessing
import os
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tcclip_jax import allocator, cli
from tcclip_jax.data.normalize import normalize_on_device
from tcclip_jax.inference import DTYPES, prompt_tokens, text_encoder
from tcclip_jax.models import ARCH_NAMES, ModelConfig, VideoCLIP, arch_config
from tcclip_jax.train import losses, optim
from tcclip_jax.train.step import initial_state, make_train_step
from tcclip_jax.weights.pytorch import PUBLISHED_FAST_PARTS

# Dense (no sparsity) peak FLOP/s per chip by device-kind substring, in bf16 and fp32.
# TPUs: Google's published bf16 peak; JAX's default matmul precision runs float32 matmuls as
# single-pass bf16 on the MXU, so the fp32 entry is the same figure. GPUs: NVIDIA's datasheets
# (SXM parts), bf16 tensor cores and plain fp32 (no TF32).
PEAK_FLOPS = {
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},  # v5e.
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12},  # v5p reports itself as "TPU v5".
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},  # v6e.
    "TPU v6e": {"bfloat16": 918e12, "float32": 918e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tcclip_jax.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", choices=("tc_clip", "vifi_clip", "clip"), default="tc_clip")
    p.add_argument("--arch", choices=ARCH_NAMES, default="ViT-B/16")
    p.add_argument("--depth", type=int, help="override the depth of both towers (quick runs)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch", type=int, default=2, help="clips per step")
    p.add_argument("--classes", type=int, default=51)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="compute dtype")
    p.add_argument("--mode", choices=("infer", "train", "both"), default="both")
    p.add_argument("--steps", type=int, default=3, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after compilation")
    p.add_argument("--remat", action="store_true", help="rematerialise blocks in the backward")
    p.add_argument(
        "--compare-published",
        metavar="PATH",
        help="a checkout of github.com/naver-ai/tc-clip: time its inference / training step and "
        "ours alternately (best of --rounds x --steps calls each) and print same-run ratios",
    )
    p.add_argument("--rounds", type=int, default=2, help="alternations with --compare-published")
    p.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    args = p.parse_args(argv)
    for name in ("frames", "batch", "classes", "steps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.depth is not None and args.depth < 1:
        p.error(f"--depth must be >= 1, got {args.depth}")
    return args


def model_config(args: argparse.Namespace) -> ModelConfig:
    overrides = {"model": args.model, "num_frames": args.frames}
    if args.depth is not None:
        overrides.update(vision_layers=args.depth, text_layers=args.depth)
    return arch_config(args.arch, **overrides)


def class_names(num_classes: int) -> list[str]:
    """Made-up class names of a typical length (2-3 words)."""
    words = ("jump", "rope", "playing", "guitar", "ride", "horse", "brush", "hair", "kick")
    return [
        f"{words[i % 9]} {words[(i // 9) % 9]} {i}" if i % 2 else f"{words[i % 9]} {i}"
        for i in range(num_classes)
    ]


def class_tokens(cfg: ModelConfig, num_classes: int) -> np.ndarray:
    """Prompts for `class_names`, padding trimmed as training and evaluation do."""
    names = class_names(num_classes)
    return prompt_tokens(cfg, names)


def peak_flops(device: jax.Device, dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where it comes from) for the whole backend, or (None, reason)."""
    n = jax.device_count()
    if device.platform != "cpu":
        for kind, peaks in PEAK_FLOPS.items():
            if kind.lower() in device.device_kind.lower():
                return n * peaks[dtype], f"{n} x {kind} {dtype} datasheet peak"
        return None, f"no peak known for {device.device_kind!r}"
    return cpu_peak_flops()


def cpu_peak_flops() -> tuple[float | None, str]:
    """cores x clock x fp32 FMA lanes x 2 FLOPs x FMA units, from /proc/cpuinfo (Linux x86).

    An estimate: it assumes 2 vector FMA units per core (most server cores since Haswell; some
    AVX-512 parts have one) and the nominal clock. The same figure is used for bf16 (XLA's CPU
    matmuls do not use AMX tiles).
    """
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return None, "n/a (no /proc/cpuinfo)"
    flags, mhz = set(), None
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
        elif key.strip() == "cpu MHz" and mhz is None:
            mhz = float(value)
    if mhz is None or "fma" not in flags:
        return None, "n/a (clock or FMA support unknown)"
    lanes = 16 if "avx512f" in flags else 8
    cores = len(os.sched_getaffinity(0))
    peak = cores * mhz * 1e6 * lanes * 2 * 2
    return (
        peak,
        f"estimate: {cores} cores x {mhz / 1e3:.2f} GHz x {lanes} fp32 lanes x FMA x 2 units",
    )


def cost_flops(stage: jax.stages.Lowered | jax.stages.Compiled) -> float:
    cost = stage.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per computation.
        cost = cost[0]
    return float(cost.get("flops", 0.0))


def compiled_stats(compiled: jax.stages.Compiled, flops: float | None = None) -> dict[str, float]:
    """FLOPs (XLA cost analysis, unless given) and the bytes the program needs (memory
    analysis: arguments + outputs + temporaries - donated aliases).

    XLA counts a `while` body once, so a program with the vision blocks in a rematerialised
    `lax.scan` is under-counted: its caller passes the FLOPs of the unrolled program instead.
    """
    mem = compiled.memory_analysis()
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
    )
    return {"flops": cost_flops(compiled) if flops is None else flops, "bytes": float(peak)}


def matmul_rate(dtype: str, calls: int = 5) -> float:
    """FLOP/s of one plain square matrix product on the default backend (best of `calls`).

    The ceiling of a matmul-bound program on this machine, measured rather than estimated: a CPU's
    clock runs above the nominal one `cpu_peak_flops` reads, and no library reaches a datasheet
    peak. A model step reaching ~90% of it has little left to gain but by computing less.
    """
    n = 2048 if jax.devices()[0].platform == "cpu" else 8192
    a = jnp.ones((n, n), DTYPES[dtype])
    product = jax.jit(jnp.matmul).lower(a, a).compile()
    samples = timed(lambda: product(a, a), calls, warmup=1)
    return 2 * n**3 / min(samples.wall)


@dataclasses.dataclass
class Samples:
    """Per-call wall, user-CPU and kernel-CPU seconds and minor page faults of one process."""

    wall: list[float] = dataclasses.field(default_factory=list)
    user: list[float] = dataclasses.field(default_factory=list)
    system: list[float] = dataclasses.field(default_factory=list)
    faults: list[int] = dataclasses.field(default_factory=list)

    def extend(self, other: Samples) -> None:
        for name in ("wall", "user", "system", "faults"):
            getattr(self, name).extend(getattr(other, name))

    def summary(self, clips: int = 0) -> str:
        """'median s/call (best, worst of n); CPU user + kernel (kernel share); faults'."""
        wall, n = statistics.median(self.wall), len(self.wall)
        user, system = statistics.median(self.user), statistics.median(self.system)
        per_clip = f", best {min(self.wall) / clips:.3f} s/clip" if clips else ""
        return (
            f"{wall:.3f} s/call (best {min(self.wall):.3f}, worst {max(self.wall):.3f} of {n}"
            f"{per_clip}); process CPU {user + system:.2f} s/call = {user:.2f} user + "
            f"{system:.2f} kernel ({100 * system / max(user + system, 1e-9):.1f}% kernel), "
            f"{statistics.median(self.faults):.0f} minor page faults/call"
        )


def time_calls(fn: Callable[[], object], steps: int) -> Samples:
    """Wall, process CPU (user and kernel, all threads) and minor page faults of each call.

    CPU time says how much work a call was when other processes share the cores (wall time then
    overstates it): on an otherwise idle machine wall ~ CPU / cores. Kernel time is mostly the
    page faults of freshly mapped memory (see `tcclip_jax.allocator`).
    """
    samples = Samples()
    for _ in range(steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        samples.wall.append(t1 - t0)
        samples.user.append(r1.ru_utime - r0.ru_utime)
        samples.system.append(r1.ru_stime - r0.ru_stime)
        samples.faults.append(r1.ru_minflt - r0.ru_minflt)
    return samples


def timed(fn: Callable[[], object], steps: int, warmup: int) -> Samples:
    """`time_calls` of `fn()` (waited for) over `steps` calls after `warmup` calls."""
    call = lambda: jax.block_until_ready(fn())
    for _ in range(warmup):
        call()
    return time_calls(call, steps)


def max_rss_bytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: KiB.


@dataclasses.dataclass(frozen=True)
class Reporter:
    """Prints one line per measurement against the backend's peak."""

    peak_flops: float | None
    show_rss: bool  # CPU: the process's max RSS is the host memory actually touched.
    matmul_flops: float  # FLOP/s of a plain matrix product here (`matmul_rate`).

    def __call__(self, name: str, samples: Samples, clips: int, stats: dict) -> None:
        seconds = statistics.median(samples.wall)
        flops_s = stats["flops"] / seconds
        util = f"{100 * flops_s / self.peak_flops:.1f}% of peak, " if self.peak_flops else ""
        util += f"{100 * flops_s / self.matmul_flops:.0f}% of the matmul rate"
        per_clip = f"{seconds / clips:.3f} s/clip, {clips / seconds:.3f} clips/s; " if clips else ""
        line = (
            f"{name}: {per_clip}{samples.summary(clips)}; "
            f"{stats['flops'] / 1e9:.1f} GFLOP/call (XLA cost analysis), "
            f"{flops_s / 1e9:.1f} GFLOP/s ({util}); compiled peak memory "
            f"{stats['bytes'] / 2**30:.2f} GiB (args + outputs + temps)"
        )
        if self.show_rss:
            line += f"; process max RSS so far {max_rss_bytes() / 2**30:.2f} GiB"
        print(line, flush=True)


@dataclasses.dataclass
class Timed:
    """A prepared measurement: `call()` runs one call and waits for it."""

    name: str
    call: Callable[[], object]
    clips: int
    stats: dict


def prepare_infer(model: VideoCLIP, params: dict, clips: jax.Array, tokens: jax.Array) -> list:
    """Class-set encoding (once per class set), then video encoding + logits per batch."""
    encode_text = text_encoder(model)

    def classify(p, x, text):
        video = model.apply({"params": p}, x, method="encode_video")
        return model.apply({"params": p}, video, text, method="logits")

    classify = jax.jit(classify)
    compiled_text = encode_text.lower(params, tokens).compile()
    text = compiled_text(params, tokens)
    compiled = classify.lower(params, clips, text).compile()
    return [
        Timed(
            f"infer: encode_text ({tokens.shape[0]} classes, once per class set)",
            lambda: jax.block_until_ready(compiled_text(params, tokens)),
            0,
            compiled_stats(compiled_text),
        ),
        Timed(
            f"infer: encode_video + logits (batch {clips.shape[0]}, text cached)",
            lambda: jax.block_until_ready(compiled(params, clips, text)),
            clips.shape[0],
            compiled_stats(compiled),
        ),
    ]


def prepare_train(model: VideoCLIP, params: dict, clips: jax.Array, tokens: jax.Array) -> Timed:
    """The trainer's own step (`train.step.make_train_step`: mixup / cutmix, smoothed labels,
    AdamW with the x10 group, frozen token embedding), jitted with the state donated.

    `clips` are uint8 as the data pipeline delivers them; `params` is consumed (donated).
    """
    num_classes = tokens.shape[0]
    schedule = optim.cosine_schedule(1e-5, 1e-7, warmup_steps=1, total_steps=10**6)
    tx = optim.create_optimizer(schedule, weight_decay=1e-3)

    def make_step(model: VideoCLIP) -> Callable:
        return make_train_step(
            model,
            tx,
            schedule,
            num_classes=num_classes,
            label_smoothing=0.1,
            # Groups of the published 4 clips where the batch allows (the cost is the same).
            mix=losses.MixConfig(group_size=math.gcd(clips.shape[0], 4)),
            normalize=normalize_on_device,
        )

    state = initial_state(params, tx)
    labels = jax.random.randint(jax.random.key(2), (1, clips.shape[0]), 0, num_classes)
    batch = {"video": clips[None], "label": labels}
    rng = jax.random.key(3)
    step_args = (state, batch, tokens, rng)
    lowered = jax.jit(make_step(model), donate_argnums=(0,)).lower(*step_args)
    compiled = lowered.compile()
    # Model FLOPs, as utilisation counts them: with remat, those of the unrolled program (no
    # recomputation; the scan's own count would include one block of it only).
    if model.remat:
        lowered = jax.jit(make_step(model.clone(remat=False))).lower(*step_args)
    flops = cost_flops(lowered)
    carry = [state]

    def call():
        carry[0], metrics = compiled(carry[0], batch, tokens, rng)
        return jax.block_until_ready(metrics["loss"])

    name = f"train: step ({clips.shape[0]} clips, {num_classes} classes)"
    return Timed(name, call, clips.shape[0], compiled_stats(compiled, flops))


def bench_infer(model, params, clips, tokens, steps, warmup, report) -> None:
    for t in prepare_infer(model, params, clips, tokens):
        report(t.name, timed(t.call, steps, warmup), t.clips, t.stats)


def bench_train(model, params, clips, tokens, steps, warmup, report) -> None:
    t = prepare_train(model, params, clips, tokens)
    report(t.name, timed(t.call, steps, warmup), t.clips, t.stats)


# The published PyTorch code, for same-run comparisons ----------------------------------------

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


def current_rss_bytes() -> int:
    """Resident memory now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def release_memory(timeout: float = 10.0) -> None:
    """Return the free heap to the kernel once the last call's buffers are freed (XLA frees
    them on its own threads shortly after the outputs are ready): until the RSS stops falling."""
    deadline, rss = time.monotonic() + timeout, current_rss_bytes()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        allocator.release_free_memory()
        rss, before = current_rss_bytes(), rss
        if rss >= 0.99 * before:
            return


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


def cpu_seconds(samples: Samples) -> float:
    """The least process CPU time (user + kernel) of any call."""
    return min(u + s for u, s in zip(samples.user, samples.system, strict=True))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = model_config(args)
    if args.compare_published:
        try:
            check_comparable(args)
            import_published(args.compare_published)
        except PublishedCodeError as e:
            sys.exit(f"error: --compare-published: {e}")
    dtype = DTYPES[args.dtype]
    device = jax.devices()[0]
    peak, peak_source = peak_flops(device, args.dtype)
    matmul = matmul_rate(args.dtype)
    report = Reporter(peak, show_rss=device.platform == "cpu", matmul_flops=matmul)
    print(
        f"backend {device.platform} ({jax.device_count()} x {device.device_kind}), jax "
        f"{jax.__version__}; {args.model} {args.arch} depth {cfg.vision_layers}/"
        f"{cfg.text_layers}, {args.frames} frames, batch {args.batch}, {args.classes} classes, "
        f"{args.dtype}{', remat' if args.remat else ''}; peak "
        f"{f'{peak / 1e12:.3f} TFLOP/s' if peak else ''} ({peak_source}); matmul rate "
        f"{matmul / 1e9:.1f} GFLOP/s (one square {args.dtype} product); malloc settings: "
        f"{allocator.status()}",
        flush=True,
    )
    model = VideoCLIP(cfg, dtype=dtype, remat=args.remat)
    size = cfg.image_resolution
    shape = (args.batch, args.frames, size, size, 3)
    clips = jax.random.randint(jax.random.key(1), shape, 0, 256, jnp.int32).astype(jnp.uint8)
    tokens = jnp.asarray(class_tokens(cfg, args.classes))
    params = jax.jit(model.init)(jax.random.key(0), normalize_on_device(clips[:1]), tokens[:1])
    params = params["params"]
    if args.mode in ("infer", "both"):
        inputs = jax.jit(normalize_on_device)(clips)
        text, video = prepare_infer(model, params, inputs, tokens)
        report(text.name, timed(text.call, args.steps, args.warmup), text.clips, text.stats)
        if args.compare_published:
            compare_published(args, cfg, video, "infer", matmul)
        else:
            report(video.name, timed(video.call, args.steps, args.warmup), video.clips, video.stats)
    if args.mode in ("train", "both"):
        step = prepare_train(model, params, clips, tokens)
        if args.compare_published:
            compare_published(args, cfg, step, "train", matmul)
        else:
            report(step.name, timed(step.call, args.steps, args.warmup), step.clips, step.stats)


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


if __name__ == "__main__":
    allocator.configure()
    cli.quiet_libraries()
    sys.exit(cli.guarded(main, debug="--debug" in sys.argv[1:]))
