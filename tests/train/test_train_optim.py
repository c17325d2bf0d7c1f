"""The optimiser against torch.optim.AdamW, the schedules against the spec's formula and the
published trainer's loop written out, and the run plan (steps per epoch, dropped tails)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tcclip_jax.models.params import BASE, FAST
from tcclip_jax.train import optim

BASE_LR, MIN_LR, WARMUP, TOTAL = 2e-3, 2e-5, 5, 50


def spec_lr(t: int) -> float:
    """The recipe: linear warm-up from 0, then timm's cosine of t / total with t from step 0."""
    if t < WARMUP:
        return BASE_LR * t / WARMUP
    return MIN_LR + (BASE_LR - MIN_LR) * (1 + math.cos(math.pi * t / TOTAL)) / 2


@pytest.mark.parametrize("t", [0, 1, WARMUP - 1, WARMUP, TOTAL // 2, TOTAL - 1, TOTAL])
def test_schedule_matches_spec_formula(t):
    schedule = optim.cosine_schedule(BASE_LR, MIN_LR, WARMUP, TOTAL)
    np.testing.assert_allclose(float(schedule(t)), spec_lr(t), rtol=1e-6, atol=1e-12)


def test_schedule_cosine_counts_from_the_start_of_the_run():
    schedule = optim.cosine_schedule(BASE_LR, MIN_LR, WARMUP, TOTAL)
    # At the end of the warm-up the cosine has already advanced by WARMUP / TOTAL: below peak.
    assert float(schedule(WARMUP)) < BASE_LR
    assert float(schedule(WARMUP - 1)) == pytest.approx(BASE_LR * (WARMUP - 1) / WARMUP)


def _tree(rng):
    return {
        "visual": {"proj": rng.standard_normal((4, 3)).astype(np.float32)},
        "ln_final": {"bias": rng.standard_normal((3,)).astype(np.float32)},
        "prompt_learner": {"ctx": rng.standard_normal((2, 3)).astype(np.float32)},
        "prompt_generation_layer": {
            "mlp": {"kernel": rng.standard_normal((3, 3)).astype(np.float32)}
        },
        "token_embedding": {"embedding": rng.standard_normal((5, 3)).astype(np.float32)},
    }


def test_adamw_steps_match_torch_with_param_groups():
    """Three steps from the same weights and gradients, lr from the schedule at each step."""
    torch = pytest.importorskip("torch")  # the reference (the `convert` extra)
    rng = np.random.default_rng(0)
    params = _tree(rng)
    grads = [jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
             for _ in range(3)]  # fmt: skip
    schedule = optim.cosine_schedule(BASE_LR, MIN_LR, 2, 10)
    tx = optim.create_optimizer(schedule, weight_decay=0.001)
    state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)

    leaves = {
        name: torch.nn.Parameter(torch.tensor(v))
        for name, v in (
            ("base_proj", params["visual"]["proj"]),
            ("base_bias", params["ln_final"]["bias"]),
            ("fast_ctx", params["prompt_learner"]["ctx"]),
            ("fast_mlp", params["prompt_generation_layer"]["mlp"]["kernel"]),
        )
    }
    base = [leaves["base_proj"], leaves["base_bias"]]
    fast = [leaves["fast_ctx"], leaves["fast_mlp"]]
    opt = torch.optim.AdamW(
        [{"params": base, "lr": 0.0}, {"params": fast, "lr": 0.0}],
        betas=(0.9, 0.98),
        eps=1e-8,
        weight_decay=0.001,
    )
    for step, g in enumerate(grads):
        lr = float(schedule(step))
        opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = lr, 10 * lr
        for param, grad in zip(
            [*base, *fast],
            [g["visual"]["proj"], g["ln_final"]["bias"], g["prompt_learner"]["ctx"],
             g["prompt_generation_layer"]["mlp"]["kernel"]],
            strict=True,
        ):  # fmt: skip
            param.grad = torch.tensor(grad)
        opt.step()

    check = lambda ours, theirs: np.testing.assert_allclose(
        np.asarray(ours), theirs.detach().numpy(), rtol=1e-5, atol=1e-7
    )
    check(p["visual"]["proj"], leaves["base_proj"])
    check(p["ln_final"]["bias"], leaves["base_bias"])
    check(p["prompt_learner"]["ctx"], leaves["fast_ctx"])
    check(p["prompt_generation_layer"]["mlp"]["kernel"], leaves["fast_mlp"])
    # Frozen: unchanged, and no optimiser moments kept for it.
    np.testing.assert_array_equal(
        p["token_embedding"]["embedding"], params["token_embedding"]["embedding"]
    )
    moments = [x.size for x in jax.tree.leaves(state) if np.ndim(x) > 0]
    trainable = sum(
        x.size for k, v in params.items() if k != "token_embedding" for x in jax.tree.leaves(v)
    )
    assert sum(moments) == 2 * trainable  # mu and nu of each trainable parameter only


def test_fast_group_moves_further_than_base():
    """Same gradient and weight: the x10 group's first update is 10x the base group's."""
    params = {"visual": {"w": jnp.ones(3)}, "prompt_learner": {"ctx": jnp.ones(3)}}
    grads = {"visual": {"w": jnp.full(3, 0.5)}, "prompt_learner": {"ctx": jnp.full(3, 0.5)}}
    tx = optim.create_optimizer(lambda step: 1e-3, weight_decay=0.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["prompt_learner"]["ctx"], 10 * updates["visual"]["w"])


# The published trainer, written out ------------------------------------------------------


def published_loop(videos, gpus, gpu_batch, accumulation, epochs, warmup, lr, min_lr, fast=10.0):
    """(lrs [(base, fast)] read by each optimiser step, [micro-batches each step sums]) of
    `engine.train_one_epoch` with timm's CosineLRScheduler(warmup_lr_init=0, t_in_epochs=False)
    over `len(train_loader)` micro-batches per epoch (DistributedSampler padding, drop_last)."""
    m = -(-videos // gpus) // gpu_batch
    warmup_t, t_initial = warmup * m, epochs * m

    def lr_at(t, peak):  # CosineLRScheduler._get_lr
        if t < warmup_t:
            return t * (peak / warmup_t)
        if t >= t_initial:
            return min_lr
        return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * t / t_initial))

    now = (lr_at(0, lr), lr_at(0, fast * lr))  # the constructor: warm-up start (or the peak)
    lrs, groups, summed = [], [], []
    for epoch in range(epochs):
        summed = []  # zero_grad at the epoch's start
        for idx in range(m):
            summed.append(epoch * m + idx)
            if (idx + 1) % accumulation == 0:
                lrs.append(now)
                groups.append(summed)
                summed = []
                now = (lr_at(epoch * m + idx, lr), lr_at(epoch * m + idx, fast * lr))
    return lrs, groups


