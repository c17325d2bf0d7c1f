"""Demo: a tiny TC-CLIP trained from random weights on the synthetic motion dataset, on a CPU.

The dataset (`tcclip_jax.data.synthetic`: 8 classes that only the order of frames tells apart,
e.g. "moving left" vs "moving right") is generated into `data.root` (default: WORKDIR/synthetic)
on first use. Chance is 12.5% top-1. No checkpoint is needed. The run takes a few minutes on two
CPU cores, dataset included (docs/performance.md gives its time and top-1 with the command that
measured them). The model stays near chance for a few dozen epochs, then learns the motions; from
random weights that path is sensitive to float rounding, so a change that rounds differently moves
the final top-1 by a few points. `python -m tcclip_jax.bench.demo --against REV` times it against
another commit.

  python -m tcclip_jax.train --config configs/demo.py --workdir runs/demo      # minutes
  python -m tcclip_jax.train --config configs/demo.py:ci --workdir /tmp/ci     # seconds: CI

The `ci` variant makes the smallest run that still goes through every stage (data generation,
training, validation, checkpoints, export, final evaluation).
"""

import ml_collections

from tcclip_jax.config import base


def get_config(arg: str | None = None):
    variant = base.parse_arg(arg, ("variant",))[0].get("variant", "full")
    if variant not in ("full", "ci"):
        raise ValueError(f"configs/demo.py argument must be 'full' or 'ci', got {variant!r}")
    c = base.base_config("demo")
    c.dataset_name = "synthetic"
    c.random_init = True
    # The synthetic dataset, generated into `data.root` (or WORKDIR/synthetic) if absent.
    c.prepare_data = "tcclip_jax.data.synthetic:prepare"
    c.synthetic = ml_collections.ConfigDict(
        dict(videos_per_class=64, val_per_class=16, num_frames=32, size=32)
    )
    c.dtype = "float32"  # CPUs have no fast bfloat16

    # A CLIP-shaped TC-CLIP sized for a CPU. Each 16x16 frame is one patch, and every frame's
    # patch token is a seed (alpha = 1) kept as a context token (k = T, nothing to merge): each
    # frame attends to all frames, which is what tells "left" from "right". `joint` positions
    # (one shared spatial table + a per-frame vector at random init) give frames their order.
    c.model.update(
        dict(
            embed_dim=64,
            vision_patch_size=16,
            vision_width=96,
            vision_layers=4,
            vision_heads=4,
            text_width=64,
            text_layers=2,
            text_heads=4,
            positional_embedding="joint",
            seed_ratio=1.0,
            context_tokens=8,
            merge_r=8,
        )
    )
    c.data.num_frames = 8
    # Whole frames at 16x16; mild crops only: at this size the scale jitter of the recipe
    # changes the apparent motion more than the motion itself.
    c.data.image_size, c.data.resize_size, c.data.crop_scales = 16, 16, (1.0, 0.875)
    c.data.hflip = False  # a flip turns "moving left" into "moving right"
    # 32 px clips decode faster than worker processes start: decode in the training process
    # whatever the host's cores ('auto' would start workers on 8 cores or more).
    c.data.num_workers = 0
    c.data.test_clips, c.data.test_crops = 2, 1
    # The demo's own choices: it learns from scratch, while the published recipe's ImageNet
    # statistics, per-frame jitter and random test offsets are for fine-tuning CLIP.
    c.data.normalization = "clip"
    c.data.color_jitter_per_frame = False
    c.data.test_clip_sampling = "uniform"
    # Mixing two clips mixes two motions; from scratch on 8 classes it only slows learning.
    c.mixup.mixup_alpha, c.mixup.cutmix_alpha = 0.0, 0.0

    c.batch_size = 32
    c.num_epochs, c.warmup_epochs = 80, 2
    c.optim.lr, c.optim.min_lr = 1e-3, 1e-5  # from scratch: far above fine-tuning rates
    c.optim.weight_decay = 0.01
    # Counted in optimiser steps (the figures above were measured so): no published geometry.
    c.optim.schedule = "optimizer_steps"
    c.eval.batch_size = 32
    c.eval.every_epochs = 10  # after epochs 1, 11, ..., 71 and 80
    c.log_every_steps = 16
    c.checkpoint.every_steps = 320

    if variant == "ci":
        c.synthetic.update(dict(videos_per_class=4, val_per_class=2, num_frames=8))
        c.model.update(dict(vision_layers=2, vision_width=32, vision_heads=2, text_width=32,
                            embed_dim=32, text_heads=2, context_tokens=4))  # fmt: skip
        c.data.num_frames = 4
        c.mixup.mixup_alpha, c.mixup.cutmix_alpha = 0.8, 1.0  # run the recipe's mixing path
        c.batch_size = 8
        c.num_epochs, c.warmup_epochs = 2, 1
        c.eval.batch_size = 8
        c.eval.every_epochs = 1
        c.log_every_steps = 2
        c.checkpoint.every_steps = 2
    c.lock()
    return c
