"""One run per work directory: `workdir/run.lock` names the process that holds it.

A second training command in the same directory stops at start, in one line naming the holder
(host, pid, since when). A lock left by a run that is gone does not block a restart:

- same host: the holder's pid no longer runs, or runs another program (its start time, read from
  `/proc`, differs), or the machine rebooted since (another boot id);
- another host (a work directory on a shared filesystem): the holder touches the file every
  `HEARTBEAT_S` seconds; a lock untouched for `STALE_AFTER_S` seconds is taken as left by a lost
  host or a killed run.

Only process 0 of a multi-process run takes the lock; the others learn from it whether it did.
`--dry_run` never takes it.

On object storage (`--workdir gs://...`), which has no file locks, the lock is created with the
store's create-if-absent precondition (`runtime.storage.create_new`: one of two runs starting
together wins), and the heartbeat rewrites the object (its update time is the heartbeat) only
while it still holds this run's record.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from tcclip_jax.runtime import storage
from tcclip_jax.runtime.errors import UserError

LOCK_FILE = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats


class WorkdirBusy(UserError):
    """Another live run holds the work directory."""


def _read(path: str) -> str | None:
    try:
        if storage.is_remote(path):
            return storage.read_text(path)
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _boot_id() -> str | None:
    return (_read("/proc/sys/kernel/random/boot_id") or "").strip() or None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (`/proc/PID/stat` field 22), or None."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _this_process() -> dict:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "since": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "boot_id": _boot_id(),
        "start_ticks": _start_ticks(pid),
        "command": " ".join(sys.argv),
    }


def _gone(holder: dict, age_s: float) -> bool:
    """Whether the run that wrote `holder` (its lock last touched `age_s` ago) is gone."""
    if holder.get("host") != socket.gethostname():
        return age_s > STALE_AFTER_S
    if holder.get("boot_id") and holder["boot_id"] != _boot_id():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return True
    ticks = holder.get("start_ticks")
    return ticks is not None and ticks != _start_ticks(pid)


def _describe(holder: dict) -> str:
    return (
        f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
        f"since {holder.get('since', '?')}"
    )


class RunLock:
    """`workdir/run.lock`, held by this process from `acquire` to `release`."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = storage.join(workdir, LOCK_FILE)
        self._text = json.dumps(_this_process(), indent=1) + "\n"
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, or raise WorkdirBusy naming the live run holding it."""
        for _ in range(3):  # a stale lock removed, or a holder gone between two looks
            if not storage.create_new(self.path, self._text.encode()):
                self._clear_stale()
                continue
            self._heartbeat = threading.Thread(target=self._beat, name="run-lock", daemon=True)
            self._heartbeat.start()
            return
        raise WorkdirBusy(f"--workdir {self.workdir}: cannot take {self.path}")

    def _clear_stale(self) -> None:
        text = _read(self.path)
        try:
            age_s = time.time() - storage.mtime(self.path)
        except FileNotFoundError:
            return  # released meanwhile
        try:
            holder = json.loads(text or "")
        except json.JSONDecodeError:
            holder = {}  # cut short when its writer died: only its age tells
        if not holder and age_s <= STALE_AFTER_S:
            raise WorkdirBusy(
                f"--workdir {self.workdir} is locked by {self.path}, written {age_s:.0f} s ago "
                f"but unreadable; if no run uses the directory, delete the file"
            )
        if holder and not _gone(holder, age_s):
            remote = holder.get("host") != socket.gethostname()
            heartbeat = (
                f"; its last heartbeat was {age_s:.0f} s ago, and the lock of a run on another "
                f"host counts as abandoned after {STALE_AFTER_S:.0f} s"
                if remote
                else ""
            )
            raise WorkdirBusy(
                f"--workdir {self.workdir} is in use by another run ({_describe(holder)}; "
                f"{self.path}){heartbeat}; wait for it to end or use another --workdir"
            )
        logging.warning(
            "Taking over %s, left by a run that is gone (%s)",
            self.path,
            _describe(holder) if holder else "unreadable",
        )
        storage.remove(self.path)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not storage.is_remote(self.path):
                    os.utime(self.path)
                elif _read(self.path) == self._text:  # not taken over meanwhile
                    storage.write_text(self.path, self._text)
            except OSError as e:
                logging.warning("Cannot refresh %s (%s)", self.path, e.strerror or e)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this process's."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if _read(self.path) == self._text:
            storage.remove(self.path)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Hold `workdir`'s lock for the block (process 0 takes it; every process raises
    WorkdirBusy if it could not)."""
    lock, error = None, None
    if jax.process_index() == 0:
        lock = RunLock(workdir)
        try:
            lock.acquire()
        except WorkdirBusy as e:
            lock, error = None, e
    if jax.process_count() > 1:
        taken = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not taken and error is None:
            error = WorkdirBusy(f"--workdir {workdir} is in use by another run (see process 0)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
