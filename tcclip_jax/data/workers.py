"""Data worker processes (grain's, the tfds packer's) and Ctrl-C.

A Ctrl-C at a terminal goes to the whole process group: to the workers as well as to the command.
Workers ignore it, and the command stops them once it has saved what it must, so no traceback
comes from each worker's KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
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
