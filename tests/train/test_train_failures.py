"""`python -m tcclip_jax.train` when things go wrong: it says why in one line, keeps what it had,
never saves non-finite weights, and never loses the record of a run (issue 13).

Every test runs the demo's CI config in subprocesses (minutes on 2 cores: marked slow).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tcclip_jax.runtime.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def _command(shared, workdir, *overrides) -> list[str]:
    return [*shared["command"], "--workdir", str(workdir), *overrides]


def train(shared, workdir, *overrides) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(shared, workdir, *overrides),
        cwd=REPO,
        env=shared["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def last_line(proc: subprocess.CompletedProcess, status: int) -> str:
    assert proc.returncode == status, proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    return proc.stderr.strip().splitlines()[-1]


def saved_steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def no_temporary_files(workdir) -> None:
    assert not glob.glob(os.path.join(str(workdir), "**", "*tmp*"), recursive=True)


def saved_state(workdir, step: int) -> dict:
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    return ocp.PyTreeCheckpointer().restore(path)


def test_nonfinite_loss_stops_without_saving_it(shared, tmp_path):
    workdir = tmp_path / "run"
    proc = train(shared, workdir, "--config.optim.lr=1e6", "--config.num_epochs=2")
    line = last_line(proc, 1)
    match = re.fullmatch(
        r"error: the loss or the update was not finite at step (\d+); stopped there, "
        r"checkpoint (\d+) is the last one \(finite\); lower config.optim.lr or check the data",
        line,
    )
    assert match, line
    bad, last = int(match.group(1)), int(match.group(2))
    assert last < bad
    assert saved_steps(workdir) and max(saved_steps(workdir)) == last
    for step in saved_steps(workdir):
        state = saved_state(workdir, step)
        assert int(np.asarray(state["nonfinite_step"])) == 0
        leaves = [np.asarray(x) for x in jax.tree.leaves(state["params"])]
        assert all(np.isfinite(x).all() for x in leaves), step
    assert not any(r["step"] >= bad and "top1" in r for r in read_metrics(workdir))
    no_temporary_files(workdir)


def test_changed_config_refuses_and_damaged_checkpoint_falls_back(shared, tmp_path):
    workdir = tmp_path / "run"
    proc = train(shared, workdir, "--config.num_epochs=1")
    last_line(proc, 0)
    assert saved_steps(workdir) == [2, 4]
    record = (workdir / "config.json").read_bytes()

    proc = train(shared, workdir, "--config.num_epochs=1", "--config.model.vision_layers=3")
    assert last_line(proc, 2) == (
        f"error: {workdir} holds a run with another config; these fields change shapes or the "
        "recipe: model.vision_layers (2 -> 3); use a new --workdir (or the run's config)"
    )
    proc = train(shared, workdir, "--config.num_epochs=2")
    assert last_line(proc, 2) == (
        f"error: {workdir} holds a run with another config: num_epochs (1 -> 2); to resume "
        "with it, pass --resume_changed=num_epochs"
    )
    assert (workdir / "config.json").read_bytes() == record
    assert saved_steps(workdir) == [2, 4]

    os.remove(workdir / "checkpoints" / "4" / "state" / "_METADATA")
    proc = train(shared, workdir, "--config.num_epochs=2", "--resume_changed=num_epochs")
    last_line(proc, 0)
    assert re.search(r"Checkpoint 4 does not restore \(.+\); moved to .*damaged_checkpoints/4",
                     proc.stderr)  # fmt: skip
    assert "Resuming from step 2" in proc.stderr
    assert os.path.isdir(workdir / "damaged_checkpoints" / "4" / "state")
    assert max(saved_steps(workdir)) == 8
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 2
    assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == [2, 4, 6, 8]
    no_temporary_files(workdir)


def test_ctrl_c_saves_and_stops(shared, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        _command(
            shared,
            workdir,
            "--config.num_epochs=50",
            "--config.checkpoint.every_steps=1000",
            "--config.eval.every_epochs=0",
        ),  # fmt: skip
        cwd=REPO,
        env=shared["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    line = last_line(done, 0)
    match = re.search(r"Stopped at step (\d+); run the same command to resume.", line)
    assert match, line
    assert "SIGINT: saving a checkpoint and stopping" in err
    assert saved_steps(workdir) == [int(match.group(1))]
    no_temporary_files(workdir)


def test_too_many_unreadable_videos_stop_in_one_line_keeping_checkpoints(shared, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(shared["root"], root)
    first = (root / "train.txt").read_text().split()[0]
    (root / first).write_bytes(b"not a video")  # read once per epoch: the second time is too many
    workdir = tmp_path / "run"
    proc = train(shared, workdir, "--config.num_epochs=2", "--config.data.max_bad_videos=1",
                 f"--config.data.root={root}")  # fmt: skip
    assert last_line(proc, 1) == (
        "error: 2 unreadable training videos, more than max_bad_videos=1 (listed above)"
    )
    steps = saved_steps(workdir)  # the second epoch stops where the video comes again
    assert steps and 4 in steps and max(steps) < 8
    for step in steps:
        saved_state(workdir, step)  # complete and restorable
    no_temporary_files(workdir)
