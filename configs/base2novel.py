"""Base-to-novel: 16 shots of the base half of the classes; accuracy on base and novel classes.

Argument `DATASET,SEED[,llm][,k400_pretrained]` (default `hmdb51,1`; DATASET: hmdb51, ucf101,
ssv2, k400; SEED 1-3 picks the published 16-shot base list `fs_base_s{SEED}_train.txt`; `llm`:
FROSTER's LLM-rephrased class names, context length 77; `k400_pretrained`: the authors' "(P)"
setting, fine-tuning a TC-CLIP already trained on Kinetics-400, the zero-shot K-400 checkpoint
as `--config.init_checkpoint`, instead of CLIP: `report` gives those runs rows of their own).
Recipe: lr 3.33e-6 -> 3.33e-8, batch 64, 12 epochs (2 warm-up), validation on `base_val` after
every epoch, 2 clips x 1 crop at test; reported: base top-1, novel top-1 and the harmonic mean
of their means over the three seeds (`python -m tcclip_jax.report`).

The lists are used as published: base lists number the base classes 0..B-1 against
`*_base_labels.csv` (`data.class_list`), `novel_val.txt` the novel classes 0..N-1 against
`*_novel_labels.csv` (`data.novel_class_list`); each is checked against its class list at start.

  python -m tcclip_jax.train --config configs/base2novel.py:ucf101,1 --workdir runs/b2n_ucf_1 \
      --config.init_checkpoint=ckpt/tcclip_init --config.splits_dir=TC-CLIP \
      --config.data.root=/data/ucf101/videos
"""

from tcclip_jax.config import base


def get_config(arg: str | None = None):
    args, flags = base.parse_arg(arg, ("dataset", "seed"), ("llm", "k400_pretrained"))
    llm = "llm" in flags
    name, seed = args.get("dataset", "hmdb51"), int(args.get("seed", 1))
    if seed not in (1, 2, 3):
        raise ValueError(f"configs/base2novel.py: the published seeds are 1, 2, 3, not {seed}")
    c = base.base_config("base2novel")
    base.set_dataset(c, name)
    lists = base.DATASETS[name]["base2novel"]
    c.data.train_list = f"{lists}/fs_base_s{seed}_train.txt"
    c.data.val_list = f"{lists}/base_val.txt"
    c.data.novel_val_list = f"{lists}/novel_val.txt"
    pick = base.llm_class_list if llm else (lambda n, key: base.DATASETS[n][key])
    c.data.class_list = pick(name, "base_classes")
    c.data.novel_class_list = pick(name, "novel_classes")
    if llm:
        base.use_llm_names(c)
    c.optim.lr, c.optim.min_lr = 3.33e-6, 3.33e-8
    c.batch_size, c.num_epochs, c.warmup_epochs = 64, 12, 2
    c.data.test_clips, c.data.test_crops = 2, 1
    c.eval.every_epochs = 1
    if "k400_pretrained" in flags:
        base.pretrained_on(c, "k400")
    c.lock()
    return c
