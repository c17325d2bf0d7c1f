"""Batches placed on the devices ahead of the step (`train.feed.DeviceFeed`) over real grain
pipelines: the same batches in the same order, checkpoint positions of the batches handed out
(not of those read ahead), errors at the step that reads them, and the input-bound count."""

from __future__ import annotations

import time

import grain
import jax
import numpy as np
import pytest

from tcclip_jax.data import workers
from tcclip_jax.runtime import sharding
from tcclip_jax.train.feed import DeviceFeed, Waits


def _pipeline(n: int = 40, delay_s: float = 0.0, fail_at: int | None = None):
    """Batches {'x': [2]} of 0, 1, 2, ...; each batch takes `delay_s` (made when asked for, as a
    pipeline with nothing decoding ahead); the batch holding element `fail_at` raises."""

    def make(batch):
        if delay_s:
            time.sleep(delay_s)
        if fail_at is not None and fail_at in batch:
            raise OSError(f"element {fail_at} is unreadable")
        return {"x": batch.astype(np.int32)}

    ds = grain.MapDataset.range(n).to_iter_dataset().batch(2)
    return iter(ds.map(make))


def _place(batch):
    return sharding.put_process_batch(batch, sharding.batch_sharding(sharding.create_mesh()))


def test_same_batches_in_order_placed_on_the_devices():
    feed = DeviceFeed(_pipeline(), _place)
    try:
        got = [next(feed) for _ in range(20)]
    finally:
        feed.close()
    assert all(isinstance(b["x"], jax.Array) for b in got)
    assert got[0]["x"].sharding == sharding.batch_sharding(sharding.create_mesh())
    np.testing.assert_array_equal(np.concatenate([np.asarray(b["x"]) for b in got]), np.arange(40))


def test_the_checkpointed_position_is_the_last_batch_handed_out():
    feed = DeviceFeed(_pipeline(), _place, depth=2)
    try:
        for _ in range(3):
            next(feed)
        time.sleep(0.5)  # the thread reads ahead as far as it may
        state = feed.get_state()
        ahead = feed._parent.get_state()
        assert state != ahead  # the pipeline itself is further on
    finally:
        feed.close()
    # A fresh pipeline set to the saved position continues with the 4th batch.
    resumed = DeviceFeed(_pipeline(), _place)
    resumed.set_state(state)
    try:
        assert np.asarray(next(resumed)["x"]).tolist() == [6, 7]
        assert resumed.get_state() != state
        with pytest.raises(RuntimeError, match="before its first batch"):
            resumed.set_state(state)
    finally:
        resumed.close()


def test_a_pipeline_error_reaches_the_step_that_reads_it():
    feed = DeviceFeed(_pipeline(fail_at=9), _place)
    try:
        got = [np.asarray(next(feed)["x"]).tolist() for _ in range(4)]
        assert got == [[0, 1], [2, 3], [4, 5], [6, 7]]
        with pytest.raises(OSError, match="element 9 is unreadable"):
            next(feed)
        with pytest.raises(OSError):  # and again: the feed does not skip past it
            next(feed)
    finally:
        feed.close()


def test_close_stops_the_thread_and_the_pipeline():
    feed = DeviceFeed(_pipeline(), _place)
    next(feed)
    thread = feed._thread
    feed.close()
    assert not thread.is_alive()
    with pytest.raises(ValueError):
        next(feed)


@pytest.mark.parametrize("batch_s,step_s,bound", [(0.05, 0.0, True), (0.0, 0.05, False)])
def test_steps_that_found_no_batch_ready_are_counted(batch_s, step_s, bound):
    """A pipeline slower than the step: (nearly) every step waits; faster: none does."""
    feed = DeviceFeed(_pipeline(n=40, delay_s=batch_s), _place)
    try:
        next(feed)  # the start-up is not counted
        for _ in range(12):
            next(feed)
            time.sleep(step_s)
        waits = feed.take_waits()
    finally:
        feed.close()
    assert waits.steps == 12
    if bound:
        assert waits.waited >= 10 and waits.seconds > 10 * 0.04
    else:
        assert waits.waited <= 1 and waits.seconds < 0.05
    assert feed.take_waits() == Waits()  # taken: the next interval starts from nothing


def test_the_input_bound_line():
    line = Waits(steps=100, waited=42, seconds=12.0).line(30.0)
    assert line == "input-bound: 42% of the last 100 steps waited for data (12.0 s of 30.0 s)"


@pytest.mark.parametrize(
    "cores,threads,count",
    [(2, 2, 0), (7, 1, 0), (8, 2, 3), (16, 2, 7), (8, 1, 6), (224, 2, 32), (208, 4, 32)],
)
def test_auto_workers_from_the_cores(cores, threads, count):
    assert workers.auto_workers(threads, cores) == count
    assert workers.num_workers("auto", threads, cores) == count


def test_num_workers_values():
    assert workers.num_workers(3, 2) == 3 and workers.num_workers("4", 2) == 4
    for bad in (-1, "many", True, 1.5):
        with pytest.raises(ValueError, match="'auto' or a whole number >= 0"):
            workers.num_workers(bad, 2)
