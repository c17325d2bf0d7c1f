"""Training batches placed on the devices ahead of the step, and how long the step waited.

`DeviceFeed(iterator, place, depth=2)` wraps the training pipeline's iterator (grain, itself
decoding ahead in worker processes or threads). A thread takes each host batch, shapes and
places it on the devices with `place` (the trainer's global step batch: an asynchronous
host-to-device copy of this process's rows) and keeps up to `depth` placed batches ready, so
copying the next batch overlaps the running step and the step never waits for a copy. The
checkpointed position (`get_state`) is that of the last batch handed out, not of those read
ahead, so a resumed run continues with exactly the batch the interrupted one would have taken
next. Errors of the pipeline (too many unreadable videos) reach the step that would have read
the failing batch.

`next()` counts whether a batch was ready: `take_waits()` gives, since its last call, how many
steps asked, how many found none ready and waited, and for how long (the first batch after a
start, which waits for the pipeline to start, is not counted). With the training loop keeping at
most two steps in flight, a step that finds no batch ready means the devices are about to idle
for want of data: the loop logs the share as "input-bound: 42% of the last 100 steps waited for
data".
"""

from __future__ import annotations

import copy
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import grain

_POLL_S = 0.1  # how often a blocked thread looks at the stop flag


@dataclasses.dataclass(frozen=True)
class Waits:
    """Steps that asked for a batch, those that found none ready, and the seconds they waited."""

    steps: int = 0
    waited: int = 0
    seconds: float = 0.0

    @property
    def share(self) -> float:
        return self.waited / self.steps if self.steps else 0.0

    def line(self, interval_seconds: float | None = None) -> str:
        """'input-bound: 42% of the last 100 steps waited for data (12.0 s of 30.0 s)'."""
        text = (
            f"input-bound: {100 * self.share:.0f}% of the last {self.steps} steps waited for data"
        )
        if interval_seconds:
            text += f" ({self.seconds:.1f} s of {interval_seconds:.1f} s)"
        return text


class DeviceFeed(grain.DatasetIterator):
    """`place(batch)` of every batch of `iterator`, up to `depth` of them placed ahead by a
    thread; checkpoints hold the position of the last batch returned. Close it when done."""

    def __init__(
        self, iterator: grain.DatasetIterator, place: Callable[[Any], Any], depth: int = 2
    ):
        super().__init__(iterator)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._place = place
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: Any = None  # the position after the last batch returned (None: not started)
        self._failed: BaseException | None = None
        self._first = True
        self._waits = Waits()

    # --- producer ---------------------------------------------------------------------------

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = next(self._parent)
                state = copy.deepcopy(self._parent.get_state())
                if not self._put((self._place(batch), state, None)):
                    return
        except BaseException as e:  # StopIteration and the pipeline's errors, handed on
            if not self._stop.is_set():
                self._put((None, None, e))

    def _start(self) -> None:
        if self._thread is None:
            self._state = copy.deepcopy(self._parent.get_state())
            self._thread = threading.Thread(target=self._produce, name="device-feed", daemon=True)
            self._thread.start()

    # --- consumer ---------------------------------------------------------------------------

    def __next__(self) -> Any:
        self._assert_not_closed()
        if self._failed is not None:
            raise self._failed
        self._start()
        started = time.perf_counter()
        try:
            item, waited = self._queue.get_nowait(), False
        except queue.Empty:
            waited = True
            while True:
                try:
                    item = self._queue.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        raise RuntimeError(
                            "the device feed's thread ended without a batch"
                        ) from None
        if self._first:
            self._first = False  # the pipeline starting up, not its rate
        else:
            self._waits = Waits(
                self._waits.steps + 1,
                self._waits.waited + waited,
                self._waits.seconds + (time.perf_counter() - started if waited else 0.0),
            )
        placed, state, error = item
        if error is not None:
            self._failed = error
            raise error
        self._state = state
        return placed

    def take_waits(self) -> Waits:
        """The waits since the last call (or the start)."""
        waits, self._waits = self._waits, Waits()
        return waits

    # --- state and lifetime ------------------------------------------------------------------

    def get_state(self) -> Any:
        if self._state is None:
            return self._parent.get_state()
        return copy.deepcopy(self._state)

    def set_state(self, state: Any) -> None:
        if self._thread is not None:
            raise RuntimeError("the device feed's position can only be set before its first batch")
        self._parent.set_state(state)

    def close(self) -> None:
        """Stop the thread (after the batch it is placing) and close the pipeline."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            while True:  # let a thread blocked on a full queue see the stop flag
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=30)
        super().close()
