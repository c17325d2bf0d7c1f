"""Where a clip's frames come from: video files, frame folders, or packed tfds ArrayRecord shards.

Every `Reader` lists the entries of an annotation list (`entries`) and maps an `Entry` (one
annotation line) and a frame picker `pick(num_frames) -> indices` to uint8 RGB frames
[K, H, W, 3], resized to a given short side (or as stored). `READERS` maps each
`data.format` to its reader; `make_reader(cfg, split)` builds the one a data config names.
Readers are pickled into grain worker processes, so they hold only paths and open files lazily.
Video files, frame folders and lists may be on object storage (`gs://`, `runtime.storage`): a
video is then read whole into memory and decoded from there.
"""

from __future__ import annotations

import abc
import collections.abc
import dataclasses
import io
import re
import string
from collections.abc import Callable, Sequence
from typing import ClassVar

import ml_collections
import numpy as np
from PIL import Image

from tcclip_jax.data.classes import AnnotationError, read_annotation_entries
from tcclip_jax.data.transforms import resize_short_side
from tcclip_jax.data.video_decode import VideoReadError, decode_frames
from tcclip_jax.runtime import storage

Picker = Callable[[int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One video: its path as the annotation list has it, its label, and where it was listed."""

    path: str
    label: int
    where: str


class Entries(collections.abc.Sequence):
    """Entries kept as one byte string and arrays, so that pickling a list of hundreds of
    thousands of videos into every worker process takes milliseconds, not seconds.

    Entry i is listed at `where.format(numbers[i])`, e.g. 'train.txt:{}' with line numbers.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], where: str, numbers=None):
        encoded = [p.encode() for p in paths]
        self._paths = b"".join(encoded)
        self._offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int64)
        self.labels = np.asarray(labels, np.int64).reshape(-1)
        self._where = where
        self._numbers = np.arange(len(encoded)) if numbers is None else np.asarray(numbers)
        if not len(self.labels) == len(encoded) == len(self._numbers):
            raise ValueError("paths, labels and numbers differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # bounds and negative indices as for lists
        path = self._paths[self._offsets[i] : self._offsets[i + 1]].decode()
        return Entry(path, int(self.labels[i]), self._where.format(int(self._numbers[i])))


def _literal(text: str) -> str:
    """`text` as a literal part of a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


def entries_from_list(path: str, num_classes: int | None) -> Entries:
    rows = read_annotation_entries(path, num_classes)
    where = _literal(path) + ":{}"
    return Entries([r[0] for r in rows], [r[1] for r in rows], where, [r[2] for r in rows])


def entries_from_pairs(pairs: Sequence[tuple[str, int]], origin: str) -> Entries:
    return Entries(
        [p for p, _ in pairs], [int(label) for _, label in pairs], _literal(origin) + "[{}]"
    )


class Reader(abc.ABC):
    """The frames of the entries of an annotation list, in one storage format."""

    # Whether the entries' paths are relative to `data.root` (which must then be a folder).
    uses_root: ClassVar[bool] = True
    # Whether the storage holds its own annotation list (no list file is read).
    carries_list: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, split: str) -> Reader:
        """The reader of a data config; `split` ('train' or 'val') for formats with splits."""

    def entries(self, list_file: str, num_classes: int | None) -> Entries:
        """The entries of the annotation list (or of the storage's own, if it `carries_list`),
        every label checked against `num_classes` if given."""
        return check_entries(self._list_entries(list_file, num_classes), num_classes)

    def _list_entries(self, list_file: str, num_classes: int | None) -> Entries:
        if not list_file:
            raise AnnotationError("no annotation list configured (train_list / val_list)")
        return entries_from_list(list_file, num_classes)

    @abc.abstractmethod
    def read(self, entry: Entry, pick: Picker, short_side: int | None = None) -> np.ndarray:
        """uint8 frames `pick(n)` of the entry's n frames, at `short_side` if given."""

    @staticmethod
    def present(root: str, path: str) -> bool:
        """Whether the listed video `path` is stored under `root` (the dry run counts)."""
        return storage.isfile(storage.join(root, path))


def check_entries(entries: Entries, num_classes: int | None) -> Entries:
    """`entries`, if there are some and every label is a class (0..num_classes-1 if given)."""
    if not len(entries):
        raise AnnotationError("no videos to read: the annotations are empty")
    outside = (entries.labels < 0) | (entries.labels >= (num_classes or np.inf))
    if outside.any():
        e = entries[int(np.argmax(outside))]
        raise AnnotationError(f"{e.where}: label {e.label} is outside the class list")
    return entries


def _check_root(root: str) -> None:
    if not storage.isdir(root):
        raise AnnotationError(f"data root {root!r} is not a directory")


def _existing_file(root: str, entry: Entry) -> str:
    path = storage.join(root, entry.path)
    if not storage.isfile(path):
        raise VideoReadError(f"{path}: no such video file (listed at {entry.where})")
    if storage.getsize(path) == 0:
        raise VideoReadError(f"{path}: empty file (listed at {entry.where})")
    return path


class VideoFileReader(Reader):
    """Videos under `root`, decoded with PyAV (only the sampled frames)."""

    def __init__(self, root: str, decode_threads: int = 1):
        self.root = root
        self.decode_threads = decode_threads

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, split: str) -> VideoFileReader:
        _check_root(cfg.root)
        return cls(cfg.root, cfg.decode_threads)

    def read(self, entry: Entry, pick: Picker, short_side: int | None = None) -> np.ndarray:
        path = _existing_file(self.root, entry)
        source = path
        if storage.is_remote(path):
            try:
                source = storage.read_bytes(path)
            except OSError as e:
                raise VideoReadError(
                    f"{path}: cannot read: {e} (listed at {entry.where})"
                ) from None
        try:
            return decode_frames(
                source, pick, name=path, threads=self.decode_threads, short_side=short_side
            )
        except VideoReadError as e:
            raise VideoReadError(f"{e} (listed at {entry.where})") from None


def _template_regex(template: str) -> re.Pattern:
    """'img_{:05d}.jpg' -> ^img_(\\d+)\\.jpg$ (the template must have exactly one field)."""
    parts = list(string.Formatter().parse(template))
    fields = [p for p in parts if p[1] is not None]
    if len(fields) != 1:
        raise ValueError(f"frame_template {template!r} must have exactly one {{}} field")
    prefix = "".join(p[0] for p in parts[: parts.index(fields[0]) + 1])
    suffix = "".join(p[0] for p in parts[parts.index(fields[0]) + 1 :])
    return re.compile(f"^{re.escape(prefix)}(\\d+){re.escape(suffix)}$")


def load_image(source: str | bytes) -> np.ndarray:
    """An image file (path or encoded bytes) as uint8 RGB."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # convert copies


class FrameFolderReader(Reader):
    """One image per frame in `root/<entry path>/`, named `template.format(start + i)`."""

    def __init__(self, root: str, template: str = "img_{:05d}.jpg", start_index: int = 1):
        self.root = root
        self.template = template
        self.start_index = start_index
        self._pattern = _template_regex(template)

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, split: str) -> FrameFolderReader:
        _check_root(cfg.root)
        return cls(cfg.root, cfg.frame_template, cfg.frame_start_index)

    @staticmethod
    def present(root: str, path: str) -> bool:
        return storage.isdir(storage.join(root, path))

    def read(self, entry: Entry, pick: Picker, short_side: int | None = None) -> np.ndarray:
        folder = storage.join(self.root, entry.path)
        listed = f" (listed at {entry.where})"
        if not storage.isdir(folder):
            raise VideoReadError(f"{folder}: no such frame folder{listed}")
        count = sum(1 for name in storage.listdir(folder) if self._pattern.match(name))
        if count == 0:
            raise VideoReadError(f"{folder}: no frames named like {self.template!r}{listed}")
        wanted = np.asarray(pick(count)).tolist()
        frames = {}
        for i in sorted(set(wanted)):
            path = storage.join(folder, self.template.format(self.start_index + i))
            try:
                frames[i] = load_image(
                    storage.read_bytes(path) if storage.is_remote(path) else path
                )
            except (OSError, ValueError) as e:
                raise VideoReadError(f"{path}: cannot read frame: {e}{listed}") from None
        shapes = {f.shape for f in frames.values()}
        if len(shapes) > 1:
            raise VideoReadError(f"{folder}: frames differ in size {sorted(shapes)}{listed}")
        return _resized(np.stack([frames[i] for i in wanted]), short_side)


class TfdsReader(Reader):
    """Records of a split written by `tfds_builder.TcclipVideos`, read with tfds.data_source.

    Records hold either JPEG frames already resized to the pipeline's short side (`frames`
    storage) or the original video file's bytes (`video` storage), and the split's metadata
    the annotation list it was packed from (so no list file is read).
    """

    uses_root = False
    carries_list = True

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, split: str) -> TfdsReader:
        tfds_split = cfg.tfds_train_split if split == "train" else cfg.tfds_val_split
        return cls(cfg.tfds_name, cfg.tfds_dir, tfds_split, cfg.decode_threads)

    def __init__(self, name: str, data_dir: str, split: str, decode_threads: int = 1):
        self.name, self.data_dir, self.split = name, data_dir, split
        self.decode_threads = decode_threads
        self._source = None
        self._index_of: dict[str, int] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None, "_index_of": None}

    @property
    def source(self):
        if self._source is None:
            import tensorflow_datasets as tfds  # heavy, and only this format needs it

            try:
                self._source = tfds.data_source(self.name, data_dir=self.data_dir, split=self.split)
            except Exception as e:  # tfds raises many kinds: name, version, split, files
                raise AnnotationError(
                    f"cannot open tfds dataset {self.name!r} split {self.split!r} in "
                    f"{self.data_dir!r}: {e}"
                ) from None
        return self._source

    def _list_entries(self, list_file: str, num_classes: int | None) -> Entries:
        """The annotation list the split was packed from, in record order (not `list_file`)."""
        split = self.source.dataset_info.metadata.get("splits", {}).get(self.split)
        if split is None:
            raise AnnotationError(
                f"tfds dataset {self.name!r} split {self.split!r} has no annotation metadata: "
                "was it written by tools/build_tfds_dataset.py?"
            )
        where = _literal(f"{self.name}[{self.split}]") + " record {}"
        return Entries(split["paths"], split["labels"], where)

    def record_index(self, entry: Entry) -> int:
        if self._index_of is None:
            self._index_of = {e.path: i for i, e in enumerate(self._list_entries("", None))}
        if entry.path not in self._index_of:
            raise AnnotationError(
                f"{entry.path} (listed at {entry.where}) is not in tfds dataset {self.name!r} "
                f"split {self.split!r}"
            )
        return self._index_of[entry.path]

    def read(self, entry: Entry, pick: Picker, short_side: int | None = None) -> np.ndarray:
        index = self.record_index(entry)
        record = self.source[index]
        name = f"{record['path'].decode()} ({self.name}[{self.split}] record {index})"
        if "video" in record:
            return decode_frames(
                record["video"], pick, name=name, threads=self.decode_threads, short_side=short_side
            )
        frames = decode_jpeg_frames(record["frames"], record["frame_offsets"], pick, name)
        return _resized(frames, short_side)  # a no-op at the short side the frames were packed at


def _resized(frames: np.ndarray, short_side: int | None) -> np.ndarray:
    return frames if short_side is None else resize_short_side(frames, short_side)


def decode_jpeg_frames(blob: bytes, offsets: np.ndarray, pick: Picker, name: str) -> np.ndarray:
    """Frames `pick(n)` of n JPEGs stored back to back in `blob`, frame i at offsets[i:i+2]."""
    wanted = np.asarray(pick(len(offsets) - 1)).tolist()
    frames = {}
    for i in sorted(set(wanted)):
        try:
            frames[i] = load_image(blob[offsets[i] : offsets[i + 1]])
        except (OSError, ValueError) as e:
            raise VideoReadError(f"{name}: cannot decode stored frame {i}: {e}") from None
    return np.stack([frames[i] for i in wanted])


# `data.format` -> its reader.
READERS: dict[str, type[Reader]] = {
    "video": VideoFileReader,
    "frames": FrameFolderReader,
    "tfds": TfdsReader,
}


def make_reader(cfg: ml_collections.ConfigDict, split: str) -> Reader:
    """The reader of `cfg.format`; `split` ('train' or 'val') picks the split where there are."""
    if cfg.format not in READERS:
        raise ValueError(f"data format must be one of {tuple(READERS)}, got {cfg.format!r}")
    return READERS[cfg.format].from_config(cfg, split)
