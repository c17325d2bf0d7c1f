"""The paper's temporal / static analysis subsets: classes that need motion vs. appearance.

Argument `DATASET,SUBSET` with DATASET `k400` (32 temporal or 32 static classes) or `ssv2` (18
temporal or 16 static classes) and SUBSET `temporal` or `static`: the published
`temporal_static_splits/` lists with their own class lists (`labels/labels_temporal_static/`).
Mainly an evaluation preset:

  python -m tcclip_jax.evaluate --config configs/temporal_static.py:k400,temporal \
      --checkpoint runs/k400/model --config.splits_dir=TC-CLIP --config.data.root=/data/k400/videos

Training on a subset (`python -m tcclip_jax.train`) uses its `train_*` list with the fully
supervised recipe and 2 clips x 1 crop at test (the spec gives no recipe for these subsets).
"""

from tcclip_jax.config import base

SUBSETS = {
    ("k400", "temporal"): ("train_temporal32.txt", "val_temporal32.txt", "kinetics_400_temporal32"),
    ("k400", "static"): ("train_static32.txt", "val_static32.txt", "kinetics_400_static32"),
    ("ssv2", "temporal"): (
        "train_temporal18.txt",
        "validation_temporal18.txt",
        "ssv2_temporal18",
    ),
    ("ssv2", "static"): ("train_static16.txt", "validation_static16.txt", "ssv2_static16"),
}


def get_config(arg: str | None = None):
    args, flags = base.parse_arg(arg, ("dataset", "subset"))
    llm = "llm" in flags
    key = (args.get("dataset", "k400"), args.get("subset", "temporal"))
    if key not in SUBSETS or llm:
        raise ValueError(f"configs/temporal_static.py: argument must be one of {sorted(SUBSETS)}")
    train, val, labels = SUBSETS[key]
    c = base.base_config("fully_supervised")
    base.set_dataset(c, key[0])
    c.dataset_name = f"{key[0]}_{key[1]}"
    folder = f"datasets_splits/temporal_static_splits/{key[0]}_splits"
    c.data.train_list, c.data.val_list = f"{folder}/{train}", f"{folder}/{val}"
    c.data.class_list = f"labels/labels_temporal_static/{labels}_labels.csv"
    c.optim.lr, c.optim.min_lr = 2.2e-5, 2.2e-7
    c.batch_size, c.num_epochs, c.warmup_epochs = 512, 30, 5
    c.data.test_clips, c.data.test_crops = 2, 1
    c.eval.every_epochs = 1
    c.lock()
    return c
