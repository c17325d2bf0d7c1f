"""`config.profile_steps`: a jax.profiler trace of the chosen steps, in WORKDIR/profile."""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp

from tcclip_jax.train.profile import StepProfiler


def test_traces_the_steps_after_the_compiling_one(tmp_path):
    step_fn = jax.jit(lambda x: x @ x.T + 1.0)
    x = jnp.ones((8, 8))
    profiler = StepProfiler(str(tmp_path), num_steps=2, start_step=10)  # resumed at step 10
    tracing = []
    for step in range(11, 15):
        profiler.step_started(step)
        x = step_fn(x) / 100.0
        profiler.step_done(step, x)
        tracing.append(profiler.active)
    profiler.stop()
    assert tracing == [False, True, False, False]  # steps 12 and 13; 11 compiled
    root = os.path.join(tmp_path, "profile", "plugins", "profile")
    assert glob.glob(os.path.join(root, "*", "*.xplane.pb"))  # TensorBoard's profile tab
    assert glob.glob(os.path.join(root, "*", "*.trace.json.gz"))  # Perfetto


def test_off_by_default_and_stopped_if_the_run_ends_first(tmp_path):
    off = StepProfiler(str(tmp_path / "off"), num_steps=0, start_step=0)
    for step in (1, 2, 3):
        off.step_started(step)
        assert not off.active
    short = StepProfiler(str(tmp_path / "short"), num_steps=50, start_step=0)
    short.step_started(2)
    assert short.active
    short.step_done(2, jnp.ones(2))
    short.stop()  # the loop's cleanup: the run had fewer steps than asked for
    assert not short.active and os.path.isdir(tmp_path / "short" / "profile")
