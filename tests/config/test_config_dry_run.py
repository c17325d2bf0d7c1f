"""The dry run on every protocol preset over the published split and class lists.

Reads `../shared/published_splits` (a copy of the published `datasets_splits/` and `labels/`;
skipped where absent). The class names per label are checked against the published files read
here with `csv` / `json` directly, not through our loaders.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest
from xla_env import xla_flags

from tcclip_jax.config import resolve
from tcclip_jax.config.dry_run import dry_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPLITS = os.path.join(os.path.dirname(REPO), "shared", "published_splits")
# Absent from the published copy (its README): the presets that train on them are skipped.
MISSING = {
    "datasets_splits/k400_splits/train.txt",
    "datasets_splits/base2novel_splits/k400_splits/base_train.txt",
}

pytestmark = pytest.mark.skipif(
    not os.path.isdir(SPLITS), reason=f"{SPLITS} (published split lists) is absent"
)


def get_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _presets() -> list[tuple[str, str | None]]:
    out = []
    for llm in ("", ",llm"):
        for ds in ("hmdb51", "ucf101", "ssv2"):
            if not (llm and ds == "ssv2"):  # the paper rephrases no SSv2 labels
                out += [("fewshot", f"{ds},{k}{llm}") for k in (2, 4, 8, 16)]
        for ds in ("hmdb51", "ucf101", "ssv2", "k400"):
            if not (llm and ds == "ssv2"):
                out += [("base2novel", f"{ds},{seed}{llm}") for seed in (1, 2, 3)]
    out += [("zeroshot", None), ("zeroshot", "llm"), ("fully_supervised", None)]
    # The authors' "(P)" presets: the same lists, from a K-400 model.
    out += [("fewshot", "hmdb51,16,k400_pretrained"), ("fewshot", "ssv2,2,k400_pretrained")]
    out += [
        ("base2novel", "ucf101,1,k400_pretrained"),
        ("base2novel", "hmdb51,3,llm,k400_pretrained"),
    ]
    out += [
        ("temporal_static", f"{ds},{s}") for ds in ("k400", "ssv2") for s in ("temporal", "static")
    ]
    return out


def _published_names(path: str) -> list[str]:
    if path.endswith(".json"):
        with open(path) as f:
            table = json.load(f)
        return [table[str(i)].strip() for i in range(len(table))]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["name"].strip() for r in sorted(rows, key=lambda r: int(r["id"]))]


def _config(name, arg):
    c = get_config(name, arg)
    c.splits_dir = SPLITS
    c.random_init = True  # no checkpoint needed to check the data
    return c


@pytest.mark.parametrize("name,arg", _presets())
def test_every_preset_dry_runs_with_the_published_class_names(name, arg, tmp_path):
    c = _config(name, arg)
    if c.data.train_list in MISSING:
        pytest.skip(f"{c.data.train_list} is missing from the published copy (its README)")
    report = dry_run(c, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["data"]["train_list"] == os.path.join(SPLITS, c.data.train_list)
    checked = resolve.check_lists(resolve.resolve_paths(c))
    assert report.splitlines()[0].startswith(f"protocol {c.protocol}: {len(checked)} lists")
    for use, summary in checked:
        assert summary.class_names == _published_names(use.class_list), use.field
        assert use.annotation_file in report
    classes = {use.field: os.path.basename(use.class_list) for use, _ in checked}
    if name == "base2novel":
        assert len(checked) == 3
        assert "_base_" in classes["data.train_list"] and "_base_" in classes["data.val_list"]
        assert "_novel_" in classes["data.novel_val_list"]
    if arg and "llm" in arg:
        assert all(c.endswith(".json") for c in classes.values())
        assert c.model.context_length == 77
    if name == "zeroshot":  # K-400 val during training + 3 datasets x 3 splits
        assert len(checked) == 1 + 9 and c.eval.val_clips == c.eval.val_crops == 1


@pytest.mark.parametrize(
    "name,arg", [("zeroshot", None), ("zeroshot", "llm"), ("fully_supervised", None)]
)
def test_k400_training_presets_with_the_tiny_list_in_place_of_the_missing_one(name, arg, tmp_path):
    """`k400_splits/train.txt` is missing from the copy; `train_tiny.txt` has its format, so the
    rest of these presets (K-400 val, the zero-shot test splits) is still checked."""
    c = _config(name, arg)
    c.data.train_list = "datasets_splits/k400_splits/train_tiny.txt"
    dry_run(c, str(tmp_path))
    checked = resolve.check_lists(resolve.resolve_paths(c))
    for use, summary in checked:
        assert summary.class_names == _published_names(use.class_list), use.field
    assert len(checked) == (11 if name == "zeroshot" else 2)


def test_hmdb_base_label_0_is_the_first_row_of_the_base_class_file(tmp_path):
    checked = resolve.check_lists(resolve.resolve_paths(_config("base2novel", "hmdb51,1")))
    summaries = {use.field: s for use, s in checked}
    with open(os.path.join(SPLITS, "labels", "hmdb_51_base_labels.csv")) as f:
        first = f.read().splitlines()[1].split(",", 1)[1]
    assert summaries["data.train_list"].class_names[0] == first == "pour"
    with open(os.path.join(SPLITS, "labels", "hmdb_51_novel_labels.csv")) as f:
        first_novel = f.read().splitlines()[1].split(",", 1)[1]
    assert summaries["data.novel_val_list"].class_names[0] == first_novel


@pytest.mark.parametrize(
    "name,arg,field,value,message",
    [
        # Labels fit (0..25 < 51), but half the classes would have no video.
        ("base2novel", "ucf101,2", "class_list", "labels/ucf_101_labels.csv",
         r"config\.data\.train_list / config\.data\.class_list: .*no video of 50 of the 101"),
        # The novel list (25 classes) read against the base classes (26): one class empty.
        ("base2novel", "hmdb51,1", "novel_class_list", "labels/hmdb_51_base_labels.csv",
         r"config\.data\.novel_val_list / config\.data\.novel_class_list: .*no video of 1 of"),
        # UCF-101 labels against HMDB-51's 51 classes: out of range, with the line.
        ("fewshot", "ucf101,2", "class_list", "labels/hmdb_51_labels.csv",
         r"train1_few_shot_2\.txt:\d+: label 51 is outside the class list \(0\.\.50\)"),
    ],
)  # fmt: skip
def test_a_list_paired_with_the_wrong_class_file_fails_at_start(
    name, arg, field, value, message, tmp_path
):
    c = _config(name, arg)
    c.data[field] = value
    with pytest.raises(resolve.ConfigError, match=message):
        dry_run(c, str(tmp_path))
    assert not (tmp_path / "config.json").exists()  # nothing written before the check
    if "no video of" in message:  # lists of one's own may lack classes: a switch lets them run
        c.data.require_every_class = False
        dry_run(c, str(tmp_path))


def test_llm_names_need_the_llm_context_length(tmp_path):
    c = _config("fewshot", "hmdb51,2,llm")
    c.model.context_length = 30  # TC-CLIP's usual prompt length: the sentences do not fit
    with pytest.raises(
        resolve.ConfigError,
        match=r"llm_labels\.json\) / config\.model\.context_length: .* than context_length=30",
    ):
        dry_run(c, str(tmp_path))


def test_missing_videos_are_counted_under_the_root(tmp_path):
    c = _config("base2novel", "hmdb51,1")
    checked = resolve.check_lists(resolve.resolve_paths(c))
    present = [rel for rel, _ in dict(checked[0][1].annotations).items()][:3]
    for rel in present:
        (tmp_path / rel).touch()
    c.data.root = str(tmp_path)
    report = dry_run(c, str(tmp_path / "work"))
    total = sum(len(s.annotations) for _, s in checked)
    assert f"{total - 3} listed videos missing" in report.splitlines()[0]
    assert f"{len(checked[0][1].annotations) - 3} under {tmp_path}" in report


def test_cli_dry_run_exit_status_and_one_line_error(tmp_path):
    def run(*flags):
        return subprocess.run(
            [sys.executable, "-m", "tcclip_jax.train", "--config",
             "configs/base2novel.py:hmdb51,1", "--workdir", str(tmp_path), "--dry_run",
             f"--config.splits_dir={SPLITS}", "--config.random_init=True", *flags],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert "hmdb_51_novel_labels.csv" in ok.stdout and (tmp_path / "config.json").exists()
    bad = run("--config.data.class_list=labels/hmdb_51_labels.csv")
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is it paired with the right class list?" in errors[0]


def published_lrs(videos: int, batch: int, epochs: int, warmup: int, lr: float, min_lr: float):
    """[(base lr, x10 lr)] of each optimiser step of the published trainer on its 4 GPUs of 4
    clips, written out: DistributedSampler pads the epoch to a multiple of the GPUs, the loader
    drops its last incomplete micro-batch, `engine.train_one_epoch` steps every A micro-batches
    and then calls `step_update(epoch * M + idx)` of timm's CosineLRScheduler (warm-up from 0,
    which the constructor sets), whose lr each group reads before its next step."""
    gpus, per_gpu = 4, 4
    m = -(-videos // gpus) // per_gpu  # len(train_loader)
    a = batch // (gpus * per_gpu)
    warmup_t, t_initial = warmup * m, epochs * m

    def lr_at(t, peak):
        if t < warmup_t:
            return t * (peak / warmup_t)
        if t >= t_initial:
            return min_lr
        return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * t / t_initial))

    now, out = (lr_at(0, lr), lr_at(0, 10 * lr)), []
    for epoch in range(epochs):
        for idx in range(m):
            if (idx + 1) % a == 0:
                out.append(now)
                now = (lr_at(epoch * m + idx, lr), lr_at(epoch * m + idx, 10 * lr))
    return out


@pytest.mark.parametrize(
    "name,arg",
    [("fewshot", "hmdb51,16"), ("fewshot", "ssv2,2"), ("base2novel", "ucf101,1"),
     ("zeroshot", None), ("fully_supervised", None)],
)  # fmt: skip
def test_dry_run_prints_the_published_lr_at_steps_0_1_w_and_last(name, arg, tmp_path):
    c = _config(name, arg)
    if c.data.train_list in MISSING:  # K-400: the tiny list of the same format
        c.data.train_list = "datasets_splits/k400_splits/train_tiny.txt"
    report = dry_run(c, str(tmp_path))
    with open(os.path.join(SPLITS, c.data.train_list)) as f:
        videos = sum(1 for line in f if line.strip())
    want = published_lrs(
        videos, c.batch_size, c.num_epochs, c.warmup_epochs, c.optim.lr, c.optim.min_lr
    )
    steps_per_epoch = len(want) // c.num_epochs
    w = c.warmup_epochs * steps_per_epoch
    head, *rows = report.split("\n\nlr schedule published", 1)[1].splitlines()
    assert f"{len(want)} steps, {w} of warm-up" in head
    printed = {}
    for row in rows[1:]:
        step, base, fast = re.fullmatch(r"\s+(\d+)(?: \([^)]*\))?\s+(\S+)\s+(\S+)", row).groups()
        printed[int(step)] = (float(base), float(fast))
    assert sorted(printed) == sorted({0, 1, w, len(want) - 1})
    for step, lrs in printed.items():
        assert lrs == pytest.approx(want[step], rel=1e-11, abs=0), step
    assert printed[0] == (0.0, 0.0)  # the warm-up's start, as the scheduler's constructor sets


# Every protocol preset of docs/tpu.md's table through the config check on 32 devices (v5e:4x8),
# in a process that simulates them.
_SLICE_CHECK = """
import importlib.util, os, sys
import jax
from tcclip_jax.config.dry_run import dry_run

