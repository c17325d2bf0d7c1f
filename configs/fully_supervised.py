"""Fully supervised: fine-tune and evaluate on all of Kinetics-400.

Recipe: lr 2.2e-5 -> 2.2e-7, batch 512, 30 epochs (5 warm-up), validation on K-400 val with 1x1
views after every epoch, 4 clips x 3 crops at test on the best.

  python -m tcclip_jax.train --config configs/fully_supervised.py --workdir runs/k400 \
      --config.init_checkpoint=ckpt/tcclip_init --config.splits_dir=TC-CLIP \
      --config.data.root=/data/k400/videos --config.grad_accum_steps=8 --config.remat=True
"""

from tcclip_jax.config import base


def get_config(arg: str | None = None):
    args, flags = base.parse_arg(arg, ("dataset",))
    llm = "llm" in flags
    name = args.get("dataset", "k400")
    c = base.base_config("fully_supervised")
    base.set_dataset(c, name)
    c.data.train_list = f"{base.DATASETS[name]['lists']}/train.txt"
    if llm:
        c.data.class_list = base.llm_class_list(name)
        base.use_llm_names(c)
    c.optim.lr, c.optim.min_lr = 2.2e-5, 2.2e-7
    c.batch_size, c.num_epochs, c.warmup_epochs = 512, 30, 5
    c.data.test_clips, c.data.test_crops = 4, 3
    c.eval.every_epochs = 1
    c.eval.val_clips, c.eval.val_crops = 1, 1
    c.checkpoint.every_steps = 1000
    c.lock()
    return c
