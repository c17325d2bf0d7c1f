"""The golden training run, as a user would meet it: the published trainer run for several
optimiser steps (shared/golden's `tcclip_small_run.npz`, or the fixture named by
$TCCLIP_RUN_GOLDEN), reproduced from the user's files (converted by the converter CLI,
tests/helpers/train_golden.py) with the trainer's own run plan (`train.optim.StepPlan`: which
micro-batches each optimiser step sums, which are dropped), optimiser and schedule
(`train.build.optimizer`) and jitted, sharded step (`train.build.sharded_train_step`), fed the
fixture's micro-batches in the plan's order; after every optimiser step, each trainable tensor's
change from the initial weights in the released layout, normed and projected as the fixture
records it.

Used by tests/train/test_train_run_golden.py, in a fresh float64 process per layout:

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/helpers/train_run_golden.py \\
      --checkpoint DIR --fixture F.npz --grad-accum-steps 2 --output out.npz
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import golden_recipe
import numpy as np
import train_golden
from xla_env import xla_flags

REPO = train_golden.REPO
ENV = "TCCLIP_RUN_GOLDEN"
# The shipped fixture, beside the repository as shared/ lies beside every checkout.
DEFAULT = os.path.join(os.path.dirname(REPO), "shared", "golden", "tcclip_small_run.npz")
# The published `utils/optimizer.build_optimizer(lr_10x)` groups, in its order: a tensor named
# with none of the fast names is in group 0, else in the group of the first fast name it holds.
PUBLISHED_GROUPS = (("prompt_learner", "VPT"), ("prompt_generation",))
GROUP_CODES = {"base": 0.0, "fast": 1.0, "frozen": 2.0}


def fixture_path() -> str:
    return os.environ.get(ENV) or DEFAULT


def load(path: str) -> dict:
    f = golden_recipe.load_fixture(path)
    f["path"], f["grad_names"] = path, json.loads(str(f["grad_names"]))
    return f


def published_group(name: str) -> int:
    """The index of the published param group of released tensor `name`."""
    for i, keys in enumerate(PUBLISHED_GROUPS):
        if any(k in name for k in keys):
            return i + 1
    return 0


def run_config(case: dict, grad_accum_steps: int, remat: bool):
    """The run config of the fixture's recipe: the published schedule on the fixture's
    geometry (one GPU of `batch` clips, `accumulation_steps` of them per optimiser step)."""
    from tcclip_jax.config import base

    c = base.base_config("fewshot")
    c.random_init = True
    c.dtype, c.remat, c.scan_blocks = "float64", remat, False
    c.batch_size = case["batch"] * case["accumulation_steps"]
    c.grad_accum_steps = grad_accum_steps
    c.num_epochs, c.warmup_epochs = case["epochs"], case["warmup_epochs"]
    c.published.gpus, c.published.gpu_batch = 1, case["batch"]
    c.optim.schedule = "published"
    c.optim.lr, c.optim.min_lr = case["lr"], case["lr_min"]
    c.optim.weight_decay = case["weight_decay"]
    c.optim.b1, c.optim.b2 = case["betas"]
    c.optim.eps = case.get("eps", 1e-8)
    c.label_smoothing = case["label_smoothing"]
    c.mixup.mixup_alpha, c.mixup.cutmix_alpha = 0.0, 0.0  # the fixture's loop has no mixup
    c.data.uint8_output = False  # the fixture's clips are model input already
    return c


def _measure(released: dict, initial: dict, names: list[str], seed: int) -> np.ndarray:
    """[P, 4]: each tensor's change from `initial`, its norm and 3 projections."""
    out = []
    for name in names:
        d = released[name] - initial[name]
        key = name.removeprefix("module.")
        out.append([np.linalg.norm(d)] + [
            np.sum(d * train_golden.direction(seed, key, j, d.shape)) for j in range(3)
        ])  # fmt: skip
    return np.array(out)


