"""Keep XLA:CPU's large temporary buffers mapped between calls (glibc malloc settings).

XLA:CPU allocates each call's temporaries (gigabytes for a ViT-B/16 training step) with `malloc`
from its own worker threads. glibc serves such sizes with a fresh `mmap` and unmaps them on
`free`, so the kernel zeroes every page again on the next call, and page faults take a large
share of the CPU time of training (docs/performance.md). `configure()` makes glibc keep that
memory in the process:

* `M_ARENA_MAX = 1`: every thread allocates from the main arena (a thread's own arena can only
  grow in 64 MiB heaps and falls back to `mmap` for anything larger);
* `M_MMAP_MAX = 0`: large blocks come from the heap, not from `mmap`;
* `M_TRIM_THRESHOLD = -1`: freed memory at the top of the heap is never returned to the kernel.

The cost: the process keeps its peak heap (the next step needs it again anyway), and all threads
share one arena's lock: the data-loading threads and XLA's workers queue on it. That pays only
when a call's temporaries are large. Below glibc's largest mmap threshold (32 MiB, to which it
adapts by itself) freed blocks stay in the heap anyway, and a small model trained for many short
steps (`configs/demo.py`) only pays for the lock: its threads switch more often and the run is
slower (docs/performance.md). So the training command applies the settings only to steps of at least
`LARGE_STEP_PIXELS` input pixels (`worthwhile`); evaluation, prediction and the benchmark
(ViT-B-sized models) apply them by default.

These are the effects of `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...` in the
environment, applied with `mallopt` at run time: that works while the process has a single
malloc arena, i.e. before JAX starts its backend (whose threads get arenas of their own). The
command-line entry points call `configure()` before anything touches JAX; library users may call
it too, or set the environment variables. `TCCLIP_MALLOC=0` turns it off, `=1` applies it even to
small steps and when an accelerator plugin is installed (by default it applies only when JAX will
run on the CPU). It does nothing (and says why) on other C libraries or when called too late.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import pkgutil

ENV_SWITCH = "TCCLIP_MALLOC"

# glibc <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# The environment variables with the same effect (read by glibc at process start).
ENV_EQUIVALENT = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**62),
}

# Input pixels per step (clips x frames x height x width) from which the training
# step's temporaries outgrow glibc's own reuse: a ViT-B/16 step of 2 clips of 16 x 224^2 frames
# (1.6 M pixels) has gigabytes of them; the demo's step has 32 clips of 8 x 16^2 (65 k pixels).
LARGE_STEP_PIXELS = 2**18

_applied = False
_status = "not configured (allocator.configure() was not called)"


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt, libc.malloc_info  # noqa: B018  (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


def malloc_arenas(libc: ctypes.CDLL) -> int:
    """How many malloc arenas the process has (glibc's `malloc_info` report, one `<heap>` each)."""
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    stream = ctypes.c_void_p(libc.open_memstream(ctypes.byref(buf), ctypes.byref(size)))
    if not stream.value:
        return -1
    try:
        libc.malloc_info(0, stream)
    finally:
        libc.fclose(stream)
    report = ctypes.string_at(buf, size.value)
    libc.free(buf)
    return report.count(b"<heap nr=")


def _accelerator_expected() -> bool:
    """True when JAX will probably not run on the CPU, judged without starting its backend."""
    platforms = os.environ.get("JAX_PLATFORMS", os.environ.get("JAX_PLATFORM_NAME", ""))
    if platforms.strip():
        return platforms.split(",")[0].strip().lower() != "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return True
    try:
        import jax_plugins  # namespace package of the GPU / TPU PJRT plugins.
    except ImportError:
        return False
    return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def status() -> str:
    """What the last `configure()` call did, in words."""
    return _status


def worthwhile(config) -> bool:
    """Whether a training config's steps gain from the settings: at least `LARGE_STEP_PIXELS`
    input pixels per micro-batch (`batch_size / grad_accum_steps` clips of `data.num_frames`
    frames of `data.image_size`^2; counted over all processes, an upper bound per process)."""
    clips = config.batch_size // max(1, config.grad_accum_steps)
    return clips * config.data.num_frames * config.data.image_size**2 >= LARGE_STEP_PIXELS


def configure(enable: bool | None = None, *, large_temporaries: bool = True) -> str:
    """Apply the malloc settings above to this process; returns what was done, in words.

    enable: None reads `TCCLIP_MALLOC` (unset: apply when JAX will run on the CPU and the calls
    have `large_temporaries`); True / False force it on / off. Call it before JAX starts its
    backend (before the first `jax.devices()`, `jax.jit` call or array): afterwards it changes
    nothing and says so.
    """
    global _status
    _status = _configure(enable, large_temporaries)
    return _status


def _configure(enable: bool | None, large_temporaries: bool) -> str:
    global _applied
    if _applied:
        return "already applied"
    if enable is None:
        switch = os.environ.get(ENV_SWITCH, "").strip().lower()
        if switch in ("0", "off", "false", "no"):
            return f"off ({ENV_SWITCH}={os.environ[ENV_SWITCH]})"
        if switch not in ("", "1", "on", "true", "yes"):
            return f"off ({ENV_SWITCH}={os.environ[ENV_SWITCH]!r} is not 0 or 1)"
        enable = True if switch else None
    if enable is False:
        return "off"
    if enable is None and not large_temporaries:
        return f"off (small steps gain nothing from it; {ENV_SWITCH}=1 applies it anyway)"
    if enable is None and _accelerator_expected():
        return f"off (JAX will use an accelerator; {ENV_SWITCH}=1 applies it anyway)"
    libc = _glibc()
    if libc is None:
        return "off (not glibc)"
    arenas = malloc_arenas(libc)
    if arenas != 1:
        return (
            f"off: called too late ({arenas} malloc arenas exist; call it before JAX starts, "
            f"or set {' '.join(f'{k}={v}' for k, v in ENV_EQUIVALENT.items())})"
        )
    ok = [
        libc.mallopt(M_ARENA_MAX, 1),
        libc.mallopt(M_MMAP_MAX, 0),
        libc.mallopt(M_TRIM_THRESHOLD, -1),  # -1: never trim (mallopt(3)).
    ]
    if not all(ok):
        return "off (mallopt refused a setting)"
    _applied = True
    return "on (one malloc arena, no mmap, no trimming)"


def release_free_memory() -> bool:
    """Return the heap's free memory to the kernel (glibc `malloc_trim(0)`); True if some was.

    For a process about to sit idle while another needs the memory (the benchmark's same-run
    comparison): the next call maps and faults its temporaries in again.
    """
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
