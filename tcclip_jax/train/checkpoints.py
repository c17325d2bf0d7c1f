"""Training checkpoints in `workdir/checkpoints`: resume, keep the best, export weights.

Each checkpoint holds the whole TrainState (parameters, optimiser state, step) and the data
iterator's position (every process's own, via grain's orbax handler), so a resumed run feeds the
same batches in the same order as an uninterrupted one. Saves are asynchronous: the arrays are
copied off the devices during `save` and written while training goes on.

A checkpoint that does not restore (files lost or cut short) is moved to
`workdir/damaged_checkpoints/` and the next older one is used.

Kept: the last `keep_last` checkpoints, and the `keep_best` with the highest validation top-1
(the two policies combined: with orbax's single `max_to_keep` + `best_fn`, keeping one best
checkpoint deleted the latest, and a preempted run would resume from an older step).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from tcclip_jax import sharding
from tcclip_jax.models import ModelConfig
from tcclip_jax.weights import checkpoint

VAL_METRIC = "top1"


class TrainCheckpoints:
    """An orbax CheckpointManager for (TrainState, data iterator) pairs."""

    def __init__(self, directory: str, *, keep_last: int, keep_best: int):
        if keep_last < 1:
            raise ValueError(f"config.checkpoint.keep_last must be >= 1, got {keep_last}")
        policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(keep_last),
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[VAL_METRIC],
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        self.directory = os.path.abspath(directory)
        self.damaged = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=policy,
                # Only with a best_fn does orbax write the metrics to disk, where BestN finds
                # them again after a restart.
                best_fn=lambda metrics: metrics[VAL_METRIC],
                best_mode="max",
                cleanup_tmp_directories=True,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any, metrics: dict | None = None) -> None:
        """Start saving `state` and the iterator's position at `step` (returns before writing)."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
        """The state at `step` laid out as `abstract_state` (ShapeDtypeStructs with shardings);
        `data_iterator`, if given, is moved to the position saved with it."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that restores, or None if there is none.

        A damaged checkpoint (a missing or truncated file) is moved to `damaged/STEP` beside
        the checkpoints, kept for inspection, with a warning naming it and the reason.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return step, self.restore(step, abstract_state, data_iterator)
            except Exception as e:  # noqa: BLE001 - whatever orbax raises, the files are bad.
                reason = f"{type(e).__name__}: {str(e).strip()}".splitlines()[0][:300]
                self._set_aside(step)
                logging.warning(
                    "Checkpoint %d does not restore (%s); moved to %s, trying older ones",
                    step,
                    reason,
                    os.path.join(self.damaged, str(step)),
                )
        return None

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            os.makedirs(self.damaged, exist_ok=True)
            target = os.path.join(self.damaged, str(step))
            if os.path.exists(target):
                shutil.rmtree(target)
            os.replace(os.path.join(self.directory, str(step)), target)
        multihost_utils.sync_global_devices(f"checkpoints:set_aside:{step}")
        self.manager.reload()

    def best_step(self) -> int | None:
        """The step with the highest validation top-1 (the latest of equals); the latest step
        if none was validated."""
        best = self.manager.best_step()
        return self.latest_step() if best is None else best

    def metrics(self, step: int) -> dict | None:
        return self.manager.metrics(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target sharding, for restoring onto the mesh."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def export_model(
    directory: str, config: ModelConfig, params: Any, mesh: Any, info: dict, normalization: str
) -> None:
    """Write `params` as a model checkpoint directory (`weights.checkpoint`), replacing any,
    recording the input `normalization` the weights were trained with.

    Parameters sharded over several processes are gathered first; every process takes part.
    """
    params = jax.jit(lambda p: p, out_shardings=sharding.replicated(mesh))(params)
    tmp = directory + ".tmp"
    if jax.process_index() == 0 and os.path.exists(tmp):
        shutil.rmtree(tmp)
    multihost_utils.sync_global_devices("export_model:clean")
    checkpoint.save_model(tmp, config, params, info=info, normalization=normalization)
    multihost_utils.sync_global_devices("export_model:written")
    if jax.process_index() == 0:
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    multihost_utils.sync_global_devices("export_model:done")
