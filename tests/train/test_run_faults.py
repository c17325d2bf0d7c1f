"""`python -m tcclip_jax.train` meeting what long runs meet: a full disk, a second run in the same
work directory, a checkpoint of an earlier release, Ctrl-C with data worker processes. Each says
what happened in one line (or none), exits with its status, and keeps what was written before.

Every test runs the demo's CI config in subprocesses (minutes on 2 cores: marked slow).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tcclip_jax.runtime.metrics import read_metrics
from tcclip_jax.weights.checkpoint import load_model
from tests.train.test_train_failures import (
    _command,
    last_line,
    no_temporary_files,
    saved_steps,
    train,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow
# Long enough to be interrupted, with no checkpoint or validation before the interruption.
LONG = ("--config.num_epochs=50", "--config.checkpoint.every_steps=1000",
        "--config.eval.every_epochs=0")  # fmt: skip


def start(shared, workdir, *overrides, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        _command(shared, workdir, *overrides), cwd=REPO, env=shared["env"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def wait_for_metrics(workdir, proc: subprocess.Popen) -> None:
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 600
    while not (os.path.exists(path) and os.path.getsize(path)) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-5000:]
        time.sleep(0.2)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size at tmp_path/fs; remount(size) grows it."""
    path = tmp_path / "fs"
    path.mkdir()

    def mount(size: str, remount: bool = False):
        options = f"remount,size={size}" if remount else f"size={size}"
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        return path

    yield mount
    subprocess.run(["umount", "-l", str(path)], check=False)


# A full disk ----------------------------------------------------------------------------------


def test_full_disk_stops_in_one_line_and_the_same_command_resumes(shared, tmpfs):
    # Each checkpoint takes ~7 MiB: 2 and 4 fit on 16 MiB, 6 does not.
    workdir = tmpfs("16m") / "run"
    proc = train(shared, workdir)
    line = last_line(proc, 1)
    match = re.fullmatch(
        rf"error: disk full: checkpoint 6 needs about ([\d.]+) MiB in {workdir}/checkpoints, but "
        rf"{workdir.parent} \(tmpfs\) has ([\d.]+) MiB free; checkpoints 2, 4 kept; free some "
        r"space there \(or move the work directory\) and run the same command to resume",
        line,
    )
    assert match, line
    assert float(match.group(1)) > float(match.group(2))
    assert saved_steps(workdir) == [2, 4]
    no_temporary_files(workdir)
    assert not (workdir / "run.lock").exists()
    assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == [2, 4, 6]

    tmpfs("64m", remount=True)  # space freed
    proc = train(shared, workdir)
    last_line(proc, 0)
    assert "Resuming from step 4" in proc.stderr
    assert saved_steps(workdir)[-1] == 8 and (workdir / "model").is_dir()
    assert [r["step"] for r in read_metrics(workdir) if "loss" in r] == [2, 4, 6, 8]
    no_temporary_files(workdir)


def test_disk_filling_up_under_the_metrics_stops_in_one_line(shared, tmpfs):
    workdir = tmpfs("32m") / "run"
    proc = start(shared, workdir, *LONG)
    wait_for_metrics(workdir, proc)
    with open(workdir.parent / "filler", "wb", buffering=0) as f:  # another program fills it
        try:
            while f.write(b"\0" * 65536):
                pass
        except OSError:
            pass
    _, err = proc.communicate(timeout=600)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    line = last_line(done, 1)
    assert re.fullmatch(
        rf"error: disk full: cannot write {workdir}/(metrics\.jsonl|tensorboard/events\S+): "
        rf"{workdir.parent} \(tmpfs\) has \d+ B free; free some space there \(or move the work "
        r"directory\) and run the same command to resume",
        line,
    ), line
    records = read_metrics(workdir)  # whole lines only
    assert [r["step"] for r in records] == list(range(2, 2 * len(records) + 1, 2))
    assert not (workdir / "run.lock").exists()


# Two runs in one work directory --------------------------------------------------------------


def test_a_second_run_in_the_same_workdir_refuses_and_a_killed_ones_lock_does_not_block(
    shared, tmp_path
):
    workdir = tmp_path / "run"
    first = start(shared, workdir, *LONG)
    wait_for_metrics(workdir, first)
    record = (workdir / "config.json").read_bytes()
    holder = json.loads((workdir / "run.lock").read_text())
    assert holder["pid"] == first.pid

    second = train(shared, workdir, *LONG)
    assert last_line(second, 2) == (
        f"error: --workdir {workdir} is in use by another run (host {socket.gethostname()}, pid "
        f"{first.pid}, since {holder['since']}; {workdir}/run.lock); wait for it to end or use "
        "another --workdir"
    )
    assert (workdir / "config.json").read_bytes() == record
    dry = train(shared, workdir, *LONG, "--dry_run")  # never takes the lock
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert json.loads((workdir / "run.lock").read_text()) == holder

    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (workdir / "run.lock").exists()  # left behind
    restart = train(shared, workdir, "--config.num_epochs=1")
    last_line(restart, 0)
    host = re.escape(socket.gethostname())
    assert re.search(rf"Taking over {workdir}/run.lock, left by a run that is gone \(host "
                     rf"{host}, pid {first.pid},", restart.stderr)  # fmt: skip
    assert not (workdir / "run.lock").exists()
    assert (workdir / "model").is_dir()


