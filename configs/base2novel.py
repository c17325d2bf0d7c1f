"""Base-to-novel: 16 shots of the base half of the classes; accuracy on base and novel classes.

Argument `DATASET,SPLIT` (default `hmdb51,1`; SPLIT 1-3 picks the published 16-shot base list
`fs_base_s{SPLIT}_train.txt`). Recipe: lr 3.33e-6 -> 3.33e-8, batch 64, 12 epochs (2 warm-up),
2 clips x 1 crop at test; reported: base top-1, novel top-1 and their harmonic mean.

Labels in every list are ids of `data.class_list` (all classes); `data.base_class_ids` lists the
base classes (training and the base evaluation use those, the novel evaluation the others).

  python -m tcclip_jax.train --config configs/base2novel.py:ucf101,1 --workdir runs/b2n_ucf_1 \
      --config.init_checkpoint=checkpoints/clip_vit_b16 --config.splits_dir=TC-CLIP \
      --config.data.root=/data/ucf101/videos --config.data.base_class_ids='(0,1,...)'
"""

from tcclip_jax.config import base


def get_config(arg: str | None = None):
    args = base.parse_arg(arg, ("dataset", "split"))
    name, split = args.get("dataset", "hmdb51"), int(args.get("split", 1))
    c = base.base_config("base2novel")
    base.set_dataset(c, name)
    lists = base.DATASETS[name]["base2novel"]
    c.data.train_list = f"{lists}/fs_base_s{split}_train.txt"
    c.data.val_list = f"{lists}/base_val.txt"
    c.data.novel_val_list = f"{lists}/novel_val.txt"
    c.optim.lr, c.optim.min_lr = 3.33e-6, 3.33e-8
    c.batch_size, c.num_epochs, c.warmup_epochs = 64, 12, 2
    c.data.test_clips, c.data.test_crops = 2, 1
    c.eval.every_epochs = 2
    c.lock()
    return c
