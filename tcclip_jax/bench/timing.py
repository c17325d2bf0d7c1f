"""Timing statistics of repeated calls: wall time, process CPU time (user and kernel) and minor
page faults per call, and the process's memory.

On a shared machine CPU time is the steadier measure of the work done (wall ~ CPU / cores when
the cores are free), and kernel time is mostly page faults of freshly mapped memory.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import time
from collections.abc import Callable

import jax

from tcclip_jax.runtime import allocator


@dataclasses.dataclass
class Samples:
    """Per-call wall, user-CPU and kernel-CPU seconds and minor page faults of one process."""

    wall: list[float] = dataclasses.field(default_factory=list)
    user: list[float] = dataclasses.field(default_factory=list)
    system: list[float] = dataclasses.field(default_factory=list)
    faults: list[int] = dataclasses.field(default_factory=list)

    def extend(self, other: Samples) -> None:
        for name in ("wall", "user", "system", "faults"):
            getattr(self, name).extend(getattr(other, name))

    def summary(self, clips: int = 0) -> str:
        """'median s/call (best, worst of n); CPU user + kernel (kernel share); faults'."""
        wall, n = statistics.median(self.wall), len(self.wall)
        user, system = statistics.median(self.user), statistics.median(self.system)
        per_clip = f", best {min(self.wall) / clips:.3f} s/clip" if clips else ""
        return (
            f"{wall:.3f} s/call (best {min(self.wall):.3f}, worst {max(self.wall):.3f} of {n}"
            f"{per_clip}); process CPU {user + system:.2f} s/call = {user:.2f} user + "
            f"{system:.2f} kernel ({100 * system / max(user + system, 1e-9):.1f}% kernel), "
            f"{statistics.median(self.faults):.0f} minor page faults/call"
        )


def time_calls(fn: Callable[[], object], steps: int) -> Samples:
    """Wall, process CPU (user and kernel, all threads) and minor page faults of each call.

    CPU time says how much work a call was when other processes share the cores (wall time then
    overstates it): on an otherwise idle machine wall ~ CPU / cores. Kernel time is mostly the
    page faults of freshly mapped memory (see `tcclip_jax.runtime.allocator`).
    """
    samples = Samples()
    for _ in range(steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        samples.wall.append(t1 - t0)
        samples.user.append(r1.ru_utime - r0.ru_utime)
        samples.system.append(r1.ru_stime - r0.ru_stime)
        samples.faults.append(r1.ru_minflt - r0.ru_minflt)
    return samples


def timed(fn: Callable[[], object], steps: int, warmup: int) -> Samples:
    """`time_calls` of `fn()` (waited for) over `steps` calls after `warmup` calls."""
    call = lambda: jax.block_until_ready(fn())
    for _ in range(warmup):
        call()
    return time_calls(call, steps)


def max_rss_bytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: KiB.


def current_rss_bytes() -> int:
    """Resident memory now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def release_memory(timeout: float = 10.0) -> None:
    """Return the free heap to the kernel once the last call's buffers are freed (XLA frees
    them on its own threads shortly after the outputs are ready): until the RSS stops falling."""
    deadline, rss = time.monotonic() + timeout, current_rss_bytes()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        allocator.release_free_memory()
        rss, before = current_rss_bytes(), rss
        if rss >= 0.99 * before:
            return


def cpu_seconds(samples: Samples) -> float:
    """The least process CPU time (user + kernel) of any call."""
    return min(u + s for u, s in zip(samples.user, samples.system, strict=True))
