"""The train step is the same computation on 1 device, 8 devices, FSDP, accumulation, 2 processes.

Each check runs in a subprocess (this file run as a script), because the device count and the
distributed runtime are fixed when JAX starts: 8 CPU devices via XLA_FLAGS, or two processes
joined over loopback with `jax.distributed.initialize`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

BATCH, FRAMES, SIZE, CLASSES, STEPS = 16, 4, 32, 4, 2


def _env(devices: int) -> dict:
    from xla_env import xla_flags  # the test process only (this file also runs as a script)

    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(devices)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run_worker(args: list[str], devices: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: int = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _assert_same(a: dict, b: dict, what: str) -> None:
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5, err_msg=f"{what}: losses")
    for key in a["params"]:
        if key.endswith("k_proj/bias"):
            # Softmax ignores a bias shared by all keys: its exact gradient is 0, the computed
            # one rounding noise, which Adam scales up to a full step (as in PyTorch).
            continue
        np.testing.assert_allclose(
            a["params"][key], b["params"][key], rtol=1e-4, atol=1e-6, err_msg=f"{what}: {key}"
        )


def _load(path: str) -> dict:
    with np.load(path) as f:
        params = {k[len("param/") :]: f[k] for k in f.files if k.startswith("param/")}
        return {"losses": f["losses"], "params": params}


def test_sharded_and_accumulated_steps_equal_single_device(tmp_path):
    _finish(_run_worker(["devices", str(tmp_path)], devices=8))
    info = json.loads((tmp_path / "runs.json").read_text())
    results = {name: _load(tmp_path / f"{name}.npz") for name in info}
    ref = results["1dev"]
    assert np.all(np.isfinite(ref["losses"])) and ref["losses"][1] != ref["losses"][0]
    for name in ("8dev", "8dev_fsdp", "1dev_accum4"):
        _assert_same(results[name], ref, name)
    # FSDP really split parameters and Adam moments over the 8 devices.
    assert info["8dev_fsdp"]["sharded_params"] > 0 and info["8dev_fsdp"]["sharded_moments"] > 0
    assert info["8dev"]["sharded_params"] == 0


def test_two_processes_end_with_identical_parameters(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        _run_worker(["process", str(tmp_path), str(port), str(i)], devices=2) for i in range(2)
    ]
    for proc in procs:
        _finish(proc)
    p0, p1 = _load(tmp_path / "process0.npz"), _load(tmp_path / "process1.npz")
    for key in p0["params"]:
        np.testing.assert_array_equal(p0["params"][key], p1["params"][key], err_msg=key)
    np.testing.assert_array_equal(p0["losses"], p1["losses"])
    # And the 2-process, 4-device FSDP run computed what one device computes on the same batch.
    _assert_same(p0, _load(tmp_path / "reference.npz"), "2 processes vs 1 device")


@pytest.mark.slow  # ~25 s; on TPU the split is compiled in tests/bench/test_bench_aot.py
def test_tc_clip_with_its_pallas_attention_on_8_devices_equals_the_explicit_one_on_1(tmp_path):
    """The train step traces under its mesh, so TC's kernel (run by Pallas's interpreter here)
    splits the batch over 8 devices; two steps give what the explicit attention gives on one
    device."""
    _finish(_run_worker(["pallas", str(tmp_path)], devices=8))
    pallas, explicit = _load(tmp_path / "pallas.npz"), _load(tmp_path / "explicit.npz")
    assert "visual/transformer/resblocks_1/attn/local_global_bias_table" in explicit["params"]
    _assert_same(pallas, explicit, "pallas on 8 devices vs explicit on 1")
    # each attention call (2 blocks, and the last block's seed queries) inside a shard_map
    assert json.loads((tmp_path / "pallas.json").read_text())["kernel_shard_maps"] >= 3


# The worker (runs in a subprocess) ---------------------------------------------------------


def _setup(model: str = "vifi_clip", attention: str | None = None):
    import jax.numpy as jnp

    from tcclip_jax.models import ModelConfig, VideoCLIP, initialization
    from tcclip_jax.models.tokenizer import tokenize_prompts

    cfg = ModelConfig(
        model=model,
        attention=attention,
        vision_layers=1 if model == "vifi_clip" else 2,  # TC: a summarising and a reading block
        text_layers=1,
        num_frames=FRAMES,
        vision_width=32,
        vision_heads=2,
        text_width=32,
        text_heads=2,
        embed_dim=32,
        image_resolution=SIZE,
        vision_patch_size=8,
        context_length=16,
        context_tokens=4,
    )
    params = initialization.random_params(cfg, 0)
    tokens = tokenize_prompts(["run", "jump", "swim", "climb"], context_length=16)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (STEPS, BATCH, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, (STEPS, BATCH)).astype(np.int32)
    return VideoCLIP(cfg, dtype=jnp.float32), params, tokens, video, labels


def _train(devices, fsdp: bool, accum: int, rows: slice = slice(None), model: tuple = ()) -> dict:
    """STEPS steps over `devices` with this process's `rows` of every global batch; `model`:
    `_setup`'s arguments."""
    import jax
    from jax.experimental import multihost_utils

    from tcclip_jax.data.normalize import normalize_on_device
    from tcclip_jax.runtime import sharding
    from tcclip_jax.train import losses, optim
    from tcclip_jax.train import step as train_state

    model, params, tokens, video, labels = _setup(*model)
    schedule = optim.cosine_schedule(1e-3, 1e-5, 1, 10)
    tx = optim.create_optimizer(schedule, weight_decay=0.01)
    mesh = sharding.create_mesh(devices)
    abstract = train_state.abstract_state(params, tx)
    shardings = sharding.state_shardings(abstract, mesh, fsdp, min_size=0)
    state = train_state.create_train_state(params, tx, shardings)
    step = train_state.jit_train_step(
        train_state.make_train_step(
            model,
            tx,
            schedule,
            num_classes=CLASSES,
            label_smoothing=0.1,
            mix=losses.MixConfig(),
            normalize=normalize_on_device,
            param_shardings=shardings.params,
        ),
        mesh,
        shardings,
    )
    batch_sharding = sharding.batch_sharding(mesh, 1)
    history = []
    for i in range(STEPS):
        local = {
            "video": video[i].reshape(accum, -1, *video.shape[2:])[:, rows],
            "label": labels[i].reshape(accum, -1)[:, rows],
        }
        args = (state, sharding.put_process_batch(local, batch_sharding), tokens, jax.random.key(1))
        if i == 0:  # how the step splits TC's kernel over the devices
            jaxpr = str(step.trace(*args).jaxpr)
            split_kernel = jaxpr.count("shard_map[") if "pallas_call[" in jaxpr else 0
        state, metrics = step(*args)
        history.append(float(metrics["loss"]))
    local = all(d.process_index == jax.process_index() for d in mesh.devices.flat)
    full = state.params if local else multihost_utils.process_allgather(state.params, tiled=True)
    flat = {"/".join(str(k.key) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_leaves_with_path(full)}  # fmt: skip
    split = lambda tree: sum(
        1 for s in jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "spec")) if any(s.spec)
    )
    return {
        "losses": np.asarray(history),
        "params": flat,
        "sharded_params": split(shardings.params),
        "sharded_moments": split(shardings.opt_state),
        "kernel_shard_maps": split_kernel,
    }


