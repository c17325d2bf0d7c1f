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
utilisation printed is against the backend's peak from `peak_flops`. Memory comes
from `compiled.memory_analysis()` (arguments + outputs + temporaries - donated aliases: what the
compiled program needs on the device) and, on CPU, from the process's max RSS, which is
cumulative over the process lifetime (run one `--mode` per process to attribute it).

Process CPU time is printed beside wall time: on a shared machine it is the steadier measure of
the work done (wall ~ CPU / cores when the cores are free).

Example (the CPU figures in the README):
  python -m tcclip_jax.bench --mode infer --batch 2 --classes 400
  python -m tcclip_jax.bench --mode train --batch 2 --classes 51 --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tcclip_jax.data.normalize import normalize_on_device
from tcclip_jax.inference import DTYPES, prompt_tokens, text_encoder
from tcclip_jax.models import ARCH_NAMES, ModelConfig, VideoCLIP, arch_config
from tcclip_jax.train import losses, optim
from tcclip_jax.train.step import initial_state, make_train_step

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
    args = p.parse_args(argv)
    for name in ("frames", "batch", "classes", "steps"):
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


def class_tokens(cfg: ModelConfig, num_classes: int) -> np.ndarray:
    """Prompts for made-up class names of a typical length (2-3 words)."""
    words = ("jump", "rope", "playing", "guitar", "ride", "horse", "brush", "hair", "kick")
    names = [
        f"{words[i % 9]} {words[(i // 9) % 9]} {i}" if i % 2 else f"{words[i % 9]} {i}"
        for i in range(num_classes)
    ]
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


def timed(fn: Callable[..., object], steps: int, warmup: int) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of `fn()` over `steps` calls after `warmup` calls.

    CPU time says how much work a call was when other processes share the cores (wall time then
    overstates it): on an otherwise idle machine wall ~ CPU / cores.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def max_rss_bytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: KiB.


@dataclasses.dataclass(frozen=True)
class Reporter:
    """Prints one line per measurement against the backend's peak."""

    peak_flops: float | None
    show_rss: bool  # CPU: the process's max RSS is the host memory actually touched.

    def __call__(self, name: str, times: tuple[float, float], clips: int, stats: dict) -> None:
        seconds, cpu = times
        flops_s = stats["flops"] / seconds
        util = f"{100 * flops_s / self.peak_flops:.1f}% of peak" if self.peak_flops else "n/a"
        per_clip = f"{seconds / clips:.3f} s/clip, {clips / seconds:.3f} clips/s, " if clips else ""
        line = (
            f"{name}: {seconds:.3f} s/call (process CPU {cpu:.3f} s), {per_clip}"
            f"{stats['flops'] / 1e9:.1f} GFLOP/call (XLA cost analysis), "
            f"{flops_s / 1e9:.1f} GFLOP/s ({util}); compiled peak memory "
            f"{stats['bytes'] / 2**30:.2f} GiB (args + outputs + temps)"
        )
        if self.show_rss:
            line += f"; process max RSS so far {max_rss_bytes() / 2**30:.2f} GiB"
        print(line, flush=True)


def bench_infer(
    model: VideoCLIP,
    params: dict,
    clips: jax.Array,
    tokens: jax.Array,
    steps: int,
    warmup: int,
    report: Reporter,
) -> None:
    """Class-set encoding once (timed alone), then video encoding + logits per batch."""
    encode_text = text_encoder(model)

    def classify(p, x, text):
        video = model.apply({"params": p}, x, method="encode_video")
        return model.apply({"params": p}, video, text, method="logits")

    classify = jax.jit(classify)
    compiled_text = encode_text.lower(params, tokens).compile()
    text = compiled_text(params, tokens)
    times = timed(lambda: compiled_text(params, tokens), steps, warmup)
    report(
        f"infer: encode_text ({tokens.shape[0]} classes, once per class set)",
        times,
        0,
        compiled_stats(compiled_text),
    )
    compiled = classify.lower(params, clips, text).compile()
    times = timed(lambda: compiled(params, clips, text), steps, warmup)
    report(
        f"infer: encode_video + logits (batch {clips.shape[0]}, text cached)",
        times,
        clips.shape[0],
        compiled_stats(compiled),
    )


def bench_train(
    model: VideoCLIP,
    params: dict,
    clips: jax.Array,
    tokens: jax.Array,
    steps: int,
    warmup: int,
    report: Reporter,
) -> None:
    """The trainer's own step (`train.step.make_train_step`: mixup / cutmix, smoothed labels,
    AdamW with the x10 group, frozen token embedding), jitted with the state donated.

    `clips` are uint8 as the data pipeline delivers them; `params` is consumed (donated).
    """
    num_classes = tokens.shape[0]
    schedule = optim.cosine_schedule(1e-5, 1e-7, warmup_steps=1, total_steps=steps + warmup + 1)
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
        return metrics["loss"]

    times = timed(call, steps, warmup)
    report(
        f"train: step ({clips.shape[0]} clips, {num_classes} classes)",
        times,
        clips.shape[0],
        compiled_stats(compiled, flops),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = model_config(args)
    dtype = DTYPES[args.dtype]
    device = jax.devices()[0]
    peak, peak_source = peak_flops(device, args.dtype)
    report = Reporter(peak, show_rss=device.platform == "cpu")
    print(
        f"backend {device.platform} ({jax.device_count()} x {device.device_kind}), jax "
        f"{jax.__version__}; {args.model} {args.arch} depth {cfg.vision_layers}/"
        f"{cfg.text_layers}, {args.frames} frames, batch {args.batch}, {args.classes} classes, "
        f"{args.dtype}{', remat' if args.remat else ''}; peak "
        f"{f'{peak / 1e12:.3f} TFLOP/s' if peak else ''} ({peak_source})",
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
        bench_infer(model, params, inputs, tokens, args.steps, args.warmup, report)
    if args.mode in ("train", "both"):
        bench_train(model, params, clips, tokens, args.steps, args.warmup, report)


if __name__ == "__main__":
    main()