def compute(checkpoint: str, fixture: dict, grad_accum_steps: int) -> dict:
    """The run in float64 (call with x64 set): {"lrs" [S, 3] (each published group's lr as our
    optimiser's group schedule gives it), "metric_lr" [S], "loss" [S], "update" [S, P, 4],
    "group_code" [P], "final__<name>" (small tensors), "micro" [S, A] (the micro-batches summed
    by each step), "devices"}."""
    import jax
    import jax.numpy as jnp

    from tcclip_jax.models.params import param_groups
    from tcclip_jax.models.prompts import prompt_tokens
    from tcclip_jax.runtime import sharding
    from tcclip_jax.train import build, optim
    from tcclip_jax.train.step import abstract_state, create_train_state
    from tcclip_jax.weights.checkpoint import load_model
    from tcclip_jax.weights.pytorch import released_state_dict

    case, names = fixture["case"], fixture["grad_names"]
    cfg, params = load_model(checkpoint)
    params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    config = run_config(case, grad_accum_steps, train_golden.remat_for(fixture))
    b = case["batch"]
    plan = optim.StepPlan.from_config(config, num_videos=case["micro_per_epoch"] * b)
    assert plan.problem() is None, plan.problem()
    schedule, tx = build.optimizer(config, plan)
    groups = optim.group_schedules(
        plan, config.optim.lr, config.optim.min_lr, config.optim.fast_lr_multiplier
    )
    model = build.video_model(config, cfg)
    mesh = sharding.create_mesh()
    step_fn, shardings = build.sharded_train_step(
        config, model, tx, schedule, num_classes=len(case["classnames"]), mesh=mesh,
        abstract=abstract_state(params, tx),
    )  # fmt: skip
    state = create_train_state(params, tx, shardings)
    tokens = prompt_tokens(cfg, case["classnames"])
    rng = jax.random.key(0)
    batch_sharding = sharding.batch_sharding(mesh, 1)

    initial = {k: np.asarray(v, np.float64) for k, v in released_state_dict(cfg, params).items()}
    codes = jax.tree.map(
        lambda g, p: np.full(np.shape(p), GROUP_CODES[g]), param_groups(params), params
    )
    code_sd = released_state_dict(cfg, codes)
    group_code = []
    for name in names:
        values = np.unique(code_sd[name])
        assert values.size == 1, f"{name} mixes param groups: {values}"
        group_code.append(values[0])
    lr_of = jax.jit(lambda s: {g: f(s) for g, f in groups.items()})

    res = cfg.image_resolution
    shape = (b, case["num_frames"], 3, res, res)
    lrs, metric_lr, losses, updates, micro = [], [], [], [], []
    for s in range(plan.total_steps):
        ids = list(plan.micro_batches(s))
        clips = np.concatenate(
            [golden_recipe.clips(case["video_seed"] + 1 + i, shape) for i in ids]
        ).transpose(0, 1, 3, 4, 2)
        labels = np.concatenate([np.asarray(case["labels_per_micro"][i]) for i in ids])
        local = {  # as the loop lays out a step batch: [grad_accum_steps, clips / it, ...]
            "video": clips.reshape(grad_accum_steps, -1, *clips.shape[1:]),
            "label": labels.astype(np.int32).reshape(grad_accum_steps, -1),
        }
        lr = jax.device_get(lr_of(jnp.asarray(s)))
        lrs.append([float(lr["base"]), float(lr["fast"]), float(lr["fast"])])
        state, metrics = step_fn(
            state, sharding.put_process_batch(local, batch_sharding), tokens, rng
        )
        metrics = jax.device_get(metrics)
        metric_lr.append(float(metrics["lr"]))
        losses.append(float(metrics["loss"]))
        now = released_state_dict(cfg, jax.device_get(state.params))
        now = {k: np.asarray(v, np.float64) for k, v in now.items()}
        updates.append(_measure(now, initial, names, case["proj_seed"]))
        micro.append(ids)
    assert int(jax.device_get(state.nonfinite_step)) == 0
    out = {
        "lrs": np.array(lrs),
        "metric_lr": np.array(metric_lr),
        "loss": np.array(losses),
        "update": np.array(updates),
        "group_code": np.array(group_code),
        "micro": np.array(micro),
        "devices": np.array(jax.device_count()),
    }
    for name in names:
        if f"final_update__{name}" in fixture:
            out[f"final__{name}"] = now[name] - initial[name]
    return out


def _worker(args) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    out = compute(args.checkpoint, load(args.fixture), args.grad_accum_steps)
    np.savez(args.output, **out)


def run_worker(
    checkpoint: str, fixture: str, output: str, grad_accum_steps: int = 1, devices: int = 1
) -> dict:
    """`compute` in a fresh process (x64 and the CPU device count are process-wide)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = xla_flags(devices)
    res = subprocess.run(
        [
            sys.executable, os.path.abspath(__file__), "--checkpoint", checkpoint,
            "--fixture", fixture, "--grad-accum-steps", str(grad_accum_steps),
            "--output", output,
        ],
        capture_output=True, text=True, cwd=REPO, timeout=1800, env=env,
    )  # fmt: skip
    if res.returncode:
        raise RuntimeError(res.stderr[-4000:])
    with np.load(output) as d:
        return {k: d[k] for k in d.files}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--fixture", default=fixture_path())
    p.add_argument("--grad-accum-steps", type=int, default=1)
    p.add_argument("--output", required=True)
    _worker(p.parse_args(argv))


if __name__ == "__main__":
    main()
