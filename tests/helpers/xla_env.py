"""XLA flags for the test processes and the processes they start.

Tests compile hundreds of small programs and run each a few times, so LLVM's optimisation of
the CPU code costs more than it saves (about a third of the suite's CPU time). XLA's own passes
are unchanged; results move by rounding only (float32 ~1e-6 relative, float64 ~1e-15), which
every tolerance allows. A user's runs keep XLA's default level.
"""

from __future__ import annotations

import os
import subprocess
import sys

FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int | None = None) -> str:
    """This process's XLA_FLAGS with the test flag, and `devices` simulated CPU devices in place
    of any inherited count (none: the inherited count, if any, dropped)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if FAST_COMPILE not in flags:
        flags.append(FAST_COMPILE)
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return " ".join(flags)


def run_on_devices(code: str, devices: int, *paths: str) -> subprocess.CompletedProcess:
    """Python `code` in a CPU process with `devices` simulated devices, importing from `paths`
    and the test helpers."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu"}
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([*paths, here, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
