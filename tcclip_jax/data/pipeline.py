"""grain pipelines: training batches, evaluation batches with views, and one video's views.

Training: the annotation list is shuffled afresh every epoch (one permutation shared by all
processes, seeded by `seed`), then process p takes positions p, p + P, p + 2P, ... of the endless
shuffled stream, so processes read disjoint parts of every epoch and together cover it. Each clip's
frame sampling and augmentation draw from an rng seeded by (seed, epoch, video index), so a clip
does not depend on the number of processes, workers or threads. Worker processes
(`num_workers`) each decode every num_workers-th clip and assemble whole batches; unreadable videos
are skipped there and reported with the batch, counted and logged here, and past `max_bad_videos`
the run stops with an error listing them (in a multi-process run the limit is counted per
process, and a process past it feeds zero batches until the processes agree to stop at the next
check; see `TrainIterator`). The iterator's state (grain's positions plus the skipped
videos) is JSON, so `get_state`/`set_state` and orbax's `grain.checkpoint.CheckpointSave/Restore`
resume exactly: the restored iterator yields the batches the uninterrupted one would have.

Evaluation: every process gets videos p, p + P, ... padded with `valid=False` entries to the same
number of full batches, so shapes are static for jit and no video is dropped. An unreadable
evaluation video is delivered as a row of zeros listed under the batch's `unreadable`
((position, message) pairs): the evaluator counts it as a miss and names it
(`evaluation.accuracy`), so the denominator stays the list's length.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Callable, Sequence

import grain
import ml_collections
import numpy as np
from absl import flags, logging

from tcclip_jax.data import sampling, transforms, workers
from tcclip_jax.data.classes import load_class_names
from tcclip_jax.data.config import NORMALIZATIONS, normalization_stats
from tcclip_jax.data.readers import (
    Entries,
    Entry,
    FrameFolderReader,
    Reader,
    VideoFileReader,
    check_entries,
    entries_from_pairs,
    make_reader,
)
from tcclip_jax.data.video_decode import VideoReadError


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """The config fields that shape a clip, as plain values (pickled into worker processes)."""

    num_frames: int
    image_size: int
    resize_size: int
    crop_scales: tuple[float, ...]
    max_wh_scale_gap: int
    hflip: bool
    color_jitter_p: float
    color_jitter: tuple[float, ...]
    color_jitter_per_frame: bool
    grayscale_p: float
    normalization: str
    uint8_output: bool
    test_clips: int
    test_crops: int
    test_clip_sampling: str

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, *, validate: bool = True) -> ClipSpec:
        spec = cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})
        spec = dataclasses.replace(
            spec,
            crop_scales=tuple(spec.crop_scales),
            color_jitter=tuple(spec.color_jitter),
        )
        if validate:
            spec.validate()
        return spec

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid data config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is out of range, one 'field must ...' phrase each."""
        problems = []
        if self.num_frames < 1:
            problems.append(f"num_frames must be positive, got {self.num_frames}")
        if self.image_size > self.resize_size:
            problems.append(f"image_size {self.image_size} exceeds resize_size {self.resize_size}")
        if self.test_crops not in (1, 3):
            problems.append(f"test_crops must be 1 or 3, got {self.test_crops}")
        if self.test_clips < 1:
            problems.append(f"test_clips must be positive, got {self.test_clips}")
        if self.test_clip_sampling not in ("uniform", "tsn_random"):
            problems.append(
                "test_clip_sampling must be 'uniform' or 'tsn_random', "
                f"got {self.test_clip_sampling!r}"
            )
        if len(self.color_jitter) != 4:
            problems.append(f"color_jitter needs 4 strengths, got {self.color_jitter}")
        if self.normalization not in NORMALIZATIONS:
            problems.append(
                f"normalization must be one of {sorted(NORMALIZATIONS)}, got {self.normalization!r}"
            )
        return problems

    @property
    def num_views(self) -> int:
        return self.test_clips * self.test_crops

    def finish(self, frames: np.ndarray) -> np.ndarray:
        """The model's view of uint8 frames: as they are, or normalised float32."""
        if self.uint8_output:
            return frames
        return transforms.normalize(frames, *normalization_stats(self.normalization))

    def output_dtype(self) -> type:
        return np.uint8 if self.uint8_output else np.float32


def _num_classes(cfg: ml_collections.ConfigDict) -> int | None:
    return len(load_class_names(cfg.class_list)) if cfg.class_list else None


