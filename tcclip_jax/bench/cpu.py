"""A CPU's peak FLOP/s, estimated from /proc/cpuinfo (Linux x86)."""

from __future__ import annotations

import os


def cpu_peak_flops() -> tuple[float | None, str]:
    """cores x clock x fp32 FMA lanes x 2 FLOPs x FMA units, from /proc/cpuinfo (Linux x86).

    An estimate: it assumes 2 vector FMA units per core (most server cores since Haswell; some
    AVX-512 parts have one) and the nominal clock. The same figure is used for bf16 (XLA's CPU
    matmuls do not use AMX tiles).
    """
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return None, "n/a (no /proc/cpuinfo)"
    flags, mhz = set(), None
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
        elif key.strip() == "cpu MHz" and mhz is None:
            mhz = float(value)
    if mhz is None or "fma" not in flags:
        return None, "n/a (clock or FMA support unknown)"
    lanes = 16 if "avx512f" in flags else 8
    cores = len(os.sched_getaffinity(0))
    peak = cores * mhz * 1e6 * lanes * 2 * 2
    return (
        peak,
        f"estimate: {cores} cores x {mhz / 1e3:.2f} GHz x {lanes} fp32 lanes x FMA x 2 units",
    )
