"""The checkpoint kept as best: orbax's `best_step` under our policy, against the rule by hand."""

from __future__ import annotations

import grain
import jax.numpy as jnp
import pytest

from tcclip_jax.train.checkpoints import TrainCheckpoints


@pytest.mark.parametrize(
    "scores",
    [
        [10.0, 30.0, None, 30.0, 20.0],  # a tie: the later of the two
        [None, None, None],  # never validated: the latest
        [50.0, None, None],  # validated once, then only periodic saves
    ],
)
def test_best_step_is_the_highest_top1_latest_of_equals(tmp_path, scores):
    ckpt = TrainCheckpoints(str(tmp_path / "checkpoints"), keep_last=10, keep_best=10)
    data = iter(grain.MapDataset.range(4).to_iter_dataset())
    try:
        for step, top1 in enumerate(scores, start=1):
            metrics = None if top1 is None else {"top1": top1, "top5": 99.0}
            ckpt.save(step, {"w": jnp.full(2, step, jnp.float32)}, data, metrics=metrics)
        ckpt.wait()
        scored = [(top1, step) for step, top1 in enumerate(scores, start=1) if top1 is not None]
        expected = max(scored)[1] if scored else len(scores)
        assert ckpt.best_step() == expected
    finally:
        ckpt.close()
