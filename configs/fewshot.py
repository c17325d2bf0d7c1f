"""Few-shot: fine-tune on K = 2, 4, 8 or 16 videos per class (HMDB-51, UCF-101, SSv2).

Argument `DATASET,K[,SPLIT][,llm][,k400_pretrained]` (default `hmdb51,16`); the K-shot list is
the published `train{SPLIT}_few_shot_{K}.txt` (the paper and the published files: split 1);
`llm`: FROSTER's LLM-rephrased class names (HMDB-51, UCF-101), context length 77;
`k400_pretrained`: the authors' "(P)" setting, fine-tuning a TC-CLIP already trained on
Kinetics-400 (the zero-shot K-400 checkpoint as `--config.init_checkpoint`) instead of CLIP.
Recipe: lr 2e-6 -> 2e-8, batch 64, 50 epochs (5 warm-up), validation after epochs 1, 11, 21,
31, 41 and 50, 2 clips x 1 crop at test on the best.

  python -m tcclip_jax.train --config configs/fewshot.py:hmdb51,16 --workdir runs/fs_hmdb_16 \
      --config.init_checkpoint=ckpt/tcclip_init --config.splits_dir=TC-CLIP \
      --config.data.root=/data/hmdb51/videos --config.grad_accum_steps=8

  python -m tcclip_jax.train --config configs/fewshot.py:hmdb51,16,k400_pretrained \
      --workdir runs/fs_p_hmdb_16 --config.init_checkpoint=runs/zs_k400/model ...  # (P)
"""

from tcclip_jax.config import base


def get_config(arg: str | None = None):
    args, flags = base.parse_arg(arg, ("dataset", "shots", "split"), ("llm", "k400_pretrained"))
    llm = "llm" in flags
    name = args.get("dataset", "hmdb51")
    shots, split = int(args.get("shots", 16)), int(args.get("split", 1))
    if shots not in (2, 4, 8, 16):
        raise ValueError(f"configs/fewshot.py: K must be 2, 4, 8 or 16, not {shots}")
    c = base.base_config("fewshot")
    base.set_dataset(c, name, split)
    c.data.train_list = f"{base.DATASETS[name]['lists']}/train{split}_few_shot_{shots}.txt"
    if llm:
        c.data.class_list = base.llm_class_list(name)
        base.use_llm_names(c)
    c.optim.lr, c.optim.min_lr = 2e-6, 2e-8
    c.batch_size, c.num_epochs, c.warmup_epochs = 64, 50, 5
    c.data.test_clips, c.data.test_crops = 2, 1
    c.eval.every_epochs = 10
    if "k400_pretrained" in flags:
        base.pretrained_on(c, "k400")
    c.lock()
    return c
