"""The protocol configs: the recipe's values, locking, and errors that name the field to set."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tcclip_jax.config import resolve

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# name, arg, lr, min lr, batch, epochs, warm-up, test clips x crops, WiSE-FT
RECIPES = [
    ("fewshot", None, 2e-6, 2e-8, 64, 50, 5, (2, 1), None),
    ("fewshot", "ucf101,8", 2e-6, 2e-8, 64, 50, 5, (2, 1), None),
    ("fewshot", "ssv2,2,1", 2e-6, 2e-8, 64, 50, 5, (2, 1), None),
    ("zeroshot", None, 8e-6, 8e-8, 256, 10, 5, (2, 1), 0.7),
    ("base2novel", "ucf101,2", 3.33e-6, 3.33e-8, 64, 12, 2, (2, 1), None),
    ("fully_supervised", None, 2.2e-5, 2.2e-7, 512, 30, 5, (4, 3), None),
    ("demo", None, 1e-3, 1e-5, 32, 80, 2, (2, 1), None),
    ("demo", "ci", 1e-3, 1e-5, 8, 2, 1, (2, 1), None),
]


@pytest.mark.parametrize("name,arg,lr,min_lr,batch,epochs,warmup,views,wise", RECIPES)
def test_configs_carry_the_recipe(name, arg, lr, min_lr, batch, epochs, warmup, views, wise):
    c = get_config(name, arg)
    assert c.protocol == name
    assert (c.optim.lr, c.optim.min_lr, c.batch_size) == (lr, min_lr, batch)
    assert (c.num_epochs, c.warmup_epochs) == (epochs, warmup)
    assert (c.data.test_clips, c.data.test_crops) == views
    assert c.wise_ft == wise
    assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.fast_lr_multiplier) == (
        0.9,
        0.98,
        1e-8,
        10,
    )
    assert c.label_smoothing == 0.1
    if name != "demo":  # the demo trains from scratch (higher lr and decay, no mixing)
        assert c.optim.weight_decay == 0.001
        mix = (c.mixup.mixup_alpha, c.mixup.cutmix_alpha, c.mixup.switch_prob)
        assert mix == (0.8, 1.0, 0.5) and c.mixup.group_size == 4  # per published GPU batch
        # The published data code: ImageNet statistics, per-frame jitter, random test offsets.
        assert c.data.normalization == "imagenet" and c.data.color_jitter_per_frame
        assert c.data.test_clip_sampling == "tsn_random"
        # The published trainer's schedule on its 4 GPUs x 4 clips (train/optim.py).
        assert c.optim.schedule == "published"
        assert (c.published.gpus, c.published.gpu_batch) == (4, 4) and batch % 16 == 0
    else:
        assert c.optim.schedule == "optimizer_steps"  # what the demo's figures were measured with
    json.loads(c.to_json())  # serialisable, as saved in the workdir


def test_dataset_arguments_pick_the_published_lists():
    c = get_config("fewshot", "ucf101,8")
    assert c.data.train_list == "datasets_splits/ucf_splits/train1_few_shot_8.txt"
    assert c.data.val_list == "datasets_splits/ucf_splits/val1.txt"
    assert c.data.class_list == "labels/ucf_101_labels.csv" and c.data.hflip
    assert not get_config("fewshot", "ssv2,16").data.hflip  # left/right classes
    b2n = get_config("base2novel", "hmdb51,3")
    assert b2n.data.train_list.endswith("hmdb_splits/fs_base_s3_train.txt")
    assert b2n.data.novel_val_list.endswith("hmdb_splits/novel_val.txt")
    assert b2n.data.class_list == "labels/hmdb_51_base_labels.csv"  # labels 0..B-1 as published
    assert b2n.data.novel_class_list == "labels/hmdb_51_novel_labels.csv"
    llm = get_config("base2novel", "ucf101,1,llm")
    assert llm.data.class_list == "labels/labels_froster/ucf_101_base_llm_labels.json"
    assert llm.model.context_length == 77 and get_config("fewshot").model.context_length is None
    with pytest.raises(ValueError, match="ssv2 has no LLM-rephrased class names"):
        get_config("fewshot", "ssv2,16,llm")
    zs = get_config("zeroshot")
    assert [d.name for d in zs.eval.datasets] == ["hmdb51", "ucf101", "k600"]
    assert len(zs.eval.datasets[2].class_list) == 3  # K-600: one class list per split
    with pytest.raises(ValueError, match="unknown dataset"):
        get_config("fewshot", "kinetics,16")


def test_configs_are_locked():
    c = get_config("fewshot")
    with pytest.raises(AttributeError):
        c.optim.lrr = 1e-5
    with pytest.raises(TypeError):
        c.batch_size = "64"
    c.model.tc_layers = (4, 8, 12)  # placeholders take their type
    c.wise_ft = 0.5


def _fake_checkpoint(path) -> str:
    path.mkdir()
    (path / "model_config.json").write_text("{}")
    return str(path)


def _lists(tmp_path) -> None:
    """The published layout under tmp_path: datasets_splits/..., labels/..."""
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "hmdb_51_labels.csv").write_text("id,name\n0,brush_hair\n1,cartwheel\n")
    splits = tmp_path / "datasets_splits" / "hmdb_splits"
    splits.mkdir(parents=True)
    for name in ("train1_few_shot_16.txt", "val1.txt"):
        (splits / name).write_text("a.avi 0\nb.avi 1\n")


def test_relative_lists_resolve_against_splits_dir(tmp_path):
    _lists(tmp_path)
    c = get_config("fewshot")
    c.splits_dir = str(tmp_path)
    c.init_checkpoint = _fake_checkpoint(tmp_path / "ckpt")
    c.data.root = str(tmp_path)
    resolved = resolve.prepare_config(c, str(tmp_path / "work"))
    assert resolved.data.val_list == str(tmp_path / "datasets_splits/hmdb_splits/val1.txt")
    assert c.data.val_list == "datasets_splits/hmdb_splits/val1.txt"  # the input is untouched
    zs = resolve.resolve_paths(get_config("zeroshot"))
    assert zs.eval.datasets[0].splits[0] == "datasets_splits/hmdb_splits/val1.txt"  # no dir set


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(init_checkpoint=""), "config.init_checkpoint"),
        (dict(data_root="/nonexistent/videos"), "config.data.root"),
        (dict(data_root=""), "config.data.root"),
        (dict(splits_dir="/nowhere"), "config.splits_dir"),
        (dict(batch_size=63), "config.batch_size"),
        (dict(batch_size=12), "config.mixup.group_size 4 must divide the 6 clips"),
    ],
)
def test_bad_configs_fail_naming_the_field(tmp_path, change, field):
    _lists(tmp_path)
    c = get_config("fewshot")
    c.splits_dir = change.get("splits_dir", str(tmp_path))
    c.init_checkpoint = change.get("init_checkpoint", _fake_checkpoint(tmp_path / "ckpt"))
    c.data.root = change.get("data_root", str(tmp_path))
    c.batch_size = change.get("batch_size", 64)
    c.grad_accum_steps = 2
    with pytest.raises(resolve.ConfigError, match=field.replace(".", r"\.")):
        resolve.prepare_config(c, str(tmp_path / "work"))


def test_base2novel_needs_its_novel_class_list(tmp_path):
    c = get_config("base2novel", "hmdb51,1")
    c.init_checkpoint = _fake_checkpoint(tmp_path / "ckpt")
    c.data.root = str(tmp_path)
    for key in ("train_list", "val_list", "novel_val_list", "class_list"):
        (tmp_path / key).write_text("id,name\n0,a\n" if key == "class_list" else "a.avi 0\n")
        c.data[key] = str(tmp_path / key)
    c.data.novel_class_list = ""
    with pytest.raises(resolve.ConfigError, match=r"config\.data\.novel_class_list is not set"):
        resolve.prepare_config(c, str(tmp_path / "work"))


def test_cli_rejects_unknown_fields_and_missing_paths_before_compiling(tmp_path):
    def run(*flags):
        return subprocess.run(
            [sys.executable, "-m", "tcclip_jax.train", "--config", "configs/fewshot.py:hmdb51,16",
             "--workdir", str(tmp_path / "w"), *flags],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    typo = run("--config.optim.lrr=1e-5")
    assert typo.returncode != 0 and "lrr" in typo.stderr
    missing = run(f"--config.init_checkpoint={_fake_checkpoint(tmp_path / 'ckpt')}")
    assert missing.returncode != 0 and "config.data.root is not set" in missing.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()
