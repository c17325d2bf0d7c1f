"""Data worker processes (grain's, the tfds packer's): how many, and Ctrl-C.

`data.num_workers='auto'` (the default) chooses the number of grain worker processes from the
cores this process may use (`auto_workers`). Measured on this project's 2-core host (shared with
other jobs; `python -m tcclip_jax.data.bench`): per core, a worker process decodes as many
training clips as a thread of the training process (H.264: 20.5-21.5 clips per CPU-second in 1
worker against 22.3 in 1 thread; tfds shards: 31.8 against 33.8), so a worker costs little per
clip; its start-up and the copy of every batch are what make workers not worth it on a small
host, whose cores the training process needs. That threads of one interpreter stop scaling past a
few cores (the Python parts of decoding and augmentation hold the GIL) is why a large host uses
processes; 2 cores cannot show it (2 threads gave 15.6-23.0 clips/s, 2 workers 19.6-21.4).

A Ctrl-C at a terminal goes to the whole process group: to the workers as well as to the command.
Workers ignore it, and the command stops them once it has saved what it must, so no traceback
comes from each worker's KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


def leave_interrupts_to_the_parent(*_) -> None:
    """Ignore SIGINT in this (worker) process: grain's `worker_init_fn` (takes its index and
    count). It runs after the worker's start-up imports; `starting_workers` covers those too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def starting_workers() -> Iterator[None]:
    """Start worker processes inside this block: they inherit SIGINT ignored from their first
    instruction (an ignored signal stays ignored through exec, and Python then installs no
    KeyboardInterrupt handler). A Ctrl-C in the block itself (milliseconds) is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


AUTO = "auto"
# 'auto' below this many cores decodes in the training process: a worker process costs its
# start-up and a copy of every batch, and a small host's cores are the training process's own.
AUTO_MIN_CORES = 8
# Cores left to the training process (its loop, the device feed, the accelerator runtime).
AUTO_RESERVED_CORES = 2
# At most this many workers: each holds `data.prefetch` batches in shared memory (a 64-clip
# batch of 16 x 224 px frames is 154 MB).
AUTO_MAX_WORKERS = 32


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: what SLURM or a container gives)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(num_threads: int, cores: int | None = None) -> int:
    """`data.num_workers='auto'`: 0 (decode in this process) on fewer than AUTO_MIN_CORES cores,
    else a worker per `num_threads` cores beyond AUTO_RESERVED_CORES, at most AUTO_MAX_WORKERS
    (each worker runs `num_threads` decoding threads)."""
    cores = available_cores() if cores is None else cores
    if cores < AUTO_MIN_CORES:
        return 0
    return min(AUTO_MAX_WORKERS, max(1, (cores - AUTO_RESERVED_CORES) // max(1, num_threads)))


def num_workers(value, num_threads: int, cores: int | None = None) -> int:
    """`data.num_workers` as a count: a whole number >= 0 as it is, 'auto' by `auto_workers`."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return auto_workers(num_threads, cores)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"num_workers must be 'auto' or a whole number >= 0, got {value!r}")
    try:
        count = int(value)
    except ValueError:
        raise ValueError(
            f"num_workers must be 'auto' or a whole number >= 0, got {value!r}"
        ) from None
    if count < 0:
        raise ValueError(f"num_workers must be 'auto' or a whole number >= 0, got {value!r}")
    return count
