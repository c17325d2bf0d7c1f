"""Failures every process agrees on: one process's error stops all of them, with one message.

In a multi-process run every process must reach the same collectives in the same order. A
process that raises alone (a damaged file only its host reads, a full disk under process 0's
writes) leaves the others waiting in the next collective until the runtime's timeouts abort
them all with C++ stack dumps. So wherever one process can fail alone, the processes first
exchange a fixed-size record (a flag, the error's kind and its message) with one all-gather, and
then every process raises the same error: the one of the lowest process that failed, its first
line, naming that process ("... (process 1 of 2)"). With one process nothing is exchanged and
the error is raised as it is.

    with agreed():        # every process runs the block, then agrees
        read_my_lists()
    agree(error_or_None)  # the same, for code that catches its own errors
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from tcclip_jax.runtime import diskspace
from tcclip_jax.runtime.errors import RunError, UserError, error_line

MESSAGE_BYTES = 1000
# Kinds of error, in the order they are tried: the first that matches is the one raised.
_KINDS: tuple[type[BaseException], ...] = (diskspace.DiskFullError, UserError, RunError)


class AgreedError(RunError):
    """An error raised on every process because one of them failed (its kind was not one that
    names a user's mistake or a run's stop: a bug, a library's error)."""


def _encode(error: BaseException | None) -> np.ndarray:
    row = np.zeros(2 + MESSAGE_BYTES, np.uint8)
    if error is None:
        return row
    row[0] = 1
    row[1] = next((i for i, k in enumerate(_KINDS) if isinstance(error, k)), len(_KINDS)) + 1
    if row[1] > len(_KINDS) and diskspace.is_disk_full(error):
        row[1] = 1
        error = diskspace.from_os_error(error) if isinstance(error, OSError) else error
    text = error_line(error)
    if row[1] > len(_KINDS):
        text = f"{type(error).__name__}: {text}"
    data = text.encode()[:MESSAGE_BYTES].decode(errors="ignore").encode()
    row[2 : 2 + len(data)] = np.frombuffer(data, np.uint8)
    return row


def _decode(row: np.ndarray) -> tuple[type[BaseException], str]:
    kind = int(row[1]) - 1
    cls = _KINDS[kind] if kind < len(_KINDS) else AgreedError
    return cls, bytes(row[2:]).rstrip(b"\0").decode(errors="replace")


def multi_process() -> bool:
    """Whether this is one of several processes (without starting JAX's backends when the
    distributed runtime was never started: a single-process command stays as lazy as before)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def gather(error: BaseException | None) -> tuple[type[BaseException], str] | None:
    """Every process calls this at the same point, with the error it met or None: None if no
    process met one, else the same (kind, one-line message) on every process, the message
    naming the process it came from. With one process: the error's own kind and line."""
    if not multi_process():
        return None if error is None else _decode(_encode(error))
    rows = np.asarray(multihost_utils.process_allgather(_encode(error)))
    failed = [int(i) for i in np.flatnonzero(rows[:, 0])]
    if not failed:
        return None
    cls, message = _decode(rows[failed[0]])
    where = f"process {failed[0]} of {len(rows)}"
    if len(failed) > 1:
        where += f"; processes {', '.join(map(str, failed[1:]))} failed too"
    return cls, f"{message} ({where})"


def agree(error: BaseException | None) -> None:
    """Every process calls this at the same point, with the error it met or None; if any
    process met one, every process raises the same one (chained from its own, if it had one).
    With one process the error itself is raised."""
    if not multi_process():
        if error is not None:
            raise error
        return
    failure = gather(error)
    if failure is not None:
        raise failure[0](failure[1]) from error


@contextlib.contextmanager
def agreed() -> Iterator[None]:
    """Run the block on every process, then `agree` on whether it raised anywhere. The block
    must not itself hold collectives (a process that raised early would skip them)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - whatever one process meets, all must stop.
        agree(e)
        raise  # agree raised: not reached
    agree(None)
