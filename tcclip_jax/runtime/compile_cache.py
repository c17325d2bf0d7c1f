"""JAX's persistent compilation cache for the command lines, and what compiling cost a run.

A restarted run (a resume, a preemption, `--resume_changed`) compiles the same programs again:
minutes for a full-size step on a TPU. `configure` points JAX's persistent cache
(`jax_compilation_cache_dir`) at a directory, so that a second start loads the compiled
programs instead. `train` and `evaluate` turn it on by default in `WORKDIR/compile_cache`: it
lives where the work directory lives (on object storage for a pod, so it survives the loss of a
preempted VM's disk, and every host reads the same entries). `--compile_cache DIR` chooses
another directory (one shared by several runs of the same config saves their compiles too),
`--compile_cache=` turns it off, and a cache directory set through JAX's own setting
(`JAX_COMPILATION_CACHE_DIR`) is left as it is.

JAX's other settings stay as they are: only programs whose compile took at least
`jax_persistent_cache_min_compile_time_secs` (1 s) are written, so small helper programs do not
fill the directory; the cache works on CPU, GPU and TPU in the installed JAX (0.10). Entries are
keyed by the program, JAX / XLA versions and the devices, so another topology or version
compiles afresh. The cache is trusted code: keep it where only you can write.

`CompileLog` adds up what XLA compiled and what the cache answered, for the summary line
(`summary()`) training logs after its first logged step and at its end, and evaluation at its
end.
"""

from __future__ import annotations

import os
import threading

import jax
from jax import monitoring

DIR_NAME = "compile_cache"
FLAG_HELP = (
    "JAX persistent compilation cache directory (default: WORKDIR/compile_cache, or "
    "JAX_COMPILATION_CACHE_DIR where set); a restart loads the compiled steps from it instead "
    "of compiling them again. --compile_cache= turns it off."
)
# JAX's monitoring events (jax/_src/dispatch.py, compiler.py).
_COMPILE = "/jax/core/compile/backend_compile_duration"
_TRACE = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)
_HIT = "/jax/compilation_cache/cache_hits"
_MISS = "/jax/compilation_cache/cache_misses"


def choose(flag: str | None, workdir: str | None) -> str | None:
    """The cache directory a command uses: the flag's (''/'none': off), else JAX's own setting
    (e.g. JAX_COMPILATION_CACHE_DIR), else `workdir/compile_cache`; None for no cache."""
    if flag is not None:
        return None if flag.strip().lower() in ("", "none") else flag
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    return os.path.join(workdir, DIR_NAME) if workdir else None


def configure(directory: str | None) -> str | None:
    """Point JAX's persistent compilation cache at `directory` (None: leave it off); start
    counting compiles. Call before the first compile. Returns `directory`."""
    if directory:
        jax.config.update("jax_compilation_cache_dir", directory)
    LOG.start(directory)
    return directory


class CompileLog:
    """Sums of JAX's compile events in this process: backend compiles and their seconds (a
    program loaded from the persistent cache counts as one, its load time as its compile time),
    how many the cache answered (hits) and how many were written to it (JAX counts a write as
    its miss; a program under the minimum compile time is neither), and the tracing / lowering
    the cache cannot save."""

    def __init__(self):
        self._lock = threading.Lock()
        self._started = False
        self.directory: str | None = None
        self.reset()

    def reset(self) -> None:
        self.compiles = 0
        self.compile_seconds = 0.0
        self.trace_seconds = 0.0
        self.hits = 0
        self.misses = 0

    def start(self, directory: str | None) -> None:
        self.directory = directory
        with self._lock:
            if self._started:
                return
            monitoring.register_event_duration_secs_listener(self._duration)
            monitoring.register_event_listener(self._event)
            self._started = True

    def _duration(self, event: str, duration: float, **_) -> None:
        with self._lock:
            if event == _COMPILE:
                self.compiles += 1
                self.compile_seconds += duration
            elif event in _TRACE:
                self.trace_seconds += duration

    def _event(self, event: str, **_) -> None:
        with self._lock:
            if event == _HIT:
                self.hits += 1
            elif event == _MISS:
                self.misses += 1

    def summary(self) -> str:
        """'compiling: 12 programs, 28.0 s of XLA compile; persistent cache DIR: 3 loaded, 0
        written (programs that compile in under 1 s are not kept); 3.2 s tracing and
        lowering'."""
        text = f"compiling: {self.compiles} programs, {self.compile_seconds:.1f} s of XLA compile"
        if self.directory:
            least = jax.config.jax_persistent_cache_min_compile_time_secs
            text += (
                f"; persistent cache {self.directory}: {self.hits} loaded, {self.misses} written"
            )
            if least > 0:
                text += f" (programs that compile in under {least:g} s are not kept)"
        else:
            text += "; no persistent compilation cache"
        return text + f"; {self.trace_seconds:.1f} s tracing and lowering"


LOG = CompileLog()
