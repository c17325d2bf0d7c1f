"""The measured programs: inference (text encoding, then video encoding + logits) and the
trainer's own train step, compiled on the default backend, with their FLOPs and memory.

FLOPs come from XLA's cost analysis (2 per multiply-add; elementwise ops count too; with remat,
of the unrolled program, so recomputation is not counted as useful work). Memory comes from
`compiled.memory_analysis()` (arguments + outputs + temporaries - donated aliases: what the
compiled program needs on the device).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tcclip_jax.apps.inference import DTYPES, prompt_tokens, text_encoder
from tcclip_jax.bench.timing import Samples, max_rss_bytes, timed
from tcclip_jax.data.normalize import normalize_on_device
from tcclip_jax.models import VideoCLIP
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.train import losses, optim
from tcclip_jax.train.step import initial_state, make_train_step


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
