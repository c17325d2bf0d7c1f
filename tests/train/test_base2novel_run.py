"""A base-to-novel run end to end on synthetic videos laid out like the published lists.

Base lists number the base classes 0..B-1 against a `*_base_labels.csv`, the novel list the novel
classes 0..N-1 against a `*_novel_labels.csv`, as `datasets_splits/base2novel_splits/` does; two
training seeds (`fs_base_s1`, `fs_base_s2`) train, each evaluates base and novel, and the report
gives the harmonic mean of the seed means.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from tcclip_jax import report
from tcclip_jax.data import synthetic
from tcclip_jax.data.classes import read_annotations
from tcclip_jax.evaluation.results import harmonic_mean
from tcclip_jax.train.loop import FINAL_METRICS_FILE, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE, NOVEL = [0, 3, 4, 7], [1, 2, 5, 6]  # interleaved in the full class list, as published


def _layout(tmp_path) -> str:
    """Published-style lists and class files under tmp_path/splits; videos under tmp_path/data."""
    root = tmp_path / "data"
    paths = synthetic.generate(
        str(root), videos_per_class=4, val_per_class=2, num_frames=8, size=(32, 32)
    )
    train, val = read_annotations(paths["train"]), read_annotations(paths["val"])
    splits = tmp_path / "splits"
    lists = splits / "datasets_splits" / "base2novel_splits" / "hmdb_splits"
    lists.mkdir(parents=True)
    (splits / "labels").mkdir()
    for half, ids in (("base", BASE), ("novel", NOVEL)):
        with open(splits / "labels" / f"hmdb_51_{half}_labels.csv", "w") as f:
            f.write(
                "id,name\n"
                + "".join(f"{i},{synthetic.CLASS_NAMES[c]}\n" for i, c in enumerate(ids))
            )

    def write(name, rows, ids):
        with open(lists / name, "w") as f:
            f.writelines(f"{p} {ids.index(y)}\n" for p, y in rows if y in ids)

    for seed in (1, 2):  # two different 2-shot draws of the base classes
        write(
            f"fs_base_s{seed}_train.txt", [r for i, r in enumerate(train) if (i + seed) % 2], BASE
        )
    write("base_val.txt", val, BASE)
    write("novel_val.txt", val, NOVEL)
    return str(splits), str(root)


def _config(splits, root, seed):
    spec = importlib.util.spec_from_file_location(
        "b2n", os.path.join(REPO, "configs", "base2novel.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"hmdb51,{seed}")
    c.splits_dir, c.data.root, c.random_init, c.dtype = splits, root, True, "float32"
    c.model.update(dict(vision_layers=2, vision_width=32, vision_heads=2, vision_patch_size=16,
                        text_width=32, text_layers=2, text_heads=2, embed_dim=32,
                        seed_ratio=1.0, context_tokens=4, merge_r=8))  # fmt: skip
    c.data.num_frames, c.data.image_size, c.data.resize_size = 4, 16, 16
    c.data.crop_scales, c.data.hflip = (1.0,), False
    c.batch_size, c.num_epochs, c.warmup_epochs = 4, 2, 1
    c.published.gpus, c.published.gpu_batch = 1, 2  # the published schedule, 2 micro-batches
    c.eval.batch_size, c.progress_bar, c.log_every_steps = 4, False, 1
    return c


@pytest.mark.slow
def test_base2novel_run_trains_evaluates_both_halves_and_reports(tmp_path, capsys):
    splits, root = _layout(tmp_path)
    runs, base, novel = [], [], []
    for seed in (1, 2):
        workdir = str(tmp_path / f"b2n_s{seed}")
        metrics = train_and_evaluate(_config(splits, root, seed), workdir)
        with open(os.path.join(workdir, FINAL_METRICS_FILE)) as f:
            saved = json.load(f)
        assert saved["results"]["base"]["num_videos"] == 2 * len(BASE)
        assert saved["results"]["novel"]["num_videos"] == 2 * len(NOVEL)
        assert saved["results"] == json.loads(json.dumps(metrics["results"]))
        assert saved["train_list"] == f"fs_base_s{seed}_train.txt"
        runs.append(workdir)
        base.append(saved["results"]["base"]["top1"])
        novel.append(saved["results"]["novel"]["top1"])
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        validated = [r["epoch"] for r in records if "top1" in r and "epoch" in r]
        assert validated == [1, 2]  # after every epoch, as published
    capsys.readouterr()
    assert report.main([*runs, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["base2novel"]
    mean_base, mean_novel = sum(base) / 2, sum(novel) / 2
    assert (row["base"], row["novel"]) == pytest.approx((mean_base, mean_novel))
    assert row["harmonic_mean"] == pytest.approx(harmonic_mean(mean_base, mean_novel))
