"""Fixtures shared by the test files."""

import os
import sys

from xla_env import FAST_COMPILE, xla_flags

# Before JAX starts its CPU backend: see tests/helpers/xla_env.py.
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax.numpy as jnp  # noqa: E402
import numpy as np
import pytest
from model_helpers import CLASSNAMES, random_params

from tcclip_jax.data import synthetic
from tcclip_jax.models import ModelConfig
from tcclip_jax.models.tokenizer import tokenize_prompts


def pytest_addoption(parser):
    parser.addoption(
        "--runslow", action="store_true", help="also run tests marked slow (minutes on 2 cores)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    """A TC-CLIP small enough to compile and run in seconds on a CPU.

    32px frames of 4x4 patches of 8px: N = 17 tokens, n_s = int(16 * 0.3) = 4 seeds per frame,
    4 frames x 4 seeds merged into k = 4 context tokens (two matching steps: 16 -> 8 -> 4).
    Derive variants with `tiny_config.replace(model="vifi_clip", ...)`.
    """
    return ModelConfig(
        vision_layers=2,
        text_layers=2,
        num_frames=4,
        vision_width=64,
        vision_heads=2,
        text_width=32,
        text_heads=2,
        embed_dim=32,
        image_resolution=32,
        vision_patch_size=8,
        context_tokens=4,
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A tiny synthetic dataset, a subprocess environment with a shared compilation cache and the
    command training the `configs/demo.py:ci` model on that dataset (append `--workdir` and
    overrides), for the tests that run `python -m tcclip_jax.train` (one per test module)."""
    root = tmp_path_factory.mktemp("data")
    synthetic.generate(
        str(root), videos_per_class=4, val_per_class=2, num_frames=8, size=(32, 32), seed=0
    )
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env["XLA_FLAGS"] = xla_flags()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [
        sys.executable, "-m", "tcclip_jax.train",
        "--config", os.path.join(repo, "configs", "demo.py") + ":ci",
        f"--config.data.root={root}", "--config.progress_bar=False",
    ]  # fmt: skip
    return {"root": str(root), "env": env, "command": command}


@pytest.fixture(scope="module")
def tiny(tiny_config):
    """(config, params, clips [3, T, 32, 32, 3], tokens [3, 30], labels)."""
    cfg = tiny_config
    res = cfg.image_resolution
    clips = np.random.default_rng(0).standard_normal((3, cfg.num_frames, res, res, 3))
    clips = jnp.asarray(clips, jnp.float32)
    tokens = jnp.asarray(tokenize_prompts(CLASSNAMES, context_length=cfg.context_length))
    return cfg, random_params(cfg, 0), clips, tokens, jnp.array([0, 2, 1])


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A GCS-compatible server on a free loopback port (`tests/helpers/gcs_emulator.py`: the PyPI
    `gcp-storage-emulator`), with its bucket: {"url", "bucket", "env"} (`env`: this process's
    environment pointing Google's clients and tensorstore at it). Skips where the emulator or
    gcsfs is not installed."""
    import importlib.util
    import socket
    import subprocess
    import time
    import urllib.request

    from gcs_emulator import INSTALL

    for module in ("gcp_storage_emulator", "gcsfs"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}: {INSTALL}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bucket, url = "tcclip-tests", f"http://127.0.0.1:{port}"
    folder = tmp_path_factory.mktemp("gcs")
    log = open(folder / "server.log", "w")  # noqa: SIM115 - open while the server runs
    server = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "helpers", "gcs_emulator.py"),
         "--port", str(port), "--data-dir", str(folder / "data"), "--bucket", bucket],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                with open(log.name) as f:
                    pytest.fail(f"the GCS emulator did not start: {f.read()[-3000:]}")
            time.sleep(0.2)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {"url": url, "bucket": bucket, "env": env}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()
