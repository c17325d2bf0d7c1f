"""Benchmarking: `python -m tcclip_jax.bench` (throughput and memory on this backend, optionally
against the published PyTorch code) and `python -m tcclip_jax.aot` (the train step compiled
ahead of time for a TPU topology, without a device).

Modules: `timing` (statistics of repeated calls), `chips` (datasheet peaks, HBM, bandwidth),
`cpu` (a CPU's peak from /proc/cpuinfo), `steps` (the measured programs), `published` (the
published code in a child process), `aot` (the ahead-of-time check).
"""