repo, splits, workdir = sys.argv[1:4]
assert jax.device_count() == 32
for name, arg in [("fewshot", "hmdb51,16"), ("base2novel", "k400,1"), ("zeroshot", None),
                  ("fully_supervised", None)]:
    spec = importlib.util.spec_from_file_location(name, os.path.join(repo, "configs", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.splits_dir, c.random_init = splits, True
    if c.data.train_list == "datasets_splits/k400_splits/train.txt":  # absent from the copy
        c.data.train_list = "datasets_splits/k400_splits/train_tiny.txt"
    dry_run(c, os.path.join(workdir, name))
    print("passed", name, c.batch_size, c.eval.batch_size, flush=True)
"""


def test_every_protocol_passes_the_config_check_on_a_32_chip_slice(tmp_path):
    """The published batches on v5e:4x8's 32 chips: `config.eval.batch_size` 16 is rounded up
    to a multiple of the devices by the evaluator (specs.eval_batch_size), not refused."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
           "XLA_FLAGS": xla_flags(32)}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", _SLICE_CHECK, REPO, SPLITS, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    passed = [line.split()[1:] for line in run.stdout.splitlines() if line.startswith("passed")]
    assert passed == [
        ["fewshot", "64", "16"],
        ["base2novel", "64", "16"],
        ["zeroshot", "256", "16"],
        ["fully_supervised", "512", "16"],
    ]
