"""Zero-shot: fine-tune on Kinetics-400, evaluate on HMDB-51, UCF-101 and Kinetics-600.

Recipe: lr 8e-6 -> 8e-8, batch 256, 10 epochs (5 warm-up), 2 clips x 1 crop at test, WiSE-FT
with weight 0.7 against the initial CLIP weights; mean and std over the three splits of each
evaluation dataset (K-600: its three splits of 160 classes unseen in K-400, each with its own
class list). Set each evaluation dataset's video folder:

  python -m tcclip_jax.train --config configs/zeroshot.py --workdir runs/zs_k400 \
      --config.init_checkpoint=checkpoints/clip_vit_b16 --config.splits_dir=TC-CLIP \
      --config.data.root=/data/k400/videos --config.grad_accum_steps=32 \
      --config.eval.datasets[0].root=/data/hmdb51/videos \
      --config.eval.datasets[1].root=/data/ucf101/videos \
      --config.eval.datasets[2].root=/data/k600/videos
"""

import ml_collections

from tcclip_jax.config import base


def _eval_dataset(name: str, splits: list[str], class_list) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name=name, root="", splits=splits, class_list=class_list))


def get_config(arg: str | None = None):
    del arg  # one setting: train on K-400
    c = base.base_config("zeroshot")
    base.set_dataset(c, "k400")
    c.data.train_list = "datasets_splits/k400_splits/train.txt"
    c.optim.lr, c.optim.min_lr = 8e-6, 8e-8
    c.batch_size, c.num_epochs, c.warmup_epochs = 256, 10, 5
    c.data.test_clips, c.data.test_crops = 2, 1
    c.eval.every_epochs = 0  # the published run keeps the last epoch
    c.wise_ft = 0.7
    c.eval.datasets = [
        _eval_dataset(
            name,
            [f"{base.DATASETS[name]['lists']}/val{i}.txt" for i in (1, 2, 3)],
            base.DATASETS[name]["class_list"],
        )
        for name in ("hmdb51", "ucf101")
    ] + [
        _eval_dataset(
            "k600",
            [f"datasets_splits/k600_splits/ZS_split{i}_K600_eval.txt" for i in (1, 2, 3)],
            [f"labels/ZS_split{i}_K600.csv" for i in (1, 2, 3)],
        )
    ]
    c.lock()
    return c
