"""Zero-shot: fine-tune on Kinetics-400, evaluate on HMDB-51, UCF-101 and Kinetics-600.

Argument: none, or `llm` for FROSTER's LLM-rephrased class names (context length 77). Recipe: lr
8e-6 -> 8e-8, batch 256, 10 epochs (5 warm-up), validation on K-400 val with 1x1 views after
every epoch; the best checkpoint is tested with 2 clips x 1 crop, without and with WiSE-FT
(weight 0.7 against the initial CLIP weights; the paper reports both); mean and std over the
three splits of each evaluation dataset (K-600: its three splits of 160 classes unseen in K-400,
each with its own class list). Set each evaluation dataset's video folder:

  python -m tcclip_jax.train --config configs/zeroshot.py --workdir runs/zs_k400 \
      --config.init_checkpoint=ckpt/tcclip_init --config.splits_dir=TC-CLIP \
      --config.data.root=/data/k400/videos --config.grad_accum_steps=32 \
      --config.eval.datasets[0].root=/data/hmdb51/videos \
      --config.eval.datasets[1].root=/data/ucf101/videos \
      --config.eval.datasets[2].root=/data/k600/videos

A released checkpoint: `python -m tcclip_jax.evaluate --config configs/zeroshot.py
--checkpoint ckpt/tcclip_zs_k400 --config.clip_checkpoint=ckpt/clip_b16 ...` (same roots).
"""

import ml_collections

from tcclip_jax.config import base

K600 = "datasets_splits/k600_splits/ZS_split{i}_K600_eval.txt"
K600_CLASSES = "labels/ZS_split{i}_K600.csv"
K600_LLM_CLASSES = "labels/labels_froster/ZS_split{i}_K600_llm.json"


def _eval_dataset(name: str, splits: list[str], class_list) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name=name, root="", splits=splits, class_list=class_list))


def get_config(arg: str | None = None):
    _, flags = base.parse_arg(arg, ())
    llm = "llm" in flags
    names = base.llm_class_list if llm else (lambda n: base.DATASETS[n]["class_list"])
    c = base.base_config("zeroshot")
    base.set_dataset(c, "k400")
    c.data.class_list = names("k400")
    c.data.train_list = "datasets_splits/k400_splits/train.txt"
    c.optim.lr, c.optim.min_lr = 8e-6, 8e-8
    c.batch_size, c.num_epochs, c.warmup_epochs = 256, 10, 5
    c.data.test_clips, c.data.test_crops = 2, 1
    c.eval.every_epochs = 1
    c.eval.val_clips, c.eval.val_crops = 1, 1
    c.wise_ft = 0.7
    c.eval.datasets = [
        _eval_dataset(
            name,
            [f"{base.DATASETS[name]['lists']}/val{i}.txt" for i in (1, 2, 3)],
            names(name),
        )
        for name in ("hmdb51", "ucf101")
    ] + [
        _eval_dataset(
            "k600",
            [K600.format(i=i) for i in (1, 2, 3)],
            [(K600_LLM_CLASSES if llm else K600_CLASSES).format(i=i) for i in (1, 2, 3)],
        )
    ]
    if llm:
        base.use_llm_names(c)
    c.lock()
    return c
