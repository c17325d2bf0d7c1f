"""Faults that hit one process of a two-process run (CPU collectives over loopback): every process
stops within a bounded time, with the same one-line message, and a non-zero exit; nothing that
was saved before is lost.

Each test starts two processes of a command line, with `JAX_COORDINATOR_ADDRESS` /
`JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`, and gives one of them (process 1) what a damaged host
would have: a corrupt video in its share of a test list, a data copy with truncated videos, a
damaged file of a checkpoint that only it reads, a work directory only it sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from xla_env import xla_flags

from tcclip_jax.data import synthetic
from tcclip_jax.data.classes import read_annotations
from tcclip_jax.runtime.metrics import read_metrics
from tcclip_jax.weights.checkpoint import save_model
from tests.evaluation.test_evaluation_protocols import init_params

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOUND_S = 420  # both processes must have ended by then (the runtime's own timeouts are 300 s+)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(commands: list[list[str]], env: dict, timeout: float = BOUND_S):
    """Run commands[i] as process i of 2; [(exit status, stderr)] once both ended. Fails (after
    killing them) if either is still running after `timeout` seconds."""
    port = free_port()
    procs = []
    for rank, command in enumerate(commands):
        penv = dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                    JAX_PROCESS_ID=str(rank))  # fmt: skip
        procs.append(subprocess.Popen(command, cwd=REPO, env=penv, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    start, out = time.monotonic(), []
    try:
        for proc in procs:
            remaining = max(1.0, timeout - (time.monotonic() - start))
            _, err = proc.communicate(timeout=remaining)
            out.append((proc.returncode, err))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        errors = [p.communicate()[1][-3000:] for p in procs]
        pytest.fail(f"still running after {timeout} s: {errors}")
    return out


def one_line_each(results, status: int) -> str:
    """The last stderr line, the same on every process, each exiting with `status`, none with
    a traceback."""
    lines = []
    for code, err in results:
        assert code == status, err[-5000:]
        assert "Traceback" not in err and "Check failed" not in err, err[-5000:]
        lines.append(err.strip().splitlines()[-1])
    assert lines[0] == lines[1], lines
    return lines[0]


# A corrupt test video in process 1's share (fast) ---------------------------------------------


@pytest.fixture(scope="module")
def evaluation(tiny_config, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(root, videos_per_class=1, val_per_class=1, num_frames=8, size=(32, 32))
    checkpoint = tmp_path_factory.mktemp("checkpoint") / "model"
    save_model(str(checkpoint), tiny_config, init_params(tiny_config, 0), info={"step": 3},
               normalization="clip")  # fmt: skip
    return {"root": root, "checkpoint": str(checkpoint)}


def test_a_corrupt_test_video_on_one_process_stops_both_in_one_line(evaluation, tmp_path):
    # Process p evaluates list positions p, p + 2, ...: position 1 is process 1's.
    entries = read_annotations(os.path.join(evaluation["root"], "val.txt"))
    cut = tmp_path / "cut.mp4"
    with open(os.path.join(evaluation["root"], entries[1][0]), "rb") as f:
        data = f.read()
    cut.write_bytes(data[: len(data) // 3])  # a truncated copy
    entries[1] = (str(cut), entries[1][1])
    listing = tmp_path / "test.txt"
    listing.write_text("".join(f"{p} {y}\n" for p, y in entries))
    command = [
        sys.executable, "-m", "tcclip_jax.evaluate",
        "--config", os.path.join(REPO, "configs", "fewshot.py") + ":hmdb51,2",
        "--checkpoint", evaluation["checkpoint"], "--workdir", str(tmp_path / "eval"),
        f"--config.data.root={evaluation['root']}", f"--config.data.val_list={listing}",
        f"--config.data.class_list={evaluation['root']}/classes.csv",
        "--config.data.num_frames=4", "--config.data.image_size=32",
        "--config.data.resize_size=32", "--config.eval.batch_size=2", "--config.dtype=float32",
        "--config.dataset_name=synthetic", "--config.data.test_clips=1",
        "--config.data.max_bad_videos=0",
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = xla_flags()
    line = one_line_each(run_two([command, command], env), 1)
    assert line == (
        f"error: 1 unreadable videos in {listing}, more than data.max_bad_videos=0 (each counts "
        f"as a miss); the first: {cut}: "
        + line.split(f"the first: {cut}: ", 1)[1].split(f" (listed at {listing}:2)")[0]
        + f" (listed at {listing}:2) (process 1 of 2)"
    ), line
    assert not (tmp_path / "eval" / "eval_metrics.json").exists()


# A work directory that is not shared ---------------------------------------------------------


def test_a_workdir_only_one_host_sees_is_refused_on_both(shared, tmp_path):
    """Process 1 runs in its own mount namespace with a fresh tmpfs over the work directory's
    parent: the local folder of a host that does not share process 0's disk."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()}")
    parent = tmp_path / "disk"
    parent.mkdir()
    workdir = parent / "run"
    command = [*shared["command"], "--workdir", str(workdir)]
    private = ["unshare", "-m", "sh", "-c",
               f'mount -t tmpfs tmpfs "{parent}" && exec "$@"', "sh", *command]  # fmt: skip
    line = one_line_each(run_two([command, private], shared["env"], timeout=240), 2)
    assert line == (
        f"error: --workdir {workdir} is not shared by all hosts: host {socket.gethostname()} "
        "does not see the file process 0 wrote there; put the work directory on storage every "
        "host reads (gs://BUCKET/PATH or a shared filesystem) (process 1 of 2)"
    )
    assert os.listdir(workdir) == []  # the marker removed, nothing else written


# Training faults on process 1 (slow: whole training runs) ------------------------------------


def train_command(shared, workdir, *overrides) -> list[str]:
    return [*shared["command"], "--workdir", str(workdir), *overrides]


@pytest.mark.slow
def test_bad_training_videos_on_one_process_stop_both_in_one_line(shared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shared["root"], copy)
    for i, (path, _) in enumerate(read_annotations(str(copy / "train.txt"))):
        if i % 2:  # every second video of the copy cut short
            data = (copy / path).read_bytes()
            (copy / path).write_bytes(data[: len(data) // 4])
    workdir = tmp_path / "run"
    overrides = ("--config.num_epochs=5", "--config.data.max_bad_videos=2")
    ours = train_command(shared, workdir, *overrides)
    theirs = [*ours, f"--config.data.root={copy}"]  # the later flag wins
    line = one_line_each(run_two([ours, theirs], shared["env"]), 1)
    assert line.startswith("error: ") and line.endswith(
        ", more than max_bad_videos=2 (listed above) (process 1 of 2)"
    ), line
    assert "unreadable training videos" in line
    # What was saved is whole, and nothing was saved past the check that stopped the run.
    steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
    logged = []  # (the stop may come at the first logging step, before any record)
    if (workdir / "metrics.jsonl").exists():
        logged = [r["step"] for r in read_metrics(workdir) if "loss" in r]
    assert all(s <= max(logged, default=0) for s in steps)
    assert not (workdir / "run.lock").exists() and not (workdir / "model").exists()


@pytest.mark.slow
def test_a_checkpoint_file_only_process_1_reads_is_set_aside_by_both(shared, tmp_path):
    workdir = tmp_path / "run"
    first = train_command(shared, workdir, "--config.num_epochs=1")
    for code, err in run_two([first, first], shared["env"]):
        assert code == 0, err[-5000:]
    state = workdir / "checkpoints" / "4" / "data" / "process_1-of-2.json"
    state.write_text(state.read_text()[:40])  # cut short, on the host that reads it
    again = train_command(shared, workdir, "--config.num_epochs=2", "--resume_changed=num_epochs")
    results = run_two([again, again], shared["env"])
    for code, err in results:  # both set it aside, for the reason process 1 met
        assert code == 0, err[-5000:]
        assert "Traceback" not in err, err[-5000:]
        assert re.search(
            r"Checkpoint 4 does not restore \(.*process_1-of-2\.json.*\(process 1 "
            r"of 2\)\); moved to .*damaged_checkpoints/4",
            err,
        ), err[-5000:]
    assert "Resuming from step 2" in results[0][1]  # (process 1 logs warnings only)
    assert (workdir / "damaged_checkpoints" / "4" / "data").is_dir()
    logged = [r["step"] for r in read_metrics(workdir) if "loss" in r]
    assert logged == [2, 4, 6, 8]
    info = json.loads((workdir / "model" / "info.json").read_text())
    assert info["step"] in (4, 8) and np.isfinite(
        json.loads((workdir / "final_metrics.json").read_text())["results"]["synthetic"]["top1"]
    )