def _entries(
    cfg: ml_collections.ConfigDict,
    reader: Reader,
    list_file: str,
    annotations: Sequence[tuple[str, int]] | None,
) -> Entries:
    if annotations is not None:
        return check_entries(entries_from_pairs(annotations, "annotations"), _num_classes(cfg))
    return reader.entries(list_file, _num_classes(cfg))


def num_examples(
    cfg: ml_collections.ConfigDict,
    split: str = "train",
    annotations: Sequence[tuple[str, int]] | None = None,
) -> int:
    """Videos in the training ('train') or evaluation ('val') list, all processes together."""
    list_file = cfg.train_list if split == "train" else cfg.val_list
    return len(_entries(cfg, make_reader(cfg, split), list_file, annotations))


@dataclasses.dataclass(frozen=True)
class _Failure:
    """An unreadable training video, passed along in place of its example."""

    video_index: int
    message: str


@dataclasses.dataclass(frozen=True)
class _TrainExample:
    """(epoch, video index) -> {'video': [T, S, S, 3], 'label': int32}, or a _Failure."""

    entries: Entries
    reader: Reader
    spec: ClipSpec
    seed: int

    def __call__(self, element: tuple[int, int]) -> dict | _Failure:
        epoch, index = element
        spec, entry = self.spec, self.entries[index]
        rng = np.random.default_rng((self.seed, epoch, index))
        try:
            frames = self.reader.read(
                entry, lambda n: sampling.train_indices(n, spec.num_frames, rng), spec.resize_size
            )
        except VideoReadError as e:
            return _Failure(index, str(e))
        frames = transforms.train_augment(
            frames,
            output_size=spec.image_size,
            scales=spec.crop_scales,
            max_wh_scale_gap=spec.max_wh_scale_gap,
            hflip=spec.hflip,
            jitter_p=spec.color_jitter_p,
            jitter=spec.color_jitter,
            per_frame_jitter=spec.color_jitter_per_frame,
            grayscale_p=spec.grayscale_p,
            rng=rng,
        )
        return {"video": spec.finish(frames), "label": np.int32(entry.label)}


@dataclasses.dataclass(frozen=True)
class _EpochPositions:
    """Position p of the training stream -> (epoch, video index): epoch e takes the first
    `per_epoch` videos of its own shuffle of the `length` videos (wrapping around past the end,
    as the published DistributedSampler pads an epoch) and never reads the rest, as the
    published trainer drops an epoch's last incomplete accumulation group."""

    length: int
    per_epoch: int
    shuffled: grain.MapDataset  # the shuffles of every epoch, one after another

    def __call__(self, position: int, _) -> tuple[int, int]:
        epoch, k = divmod(position, self.per_epoch)
        return epoch, self.shuffled[epoch * self.length + k % self.length]


