"""The platform a program is being traced for: the default backend's, unless the tracing names
another (`traced_for`: an ahead-of-time compile for TPU is traced on a CPU host).

Ops whose best form depends on the backend read it at trace time: dense layers fold into 2-D
products only for a CPU (`ops.dense`), attention takes cuDNN's fused kernel only on a GPU
(`ops.attention`). jit caches traces: use `traced_for` around the first trace of a function.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("platform", default=None)


@contextlib.contextmanager
def traced_for(platform: str) -> Iterator[None]:
    """Trace for `platform` ('cpu', 'tpu', 'gpu', ...) within the block."""
    token = _PLATFORM.set(platform)
    try:
        yield
    finally:
        _PLATFORM.reset(token)


def current() -> str:
    """The platform traced for now ('gpu' for CUDA and ROCm alike)."""
    name = _PLATFORM.get() or jax.default_backend()
    return "gpu" if name in ("cuda", "rocm") else name
