"""A jax.profiler trace of a few training steps (`config.profile_steps`), into WORKDIR/profile.

The trace starts at the second step the run takes (the first one compiles) and stops after
`num_steps` steps, once their work has finished on the devices. View it with
`tensorboard --logdir WORKDIR/profile` (the profile tab) or open the `*.trace.json.gz` it
writes beside it in https://ui.perfetto.dev. With the work directory on object storage the trace
is written to a local folder first and copied there when it stops.
"""

from __future__ import annotations

import tempfile
from typing import Any

import jax
from absl import logging

from tcclip_jax.runtime import storage

PROFILE_DIR = "profile"


class StepProfiler:
    """Call `step_started(step)` before and `step_done(step, outputs)` after each step."""

    def __init__(self, workdir: str, num_steps: int, start_step: int):
        self.directory = storage.join(workdir, PROFILE_DIR)
        self._staging: tempfile.TemporaryDirectory | None = None
        self.first = start_step + 2
        self.last = start_step + 1 + num_steps
        self.num_steps = num_steps
        self.active = False
        self.done = start_step

    def step_started(self, step: int) -> None:
        if self.num_steps > 0 and step == self.first:
            target = self.directory
            if storage.is_remote(target):
                self._staging = tempfile.TemporaryDirectory(prefix="tcclip-profile-")
                target = self._staging.name
            jax.profiler.start_trace(target, create_perfetto_trace=True)
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
            if self._staging is not None:
                storage.upload_tree(self._staging.name, self.directory)
                self._staging.cleanup()
                self._staging = None
            logging.info("Profiled steps %d-%d into %s", self.first, self.done, self.directory)
