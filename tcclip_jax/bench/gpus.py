"""NVIDIA GPUs described for XLA's GPU compiler, so a step compiles for them on a host without
one (`python -m tcclip_jax.aot --gpu h100`).

JAX's CUDA plugin (`pip install "tcclip-jax[cuda-aot]"`, no CUDA libraries needed) compiles
against a compile-only device built from a `GpuTargetConfigProto` in text form: the device's
compute capability, SM count, clocks, shared memory, L2 and memory. The descriptions below are
written from the vendors' public datasheets; memory and bandwidth are `chips.CHIPS`' figures,
which the memory check compares against. Without a device XLA does no autotuning: it picks its
default kernels, so the compiled program's memory is what counts here, not its speed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax

from tcclip_jax.bench.chips import CHIPS
from tcclip_jax.runtime.errors import UserError

INSTALL = 'pip install "tcclip-jax[cuda-aot]" (jax-cuda13-plugin=={version})'


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str  # the device kind the driver reports.
    chip: str  # its `chips.CHIPS` entry (memory, bandwidth, peak FLOP/s).
    compute_capability: tuple[int, int]
    sms: int
    clock_ghz: float  # boost clock.
    l2_bytes: int
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int


KiB, MiB = 2**10, 2**20
GPUS = {
    "a100": Gpu("NVIDIA A100-SXM4-80GB", "A100", (8, 0), 108, 1.41, 40 * MiB, 164 * KiB, 163 * KiB),
    "h100": Gpu("NVIDIA H100 80GB HBM3", "H100", (9, 0), 132, 1.98, 50 * MiB, 228 * KiB, 227 * KiB),
    "h200": Gpu("NVIDIA H200", "H200", (9, 0), 132, 1.98, 50 * MiB, 228 * KiB, 227 * KiB),
    "b200": Gpu("NVIDIA B200", "B200", (10, 0), 148, 1.965, 126 * MiB, 228 * KiB, 227 * KiB),
}  # fmt: skip


def target_config(gpu: Gpu) -> str:
    """XLA's `GpuTargetConfigProto` text for `gpu`."""
    figures = CHIPS[gpu.chip]
    major, minor = gpu.compute_capability
    info = {
        "threads_per_block_limit": 1024,
        "threads_per_warp": 32,
        "shared_memory_per_block": 48 * KiB,
        "shared_memory_per_core": gpu.shared_memory_per_sm,
        "shared_memory_per_block_optin": gpu.shared_memory_per_block_optin,
        "threads_per_core_limit": 2048,
        "core_count": gpu.sms,
        "fpus_per_core": 128 if major >= 9 else 64,
        "block_dim_limit_x": 2**31 - 1,
        "block_dim_limit_y": 65535,
        "block_dim_limit_z": 65535,
        "memory_bandwidth": int(figures.hbm_bandwidth),
        "l2_cache_size": gpu.l2_bytes,
        "clock_rate_ghz": gpu.clock_ghz,
        "device_memory_size": int(figures.hbm_bytes),
        "registers_per_core_limit": 65536,
        "registers_per_block_limit": 65536,
    }
    lines = [f"  {key}: {value}" for key, value in info.items()]
    lines.append(f"  cuda_compute_capability {{ major: {major} minor: {minor} }}")
    lines.append(f'  name: "{gpu.name}"')
    return "\n".join(
        [
            "gpu_device_info {",
            *lines,
            "}",
            'platform_name: "CUDA"',
            "dnn_version_info { major: 9 minor: 10 }",
            f'device_description_str: "{gpu.name}"',
        ]
    )


def parse(spec: str) -> tuple[Gpu, int]:
    """`h100` or `h100:8` (GPUs on one host) -> (the GPU, how many)."""
    name, _, count = spec.lower().partition(":")
    if name not in GPUS:
        raise UserError(f"--gpu {spec}: unknown GPU {name!r}; known: {', '.join(GPUS)}")
    if count and (not count.isdigit() or not 1 <= int(count) <= 8):
        raise UserError(f"--gpu {spec}: the count after ':' must be 1 to 8 GPUs of one host")
    return GPUS[name], int(count or 1)


def gpu_devices(spec: str) -> list:
    """Compile-only devices for `spec` (see `parse`), from JAX's CUDA plugin."""
    gpu, count = parse(spec)
    # Triton's GEMM tiles are chosen by autotuning on a device; without one XLA finds none for
    # some products ("Couldn't find output tile sizes"): compile them as cuBLAS calls instead.
    flag = "--xla_gpu_enable_triton_gemm=false"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    if importlib.util.find_spec("jax_plugins.xla_cuda13") is None:
        raise UserError(f"--gpu needs JAX's CUDA plugin: {INSTALL.format(version=jax.__version__)}")
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        topology_name="", platform="cuda", target_config=target_config(gpu), topology=f"1x1x{count}"
    )
    return list(topology.devices)