class _SkipFailuresAndBatch(grain.IterDataset):
    """Batches examples, leaving out _Failures and listing them under the batch's '_failures'."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, max_failures: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self._max_failures = max_failures

    def __iter__(self) -> grain.DatasetIterator:
        return _SkipFailuresAndBatchIterator(
            self._parent.__iter__(), self._batch_size, self._max_failures
        )


class _SkipFailuresAndBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, max_failures: int):
        super().__init__(parent)
        self._batch_size = batch_size
        self._max_failures = max_failures

    def __next__(self) -> dict:
        examples, failures = [], []
        while len(examples) < self._batch_size:
            element = next(self._parent)
            if isinstance(element, _Failure):
                failures.append([element.video_index, element.message])
                if len(failures) > self._max_failures:  # the counter downstream never would
                    raise _too_many(failures, self._max_failures)
            else:
                examples.append(element)
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        batch["_failures"] = failures
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state) -> None:
        self._parent.set_state(state)


def _too_many(failures: list, limit: int) -> VideoReadError:
    listing = "\n".join(f"  {message}" for _, message in failures)
    return VideoReadError(
        f"{len(failures)} unreadable training videos, more than max_bad_videos={limit}:\n{listing}"
    )


class _CountFailures(grain.IterDataset):
    """Removes '_failures' from batches, logs and counts them, and stops past the limit."""

    def __init__(self, parent: grain.IterDataset, max_failures: int, filler=None):
        super().__init__(parent)
        self._max_failures = max_failures
        self._filler = filler

    def __iter__(self) -> TrainIterator:
        return TrainIterator(self._parent.__iter__(), self._max_failures, self._filler)


@dataclasses.dataclass(frozen=True)
class _ZeroBatch:
    """A batch of zeros shaped as the training batches (see TrainIterator)."""

    batch_size: int
    spec: ClipSpec

    def __call__(self) -> dict:
        s = self.spec
        shape = (self.batch_size, s.num_frames, s.image_size, s.image_size, 3)
        return {
            "video": np.zeros(shape, s.output_dtype()),
            "label": np.zeros(self.batch_size, np.int32),
        }


class TrainIterator(grain.DatasetIterator):
    """Endless training batches; `skipped` lists [video index, message] of unreadable videos.

    Past `max_failures` it raises a VideoReadError listing them, or, with a `filler` (a
    multi-process run, where one process must not stop alone), keeps the error in `error` and
    yields `filler()` batches (zeros) from then on, so that this process goes on taking part in
    the training steps until the processes agree to stop (`train.loop`, before any save).
    """

    def __init__(self, parent: grain.DatasetIterator, max_failures: int, filler=None):
        super().__init__(parent)
        self._max_failures = max_failures
        self._filler = filler
        self.skipped: list[list] = []
        self.error: Exception | None = None

    def __next__(self) -> dict:
        if self.error is not None:
            return self._filler()
        try:
            batch = next(self._parent)
        except StopIteration:
            raise
        except Exception as e:
            if self._filler is None:
                raise
            self.error = e  # the reading stopped: nothing more comes from it
            return self._filler()
        for index, message in batch.pop("_failures"):
            logging.warning("skipped unreadable training video %d: %s", index, message)
            self.skipped.append([index, message])
        if len(self.skipped) > self._max_failures:
            error = _too_many(self.skipped, self._max_failures)
            if self._filler is None:
                raise error
            self.error = error
        return batch

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "skipped": list(self.skipped)}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self.skipped = [list(s) for s in state["skipped"]]


def worker_count(cfg: ml_collections.ConfigDict) -> int:
    """`cfg.num_workers` as a count ('auto': from this host's cores, `workers.auto_workers`)."""
    return workers.num_workers(cfg.num_workers, cfg.get("num_threads", 1))


def prefetch(ds: grain.IterDataset, cfg: ml_collections.ConfigDict) -> grain.IterDataset:
    """Worker processes when configured, otherwise a thread assembling batches ahead."""
    count = worker_count(cfg)
    if count > 0:
        # grain reads its absl flags when starting workers and fails if they were never parsed
        # (as when not running under absl.app.run, e.g. in tests or notebooks).
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(
            num_workers=count, per_worker_buffer_size=cfg.prefetch
        )
        return ds.mp_prefetch(options, worker_init_fn=workers.leave_interrupts_to_the_parent)
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=cfg.prefetch)


def _read_options(cfg: ml_collections.ConfigDict, elements_ahead: int) -> grain.ReadOptions:
    return grain.ReadOptions(
        num_threads=cfg.num_threads, prefetch_buffer_size=max(elements_ahead, cfg.num_threads)
    )


def create_train_iterator(
    cfg: ml_collections.ConfigDict,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    annotations: Sequence[tuple[str, int]] | None = None,
    clips_per_epoch: int | None = None,
) -> TrainIterator:
    """Endless {'video': [b, T, S, S, 3], 'label': int32 [b]} batches for this process.

    `batch_size` is per process. `annotations` ((path, label) pairs, e.g. a few-shot subset)
    replaces the configured training list. `clips_per_epoch` (all processes together; None: all
    the videos) is how many videos of each epoch's shuffle are read, the rest dropped
    (`train.optim.StepPlan.clips_per_epoch`). With several processes, a reading failure does not
    raise: it is kept in the iterator's `error` (see `TrainIterator`). Close the iterator
    (`.close()`) when done.
    """
    spec = ClipSpec.from_config(cfg)
    reader = make_reader(cfg, "train")
    entries = _entries(cfg, reader, cfg.train_list, annotations)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    n = len(entries)
    per_epoch = clips_per_epoch or n
    shuffled = grain.MapDataset.range(n).shuffle(seed=seed).repeat()
    ds = grain.MapDataset.range(per_epoch).repeat()
    ds = ds.map_with_index(_EpochPositions(n, per_epoch, shuffled))
    ds = ds[process_index::process_count]
    ds = ds.map(_TrainExample(entries, reader, spec, seed))
    ds = ds.to_iter_dataset(_read_options(cfg, batch_size))
    ds = _SkipFailuresAndBatch(ds, batch_size, cfg.max_bad_videos)
    ds = prefetch(ds, cfg)
    filler = _ZeroBatch(batch_size, spec) if process_count > 1 else None
    return iter(_CountFailures(ds, cfg.max_bad_videos, filler))


