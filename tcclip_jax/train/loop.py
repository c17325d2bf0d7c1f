"""`train_and_evaluate(config, workdir)`: the paper's recipe on any number of devices and hosts.

1. Resolve and check the config (`tcclip_jax.config.resolve`) before anything compiles.
2. Build the model (`config.model_variant` on the initial checkpoint's towers) and its weights.
3. Train: one jitted step per global batch, data parallel over a mesh of all devices (FSDP on
   request), gradient accumulation to reach the protocol's batch on few devices; validation after
   the published epochs (`validation_epochs`); asynchronous checkpoints; SIGTERM saves and exits.
4. Export the best weights by validation top-1 (else the last) to `workdir/model` and test them
   with the full views as the protocol prescribes
   (`tcclip_jax.evaluation.protocols.evaluate_protocol`), printing the table.

A run resumes from the latest checkpoint in its workdir: rerunning the same command after a
preemption or crash continues where it stopped, with the same batches and the same result.

The work directory may be on object storage (`--workdir gs://bucket/run`, `runtime.storage`).
A multi-process run checks at start that every process sees the same work directory, and the
processes agree on every failure one of them can meet alone (`runtime.agreement`): reading the
config's lists, unreadable training videos past the limit (checked at each logging step and
before each save or validation), a checkpoint that does not restore, the export, process 0's
writes. Every process then stops with the same one-line message.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from tcclip_jax.config.resolve import (
    ConfigError,
    check_lists,
    prepare_config,
    run_model_config,
)
from tcclip_jax.config.resume import check_resume
from tcclip_jax.data.classes import few_shot_subset, load_class_names, read_annotations
from tcclip_jax.data.pipeline import create_train_iterator, num_examples
from tcclip_jax.data.video_decode import VideoReadError
from tcclip_jax.evaluation.protocols import evaluate_protocol, spec_evaluator
from tcclip_jax.evaluation.specs import SELECT, eval_plan
from tcclip_jax.evaluation.tables import flat_metrics, format_results
from tcclip_jax.models import ModelConfig
from tcclip_jax.models.initialization import adapt_params, random_params
from tcclip_jax.models.params import split_frozen
from tcclip_jax.models.prompts import prompt_tokens
from tcclip_jax.runtime import agreement, compile_cache, diskspace, sharding, storage
from tcclip_jax.runtime.errors import RunError, error_line
from tcclip_jax.runtime.metrics import RUN_CONFIG_FILE, MetricWriter, drop_after, save_config
from tcclip_jax.train import run_lock
from tcclip_jax.train.build import optimizer, sharded_train_step, video_model
from tcclip_jax.train.checkpoints import TrainCheckpoints, export_model, with_shardings
from tcclip_jax.train.feed import DeviceFeed
from tcclip_jax.train.optim import StepPlan
from tcclip_jax.train.profile import StepProfiler
from tcclip_jax.train.step import abstract_state, create_train_state
from tcclip_jax.weights.checkpoint import CheckpointError, load_model

MODEL_DIR = "model"
# An interval whose steps waited for data this share of its time or more logs "input-bound: ...".
INPUT_BOUND_LOG_SHARE = 0.05
FINAL_METRICS_FILE = "final_metrics.json"


# Model and data ----------------------------------------------------------------------------


def initial_model(config: ml_collections.ConfigDict) -> tuple[ModelConfig, dict, dict | None]:
    """(model config, initial weights, CLIP weights for WiSE-FT or None), all on the host."""
    if not config.init_checkpoint:  # config.random_init (checked by prepare_config)
        model_config = run_model_config(config)
        return model_config, random_params(model_config, config.seed), None
    try:
        source_config, source_params = load_model(config.init_checkpoint)
    except CheckpointError as e:
        raise ConfigError(f"config.init_checkpoint: {e}") from e
    if source_config.image_resolution != config.data.image_size and "image_resolution" not in {
        k for k, v in config.model.items() if v is not None
    }:
        raise ConfigError(
            f"config.data.image_size is {config.data.image_size} but the checkpoint "
            f"{config.init_checkpoint} was trained at {source_config.image_resolution}"
        )
    model_config = run_model_config(config, source_config)
    params = adapt_params(source_config, source_params, model_config, config.seed)
    clip_params = None
    if config.wise_ft is not None and not config.clip_checkpoint:
        clip_params = params  # the weights fine-tuning started from
    return model_config, params, clip_params


def training_set(
    config: ml_collections.ConfigDict,
) -> tuple[list[str], list[tuple[str, int]] | None]:
    """(class names trained on, annotations overriding the list or None).

    `data.class_list` is the class list of the training list's labels (base-to-novel: the base
    classes, numbered 0..B-1 as published); `shots` > 0 draws that many videos per class.
    """
    names = load_class_names(config.data.class_list)
    annotations = None
    if config.shots > 0:
        annotations = few_shot_subset(
            read_annotations(config.data.train_list, len(names)), config.shots, config.seed
        )
    return names, annotations


def validation_epochs(num_epochs: int, every_epochs: int) -> list[int]:
    """The epochs (1-based) after which the published code validates: 1, 1 + N, 1 + 2N, ...
    and the last (N = `every_epochs`; every epoch for N = 1, none for N = 0)."""
    if every_epochs <= 0:
        return []
    return sorted({*range(1, num_epochs + 1, every_epochs), num_epochs})


def _count(params) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(params))


def _count_training_videos(config: ml_collections.ConfigDict, annotations) -> int:
    if annotations is not None:
        return len(annotations)
    return num_examples(config.data, "train")


# Preemption --------------------------------------------------------------------------------


class _Preemption:
    """Remembers a SIGTERM (the usual notice of preemption) or a Ctrl-C (SIGINT) until the loop
    can save; a second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        del frame
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.warning("%s: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.requested = True

    def agreed(self) -> bool:
        """Whether any process was asked to stop (a collective when there are several)."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


# Training ----------------------------------------------------------------------------------


def _step_batch(batch: dict, accum: int, batch_sharding) -> dict:
    """This process's [b, ...] batch -> the global [accum, B / accum, ...] step batch."""
    local = {
        k: np.asarray(batch[k]).reshape(accum, -1, *np.shape(batch[k])[1:])
        for k in ("video", "label")
    }
    return sharding.put_process_batch(local, batch_sharding)


def _make_workdir(workdir: str) -> None:
    storage.check(workdir, "--workdir")
    if storage.is_remote(workdir):
        return  # nothing to create; the first write shows whether it may be written
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir}: cannot create it ({e.strerror})") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir}: not writable")


