"""A full disk, said in one line: which filesystem, which folder, how much the next write needs.

Training checks the free space before each checkpoint (`train.checkpoints`), so a save that
cannot fit is never started; a write that fails anyway (the disk filled up meanwhile, a quota)
is recognised by `is_disk_full`, whatever layer raised it (Python's OSError, tensorstore's
RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator

from tcclip_jax.runtime.errors import RunError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How tensorstore (orbax's writer) words ENOSPC / EDQUOT in the ValueError it raises.
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os_error_code='28'")


class DiskFullError(RunError):
    """A write did not fit on its filesystem; what was written before it is kept."""


def human(num_bytes: float) -> str:
    """`num_bytes` as "512 B", "7.3 MiB", "1.2 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def filesystem(path: str) -> str:
    """The mount point holding `path`, with its type where /proc/mounts says it ("/mnt (tmpfs)")."""
    mount = _existing(path)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    try:
        with open("/proc/mounts") as f:
            types = {fields[1]: fields[2] for fields in (line.split() for line in f) if fields}
    except OSError:
        types = {}
    return f"{mount} ({types[mount]})" if mount in types else mount


def free_bytes(path: str) -> int:
    """Bytes a non-root user may still write on the filesystem holding `path`."""
    return shutil.disk_usage(_existing(path)).free


def tree_bytes(path: str) -> int:
    """The space the files under `path` take on disk."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            total += max(st.st_size, getattr(st, "st_blocks", 0) * 512)
    return total


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error` (or one it was raised from) says a filesystem is full or over quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return True
        if any(text in str(error) for text in _FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full(folder: str, what: str, needed: int | None = None, kept: str = "") -> DiskFullError:
    """The one-line error for `what` (e.g. "checkpoint 6") not fitting into `folder`."""
    free = f"{filesystem(folder)} has {human(free_bytes(folder))} free"
    if needed:
        problem = f"{what} needs about {human(needed)} in {os.path.abspath(folder)}, but {free}"
    else:
        problem = f"cannot write {what}: {free}"
    return DiskFullError(
        f"disk full: {problem}{kept}; free some space there (or move the work directory) and "
        "run the same command to resume"
    )


def from_os_error(error: OSError) -> DiskFullError:
    """`disk_full` for an OSError with errno ENOSPC / EDQUOT (naming its file if it has one)."""
    if error.filename:
        return disk_full(os.path.dirname(os.path.abspath(error.filename)), str(error.filename))
    return DiskFullError(
        f"disk full: {error.strerror or error}; free some space (or move the work directory) "
        "and run the same command to resume"
    )


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """A full disk while the block writes `path` is a `disk_full` error naming it."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise disk_full(os.path.dirname(os.path.abspath(path)), path) from e
