"""Ordinary mistakes, as users make them, in every command line: one line on stderr naming the
problem, exit status 2, no traceback (unless --debug), no usage text or library chatter first,
and nothing of the user's overwritten. Each test runs the real command in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tcclip_jax.data import synthetic
from tcclip_jax.models.initialization import random_params
from tcclip_jax.weights.checkpoint import save_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_CI = os.path.join(REPO, "configs", "demo.py") + ":ci"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root (a module as `-m name` or a script path)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
    )


def error_lines(proc: subprocess.CompletedProcess, status: int = 2) -> list[str]:
    """stderr's lines after checking: the exit status, no traceback, the last line an error."""
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    return lines


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("synthetic"))
    paths = synthetic.generate(
        root, videos_per_class=1, val_per_class=1, num_frames=2, size=(32, 32)
    )
    return {**paths, "root": root}


@pytest.fixture(scope="module")
def checkpoint(tiny_config, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt") / "model")
    save_model(path, tiny_config, random_params(tiny_config, 0))
    return path


# train --------------------------------------------------------------------------------------


def test_train_misspelt_field_is_one_line(tmp_path):
    proc = run("-m", "tcclip_jax.train", "--config", DEMO_CI, "--workdir", str(tmp_path / "w"),
               "--config.optim.lrr=1")  # fmt: skip
    lines = error_lines(proc)
    assert lines == [
        'error: --config.optim.lrr: no such config field (Did you mean "lr" instead of "lrr"?)'
    ]
    assert not os.path.exists(tmp_path / "w")


def test_train_impossible_settings_one_line_each_before_anything_runs(tmp_path):
    proc = run("-m", "tcclip_jax.train", "--config", DEMO_CI, "--workdir", str(tmp_path / "w"),
               "--config.optim.lr=-1", "--config.model.vision_heads=0",
               "--config.mixup.switch_prob=1.5")  # fmt: skip
    assert error_lines(proc) == [
        "error: config.optim.lr must be > 0, got -1.0",
        "error: config.mixup.switch_prob must be >= 0 and <= 1, got 1.5",
        "error: config.model.vision_heads must be >= 1, got 0",
    ]
    assert not os.path.exists(tmp_path / "w" / "synthetic")  # the data hook did not run
    assert not os.path.exists(tmp_path / "w" / "config.json")


def test_train_model_that_cannot_be_built_names_the_reason(tmp_path):
    # All backends tried (JAX_PLATFORMS empty): JAX's INFO line about the missing TPU is hidden.
    proc = run("-m", "tcclip_jax.train", "--config", DEMO_CI, "--workdir", str(tmp_path / "w"),
               "--config.model.vision_width=33", env={"JAX_PLATFORMS": ""})  # fmt: skip
    (line,) = error_lines(proc)[-1:]
    assert "vision width 33 is not divisible by 2 heads" in line
    assert "Unable to initialize backend" not in proc.stderr


def test_train_annotation_list_error_is_one_line(tmp_path, dataset):
    bad = tmp_path / "train.txt"
    bad.write_text("class0/a.mp4 0\nclass0/b.mp4 nine\n")
    proc = run("-m", "tcclip_jax.train", "--config", DEMO_CI, "--workdir", str(tmp_path / "w"),
               f"--config.data.root={dataset['root']}", f"--config.data.train_list={bad}",
               "--config.shots=1")  # fmt: skip
    lines = error_lines(proc)
    # The fields that name both files, then the file, line and what is wrong there.
    assert lines[-1].startswith(
        f"error: config.data.train_list / config.data.class_list: {bad}:2: label 'nine' is not "
        "an integer (line 'class0/b.mp4 nine')"
    )
    assert len(lines) == 1


@pytest.mark.parametrize("where", ["file", "below_a_file"])
def test_train_workdir_that_is_not_a_directory(tmp_path, where):
    (tmp_path / "f").write_text("mine")
    workdir = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    proc = run("-m", "tcclip_jax.train", "--config", DEMO_CI, "--workdir", str(workdir))
    (line,) = error_lines(proc)
    assert line.startswith(f"error: --workdir {workdir}: cannot create it")
    assert (tmp_path / "f").read_text() == "mine"


def test_train_debug_shows_the_traceback(tmp_path):
    proc = run("-m", "tcclip_jax.train", "--config", DEMO_CI, "--workdir", str(tmp_path / "w"),
               "--config.optim.lr=-1", "--debug")  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: config.optim.lr must be > 0, got -1.0"


# evaluate -----------------------------------------------------------------------------------


def test_evaluate_without_splits_dir_gives_the_hint(tmp_path, checkpoint):
    proc = run("-m", "tcclip_jax.evaluate", "--config", "configs/fewshot.py:hmdb51,2",
               "--checkpoint", checkpoint, f"--config.data.root={tmp_path}",
               "--workdir", str(tmp_path / "eval"))  # fmt: skip
    (line,) = error_lines(proc)  # no usage text, no orbax INFO lines before it
    assert "config.data.class_list: class list 'labels/hmdb_51_labels.csv' does not exist" in line
    assert "set it to the folder holding datasets_splits/ and labels/" in line


def test_evaluate_truncated_orbax_metadata_is_one_line(tmp_path, checkpoint):
    damaged = tmp_path / "model"
    subprocess.run(["cp", "-r", checkpoint, str(damaged)], check=True)
    metadata = damaged / "params" / "_METADATA"
    metadata.write_bytes(metadata.read_bytes()[:40])
    proc = run("-m", "tcclip_jax.evaluate", "--config", "configs/fewshot.py:hmdb51,2",
               "--checkpoint", str(damaged))  # fmt: skip
    assert error_lines(proc)[-1] == (
        f"error: {damaged}/params: damaged or incomplete parameters "
        "(_METADATA is missing or unreadable)"
    )


# predict ------------------------------------------------------------------------------------


def test_predict_checks_every_prompt_before_decoding(checkpoint, tiny_config):
    long_name = " ".join(["word"] * tiny_config.context_length)
    proc = run("-m", "tcclip_jax.predict", "--checkpoint", checkpoint,
               "--video", "missing.mp4", "--classes", "a dog", long_name)  # fmt: skip
    (line,) = error_lines(proc)  # the missing video was never opened
    assert line.startswith(f"error: class 2 (--classes): text 'a photo of a {long_name}.' has")
    assert f"more than context_length={tiny_config.context_length}" in line


def test_predict_non_utf8_class_csv(tmp_path, checkpoint):
    labels = tmp_path / "labels.csv"
    labels.write_bytes("id,name\n0,caf\xe9\n".encode("latin-1"))
    proc = run("-m", "tcclip_jax.predict", "--checkpoint", checkpoint, "--video", "x.mp4",
               "--labels", str(labels))  # fmt: skip
    (line,) = error_lines(proc)
    assert line == f"error: {labels}: not UTF-8 text (byte 13: b'\\xe9'); save it as UTF-8"


def test_predict_warns_on_short_videos_and_duplicate_names(checkpoint, dataset, tiny_config):
    video = dataset["videos"][0]
    proc = run("-m", "tcclip_jax.predict", "--checkpoint", checkpoint, "--video", video,
               "--classes", "a dog", "a cat", "a dog", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: duplicate class names (--classes): ['a dog']; they share their probability",
        f"warning: {video}: 2 frames, fewer than the model's {tiny_config.num_frames}; some repeat",
    ]
    assert "Unable to initialize backend" not in proc.stderr
    (result,) = json.loads(proc.stdout)["results"]
    assert result["error"] is None and len(result["top"]) == 3


# convert_torch_weights ----------------------------------------------------------------------

CONVERT = os.path.join(REPO, "tools", "convert_torch_weights.py")


def test_convert_refuses_a_non_empty_output_before_converting(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "info.json").write_text("the user's own")
    proc = run(CONVERT, "--clip", str(tmp_path / "not_there.pt"), "--output", str(out))
    (line,) = error_lines(proc)  # about the output, not the (missing) input: checked first
    assert (
        line == f"error: {out} is not empty; choose a new directory (or --overwrite to replace it)"
    )
    assert os.listdir(out) == ["info.json"]
    assert (out / "info.json").read_text() == "the user's own"


def test_convert_output_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("mine")
    proc = run(CONVERT, "--clip", "x.pt", "--output", str(tmp_path / "f"))
    assert error_lines(proc) == [f"error: {tmp_path / 'f'} exists and is not a directory"]
    proc = run(CONVERT, "--clip", "x.pt", "--output", str(tmp_path / "f" / "sub"))
    assert error_lines(proc) == [
        f"error: {tmp_path / 'f' / 'sub'}: cannot write in {tmp_path / 'f'}"
    ]
    assert (tmp_path / "f").read_text() == "mine"


def test_convert_failure_leaves_nothing_half_written(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run(CONVERT, "--clip", str(bad), "--output", str(tmp_path / "out"))
    (line,) = error_lines(proc)
    assert line.startswith(f"error: {bad}: not a PyTorch checkpoint")
    assert sorted(os.listdir(tmp_path)) == ["bad.pt"]


# benchmarks -------------------------------------------------------------------------------------


def test_model_bench_published_checkout_error_is_one_line(tmp_path):
    proc = run("-m", "tcclip_jax.bench", "--arch", "ViT-B/16", "--depth", "2",
               "--compare-published", str(tmp_path))  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: --compare-published: ") and "naver-ai/tc-clip" in line


def test_data_bench_full_disk_is_one_line_and_debug_shows_the_traceback(tmp_path):
    keep = tmp_path / "fs"
    keep.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(keep)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = run("-m", "tcclip_jax.data.bench", "--videos", "2", "--keep", str(keep / "d"))
        lines = error_lines(proc, status=1)
        assert lines[-1].startswith(f"error: disk full: cannot write {keep}/d/"), lines
        assert f"{keep} (tmpfs) has " in lines[-1]
        proc = run("-m", "tcclip_jax.data.bench", "--videos", "2", "--keep", str(keep / "e"),
                   "--debug")  # fmt: skip
        assert proc.returncode == 1 and "Traceback" in proc.stderr
    finally:
        subprocess.run(["umount", "-l", str(keep)], check=False)


def test_train_dry_run_reads_lists_saved_on_windows(tmp_path, dataset):
    """Class list and annotation lists with Excel's byte-order mark and CRLF endings."""
    root = tmp_path / "data"
    shutil.copytree(dataset["root"], root)
    for name in ("classes.csv", "train.txt", "val.txt"):
        text = (root / name).read_text()
        (root / name).write_bytes(text.replace("\n", "\r\n").encode("utf-8-sig"))
    proc = run("-m", "tcclip_jax.train", "--config", DEMO_CI, "--workdir", str(tmp_path / "w"),
               f"--config.data.root={root}", "--dry_run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr
