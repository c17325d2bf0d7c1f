"""`python -m tcclip_jax.train` end to end on the demo's CI config: outputs, resume, preemption.

Every run is a subprocess on one shared synthetic dataset, sharing a persistent compilation cache
so that only the first run compiles.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tcclip_jax.evaluation.specs import validation_data
from tcclip_jax.runtime.metrics import read_metrics
from tcclip_jax.train.loop import validation_epochs
from tcclip_jax.weights.checkpoint import load_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS_PER_EPOCH, EPOCHS = 4, 5  # 32 training videos, batch 8
TOTAL = STEPS_PER_EPOCH * EPOCHS


def _command(shared, workdir, *overrides) -> list[str]:
    return [
        *shared["command"],
        "--workdir",
        str(workdir),
        f"--config.num_epochs={EPOCHS}",
        *overrides,
    ]


def _start(shared, workdir, *overrides) -> subprocess.Popen:
    return subprocess.Popen(
        _command(shared, workdir, *overrides),
        cwd=REPO,
        env=shared["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out


def _steps(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _wait_for_checkpoint(proc: subprocess.Popen, workdir, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not _steps(workdir):
        assert proc.poll() is None, proc.communicate()[0][-5000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)


def _state_params(workdir, step: int) -> dict:
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(path, restore_args=as_numpy)  # any saving topology
    return {k: np.asarray(v) for k, v in _flatten(state["params"]).items()}


def _flatten(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
        return out
    return {prefix.rstrip("/"): tree}


@pytest.fixture(scope="module")
def reference(shared, tmp_path_factory):
    """One uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference")
    out = _finish(_start(shared, workdir))
    return {"workdir": workdir, "output": out}


def test_demo_run_writes_metrics_checkpoints_and_model(shared, reference):
    workdir = reference["workdir"]
    records = read_metrics(workdir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "top1" in r]
    assert [r["step"] for r in train] == list(range(2, TOTAL + 1, 2))
    assert all(np.isfinite(r["loss"]) and r["lr"] >= 0 and r["clips_per_sec"] > 0 for r in train)
    # Each interval's share of steps that found no batch placed ahead, and their wait.
    assert all(0 <= r["input_bound"] <= 1 and r["input_wait_s"] >= 0 for r in train)
    assert [r["step"] for r in val] == list(range(STEPS_PER_EPOCH, TOTAL + 1, STEPS_PER_EPOCH))
    assert all(0 <= r["top1"] <= r["top5"] <= 100 and r["num_videos"] == 16 for r in val)
    final = records[-1]
    assert 0 <= final["synthetic/top1"] <= 100
    assert "protocol: demo" in reference["output"]
    # The compile summary, with the compilation cache the environment names (JAX's own setting).
    assert f"persistent cache {shared['env']['JAX_COMPILATION_CACHE_DIR']}: " in reference["output"]
    # The final test's predictions, one line per video, agree with its top-1.
    with open(workdir / "analysis" / "synthetic" / "predictions.jsonl") as f:
        correct = [json.loads(line)["correct"] for line in f]
    assert len(correct) == 16 and 100 * np.mean(correct) == final["synthetic/top1"]

    config = json.loads((workdir / "config.json").read_text())
    assert config["protocol"] == "demo" and config["data"]["root"] == shared["root"]
    assert any(
        name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard")
    )
    assert TOTAL in _steps(workdir)

    # The exported weights are those of the best validation step, usable by evaluate / predict.
    model_config, params = load_model(str(workdir / "model"))
    info = json.loads((workdir / "model" / "info.json").read_text())
    best = max(val, key=lambda r: (r["top1"], r["step"]))
    assert info["validation"]["top1"] == best["top1"]
    assert model_config.model == "tc_clip" and model_config.num_frames == 4
    # It records the normalisation it was trained with.
    record = json.loads((workdir / "model" / "preprocessing.json").read_text())
    assert record["normalization"] == config["data"]["normalization"] == "clip"
    exported = _flatten(params)
    saved = _state_params(workdir, info["step"])
    assert exported.keys() == saved.keys()
    for key in saved:
        np.testing.assert_array_equal(exported[key], saved[key], err_msg=key)


def test_sigkill_then_resume_equals_uninterrupted(shared, reference, tmp_path):
    proc = _start(shared, tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _steps(tmp_path)[-1]
    assert killed_at < TOTAL and not (tmp_path / "model").exists(), "killed too late to test"
    out = _finish(_start(shared, tmp_path))
    assert f"Resuming from step {killed_at}" in out
    ours, theirs = _state_params(tmp_path, TOTAL), _state_params(reference["workdir"], TOTAL)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    # The log reads as the uninterrupted run's (steps logged before the kill and again after
    # the resume appear once), with the same losses and accuracies.
    drop = ("clips_per_sec", "input_bound", "input_wait_s")  # timings
    clean = lambda w: [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(w)]
    assert clean(tmp_path) == clean(reference["workdir"])


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(shared, tmp_path):
    proc = _start(shared, tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc)
    assert "SIGTERM" in out and "Stopped at step" in out
    stopped = int(out.split("Stopped at step ")[1].split(";")[0])
    assert _steps(tmp_path)[-1] == stopped < TOTAL
    assert not (tmp_path / "model").exists()
    _state_params(tmp_path, stopped)  # a complete, readable checkpoint


@pytest.mark.slow
def test_two_process_run(shared, tmp_path):
    """Two processes on this machine (CPU collectives over loopback) run the whole CLI: each
    reads its half of every batch, only process 0 writes logs, checkpoints hold both data
    iterators, and the exported model matches the final state."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for index in range(2):
        env = dict(
            shared["env"],
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(index),
        )
        procs.append(
            subprocess.Popen(
                _command(shared, tmp_path, "--config.num_epochs=2", "--config.eval.every_epochs=0"),
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [_finish(proc) for proc in procs]
    assert "protocol: demo" in outputs[0] and "protocol: demo" not in outputs[1]
    assert not (tmp_path / "run.lock").exists()  # taken once, by process 0, and released
    last = 2 * STEPS_PER_EPOCH
    data = os.listdir(tmp_path / "checkpoints" / str(last) / "data")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "loss" in r] == list(range(2, last + 1, 2))
    _, params = load_model(str(tmp_path / "model"))
    saved = _state_params(tmp_path, last)
    for key, value in _flatten(params).items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


@pytest.mark.parametrize(
    "config,arg,epochs,views",
    [
        # Few-shot: after epochs 1, 11, 21, ... and the last, with the test views.
        ("fewshot", "hmdb51,16", [1, 11, 21, 31, 41, 50], (2, 1)),
        # Zero-shot and fully supervised: every epoch, on K-400 val with 1x1 views.
        ("zeroshot", None, list(range(1, 11)), (1, 1)),
        ("fully_supervised", None, list(range(1, 31)), (1, 1)),
        ("base2novel", "ssv2,2", list(range(1, 13)), (2, 1)),
    ],
)
def test_validation_schedule_per_protocol(config, arg, epochs, views):
    spec = importlib.util.spec_from_file_location(
        "c", os.path.join(REPO, "configs", f"{config}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    assert validation_epochs(c.num_epochs, c.eval.every_epochs) == epochs
    data = validation_data(c)
    assert (data.test_clips, data.test_crops) == views
    assert (c.data.test_clips, c.data.test_crops) != (1, 1)  # the final test keeps its views
    if config in ("zeroshot", "fully_supervised"):
        assert c.data.val_list == "datasets_splits/k400_splits/val.txt"
    assert validation_epochs(7, 0) == [] and validation_epochs(5, 10) == [1, 5]