GEOMETRIES = [
    # videos, GPUs, clips per GPU, accumulation, epochs, warm-up epochs
    (8, 1, 2, 2, 3, 1),  # the shipped golden run
    (10, 1, 2, 2, 3, 1),  # a micro-batch dropped at each epoch's end
    (816, 4, 4, 4, 50, 5),  # few-shot HMDB-51, 16 shots: 51 micro-batches, 3 dropped
    (102, 4, 4, 4, 50, 5),  # 2 shots
    (1000, 4, 4, 16, 10, 5),  # zero-shot's batch of 256
    (63, 4, 4, 1, 3, 0),  # padded epoch, no warm-up (the scheduler starts at its peak)
    (1000, 2, 3, 5, 4, 2),
]


def _plan(videos, gpus, gpu_batch, accumulation, epochs, warmup):
    return optim.StepPlan(
        optim.PUBLISHED, videos, accumulation * gpus * gpu_batch, epochs, warmup, gpus, gpu_batch
    )


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_published_plan_is_the_published_loop(geometry):
    want, groups = published_loop(*geometry, lr=3e-4, min_lr=3e-6)
    plan = _plan(*geometry)
    assert plan.problem() is None
    assert plan.total_steps == len(want) and plan.accumulation == geometry[3]
    steps = np.arange(plan.total_steps)
    got = plan.group_lrs(steps, 3e-4, 3e-6, 10.0)
    np.testing.assert_allclose(got[BASE], [w[0] for w in want], rtol=1e-14, atol=0)
    np.testing.assert_allclose(got[FAST], [w[1] for w in want], rtol=1e-14, atol=0)
    assert [list(plan.micro_batches(s)) for s in steps] == groups
    per_epoch = len(groups) // geometry[4]
    m = -(-geometry[0] // geometry[1]) // geometry[2]
    assert plan.dropped_per_epoch == m - per_epoch * geometry[3]
    assert plan.clips_per_epoch == per_epoch * plan.batch_size


@pytest.mark.parametrize("geometry", GEOMETRIES[:3])
def test_group_schedules_compute_the_plan_under_jit(geometry):
    plan = _plan(*geometry)
    schedules = optim.group_schedules(plan, 3e-4, 3e-6, 10.0)
    steps = jnp.arange(plan.total_steps)
    for group, schedule in schedules.items():
        got = jax.jit(jax.vmap(schedule))(steps)
        want = plan.group_lrs(np.arange(plan.total_steps), 3e-4, 3e-6, 10.0)[group]
        # float32 (x64 off): near its end the cosine's 1 + cos(...) cancels, to ~1e-8 of the peak.
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * want.max())