# A checkpoint of an earlier release ----------------------------------------------------------


def as_earlier_release(step_dir) -> None:
    """Rewrite a run checkpoint's state as the release before `nonfinite_step` saved it."""
    path = os.path.join(step_dir, "state")
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.metadata(path).item_metadata
    state = checkpointer.restore(
        path, jax_tree_map(lambda m: np.zeros(m.shape, m.dtype), dict(tree))
    )
    del state["nonfinite_step"]
    shutil.rmtree(path)
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()


def jax_tree_map(f, tree):
    import jax

    return jax.tree.map(f, tree)


def test_a_checkpoint_of_the_earlier_release_resumes_and_exports(shared, tmp_path):
    workdir = tmp_path / "run"
    last_line(train(shared, workdir, "--config.num_epochs=1"), 0)
    for step in saved_steps(workdir):
        as_earlier_release(workdir / "checkpoints" / str(step))
    shutil.rmtree(workdir / "model")
    os.remove(workdir / "final_metrics.json")

    proc = train(shared, workdir, "--config.num_epochs=2", "--resume_changed=num_epochs")
    last_line(proc, 0)
    assert "Resuming from step 4" in proc.stderr
    assert "Checkpoint 4 is from an earlier release (no nonfinite_step): filled in" in proc.stderr
    assert not (workdir / "damaged_checkpoints").exists()
    assert saved_steps(workdir)[-1] == 8
    # The best weights (maybe an old checkpoint's) are exported and evaluated.
    info = json.loads((workdir / "model" / "info.json").read_text())
    load_model(str(workdir / "model"))
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == info["step"] and 0 <= final["results"]["synthetic"]["top1"] <= 100


def test_a_checkpoint_of_another_layout_is_refused_in_one_line_and_kept(shared, tmp_path):
    workdir = tmp_path / "run"
    last_line(train(shared, workdir, "--config.num_epochs=1"), 0)
    path = workdir / "checkpoints" / "4" / "state"
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.metadata(str(path)).item_metadata
    state = checkpointer.restore(str(path), jax_tree_map(lambda m: np.zeros(m.shape, m.dtype),
                                                         dict(tree)))  # fmt: skip
    state["ema_params"] = state["params"]  # a field this version does not know
    shutil.rmtree(path)
    checkpointer.save(str(path), state)
    checkpointer.wait_until_finished()
    proc = train(shared, workdir, "--config.num_epochs=2", "--resume_changed=num_epochs")
    line = last_line(proc, 2)
    assert line.startswith(
        f"error: checkpoint 4 in {workdir}/checkpoints was written by another version of "
        "tcclip-jax (its training state has ['ema_params', 'nonfinite_step', 'opt_state', "
        "'params', 'step'], this version's ['nonfinite_step', 'opt_state', 'params', 'step']); "
    ), line
    assert saved_steps(workdir) == [2, 4] and not (workdir / "damaged_checkpoints").exists()


# Ctrl-C with data worker processes -----------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_with_data_workers_stops_them_and_completes_the_save(shared, tmp_path):
    workdir = tmp_path / "run"
    # Its own process group, which a terminal's Ctrl-C reaches whole: the command and workers.
    proc = start(shared, workdir, *LONG, "--config.data.num_workers=2", start_new_session=True)
    wait_for_metrics(workdir, proc)
    found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    workers = [int(pid) for pid in found.stdout.split()]
    assert len(workers) >= 2
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    last_line(done, 0)  # and no traceback, from the workers either
    # (After it, Python's resource tracker may count the shared-memory batches the workers had
    # prepared when they were stopped, and removes them: grain does so on any early close.)
    match = re.search(r"Stopped at step (\d+); run the same command to resume.", err)
    assert match, err[-3000:]
    assert "KeyboardInterrupt" not in err and "SIGINT: saving a checkpoint and stopping" in err
    assert saved_steps(workdir) == [int(match.group(1))]
    path = workdir / "checkpoints" / match.group(1) / "state"
    ocp.StandardCheckpointer().metadata(str(path))  # complete
    no_temporary_files(workdir)
    deadline = time.time() + 30
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
