"""Training checkpoints in `workdir/checkpoints`: resume, keep the best, export weights.

Each checkpoint holds the whole TrainState (parameters, optimiser state, step) and the data
iterator's position (every process's own, via grain's orbax handler), so a resumed run feeds the
same batches in the same order as an uninterrupted one. Saves are asynchronous: the arrays are
copied off the devices during `save` and written while training goes on.

A checkpoint that does not restore (files lost or cut short) is moved to
`workdir/damaged_checkpoints/` and the next older one is used. One of an earlier release restores
with the fields TrainState gained since filled in (`ADDED_FIELDS`); one of another layout is
refused in one line and left where it is.

A work directory on object storage (`gs://`) holds the same files: orbax and tensorstore write
there directly (orbax marks a finished step with `commit_success.txt` instead of a rename), and
set-aside or exported folders are copied object by object (`runtime.storage`).

In a multi-process run, every process first checks the files it alone reads (its data
iterator's position, the state's metadata) and the processes agree on the result
(`runtime.agreement`) before any of them restores: a checkpoint damaged on one host is set aside
by all, never restored by some while others wait.

Each save first checks the free space against the size of the last checkpoint: a save that cannot
fit is not started, and one that fills the disk anyway (another writer) is removed; both stop the
run with a `diskspace.DiskFullError`, the older checkpoints untouched.

Kept: the last `keep_last` checkpoints, and the `keep_best` with the highest validation top-1
(the two policies combined: with orbax's single `max_to_keep` + `best_fn`, keeping one best
checkpoint deleted the latest, and a preempted run would resume from an older step).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from tcclip_jax.models import ModelConfig
from tcclip_jax.runtime import agreement, diskspace, sharding, storage
from tcclip_jax.runtime.errors import UserError, error_line
from tcclip_jax.weights import checkpoint

VAL_METRIC = "top1"
# Fields TrainState gained after the first release, with the value that a checkpoint written
# before stands for (a run of that release stopped at a non-finite step, so it had none).
ADDED_FIELDS = {"nonfinite_step": 0}


class CheckpointVersionError(UserError):
    """A whole checkpoint whose training state another version of the code wrote."""


def _full(abstract: jax.ShapeDtypeStruct, value: Any) -> jax.Array:
    """An array of `value` shaped, typed and laid out as `abstract`."""
    host = np.full(abstract.shape, value, abstract.dtype)
    if getattr(abstract, "sharding", None) is None:
        return jax.numpy.asarray(host)
    return jax.make_array_from_callback(abstract.shape, abstract.sharding, lambda i: host[i])


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
        self.directory = storage.abspath(directory)
        self._remote = storage.is_remote(self.directory)
        self._in_flight: int | None = None  # the step of the save being written
        self._needed = 0  # the space it was expected to need
        self.damaged = storage.join(storage.dirname(self.directory), "damaged_checkpoints")
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
        """Start saving `state` and the iterator's position at `step` (returns before writing).

        The previous save is waited for first (orbax would too), then the free space checked: a
        save that cannot fit is not started, and a DiskFullError names the filesystem, the
        folder and the size of the last checkpoint, which the next one needs.
        """
        self.wait()
        needed = 0 if self._remote else self._next_size(state)  # object storage: no free space
        short = not self._remote and diskspace.free_bytes(self.directory) < needed
        if jax.process_count() > 1:  # every process stops, or none
            short = bool(np.max(multihost_utils.process_allgather(np.int32(short))))
        if short:
            raise diskspace.disk_full(self.directory, f"checkpoint {step}", needed, self._kept())
        self._in_flight, self._needed = step, needed
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=grain.checkpoint.CheckpointSave(data_iterator),
                ),
                metrics=metrics,
                force=True,
            )
        except Exception as e:
            if not diskspace.is_disk_full(e):
                raise
            raise self._failed(e) from e

    def _next_size(self, state: Any) -> int:
        """The space the next save needs: the last checkpoint's, or the state's bytes + 1 MiB."""
        latest = self.manager.latest_step()
        if latest is not None:
            return diskspace.tree_bytes(os.path.join(self.directory, str(latest)))
        return sum(x.nbytes for x in jax.tree.leaves(state)) + 2**20

    def _kept(self) -> str:
        steps = sorted(self.manager.all_steps())
        if not steps:
            return "; no checkpoint was saved yet"
        return f"; checkpoint{'s' * (len(steps) > 1)} {', '.join(map(str, steps))} kept"

    def _failed(self, error: Exception) -> diskspace.DiskFullError:
        """The DiskFullError for a save that did not fit, after removing what it wrote."""
        step, self._in_flight = self._in_flight, None
        if jax.process_index() == 0 and not self._remote:
            for partial in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
                shutil.rmtree(partial, ignore_errors=True)
        self.manager.reload()
        logging.error("Saving checkpoint %s failed: %s", step, error_line(error))
        return diskspace.disk_full(self.directory, f"checkpoint {step}", self._needed, self._kept())

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
        """The state at `step` laid out as `abstract_state` (ShapeDtypeStructs with shardings);
        `data_iterator`, if given, is moved to the position saved with it.

        A checkpoint of an earlier release lacks the fields TrainState gained since
        (`ADDED_FIELDS`): they get the value that release's runs stand for."""
        missing = self._missing_fields(step, abstract_state)
        target = abstract_state
        if missing:
            target = {
                f.name: getattr(abstract_state, f.name)
                for f in dataclasses.fields(abstract_state)
                if f.name not in missing
            }
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        state = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
        if not missing:
            return state
        logging.warning(
            "Checkpoint %d is from an earlier release (no %s): filled in", step, ", ".join(missing)
        )
        filled = {
            name: _full(getattr(abstract_state, name), ADDED_FIELDS[name]) for name in missing
        }
        return type(abstract_state)(**state, **filled)

    def _missing_fields(self, step: int, abstract_state: Any) -> list[str]:
        """The fields of `abstract_state` (a TrainState) the checkpoint lacks and may lack; a
        CheckpointVersionError if it lacks others or has fields TrainState does not know."""
        if not dataclasses.is_dataclass(abstract_state):
            return []
        path = epath.Path(self.directory) / str(step) / "state"
        saved = set(ocp.StandardCheckpointHandler().metadata(path).keys())
        fields = [f.name for f in dataclasses.fields(abstract_state)]
        missing = [name for name in fields if name not in saved]
        unknown = sorted(saved - set(fields))
        if unknown or set(missing) - ADDED_FIELDS.keys():
            raise CheckpointVersionError(
                f"checkpoint {step} in {self.directory} was written by another version of "
                f"tcclip-jax (its training state has {sorted(saved)}, this version's "
                f"{sorted(fields)}); resume it with the version that wrote it, or export its "
                "weights with that version and start a new --workdir from them"
            )
        return missing

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that restores, or None if there is none.

        A damaged checkpoint (a missing or truncated file) is moved to `damaged/STEP` beside
        the checkpoints, kept for inspection, with a warning naming it and the reason. Every
        process first checks its own files (`_probe`), and all agree before restoring.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            error = None
            try:
                self._probe(step, abstract_state, data_iterator)
            except Exception as e:  # noqa: BLE001 - whatever it is, the files are bad here.
                error = e
            failure = agreement.gather(error)
            if failure is not None and issubclass(failure[0], UserError):
                # Whole, but not this version's: kept as it is.
                if jax.process_count() == 1:
                    raise error
                raise failure[0](failure[1]) from error
            if failure is None:
                try:
                    return step, self.restore(step, abstract_state, data_iterator)
                except CheckpointVersionError:
                    raise
                except Exception as e:  # noqa: BLE001 - whatever orbax raises, the files are bad.
                    failure = (type(e), f"{type(e).__name__}: {str(e).strip()}")
            reason = failure[1].strip().splitlines()[0][:300]
            self._set_aside(step)
            logging.warning(
                "Checkpoint %d does not restore (%s); moved to %s, trying older ones",
                step,
                reason,
                storage.join(self.damaged, str(step)),
            )
        return None

    def _probe(self, step: int, abstract_state: Any, data_iterator: Any | None) -> None:
        """Read what this process alone reads of checkpoint `step` (the state's metadata, its
        data iterator's position), raising whatever a damaged file raises."""
        self._missing_fields(step, abstract_state)  # the state's metadata (and its version)
        if data_iterator is None:
            return
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        path = storage.join(self.directory, str(step), "data", name)
        try:
            text = storage.read_text(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist") from None
        try:
            state = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(state, dict) or not {"parent", "skipped"} <= state.keys():
            raise ValueError(f"{path}: not a data iterator position")

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            storage.makedirs(self.damaged)
            target = storage.join(self.damaged, str(step))
            storage.rmtree(target)
            storage.replace(storage.join(self.directory, str(step)), target)
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
        """Wait for the save in flight; a DiskFullError if it did not fit."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            if not diskspace.is_disk_full(e):
                raise
            raise self._failed(e) from e
        self._in_flight = None

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

    Parameters sharded over several processes are gathered first; every process takes part,
    and the processes agree on every step that one of them could fail alone (process 0's
    clean-up and move, each process's look at the new directory, the small files process 0
    writes), so a failure stops all of them with the same message.
    """
    params = jax.jit(lambda p: p, out_shardings=sharding.replicated(mesh))(params)
    tmp = directory + ".tmp"
    primary = jax.process_index() == 0
    with agreement.agreed():
        if primary:
            storage.rmtree(tmp)
    with agreement.agreed():  # every process sees it gone before any writes into it
        checkpoint.check_new_directory(tmp)
    try:
        with agreement.agreed():
            checkpoint.save_model(
                tmp, config, params, info=info, normalization=normalization, primary=primary
            )
    except Exception as e:
        if primary:
            storage.rmtree(tmp)
        if diskspace.is_disk_full(e) and not isinstance(e, diskspace.DiskFullError):
            folder = storage.dirname(tmp)
            raise diskspace.disk_full(folder, f"the exported model {tmp}") from e
        raise
    with agreement.agreed():
        if primary:
            storage.replace(tmp, directory)
