"""One path layer for local folders and object storage (`gs://bucket/...`): etils.epath, the
layer orbax already writes checkpoints through, with gcsfs as its `gs://` backend.

Everything a run reads or writes by name goes through here: the work directory's files
(config.json, metrics.jsonl, TensorBoard events, run.lock, checkpoints, the exported model,
analysis/, the profile), the data (`data.root`, annotation and class lists) and the checkpoints
`evaluate` / `predict` / `embed` read. Local paths keep the behaviour they had (atomic
replacement through a temporary file, `O_EXCL` creation); on object storage an object is written
whole in one request (a reader sees the old object or the new one), and `create_new` uses the
store's create-if-absent precondition (`ifGenerationMatch=0`) instead of a file lock.

The endpoint: Google's client libraries (gcsfs here) read `STORAGE_EMULATOR_HOST`, tensorstore
(orbax's array writer) reads `TENSORSTORE_GCS_HTTP_URL`; `configure_endpoint` copies whichever
is set to the other, so one variable points a run at a local GCS-compatible server.

A scheme this layer cannot serve (`s3://`, `hf://`, ...) or `gs://` without gcsfs installed is a
`UserError` in one line, before anything runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import shutil
from collections.abc import Iterator

from tcclip_jax.runtime.errors import UserError

SUPPORTED_SCHEMES = ("gs",)
INSTALL_GCS = "pip install 'tcclip-jax[gcs]' (gcsfs)"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(UserError):
    """A path on a storage this installation cannot read or write."""


def scheme(path: str) -> str | None:
    """'gs' for 'gs://bucket/x', None for a local path."""
    match = _SCHEME.match(str(path))
    return match.group(1).lower() if match else None


def is_remote(path: str) -> bool:
    return scheme(path) is not None


def configure_endpoint() -> None:
    """Point gcsfs and tensorstore at the same GCS endpoint: `STORAGE_EMULATOR_HOST` (Google's
    variable) or `TENSORSTORE_GCS_HTTP_URL` (tensorstore's), whichever is set, sets the other.
    Under an emulator, gcsfs's probe for zonal buckets (a gRPC call that no emulator answers,
    60 s per bucket) is turned off."""
    env = os.environ
    emulator, tensorstore = env.get("STORAGE_EMULATOR_HOST"), env.get("TENSORSTORE_GCS_HTTP_URL")
    if emulator and not tensorstore:
        url = emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
        env["TENSORSTORE_GCS_HTTP_URL"] = url
    elif tensorstore and not emulator:
        env["STORAGE_EMULATOR_HOST"] = tensorstore
    if env.get("STORAGE_EMULATOR_HOST"):
        env.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def check(path: str, what: str = "") -> None:
    """A one-line StorageError unless `path` is local or on a storage this installation serves
    (`what` names the setting, e.g. '--workdir')."""
    name = scheme(path)
    if name is None:
        return
    where = f"{what} {path}" if what else str(path)
    if name not in SUPPORTED_SCHEMES:
        raise StorageError(
            f"{where}: {name}:// is not supported (local paths, shared filesystems and gs:// "
            "are; copy the data to one of them)"
        )
    configure_endpoint()
    try:
        import gcsfs  # noqa: F401 - etils.epath's gs:// backend
    except ImportError:
        raise StorageError(f"{where}: gs:// needs gcsfs: {INSTALL_GCS}") from None
    if not re.match(r"^gs://[a-z0-9][a-z0-9._-]{2,}", str(path)):
        raise StorageError(f"{where}: not a gs://BUCKET/PATH name (buckets have 3+ characters)")


def _remote(path: str):
    """epath.Path of a remote `path` (checked), its listing cache dropped: objects written by
    other processes or by tensorstore must be seen."""
    from etils import epath

    check(path)
    _filesystem().invalidate_cache()
    return epath.Path(path)


def _filesystem():
    import fsspec

    configure_endpoint()
    return fsspec.filesystem("gcs")  # the instance etils.epath uses


# Names ---------------------------------------------------------------------------------------


def join(path: str, *parts: str) -> str:
    if is_remote(path):
        return posixpath.join(str(path), *parts)
    return os.path.join(path, *parts)


def abspath(path: str) -> str:
    """An absolute local path; a URI as it is."""
    return str(path).rstrip("/") if is_remote(path) else os.path.abspath(path)


def isabs(path: str) -> bool:
    return is_remote(path) or os.path.isabs(path)


def dirname(path: str) -> str:
    if is_remote(path):
        head = posixpath.dirname(str(path).rstrip("/"))
        return head if "://" in head else str(path)  # a bucket is its own parent
    return os.path.dirname(path)


def basename(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/")) if is_remote(path) else os.path.basename(path)


# Queries -------------------------------------------------------------------------------------


def exists(path: str) -> bool:
    return _remote(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    """A folder (on object storage: a prefix that holds objects)."""
    return _remote(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    if is_remote(path):
        p = _remote(path)
        return p.exists() and not p.is_dir()
    return os.path.isfile(path)


def listdir(path: str) -> list[str]:
    """The names in a folder (FileNotFoundError if there is none)."""
    if not is_remote(path):
        return os.listdir(path)
    p = _remote(path)
    if not p.is_dir():
        raise FileNotFoundError(f"no such folder: {path}")
    return [child.name for child in p.iterdir()]


def getsize(path: str) -> int:
    return _remote(path).stat().length if is_remote(path) else os.path.getsize(path)


def mtime(path: str) -> float:
    """When the file was last written (seconds since the epoch)."""
    return float(_remote(path).stat().mtime) if is_remote(path) else os.stat(path).st_mtime


# Reading and writing -------------------------------------------------------------------------


def makedirs(path: str) -> None:
    """Create a local folder and its parents; nothing to create on object storage."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
    else:
        check(path)


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        return _remote(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_bytes(path: str, data: bytes) -> None:
    """Write `path` whole: a reader sees the old content or the new, never a part (locally
    through a temporary file that replaces it)."""
    if is_remote(path):
        _remote(path).write_bytes(data)
        return
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def create_new(path: str, data: bytes) -> bool:
    """Create `path` holding `data` only if it does not exist; False if it did. Locally
    `O_EXCL`; on object storage the create-if-absent precondition (`ifGenerationMatch=0`),
    which GCS checks atomically among concurrent writers."""
    if not is_remote(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    check(path)
    fs = _filesystem()
    fs.invalidate_cache()
    if fs.exists(path):  # also where a server ignores preconditions (some emulators)
        return False
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def remove(path: str, missing_ok: bool = True) -> None:
    if is_remote(path):
        _remote(path).unlink(missing_ok=missing_ok)
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path: str) -> None:
    """Remove a folder and everything in it, if it exists."""
    if is_remote(path):
        p = _remote(path)
        if p.exists():
            p.rmtree(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def replace(source: str, target: str) -> None:
    """Move a file or folder to `target`, replacing what is there. Local: one `os.replace`
    (atomic on one filesystem); object storage has no rename: every object is copied, then
    the source removed."""
    if not is_remote(source):
        if os.path.isdir(target) and os.path.isdir(source):
            shutil.rmtree(target)
        os.replace(source, target)
        return
    rmtree(target)
    fs = _filesystem()
    fs.invalidate_cache()
    if fs.isdir(source):
        fs.copy(source.rstrip("/") + "/", target, recursive=True)  # server-side copies
    else:
        fs.copy(source, target)
    fs.rm(source, recursive=True)
    fs.invalidate_cache()


def upload_tree(local: str, remote: str) -> None:
    """Copy the local folder `local` to `remote` (a URI), files replaced."""
    for folder, _, files in os.walk(local):
        relative = os.path.relpath(folder, local)
        for name in files:
            target = posixpath.join(remote, *([] if relative == "." else [relative]), name)
            with open(os.path.join(folder, name), "rb") as f:
                write_bytes(target, f.read())


@contextlib.contextmanager
def open_write(path: str, binary: bool = False) -> Iterator[io.IOBase]:
    """A file object whose content becomes `path`, whole, when the block ends without error."""
    buffer = io.BytesIO() if binary else io.StringIO()
    yield buffer
    data = buffer.getvalue()
    write_bytes(path, data if binary else data.encode())
