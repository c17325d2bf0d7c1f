"""The persistent compilation cache of the command lines (`runtime.compile_cache`): which
directory a command uses, and a second start loading what the first compiled (real processes,
JAX's own cache on disk)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import pytest

from tcclip_jax.runtime import compile_cache

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def jax_cache_setting():
    """JAX's own cache setting, restored after the test."""
    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_which_directory(jax_cache_setting):
    jax.config.update("jax_compilation_cache_dir", None)
    assert compile_cache.choose(None, "gs://bucket/run") == "gs://bucket/run/compile_cache"
    assert compile_cache.choose(None, "runs/demo") == os.path.join("runs/demo", "compile_cache")
    assert compile_cache.choose("/shared/cache", "runs/demo") == "/shared/cache"
    assert compile_cache.choose("", "runs/demo") is None  # --compile_cache= : off
    assert compile_cache.choose("none", "runs/demo") is None
    assert compile_cache.choose(None, None) is None
    # JAX's own setting (JAX_COMPILATION_CACHE_DIR) wins over the work directory, not the flag.
    jax.config.update("jax_compilation_cache_dir", "/from/jax")
    assert compile_cache.choose(None, "runs/demo") == "/from/jax"
    assert compile_cache.choose("/flag", "runs/demo") == "/flag"


# A program that takes XLA:CPU a noticeable time to compile (a long chain of distinct ops).
_START = """
import sys
import jax
import jax.numpy as jnp
from tcclip_jax.runtime import compile_cache

compile_cache.configure(sys.argv[1])

def f(x):
    for i in range(40):
        x = jnp.sin(x @ x.T + i) * jnp.cos(x[::-1] - i)
    return x

jax.jit(f)(jnp.ones((32, 32))).block_until_ready()
print(compile_cache.LOG.summary())
"""


def _start(directory) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    # Every program is kept whatever its compile time (JAX's default keeps those over 1 s).
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    out = subprocess.run(
        [sys.executable, "-c", _START, str(directory)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return out.strip().splitlines()[-1]


def _figures(summary: str) -> tuple[float, int, int]:
    m = re.search(r"programs, ([\d.]+) s of XLA compile; .*: (\d+) loaded, (\d+) written", summary)
    assert m, summary
    return float(m.group(1)), int(m.group(2)), int(m.group(3))


def test_a_second_start_loads_what_the_first_compiled(tmp_path):
    first = _start(tmp_path / "cache")
    seconds_first, loaded, kept = _figures(first)
    assert loaded == 0 and kept >= 1 and len(os.listdir(tmp_path / "cache")) == kept
    second = _start(tmp_path / "cache")
    seconds_second, loaded, written = _figures(second)
    assert (loaded, written) == (kept, 0), second
    assert seconds_second < seconds_first / 2, (first, second)