def _save(path, result) -> None:
    np.savez(
        path,
        losses=result["losses"],
        **{f"param/{k}": v for k, v in result["params"].items()},
    )


def _devices_worker(out: str) -> None:
    import jax

    devices = jax.devices()
    assert len(devices) == 8, devices
    runs = {
        "1dev": (devices[:1], False, 1),
        "8dev": (devices, False, 1),
        "8dev_fsdp": (devices, True, 1),
        "1dev_accum4": (devices[:1], False, 4),
    }
    info = {}
    for name, (devs, fsdp, accum) in runs.items():
        result = _train(devs, fsdp, accum)
        _save(os.path.join(out, f"{name}.npz"), result)
        info[name] = {k: result[k] for k in ("sharded_params", "sharded_moments")}
    with open(os.path.join(out, "runs.json"), "w") as f:
        json.dump(info, f)


def _pallas_worker(out: str) -> None:
    import jax

    devices = jax.devices()
    tc = lambda attention: ("tc_clip", attention)
    pallas = _train(devices, False, 1, model=tc("pallas"))
    _save(os.path.join(out, "pallas.npz"), pallas)
    with open(os.path.join(out, "pallas.json"), "w") as f:
        json.dump({"kernel_shard_maps": pallas["kernel_shard_maps"]}, f)
    _save(os.path.join(out, "explicit.npz"), _train(devices[:1], False, 1, model=tc("explicit")))


def _process_worker(out: str, port: str, index: str) -> None:
    import jax

    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(index))
    assert jax.device_count() == 4 and jax.process_count() == 2
    half = BATCH // 2
    rows = slice(jax.process_index() * half, (jax.process_index() + 1) * half)
    _save(os.path.join(out, f"process{index}.npz"), _train(jax.devices(), True, 1, rows))
    if jax.process_index() == 0:  # the same batches on one local device
        _save(os.path.join(out, "reference.npz"), _train(jax.local_devices()[:1], False, 1))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    workers = {"devices": _devices_worker, "process": _process_worker, "pallas": _pallas_worker}
    workers[mode](*args)
