"""A jax.profiler trace of a few training steps (`config.profile_steps`), into WORKDIR/profile.

The trace starts at the second step the run takes (the first one compiles) and stops after
`num_steps` steps, once their work has finished on the devices. View it with
`tensorboard --logdir WORKDIR/profile` (the profile tab) or open the `*.trace.json.gz` it
writes beside it in https://ui.perfetto.dev.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from absl import logging

PROFILE_DIR = "profile"


class StepProfiler:
    """Call `step_started(step)` before and `step_done(step, outputs)` after each step."""

    def __init__(self, workdir: str, num_steps: int, start_step: int):
        self.directory = os.path.join(workdir, PROFILE_DIR)
        self.first = start_step + 2
        self.last = start_step + 1 + num_steps
        self.num_steps = num_steps
        self.active = False
        self.done = start_step

    def step_started(self, step: int) -> None:
        if self.num_steps > 0 and step == self.first:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.active = True

    def step_done(self, step: int, outputs: Any) -> None:
        if self.active:
            self.done = step
            if step == self.last:
                jax.block_until_ready(outputs)
                self.stop()

    def stop(self) -> None:
        """End the trace (if one is running): at its last step, or when the run ends sooner."""
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            logging.info("Profiled steps %d-%d into %s", self.first, self.done, self.directory)