def _check_shared(workdir: str) -> None:
    """In a multi-process run, refuse (every process, one line) a work directory that is not
    the same for all processes, e.g. a local folder on each host's own disk: process 0 writes a
    marker file there, and every process must read it back."""
    if not agreement.multi_process():
        return
    token = int(multihost_utils.broadcast_one_to_all(np.int64(secrets.randbits(62))))
    marker = storage.join(workdir, f".shared-{token:x}")
    text = f"{socket.gethostname()}\n"
    try:
        with agreement.agreed():  # process 0 could not write it: said by all
            if jax.process_index() == 0:
                storage.write_text(marker, text)
        error = None
        try:
            seen = storage.isfile(marker)
        except OSError:
            seen = False
        if not seen:
            error = ConfigError(
                f"--workdir {workdir} is not shared by all hosts: host {socket.gethostname()} "
                "does not see the file process 0 wrote there; put the work directory on "
                "storage every host reads (gs://BUCKET/PATH or a shared filesystem)"
            )
        agreement.agree(error)
    finally:
        if jax.process_index() == 0:
            with contextlib.suppress(OSError):
                storage.remove(marker)


def _has_checkpoints(directory: str) -> bool:
    return storage.isdir(directory) and any(n.isdigit() for n in storage.listdir(directory))


def _check_data(source) -> None:
    """Stop every process (one line) if one met more unreadable training videos than allowed.
    `source` is the training pipeline's own iterator (`data.pipeline.TrainIterator`, under the
    device feed, which may have read ahead of the step: the check then stops early, never late).
    A collective when there are several processes (their iterators keep such errors until
    asked); with one the iterator has raised already."""
    error = getattr(source, "error", None)
    if error is not None:
        logging.error("%s", error)  # the full list of videos, on the process that met them
    agreement.agree(None if error is None else _data_error(error))


def _data_error(error: Exception) -> Exception:
    if isinstance(error, VideoReadError):
        return RunError(error_line(error).rstrip(":") + " (listed above)")
    return error


def _check_finite(state, ckpt: TrainCheckpoints) -> None:
    """Stop (a RunError) if a step so far had a non-finite loss or update: a host sync, made
    only where metrics are fetched anyway or before a save or an evaluation."""
    bad = int(jax.device_get(state.nonfinite_step))
    if bad:
        ckpt.wait()
        last = ckpt.latest_step()
        kept = f"checkpoint {last} is the last one (finite)" if last else "nothing was saved"
        raise RunError(
            f"the loss or the update was not finite at step {bad}; stopped there, {kept}; "
            "lower config.optim.lr or check the data"
        )


def _start_state(ckpt, workdir, abstract, state_shardings, data_iterator):
    """(state, step) of the newest checkpoint that restores, or (None, 0)."""
    found = ckpt.restore_latest(with_shardings(abstract, state_shardings), data_iterator)
    if found is None:
        return None, 0
    step, state = found
    logging.info("Resuming from step %d", step)
    with agreement.agreed():  # process 0 rewrites metrics.jsonl
        drop_after(workdir, step)
    return state, int(step)


