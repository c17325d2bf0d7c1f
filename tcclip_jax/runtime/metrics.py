"""What a run records in its workdir: TensorBoard events, `metrics.jsonl` and `config.json`.

`metrics.jsonl` has one JSON object per logging step or evaluation, `{"step": int, name: value}`
(e.g. `loss`, `lr`, `clips_per_sec`, `top1`, `top5`), easy to read back without TensorBoard.
Only process 0 writes; the other processes get a writer that does nothing, so callers need not
branch on the process index. A work directory on object storage (`gs://`) gets the same files:
objects have no append, so each write replaces `metrics.jsonl` and the events file whole (both
stay small: one line, one event per logging step).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from tcclip_jax.runtime import diskspace, storage

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "config.json"


def _scalar(value: Any) -> float | int:
    value = np.asarray(value)
    if value.size != 1:
        raise ValueError(f"metrics must be scalars, got shape {value.shape}")
    return value.item()


class MetricWriter:
    """Appends scalars to `metrics.jsonl` and TensorBoard events to `tensorboard/` in a workdir.

    Both are written synchronously, so a failed write (a full disk) raises here, in the caller,
    and is undone: each file ends with its last complete record (a line, an event), and the
    writer stops. A full disk is a `diskspace.DiskFullError` naming the file.
    """

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = storage.join(workdir, METRICS_FILE)
        self._tb = None
        # On object storage: the events are written to a local file, uploaded after each
        # write; metrics.jsonl's text is kept here and uploaded whole.
        self._remote = storage.is_remote(workdir)
        self._upload: tuple[str, str] | None = None
        self._lines = b""
        if self.enabled:
            from tensorboardX.event_file_writer import EventsWriter

            events = storage.join(workdir, "tensorboard")
            if self._remote:
                if storage.isfile(self._jsonl):
                    self._lines = storage.read_bytes(self._jsonl)
                self._staging = tempfile.TemporaryDirectory(prefix="tcclip-events-")
                local = self._staging.name
            else:
                os.makedirs(events, exist_ok=True)
                local = events
            self._tb = EventsWriter(os.path.join(local, "events"))
            self._tb.flush()
            self._tb_path = self._tb._file_name  # noqa: SLF001 - tensorboardX names the file
            if self._remote:
                remote = storage.join(events, os.path.basename(self._tb_path))
                self._upload = (self._tb_path, remote)

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        """Record scalar `metrics` at `step`; TensorBoard tags get `prefix` (e.g. "train/")."""
        if not self.enabled:
            return
        if self._tb is None:
            raise RuntimeError("MetricWriter: a write failed before; the writer is closed")
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import scalar

        values = {name: _scalar(v) for name, v in metrics.items()}
        line = (json.dumps({"step": int(step), **values}) + "\n").encode()
        summary = Summary(value=[scalar(prefix + n, v).value[0] for n, v in values.items()])
        event = Event(wall_time=time.time(), step=int(step), summary=summary)
        if self._remote:
            storage.write_bytes(self._jsonl, self._lines + line)
            self._lines += line
            self._tb.write_event(event)
            self._tb.flush()
            with open(self._upload[0], "rb") as f:
                storage.write_bytes(self._upload[1], f.read())
            return
        self._undone_on_error(self._jsonl, lambda: _append(self._jsonl, line))
        self._undone_on_error(
            self._tb_path, lambda: (self._tb.write_event(event), self._tb.flush())
        )

    def _undone_on_error(self, path: str, write: Callable[[], Any]) -> None:
        """`write()`, appending to `path`; if it fails, `path` is cut back to its size before
        and the writer closes."""
        size = os.path.getsize(path) if os.path.exists(path) else 0
        try:
            write()
        except OSError as e:
            with contextlib.suppress(OSError):
                self._tb.close()  # flushes what it still holds if it can: cut back below
            self._tb = None
            with contextlib.suppress(OSError):
                os.truncate(path, size)
            if diskspace.is_disk_full(e):
                raise diskspace.disk_full(os.path.dirname(path), path) from e
            raise

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            self._tb = None
            if self._remote:
                self._staging.cleanup()


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _write_whole(path: str, text: str) -> None:
    """Write `path` whole: it holds the old text or the new, never a part."""
    with diskspace.writing(path):
        storage.write_text(path, text)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of `workdir/metrics.jsonl` in order."""
    text = storage.read_text(storage.join(str(workdir), METRICS_FILE))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def drop_after(workdir: str, step: int) -> None:
    """Forget the records past `step` (process 0 only): a run resumed from the checkpoint of
    `step` logs those steps again, and `metrics.jsonl` then reads as an uninterrupted run."""
    path = storage.join(workdir, METRICS_FILE)
    if jax.process_index() != 0 or not storage.isfile(path):
        return
    kept = [r for r in read_metrics(workdir) if r["step"] <= step]
    _write_whole(path, "".join(json.dumps(r) + "\n" for r in kept))


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """The resolved config as JSON (process 0 only)."""
    if jax.process_index() != 0:
        return
    storage.makedirs(workdir)
    _write_whole(
        storage.join(workdir, RUN_CONFIG_FILE), config.to_json_best_effort(indent=2, sort_keys=True)
    )
