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

The utilisation printed is against the backend's peak (`chips.peak_flops`) and against the rate
one plain matrix product reaches here (`steps.matmul_rate`, the practical ceiling). On CPU the
process's max RSS is printed too; it is cumulative over the process lifetime (run one `--mode`
per process to attribute it). Each measurement prints the median, best and worst wall time of
its calls, the process CPU time per call split into user and kernel time, and the minor page
faults per call (`timing`). The command applies the CLIs' malloc settings
(`tcclip_jax.runtime.allocator`; `TCCLIP_MALLOC=0` turns them off, to measure what they save)
and prints which are in force.
`--compare-published PATH` times the published PyTorch code alternately with ours (`published`);
`--merge gather|dense` picks the form of TC's summarisation (default: the backend's own).

Example (the CPU figures in the README):
  python -m tcclip_jax.bench --mode infer --batch 2 --classes 400
  python -m tcclip_jax.bench --mode train --batch 2 --classes 51 --steps 2 --warmup 1
  python -m tcclip_jax.bench --mode train --compare-published ~/src/tc-clip --rounds 2 --steps 2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from tcclip_jax.apps.inference import DTYPES
from tcclip_jax.bench.chips import peak_flops
from tcclip_jax.bench.published import (
    PublishedCodeError,
    check_comparable,
    compare_published,
    import_published,
)
from tcclip_jax.bench.steps import Reporter, class_tokens, matmul_rate, prepare_infer, prepare_train
from tcclip_jax.bench.timing import timed
from tcclip_jax.data.normalize import normalize_on_device
from tcclip_jax.models import ARCH_NAMES, ModelConfig, VideoCLIP, arch_config
from tcclip_jax.models.vision import TCTransformer
from tcclip_jax.ops.token_merging import MERGE_FORMS
from tcclip_jax.runtime import allocator, cli


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
        "--merge",
        choices=MERGE_FORMS,
        help="TC's summarisation form (default: the model's choice for this backend, "
        "gather on CPU, dense on TPU and GPU)",
    )
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
    overrides = {"model": args.model, "num_frames": args.frames, "merge": args.merge}
    if args.depth is not None:
        overrides.update(vision_layers=args.depth, text_layers=args.depth)
    return arch_config(args.arch, **overrides)


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
    merge_note = f", TC summarisation {TCTransformer(cfg).merge_form}" if cfg.is_temporal else ""
    print(
        f"backend {device.platform} ({jax.device_count()} x {device.device_kind}), jax "
        f"{jax.__version__}; {args.model} {args.arch} depth {cfg.vision_layers}/"
        f"{cfg.text_layers}, {args.frames} frames, batch {args.batch}, {args.classes} classes, "
        f"{args.dtype}{', remat' if args.remat else ''}{merge_note}; peak "
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


if __name__ == "__main__":
    allocator.configure()
    cli.quiet_libraries()
    sys.exit(cli.guarded(main, debug="--debug" in sys.argv[1:]))
