"""A full disk during a run: one line naming the filesystem, the folder and what was needed; what
was written before is kept whole, what was being written is removed or cut back.

The faults are real: small tmpfs filesystems, mounted where the tests may (root); otherwise the
tests that need one are skipped. The whole training command on a full disk is in
test_run_faults.py.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess

import grain
import jax
import numpy as np
import pytest
from absl import flags

from tcclip_jax.runtime import cli, diskspace
from tcclip_jax.runtime.metrics import METRICS_FILE, MetricWriter, read_metrics
from tcclip_jax.train import checkpoints
from tcclip_jax.train.checkpoints import TrainCheckpoints


def mount_tmpfs(path, size: str) -> None:
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB filesystem at tmp_path/fs (unmounted after the test)."""
    path = tmp_path / "fs"
    mount_tmpfs(path, "4m")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory) -> None:
    """Take every free byte of `directory`'s filesystem."""
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError as e:
            assert e.errno == errno.ENOSPC
    assert diskspace.free_bytes(directory) < 4096


def tensorboard_records(path) -> int:
    """The number of complete records of a TensorBoard events file (fails if it ends in a cut
    record)."""
    data, count, at = path.read_bytes(), 0, 0
    while at < len(data):
        (length,) = struct.unpack("Q", data[at : at + 8])
        at += 12 + length + 4
        count += 1
    assert at == len(data), "the events file ends in a partial record"
    return count


@pytest.fixture(autouse=True)
def _flags():
    flags.FLAGS.mark_as_parsed()  # grain's iterators read absl flags


def test_messages_name_the_filesystem_folder_and_needed_space(small_fs):
    folder = small_fs / "run" / "checkpoints"
    error = diskspace.disk_full(str(folder), "checkpoint 6", 7 * 2**20, "; checkpoints 2, 4 kept")
    free = diskspace.human(diskspace.free_bytes(str(small_fs)))
    assert str(error) == (
        f"disk full: checkpoint 6 needs about 7.0 MiB in {folder}, but {small_fs} (tmpfs) has "
        f"{free} free; checkpoints 2, 4 kept; free some space there (or move the work "
        "directory) and run the same command to resume"
    )
    assert diskspace.human(512) == "512 B" and diskspace.human(1536) == "1.5 KiB"
    wrapped = ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']")
    assert diskspace.is_disk_full(wrapped)
    try:
        raise RuntimeError("save failed") from OSError(errno.EDQUOT, "Disk quota exceeded")
    except RuntimeError as e:
        assert diskspace.is_disk_full(e)
    assert not diskspace.is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_a_checkpoint_that_cannot_fit_is_not_started(small_fs):
    ckpt = TrainCheckpoints(str(small_fs / "ckpt"), keep_last=2, keep_best=1)
    it = iter(grain.MapDataset.range(10).to_iter_dataset())
    state = {"w": np.random.default_rng(0).normal(size=2**20).astype(np.float32)}  # 4 MiB
    with pytest.raises(diskspace.DiskFullError) as e:
        ckpt.save(1, jax.numpy.asarray(state["w"]), it)
    assert str(e.value).startswith(
        f"disk full: checkpoint 1 needs about 5.0 MiB in {small_fs / 'ckpt'}, but {small_fs} "
        "(tmpfs) has "
    )
    assert "; no checkpoint was saved yet;" in str(e.value)
    assert os.listdir(small_fs / "ckpt") == []
    ckpt.close()


def test_a_save_that_fills_the_disk_is_removed_and_the_older_ones_kept(small_fs, monkeypatch):
    ckpt = TrainCheckpoints(str(small_fs / "ckpt"), keep_last=2, keep_best=1)
    it = iter(grain.MapDataset.range(10).to_iter_dataset())
    ckpt.save(1, {"w": jax.numpy.ones(1000)}, it)
    ckpt.wait()
    # The disk fills up after the check (another writer): orbax's write fails half-way.
    monkeypatch.setattr(checkpoints.diskspace, "free_bytes", lambda path: 2**40)
    big = {"w": jax.random.normal(jax.random.key(0), (2**21,))}  # 8 MiB of noise
    with pytest.raises(diskspace.DiskFullError, match=r"checkpoint 2 .*; checkpoint 1 kept;"):
        ckpt.save(2, big, it)
        ckpt.wait()
    assert sorted(os.listdir(small_fs / "ckpt")) == ["1"]
    ckpt.wait()  # what the run's cleanup does next: nothing more to raise
    ckpt.close()
    again = TrainCheckpoints(str(small_fs / "ckpt"), keep_last=2, keep_best=1)
    restored = again.restore(1, {"w": jax.ShapeDtypeStruct((1000,), np.float32)})
    np.testing.assert_array_equal(restored["w"], np.ones(1000))
    again.close()


def test_metrics_on_a_full_disk_end_in_whole_records(small_fs):
    writer = MetricWriter(str(small_fs), enabled=True)
    writer.write(0, {"loss": 1.0})
    fill(small_fs)
    with pytest.raises(diskspace.DiskFullError) as e:
        for step in range(1, 10000):
            writer.write(step, {"loss": 1.0 / step, "lr": 0.1}, prefix="train/")
    message = str(e.value)
    assert message.startswith(f"disk full: cannot write {small_fs}/"), message
    assert f": {small_fs} (tmpfs) has " in message
    written = read_metrics(str(small_fs))  # every line whole
    assert [r["step"] for r in written] == list(range(len(written)))
    (events,) = os.listdir(small_fs / "tensorboard")
    events_written = tensorboard_records(small_fs / "tensorboard" / events) - 1  # file version
    # the write that failed left neither file with its record; each file has its last whole one
    assert abs(len(written) - events_written) <= 1
    writer.close()
    with open(small_fs / METRICS_FILE) as f:
        assert all(json.loads(line) for line in f)


def test_any_command_reports_a_full_disk_in_one_line(small_fs, capsys):
    path = small_fs / "final_metrics.json"

    def body():
        fill(small_fs)
        with diskspace.writing(str(path)), open(path, "w") as f:
            f.write("x" * 100000)

    assert cli.guarded(body, debug=False) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: disk full: cannot write {path}: {small_fs} (tmpfs) has ")

    def unnamed():  # a write deep in a library, without the file's name
        raise OSError(errno.ENOSPC, "No space left on device")

    assert cli.guarded(unnamed, debug=False) == 1
    assert capsys.readouterr().err == (
        "error: disk full: No space left on device; free some space (or move the work "
        "directory) and run the same command to resume\n"
    )


def test_config_record_is_never_half_written(small_fs):
    import ml_collections

    from tcclip_jax.runtime.metrics import RUN_CONFIG_FILE, save_config

    save_config(str(small_fs), ml_collections.ConfigDict({"a": 1}))
    before = (small_fs / RUN_CONFIG_FILE).read_bytes()
    fill(small_fs)
    with pytest.raises(diskspace.DiskFullError, match=f"cannot write {small_fs}/config.json"):
        save_config(str(small_fs), ml_collections.ConfigDict({"a": "x" * 100000}))
    assert (small_fs / RUN_CONFIG_FILE).read_bytes() == before
    assert not (small_fs / (RUN_CONFIG_FILE + ".tmp")).exists()
