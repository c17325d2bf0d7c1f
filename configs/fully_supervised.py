"""Fully supervised: fine-tune and evaluate on all of Kinetics-400.

Recipe: lr 2.2e-5 -> 2.2e-7, batch 512, 30 epochs (5 warm-up), 4 clips x 3 crops at test.

  python -m tcclip_jax.train --config configs/fully_supervised.py --workdir runs/k400 \
      --config.init_checkpoint=checkpoints/clip_vit_b16 --config.splits_dir=TC-CLIP \
      --config.data.root=/data/k400/videos --config.grad_accum_steps=8 --config.remat=True
"""

from tcclip_jax.config import base


def get_config(arg: str | None = None):
    name = base.parse_arg(arg, ("dataset",)).get("dataset", "k400")
    c = base.base_config("fully_supervised")
    base.set_dataset(c, name)
    c.data.train_list = f"{base.DATASETS[name]['lists']}/train.txt"
    c.optim.lr, c.optim.min_lr = 2.2e-5, 2.2e-7
    c.batch_size, c.num_epochs, c.warmup_epochs = 512, 30, 5
    c.data.test_clips, c.data.test_crops = 4, 3
    c.eval.every_epochs = 5
    c.checkpoint.every_steps = 1000
    c.lock()
    return c