def test_the_issues_figures_published_against_optimizer_steps():
    """The shipped run (A = 2, 4 micro-batches per epoch, 3 epochs, 1 of warm-up, lr 2e-4): the
    published lrs, and the optimiser-step schedule's (step 1 at lr / W, no lag)."""
    plan = _plan(8, 1, 2, 2, 3, 1)
    published = plan.lr(np.arange(6), 2e-4, 2e-6)
    np.testing.assert_allclose(
        published, [0, 5.0e-5, 1.5e-4, 1.266e-4, 7.54e-5, 3.10e-5], rtol=3e-3, atol=0
    )
    steps = dataclasses.replace(plan, schedule=optim.OPTIMIZER_STEPS)
    assert (steps.steps_per_epoch, steps.total_steps, steps.clips_per_epoch) == (2, 6, None)
    ours = optim.group_schedules(steps, 2e-4, 2e-6, 10.0)[BASE](jnp.arange(6))
    # The issue's figures, rounded as it gives them.
    np.testing.assert_allclose(ours, [0, 1.0e-4, 1.505e-4, 1.01e-4, 5.2e-5, 1.5e-5], rtol=2e-2)
    np.testing.assert_allclose(steps.lr(np.arange(6), 2e-4, 2e-6), ours, rtol=1e-6)


def test_optimizer_steps_is_the_former_schedule():
    """The fast group: 10x the whole curve (floor included), bit for bit as before."""
    plan = optim.StepPlan(optim.OPTIMIZER_STEPS, 1000, 32, 80, 2)
    schedules = optim.group_schedules(plan, 1e-3, 1e-5, 10.0)
    former = optim.cosine_schedule(1e-3, 1e-5, 2 * 31, 80 * 31)
    for step in (0, 1, 61, 62, 500, 2479, 3000):
        assert float(schedules[BASE](step)) == float(former(step))
        assert float(schedules[FAST](step)) == float(10.0 * former(step))


def _run_config(**changes):
    c = ml_collections.ConfigDict(
        dict(
            batch_size=64, grad_accum_steps=1, num_epochs=50, warmup_epochs=5,
            optim=dict(schedule=optim.PUBLISHED), published=dict(gpus=4, gpu_batch=4),
        )
    )  # fmt: skip
    c.update(changes)
    return c


def test_the_plan_is_the_protocols_whatever_this_runs_devices_and_accumulation():
    plans = {
        optim.StepPlan.from_config(_run_config(grad_accum_steps=g), num_videos=816)
        for g in (1, 2, 8, 64)
    }
    assert len(plans) == 1
    (plan,) = plans
    assert (plan.accumulation, plan.micro_per_epoch, plan.steps_per_epoch) == (4, 51, 12)


def test_plan_problems_name_the_fields():
    assert (
        "config.published.gpus"
        in optim.StepPlan.from_config(_run_config(batch_size=24), 816).geometry_problem()
    )
    fine = _run_config(batch_size=24, optim=dict(schedule=optim.OPTIMIZER_STEPS))
    assert optim.StepPlan.from_config(fine, 816).problem() is None
    few = optim.StepPlan.from_config(_run_config(), num_videos=60)  # 3 micro-batches < 4
    assert "would never step" in few.problem()
    bad = optim.StepPlan.from_config(_run_config(optim=dict(schedule="cosine")), 816)
    assert "config.optim.schedule must be one of" in bad.problem()


def test_each_epoch_reads_the_first_clips_of_its_own_shuffle():
    """The data side of the dropped tail: epoch e reads positions 0..U-1 of its shuffle (wrapping
    past the end as a padded sampler does); U = n is the former endless stream."""
    import grain

    from tcclip_jax.data.pipeline import _EpochPositions

    n = 10
    shuffled = grain.MapDataset.range(n).shuffle(seed=3).repeat()
    for used in (n, 8, 12):
        positions = _EpochPositions(n, used, shuffled)
        got = [positions(p, None) for p in range(3 * used)]
        want = [(e, shuffled[e * n + k % n]) for e in range(3) for k in range(used)]
        assert got == want
    endless = _EpochPositions(n, n, shuffled)
    assert [endless(p, None)[1] for p in range(3 * n)] == [shuffled[p] for p in range(3 * n)]
    assert [shuffled[k] for k in range(n)] != [shuffled[n + k] for k in range(n)]  # reshuffled
