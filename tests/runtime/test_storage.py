"""Work directories, data and checkpoints on object storage (`gs://`), against a GCS-compatible
server on loopback (`gcs` fixture: the PyPI `gcp-storage-emulator`, started by the tests).

The fast tests use the path layer, the run lock, the metric files and the model export in this
process; the slow one runs the training command with its work directory and data in gs://: it
is killed (SIGKILL), resumes at the exact step, exports, and the exported model is evaluated
from gs:// by `python -m tcclip_jax.evaluate`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tcclip_jax.runtime import storage
from tcclip_jax.runtime.metrics import MetricWriter, drop_after, read_metrics
from tcclip_jax.train import run_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def uri(gcs, *parts) -> str:
    return "/".join([f"gs://{gcs['bucket']}", *parts])


def test_files_on_gs_round_trip(gcs, tmp_path):
    root = uri(gcs, "files", str(time.time_ns()))
    path = storage.join(root, "a", "x.txt")
    assert not storage.exists(path) and not storage.isdir(root)
    storage.write_text(path, "one")
    assert storage.read_text(path) == "one" and storage.isfile(path) and storage.isdir(root)
    assert storage.listdir(root) == ["a"] and storage.getsize(path) == 3
    assert abs(storage.mtime(path) - time.time()) < 120
    storage.write_text(path, "two")  # replaced whole
    assert storage.read_text(path) == "two"
    # Create-if-absent: the first wins, the second is told, the object keeps the first's bytes.
    lock = storage.join(root, "lock")
    assert storage.create_new(lock, b"first") and not storage.create_new(lock, b"second")
    assert storage.read_bytes(lock) == b"first"
    # A folder moved (copied object by object, then removed), then removed.
    storage.write_text(storage.join(root, "a", "sub", "y.txt"), "why")
    storage.replace(storage.join(root, "a"), storage.join(root, "b"))
    assert sorted(storage.listdir(root)) == ["b", "lock"]
    assert storage.read_text(storage.join(root, "b", "sub", "y.txt")) == "why"
    local = tmp_path / "tree"
    (local / "d").mkdir(parents=True)
    (local / "d" / "z.bin").write_bytes(b"\0\1")
    storage.upload_tree(str(local), storage.join(root, "up"))
    assert storage.read_bytes(storage.join(root, "up", "d", "z.bin")) == b"\0\1"
    storage.rmtree(storage.join(root, "b"))
    assert not storage.exists(storage.join(root, "b", "x.txt"))
    # Names of URIs are not local paths.
    assert storage.abspath(root + "/") == root and storage.isabs(root)
    assert storage.dirname(storage.join(root, "b")) == root
    assert storage.dirname(f"gs://{gcs['bucket']}") == f"gs://{gcs['bucket']}"


@pytest.mark.parametrize(
    "path,message",
    [
        ("s3://bucket/run", "--workdir s3://bucket/run: s3:// is not supported (local paths, "
         "shared filesystems and gs:// are; copy the data to one of them)"),
        ("gs://ab/run", "--workdir gs://ab/run: not a gs://BUCKET/PATH name (buckets have 3+ "
         "characters)"),
    ],
)  # fmt: skip
def test_a_scheme_that_cannot_be_served_is_refused_in_one_line(gcs, path, message):
    with pytest.raises(storage.StorageError) as e:
        storage.check(path, "--workdir")
    assert str(e.value) == message


@pytest.mark.parametrize(
    "args, named",
    [
        (["--workdir", "s3://bucket/run"], "--workdir s3://bucket/run: s3://"),
        (["--config.data.root=hf://x/y"], "config.data.root: hf://x/y: hf://"),
    ],
)
def test_the_training_command_refuses_an_unsupported_scheme_at_start(shared, tmp_path, args, named):
    proc = subprocess.run(
        [*shared["command"], "--workdir", str(tmp_path / "run"), *args],
        cwd=REPO, env=shared["env"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {named} is not supported (local paths, shared filesystems and gs:// are; copy "
        "the data to one of them)"
    )


def test_the_endpoint_follows_either_variable(monkeypatch):
    for name in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9")
    storage.configure_endpoint()
    assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == "http://127.0.0.1:9"
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", "http://127.0.0.1:8")
    storage.configure_endpoint()
    assert os.environ["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:8"


def test_run_lock_on_gs_refuses_a_live_run_and_takes_over_a_dead_ones(gcs):
    workdir = uri(gcs, "locks", str(time.time_ns()))
    with run_lock.hold(workdir):
        holder = json.loads(storage.read_text(storage.join(workdir, "run.lock")))
        assert holder["pid"] == os.getpid()
        with pytest.raises(run_lock.WorkdirBusy, match=r"is in use by another run \(host "):
            run_lock.RunLock(workdir).acquire()
    assert not storage.exists(storage.join(workdir, "run.lock"))  # released
    # A lock left by a process that is gone (its pid no longer runs) does not block.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    record = {"host": socket.gethostname(), "pid": int(dead.stdout), "since": "then"}
    storage.write_text(storage.join(workdir, "run.lock"), json.dumps(record))
    lock = run_lock.RunLock(workdir)
    lock.acquire()
    assert json.loads(storage.read_text(lock.path))["pid"] == os.getpid()
    lock.release()
    assert not storage.exists(lock.path)


def test_metrics_and_config_files_on_gs(gcs):
    workdir = uri(gcs, "metrics", str(time.time_ns()))
    writer = MetricWriter(workdir, enabled=True)
    for step in (2, 4, 6):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    assert [r["step"] for r in read_metrics(workdir)] == [2, 4, 6]
    events = storage.listdir(storage.join(workdir, "tensorboard"))
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")
    assert storage.getsize(storage.join(workdir, "tensorboard", events[0])) > 100
    drop_after(workdir, 4)  # a resumed run forgets what it logs again
    writer = MetricWriter(workdir, enabled=True)
    writer.write(6, {"loss": 0.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(workdir)] == [
        (2, 0.5), (4, 0.25), (6, 0.5)
    ]  # fmt: skip


def test_model_export_and_load_on_gs(gcs, tiny_config):
    from tcclip_jax.weights.checkpoint import (
        CheckpointError,
        check_new_directory,
        load_model,
        load_normalization,
        save_model,
    )
    from tests.evaluation.test_evaluation_protocols import init_params

    params = init_params(tiny_config, 0)
    directory = uri(gcs, "models", str(time.time_ns()), "model")
    check_new_directory(directory)
    save_model(directory, tiny_config, params, info={"step": 7}, normalization="clip")
    with pytest.raises(CheckpointError, match="is not empty"):
        check_new_directory(directory)
    assert load_normalization(directory) == "clip"
    assert json.loads(storage.read_text(storage.join(directory, "info.json"))) == {"step": 7}
    with pytest.raises(CheckpointError, match="model_config"):
        load_model(storage.dirname(directory))  # not a model
    config, loaded = load_model(directory)
    assert config == tiny_config
    np.testing.assert_array_equal(loaded["logit_scale"], params["logit_scale"])
    # predict / embed load their model through the same reader.
    from tcclip_jax.apps.inference import load_predictor

    predictor = load_predictor(directory)
    assert predictor.normalization == "clip"


# The command end to end ------------------------------------------------------------------------


def steps_in(workdir: str) -> list[int]:
    """Finished checkpoints (orbax marks them with commit_success.txt on GCS)."""
    directory = storage.join(workdir, "checkpoints")
    if not storage.isdir(directory):
        return []
    return sorted(
        int(n)
        for n in storage.listdir(directory)
        if n.isdigit() and storage.isfile(storage.join(directory, n, "commit_success.txt"))
    )


def start(command, env, processes: int) -> list[subprocess.Popen]:
    """`command` as `processes` processes of one run (collectives over loopback)."""
    if processes == 1:
        envs = [env]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        envs = [dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                     JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
                for i in range(processes)]  # fmt: skip
    return [subprocess.Popen(command, cwd=REPO, env=e, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for e in envs]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_train_kill_resume_export_and_evaluate_all_in_gs(gcs, shared, processes):
    env = dict(shared["env"], **gcs["env"])
    data = uri(gcs, "data", str(time.time_ns()))
    storage.upload_tree(shared["root"], data)  # the videos and lists, read from gs:// too
    workdir = uri(gcs, "runs", str(time.time_ns()))
    command = [
        *shared["command"][:-2],  # the data root and progress bar flags, replaced:
        f"--config.data.root={data}", "--config.progress_bar=False",
        "--workdir", workdir, "--config.num_epochs=5",
    ]  # fmt: skip
    first = start(command, env, processes)
    deadline = time.monotonic() + 600
    while not steps_in(workdir):
        for proc in first:
            assert proc.poll() is None, proc.communicate()[1][-5000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.5)
    for proc in first:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    killed_at = steps_in(workdir)[-1]
    assert killed_at < 20 and not storage.exists(storage.join(workdir, "model", "info.json"))
    assert storage.exists(storage.join(workdir, "run.lock"))  # left behind by the killed run
    positions = storage.listdir(storage.join(workdir, "checkpoints", str(killed_at), "data"))
    assert {f"process_{i}-of-{processes}.json" for i in range(processes)} <= set(positions)

    second = start(command, env, processes)
    errs = [proc.communicate(timeout=900)[1] for proc in second]
    for proc, err in zip(second, errs, strict=True):
        assert proc.returncode == 0, err[-5000:]
        assert "Traceback" not in err, err[-5000:]
    assert f"Resuming from step {killed_at}" in errs[0]
    assert re.search(rf"Taking over {workdir}/run.lock, left by a run that is gone", errs[0])
    assert not storage.exists(storage.join(workdir, "run.lock"))
    records = read_metrics(workdir)  # as an uninterrupted run's: each step once, in order
    assert [r["step"] for r in records if "loss" in r] == list(range(2, 21, 2))
    assert [r["step"] for r in records if "top1" in r and "epoch" in r] == [4, 8, 12, 16, 20]
    final = json.loads(storage.read_text(storage.join(workdir, "final_metrics.json")))
    info = json.loads(storage.read_text(storage.join(workdir, "model", "info.json")))
    assert final["step"] == info["step"]
    predictions = storage.read_text(storage.join(workdir, "analysis", "synthetic",
                                                 "predictions.jsonl"))  # fmt: skip
    assert len(predictions.splitlines()) == 16
    assert storage.listdir(storage.join(workdir, "tensorboard"))
    assert storage.isfile(storage.join(workdir, "config.json"))

    evaluation = subprocess.run(
        [sys.executable, "-m", "tcclip_jax.evaluate",
         "--config", os.path.join(REPO, "configs", "demo.py") + ":ci",
         f"--config.data.root={data}", "--checkpoint", storage.join(workdir, "model")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr[-5000:]
    assert "protocol: demo" in evaluation.stdout
    evaluated = json.loads(storage.read_text(storage.join(workdir, "eval_metrics.json")))
    assert evaluated["results"] == final["results"]
    assert evaluated["checkpoint"] == storage.join(workdir, "model")
