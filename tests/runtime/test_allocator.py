"""The CLIs' malloc settings (tcclip_jax.runtime.allocator): XLA:CPU's temporaries stop
page-faulting on every call when they are applied before JAX starts, and nothing changes
otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from tcclip_jax.runtime import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Configures (or not) first thing, as the CLIs do, then counts the minor page faults of calls of
# a program with ~80 MiB of temporaries: the fewest of calls 3-8. (The heap grows over the first
# calls, sometimes later too: a call's temporaries can be allocated before the previous call's
# are freed, on another thread. Once it holds enough, calls fault no more.)
PROBE = r"""
import json, resource, sys
from tcclip_jax.runtime import allocator
status = allocator.configure()
if sys.argv[1:] == ["status"]:
    print(json.dumps({"status": status}))
    sys.exit()
import jax, jax.numpy as jnp

def f(x):
    y = jnp.sin(x @ x)
    z = jnp.cumsum(y, axis=0) @ jnp.cumsum(y, axis=1)
    return (z @ y)[:4]

x = jnp.ones((2048, 2048), jnp.float32) * 1e-3
g = jax.jit(f).lower(x).compile()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    g(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = min(faults[2:])
temp = g.memory_analysis().temp_size_in_bytes
print(json.dumps({"status": status, "faults": faults, "temp_pages": temp // 4096}))
"""


def probe(*args: str, **env: str) -> dict:
    environ = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **env}
    for name in allocator.ENV_EQUIVALENT:
        environ.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_settings_remove_the_page_faults_of_xla_temporaries():
    on, off = probe(), probe(TCCLIP_MALLOC="0")
    assert on["status"].startswith("on") and off["status"].startswith("off")
    assert off["temp_pages"] > 10_000  # the probe really has large temporaries
    assert off["faults"] > off["temp_pages"] // 2  # without: every call maps them afresh
    assert on["faults"] < off["temp_pages"] // 20  # with: they stay mapped


def test_off_switches():
    assert probe("status", TCCLIP_MALLOC="0")["status"] == "off (TCCLIP_MALLOC=0)"
    assert probe("status", TCCLIP_MALLOC="maybe")["status"].startswith("off (TCCLIP_MALLOC='")
    assert probe("status", TCCLIP_MALLOC="1")["status"].startswith("on")
    accelerator = probe("status", JAX_PLATFORMS="cuda,cpu", TCCLIP_MALLOC="")
    assert accelerator["status"].startswith("off (JAX will use an accelerator")


def test_does_nothing_once_jax_runs(monkeypatch):
    jax.numpy.ones(3).block_until_ready()  # the backend's threads have arenas of their own.
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    monkeypatch.setattr(allocator, "_applied", False)
    status = allocator.configure(enable=True)
    if sys.platform.startswith("linux"):
        assert status.startswith("off: called too late")
    assert allocator.status() == status
    assert not allocator._applied


def test_small_steps_keep_the_default_allocator(monkeypatch):
    """The demo's many small steps only pay the one arena's lock; a ViT-B/16 step gains."""
    from tests.config.test_config import get_config

    assert not allocator.worthwhile(get_config("demo"))
    assert not allocator.worthwhile(get_config("demo", "ci"))
    assert allocator.worthwhile(get_config("fewshot", "hmdb51,2"))
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    monkeypatch.setattr(allocator, "_applied", False)
    status = allocator.configure(large_temporaries=False)
    assert status == "off (small steps gain nothing from it; TCCLIP_MALLOC=1 applies it anyway)"
    assert not allocator._applied


def test_training_command_decides_from_its_config(shared, tmp_path):
    """`train` says what it did (at --verbosity=1), before JAX starts: off for the demo, on when
    forced."""
    for env, want in (({}, "off (small steps"), ({"TCCLIP_MALLOC": "1"}, "on (one malloc arena")):
        res = subprocess.run(
            [*shared["command"], f"--workdir={tmp_path / 'run'}", "--dry_run", "--verbosity=1"],
            env={**shared["env"], **env}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"malloc settings: {want}" in res.stderr