def _next_batch(data_iterator) -> dict:
    try:
        return next(data_iterator)
    except VideoReadError as e:
        # The full list of unreadable videos goes to the log; the error is its first line.
        logging.error("%s", e)
        raise _data_error(e) from e


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, resume_changed: Sequence[str] = ()
) -> dict:
    """Train as `config` says, in `workdir` (resuming if it holds checkpoints of a run with the
    same config, up to the fields named in `resume_changed`); return the protocol's final
    metrics (empty when stopped by SIGTERM or Ctrl-C)."""
    # From the start: a SIGTERM during compilation counts. On any exit, `cleanup` waits for the
    # save in flight, closes the checkpoint manager and shuts the data workers down.
    with _Preemption() as preemption, contextlib.ExitStack() as cleanup:
        return _train_and_evaluate(config, workdir, preemption, resume_changed, cleanup)


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    preemption: _Preemption,
    resume_changed: Sequence[str],
    cleanup: contextlib.ExitStack,
) -> dict:
    workdir = storage.abspath(workdir)
    with agreement.agreed():
        _make_workdir(workdir)
    _check_shared(workdir)
    cleanup.enter_context(run_lock.hold(workdir))  # one run per workdir, released last
    with agreement.agreed():  # what one process reads (its copy of the lists) stops all
        config = prepare_config(config, workdir)
        check_lists(config)  # every list against its class list, before anything compiles
        if _has_checkpoints(storage.join(workdir, "checkpoints")) and storage.isfile(
            storage.join(workdir, RUN_CONFIG_FILE)
        ):
            check_resume(storage.join(workdir, RUN_CONFIG_FILE), config, resume_changed)
        save_config(workdir, config)
        class_names, annotations = training_set(config)
        num_videos = _count_training_videos(config, annotations)
    plan = StepPlan.from_config(config, num_videos)  # steps per epoch, lr schedule, dropped tail
    if plan.problem():
        raise ConfigError(f"config.data.train_list / config.batch_size: {plan.problem()}")
    steps_per_epoch, total_steps = plan.steps_per_epoch, plan.total_steps

    model_config, init_params, clip_params = initial_model(config)
    model = video_model(config, model_config)
    tokens = prompt_tokens(model_config, class_names)
    schedule, tx = optimizer(config, plan)
    mesh = sharding.create_mesh()
    abstract = abstract_state(init_params, tx)
    step_fn, state_shardings = sharded_train_step(
        config, model, tx, schedule, num_classes=len(class_names), mesh=mesh, abstract=abstract
    )
    trained, frozen = split_frozen(init_params)
    logging.info(
        "Training %s (%s, %s parameters, %s of them trained) on %d videos of %d classes: %d "
        "steps of %d clips (%d per epoch), %d devices, %d processes",
        model_config.model,
        config.model_variant,
        f"{_count(trained) + _count(frozen):,}",
        f"{_count(trained):,}",
        num_videos,
        len(class_names),
        total_steps,
        config.batch_size,
        steps_per_epoch,
        jax.device_count(),
        jax.process_count(),
    )

    # Step batches placed on the devices two ahead of the step (train/feed.py).
    batch_sharding = sharding.batch_sharding(mesh, 1)
    with agreement.agreed():
        source = create_train_iterator(
            config.data,
            batch_size=config.batch_size // jax.process_count(),
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            annotations=annotations,
            clips_per_epoch=plan.clips_per_epoch,
        )
    data_iterator = DeviceFeed(
        source,
        functools.partial(
            _step_batch, accum=config.grad_accum_steps, batch_sharding=batch_sharding
        ),
    )
    cleanup.callback(data_iterator.close)
    ckpt = TrainCheckpoints(
        storage.join(workdir, "checkpoints"),
        keep_last=config.checkpoint.keep_last,
        keep_best=config.checkpoint.keep_best,
    )
    cleanup.callback(ckpt.close)
    cleanup.callback(ckpt.wait)
    state, start = _start_state(ckpt, workdir, abstract, state_shardings, data_iterator)
    if state is None:
        state = create_train_state(init_params, tx, state_shardings)
    del init_params

    validate, val_epochs = None, set(validation_epochs(config.num_epochs, config.eval.every_epochs))
    for spec in eval_plan(config).role(SELECT):  # the validation the best checkpoint is kept by
        validate = spec_evaluator(config, spec, model, mesh, class_names)

    with agreement.agreed():
        writer = MetricWriter(workdir)
    rng = jax.random.key(config.seed)
    progress = tqdm.tqdm(
        total=total_steps,
        initial=start,
        desc="train",
        disable=not (config.progress_bar and jax.process_index() == 0),
        dynamic_ncols=True,
    )
    stopped = False
    log_start, log_step = time.perf_counter(), start
    profiler = StepProfiler(workdir, config.get("profile_steps", 0), start)
    cleanup.callback(profiler.stop)
    in_flight = None  # the previous step's metrics
    for step in range(start + 1, total_steps + 1):
        batch = _next_batch(data_iterator)
        profiler.step_started(step)
        state, metrics = step_fn(state, batch, tokens, rng)
        profiler.step_done(step, (state, metrics))
        # At most two steps queued on the devices: the loop keeps their pace, so a step that
        # finds no batch ready (feed.take_waits) means the devices wait for data.
        jax.block_until_ready(in_flight)
        in_flight = metrics
        progress.update(1)
        epoch_end = step % steps_per_epoch == 0
        epoch = step // steps_per_epoch
        log_now = step % config.log_every_steps == 0 or step == total_steps
        if log_now:
            _check_data(source)  # first: a process's zero batches may be what went wrong
            _check_finite(state, ckpt)
            metrics = jax.device_get(metrics)
            elapsed = time.perf_counter() - log_start
            clips_per_sec = (step - log_step) * config.batch_size / max(elapsed, 1e-9)
            if log_step == start:  # the first of this start: what compiling the step cost
                logging.info("%s", compile_cache.LOG.summary())
            log_start, log_step = time.perf_counter(), step
            waits = data_iterator.take_waits()
            if waits.seconds >= INPUT_BOUND_LOG_SHARE * elapsed:  # not for a few ms of waiting
                logging.info("%s", waits.line(elapsed))
            input_bound = {"input_bound": waits.share, "input_wait_s": waits.seconds}
            record = {**metrics, "clips_per_sec": clips_per_sec, **input_bound, "epoch": epoch}
            with agreement.agreed():  # process 0 writes; a full disk there stops all
                writer.write(step, record)
            progress.set_postfix(
                loss=f"{metrics['loss']:.4f}",
                lr=f"{metrics['lr']:.3g}",
                clips_s=f"{clips_per_sec:.1f}",
            )
        val_metrics = None
        if validate is not None and epoch_end and epoch in val_epochs:
            _check_data(source)
            _check_finite(state, ckpt)
            val_metrics = validate(state.params)
            with agreement.agreed():
                writer.write(step, {**val_metrics, "epoch": epoch}, prefix="val/")
            logging.info("Epoch %d validation: %s", epoch, val_metrics)
        if (
            val_metrics is not None
            or step % config.checkpoint.every_steps == 0
            or step == total_steps
        ):
            if not log_now:  # (a logging step has just checked)
                _check_data(source)
            _check_finite(state, ckpt)
            ckpt.save(step, state, data_iterator, metrics=val_metrics)
        # Processes agree on stopping at logging steps (a collective), one process each step.
        if (log_now or jax.process_count() == 1) and preemption.agreed():
            if ckpt.latest_step() != step:
                _check_data(source)
                _check_finite(state, ckpt)
                ckpt.save(step, state, data_iterator)
            stopped = True
            break
    progress.close()
    data_iterator.close()
    ckpt.wait()
    if stopped:
        logging.info("%s", compile_cache.LOG.summary())
        logging.warning("Stopped at step %d; run the same command to resume.", step)
        writer.close()
        return {}

    final = _finish(config, workdir, ckpt, abstract, state_shardings, model_config, mesh)
    params = final.pop("params")
    metrics = evaluate_protocol(
        config, params, mesh, model_config=model_config, clip_params=clip_params,
        analysis_dir=storage.join(workdir, "analysis"),
    )  # fmt: skip
    table = format_results(metrics)
    with agreement.agreed():  # process 0 writes; a failure there stops all
        if jax.process_index() == 0:
            print(table, flush=True)
            path = storage.join(workdir, FINAL_METRICS_FILE)
            with diskspace.writing(path):
                storage.write_text(path, json.dumps({**metrics, **final}, indent=2))
        writer.write(final["step"], flat_metrics(metrics), prefix="final/")
    writer.close()
    logging.info("%s", compile_cache.LOG.summary())
    return metrics


def _finish(config, workdir, ckpt, abstract, state_shardings, model_config, mesh) -> dict:
    """Export the best (or only, or last) weights to `workdir/model`; return them."""
    step = ckpt.best_step()
    state = ckpt.restore(step, with_shardings(abstract, state_shardings))
    info = {
        "step": int(step),
        "validation": ckpt.metrics(step),
        "protocol": config.protocol,
        "model_variant": config.model_variant,
        "init_checkpoint": config.init_checkpoint,
    }
    export_model(
        storage.join(workdir, MODEL_DIR),
        model_config,
        state.params,
        mesh,
        info,
        normalization=config.data.normalization,  # what the weights were trained with
    )
    logging.info("Exported the weights of step %d to %s", step, storage.join(workdir, MODEL_DIR))
    return {"params": state.params, "step": int(step)}
