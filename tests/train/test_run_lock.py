"""`workdir/run.lock`: a live holder refuses a second run, a gone one does not block a restart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import jax
import pytest

from tcclip_jax.train import run_lock
from tcclip_jax.train.run_lock import LOCK_FILE, RunLock, WorkdirBusy


def write_lock(workdir, age_s: float = 0.0, **holder) -> str:
    path = os.path.join(workdir, LOCK_FILE)
    with open(path, "w") as f:
        f.write(json.dumps(holder) if holder else "")
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_run_refuses_a_second_one_naming_it(tmp_path):
    first = RunLock(str(tmp_path))
    first.acquire()
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
    with pytest.raises(WorkdirBusy) as e:
        RunLock(str(tmp_path)).acquire()
    assert str(e.value) == (
        f"--workdir {tmp_path} is in use by another run (host {socket.gethostname()}, pid "
        f"{os.getpid()}, since {holder['since']}; {tmp_path / LOCK_FILE}); wait for it to end "
        "or use another --workdir"
    )
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    second = RunLock(str(tmp_path))
    second.acquire()
    second.release()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    write_lock(tmp_path, host=socket.gethostname(), pid=dead_pid(), since="then")
    lock = RunLock(str(tmp_path))
    lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_or_a_reboot_does_not_keep_a_lock(tmp_path):
    alive = os.getppid()  # running, but not the process that wrote the lock
    host = socket.gethostname()
    for holder in (
        dict(host=host, pid=alive, start_ticks=run_lock._start_ticks(alive) + 1),
        dict(host=host, pid=alive, boot_id="another-boot"),
    ):
        write_lock(tmp_path, **holder)
        lock = RunLock(str(tmp_path))
        lock.acquire()
        lock.release()
    write_lock(tmp_path, host=host, pid=alive, start_ticks=run_lock._start_ticks(alive))
    with pytest.raises(WorkdirBusy, match=f"pid {alive}"):
        RunLock(str(tmp_path)).acquire()


def test_another_hosts_lock_is_stale_once_its_heartbeat_stops(tmp_path):
    write_lock(tmp_path, age_s=20, host="node-7", pid=1234, since="2026-01-01 00:00:00 UTC")
    with pytest.raises(WorkdirBusy) as e:
        RunLock(str(tmp_path)).acquire()
    assert "(host node-7, pid 1234, since 2026-01-01 00:00:00 UTC;" in str(e.value)
    assert "its last heartbeat was 20 s ago" in str(e.value)
    assert f"after {run_lock.STALE_AFTER_S:.0f} s" in str(e.value)
    write_lock(tmp_path, age_s=run_lock.STALE_AFTER_S + 5, host="node-7", pid=1234)
    lock = RunLock(str(tmp_path))
    lock.acquire()
    lock.release()


def test_an_unreadable_lock_counts_by_its_age(tmp_path):
    write_lock(tmp_path, age_s=1)
    with pytest.raises(WorkdirBusy, match="unreadable; if no run uses the directory, delete"):
        RunLock(str(tmp_path)).acquire()
    write_lock(tmp_path, age_s=run_lock.STALE_AFTER_S + 5)
    lock = RunLock(str(tmp_path))
    lock.acquire()
    lock.release()


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    lock = RunLock(str(tmp_path))
    lock.acquire()
    path = tmp_path / LOCK_FILE
    os.utime(path, (0, 0))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 5
    lock.release()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = RunLock(str(tmp_path))
    lock.acquire()
    path = write_lock(tmp_path, host="elsewhere", pid=1)
    lock.release()
    assert os.path.exists(path)


def test_only_process_zero_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with run_lock.hold(str(tmp_path)):
        assert not (tmp_path / LOCK_FILE).exists()
    monkeypatch.undo()
    with run_lock.hold(str(tmp_path)):
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()