def view_seed(path: str) -> int:
    """The seed of a video's random test views: the CRC-32 of its file name without extension
    (or frame folder name), so a video gets the same views in every list, batch and process
    layout, as a file or as frames, and in `predict`."""
    name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    return zlib.crc32(name.encode())


def eval_views(
    reader, entry: Entry, spec: ClipSpec, on_short: Callable | None = None
) -> np.ndarray:
    """[V, T, S, S, 3] uint8 views, V = clips x crops (clip-major); `on_short(n)` is told the
    frame count of a video with fewer frames than the model's (its frames then repeat)."""
    rng = None
    if spec.test_clip_sampling == "tsn_random":
        rng = np.random.default_rng(view_seed(entry.path))

    def pick(n):
        if on_short is not None and n < spec.num_frames:
            on_short(n)
        idx = sampling.view_indices(
            n, spec.num_frames, spec.test_clips, spec.test_clip_sampling, rng
        )
        return idx.reshape(-1)

    # The short side the crops are cut at (see transforms.test_crops): resized while decoding.
    short_side = spec.resize_size if spec.test_crops == 1 else spec.image_size
    frames = reader.read(entry, pick, short_side)
    views = transforms.test_crops(frames, spec.test_crops, spec.image_size, spec.resize_size)
    s = spec.image_size
    views = views.reshape(spec.test_crops, spec.test_clips, spec.num_frames, s, s, 3)
    return views.transpose(1, 0, 2, 3, 4, 5).reshape(spec.num_views, spec.num_frames, s, s, 3)


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
    """Positions in the list (-1: padding) -> one evaluation batch."""

    entries: Entries
    reader: Reader
    spec: ClipSpec

    def __call__(self, positions: Sequence[int]) -> dict:
        spec, s = self.spec, self.spec.image_size
        video = np.zeros(
            (len(positions), spec.num_views, spec.num_frames, s, s, 3), spec.output_dtype()
        )
        label = np.full(len(positions), -1, np.int32)
        unreadable = []
        for i, p in enumerate(positions):
            if p >= 0:
                try:
                    video[i] = spec.finish(eval_views(self.reader, self.entries[p], spec))
                except VideoReadError as e:
                    unreadable.append((int(p), str(e)))
                label[i] = self.entries[p].label
        index = np.asarray(positions, np.int32)
        return {
            "video": video, "label": label, "index": index, "valid": index >= 0,
            "unreadable": unreadable,
        }  # fmt: skip


def create_eval_dataset(
    cfg: ml_collections.ConfigDict,
    *,
    batch_size: int,
    annotation_file: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Deterministic evaluation batches for this process; iterate it once per evaluation.

    Batches hold 'video' [b, V, T, S, S, 3], 'label' int32 (-1 for padding), 'index' int32 (the
    video's position in the annotation list; -1 for padding), 'valid' bool and 'unreadable'
    ((position, message) of each video that could not be read; its row is zeros). Every process
    yields the same number of batches. `annotation_file` replaces the configured `val_list`
    (formats 'video' and 'frames'; tfds records carry the list they were packed from).
    """
    spec = ClipSpec.from_config(cfg)
    reader = make_reader(cfg, "val")
    entries = _entries(cfg, reader, annotation_file or cfg.val_list, None)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    mine = list(range(process_index, len(entries), process_count))
    num_batches = math.ceil(math.ceil(len(entries) / process_count) / batch_size)
    positions = mine + [-1] * (num_batches * batch_size - len(mine))
    batches = [positions[i * batch_size : (i + 1) * batch_size] for i in range(num_batches)]
    ds = grain.MapDataset.source(batches).map(_EvalBatch(entries, reader, spec))
    # Elements are whole batches, so the reading threads already work ahead.
    ds = ds.to_iter_dataset(_read_options(cfg, cfg.num_threads))
    return prefetch(ds, cfg) if worker_count(cfg) > 0 else ds


def load_test_views(
    path: str, cfg: ml_collections.ConfigDict, on_short: Callable[[int], None] | None = None
) -> np.ndarray:
    """[V, T, S, S, 3] test views of one video file (or frame folder), ready for the model;
    `on_short(frame_count)` is called if it has fewer frames than `cfg.num_frames`."""
    spec = ClipSpec.from_config(cfg)
    if os.path.isdir(path):
        reader = FrameFolderReader("", cfg.frame_template, cfg.frame_start_index)
    else:
        reader = VideoFileReader("", cfg.decode_threads)
    entry = Entry(path, -1, "the command line")
    return spec.finish(eval_views(reader, entry, spec, on_short))
