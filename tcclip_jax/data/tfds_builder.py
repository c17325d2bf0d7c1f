"""Pack videos listed in annotation lists into tfds ArrayRecord shards, for clusters and TPU hosts.

Records are written in annotation-list order (tfds shuffling disabled), one record a video:
- `frames` storage: every frame resized to the pipeline's short side (`resize_size`) and stored as
  JPEG, concatenated, with byte offsets; training decodes only the 16 sampled JPEGs, so this is
  the fast format (bigger on disk);
- `video` storage: the video file's bytes as they are, decoded like the file path (compact).
The annotation lists (paths, labels) go into the dataset's metadata, so readers need nothing but
the tfds directory. Writing and reading need no TensorFlow; read with `tfds.data_source(
"tcclip_videos/<name>", data_dir=...)` (see readers.TfdsReader). Frames are decoded with the same
code as the file path, so packed clips equal the file path's up to JPEG loss (exactly, for
`video` storage).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from tcclip_jax.data import workers
from tcclip_jax.data.readers import Entries, FrameFolderReader, VideoFileReader, entries_from_list
from tcclip_jax.data.video_decode import VideoReadError

STORAGES = ("frames", "video")


def _encode_entry(job) -> dict | str:
    """The record for one entry, or an error message when it cannot be read."""
    entry, reader, storage, resize_size, quality = job
    if storage == "video":
        path = os.path.join(reader.root, entry.path)
        try:
            reader.read(entry, lambda n: np.zeros(1, np.int64))  # readable at all?
        except VideoReadError as e:
            return str(e)
        with open(path, "rb") as f:
            return {"video": f.read(), "label": entry.label, "path": entry.path}
    try:
        frames = reader.read(entry, np.arange, resize_size)
    except VideoReadError as e:
        return str(e)
    blobs = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        blobs.append(buf.getvalue())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return {
        "frames": b"".join(blobs),
        "frame_offsets": offsets,
        "label": entry.label,
        "path": entry.path,
    }


class TcclipVideos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Videos of one or more annotation lists (one split each) in ArrayRecord shards."""

    VERSION = tfds.core.Version("1.0.0")
    # Nothing is downloaded, so there are no URL checksums to look up. (Looking them up
    # inspects this module's path, which needs the `importlib_resources` package for
    # builders defined inside a package; tfds does not depend on it.)
    url_infos = None

    def __init__(
        self,
        *,
        name: str,
        root: str,
        splits: dict[str, str],
        source_format: str = "video",
        storage: str = "frames",
        resize_size: int = 256,
        jpeg_quality: int = 90,
        frame_template: str = "img_{:05d}.jpg",
        frame_start_index: int = 1,
        num_workers: int = 1,
        skip_unreadable: bool = False,
        **kwargs,
    ):
        """`splits` maps split names to annotation lists of videos under `root`.

        `source_format` 'video' reads video files, 'frames' frame folders. Unreadable videos
        stop the build, or with `skip_unreadable` are left out and listed in the metadata.
        """
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if storage == "video" and source_format != "video":
            raise ValueError("storage='video' packs video files; it needs source_format='video'")
        if source_format == "video":
            self._reader = VideoFileReader(root)
        elif source_format == "frames":
            self._reader = FrameFolderReader(root, frame_template, frame_start_index)
        else:
            raise ValueError(f"source_format must be 'video' or 'frames', got {source_format!r}")
        self._root = root
        self._splits = splits
        self._storage = storage
        self._resize_size = resize_size
        self._quality = jpeg_quality
        self._num_workers = num_workers
        self._skip_unreadable = skip_unreadable
        super().__init__(
            config=tfds.core.BuilderConfig(name=name), file_format="array_record", **kwargs
        )

    def _info(self) -> tfds.core.DatasetInfo:
        common = {"label": tfds.features.Scalar(np.int64), "path": tfds.features.Text()}
        if self._storage == "video":
            media = {"video": tfds.features.Tensor(shape=(), dtype=np.object_)}
        else:
            media = {
                "frames": tfds.features.Tensor(shape=(), dtype=np.object_),
                "frame_offsets": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            }
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({**media, **common}),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        self.info.metadata.update(
            {"storage": self._storage, "resize_size": self._resize_size, "splits": {}}
        )
        return {
            split: self._generate_examples(split, entries_from_list(path, None))
            for split, path in self._splits.items()
        }

    def _generate_examples(self, split: str, entries: Entries):
        jobs = ((e, self._reader, self._storage, self._resize_size, self._quality) for e in entries)
        kept, skipped = [], []
        with contextlib.ExitStack() as stack:
            if self._num_workers > 1:
                with workers.starting_workers():
                    pool = multiprocessing.get_context("spawn").Pool(self._num_workers)
                stack.enter_context(pool)
                records = pool.imap(_encode_entry, jobs, chunksize=4)
            else:
                records = map(_encode_entry, jobs)
            for entry, record in zip(entries, records, strict=True):
                if isinstance(record, str):
                    if not self._skip_unreadable:
                        raise VideoReadError(record)
                    logging.warning("skipping unreadable video: %s", record)
                    skipped.append(record)
                    continue
                yield len(kept), record
                kept.append(entry)
        self.info.metadata["splits"][split] = {
            "paths": [e.path for e in kept],
            "labels": [e.label for e in kept],
            "skipped": skipped,
        }
