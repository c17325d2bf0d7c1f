"""The optimiser against torch.optim.AdamW, and the schedule against the spec's formula."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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
