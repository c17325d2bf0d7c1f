"""Accelerator chips' datasheet figures: peak FLOP/s, HBM capacity and bandwidth, per chip.

Dense (no sparsity) peaks. TPUs: Google's published bf16 peak; JAX's default matmul precision
runs a float32 matmul as one bf16 pass on the MXU, so the float32 entry is the same figure (at
`Precision.HIGHEST`, the model's float32 default, a float32 matmul takes several passes: see
`models.config.ModelConfig.matmul_precision`). GPUs: NVIDIA's datasheets (SXM parts), bf16
tensor cores and plain fp32 (no TF32).
"""

from __future__ import annotations

import dataclasses

import jax

from tcclip_jax.bench.cpu import cpu_peak_flops


@dataclasses.dataclass(frozen=True)
class Chip:
    bfloat16_flops: float  # FLOP/s.
    float32_flops: float
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s.

    def peak(self, dtype: str) -> float:
        return self.bfloat16_flops if dtype == "bfloat16" else self.float32_flops


GiB = 2**30
# By device-kind substring, first match wins (so "TPU v5 lite" before "TPU v5").
CHIPS = {
    "TPU v4": Chip(275e12, 275e12, 32 * GiB, 1228e9),
    "TPU v5 lite": Chip(197e12, 197e12, 16 * GiB, 819e9),  # v5e.
    "TPU v5e": Chip(197e12, 197e12, 16 * GiB, 819e9),
    "TPU v5p": Chip(459e12, 459e12, 95 * GiB, 2765e9),
    "TPU v5": Chip(459e12, 459e12, 95 * GiB, 2765e9),  # v5p reports itself as "TPU v5".
    "TPU v6 lite": Chip(918e12, 918e12, 32 * GiB, 1640e9),  # v6e.
    "TPU v6e": Chip(918e12, 918e12, 32 * GiB, 1640e9),
    "A100": Chip(312e12, 19.5e12, 80e9, 2039e9),
    "H100": Chip(989e12, 67e12, 80e9, 3350e9),
    "H200": Chip(989e12, 67e12, 141e9, 4800e9),
    "B200": Chip(2250e12, 75e12, 180e9, 7700e9),  # HGX B200, per GPU.
}


def chip(device_kind: str) -> tuple[str, Chip] | None:
    """(table name, figures) of the chip whose name `device_kind` contains, or None."""
    for kind, figures in CHIPS.items():
        if kind.lower() in device_kind.lower():
            return kind, figures
    return None


def peak_flops(device: jax.Device, dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where it comes from) for the whole backend, or (None, reason)."""
    n = jax.device_count()
    if device.platform == "cpu":
        return cpu_peak_flops()
    found = chip(device.device_kind)
    if found is None:
        return None, f"no peak known for {device.device_kind!r}"
    kind, figures = found
    return n * figures.peak(dtype), f"{n} x {kind} {dtype} datasheet peak"
