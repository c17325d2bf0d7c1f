"""Collections of videos for `predict` and `embed`: finding them, reading them ahead in worker
processes, and writing one result row per video as it is done, so that an interrupted run over
thousands of videos keeps its rows and `--resume` carries on where it stopped.

Inputs are video files, frame folders (one image per frame, as the 'frames' data format), folders
searched recursively for both, and list files (one path per line, relative to the list file or
absolute; a trailing integer label, as in annotation lists, is ignored).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence

import grain
import ml_collections
import numpy as np
from tqdm import tqdm

from tcclip_jax.apps.inference import Predictor, prompt_tokens
from tcclip_jax.data.classes import AnnotationError, load_class_names, read_text
from tcclip_jax.data.pipeline import ClipSpec, eval_views, prefetch
from tcclip_jax.data.readers import Entry, FrameFolderReader, VideoFileReader
from tcclip_jax.data.video_decode import VideoReadError, duration_seconds
from tcclip_jax.runtime.errors import UsageError

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
    ".ts", ".ogv",
)  # fmt: skip
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".csv")


def warn(message: str) -> None:
    """A warning on stderr that does not break a progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


# Class names -------------------------------------------------------------------------------


def read_class_names(path: str) -> list[str]:
    """Class names from a class CSV (`id,name`), the LLM JSON (`{"0": name}`) or a plain text
    file with one name per line (blank lines skipped)."""
    if path.lower().endswith((".csv", ".json")):
        return load_class_names(path)
    if not os.path.isfile(path):
        raise AnnotationError(f"class list {path} does not exist")
    names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not names:
        raise AnnotationError(f"{path}: the class list is empty")
    return names


def check_class_names(names: Sequence[str], origin: str) -> list[str]:
    names = [n.strip() for n in names]
    if not names:
        raise UsageError(f"no class names given ({origin})")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        raise UsageError(f"class names {blank} ({origin}, 1-based) are empty")
    repeated = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    if repeated:
        warn(f"duplicate class names ({origin}): {repeated}; they share their probability")
    return names


def class_names(labels: str | None, classes: Sequence[str] | None) -> tuple[list[str], str]:
    """(names, where they came from) of a `--labels FILE` / `--classes NAME...` pair."""
    origin = labels if labels is not None else "--classes"
    names = read_class_names(labels) if labels is not None else classes
    return check_class_names(names, origin), origin


def check_prompts(predictor: Predictor, names: Sequence[str], origin: str) -> None:
    """Every class name fits the model's prompt (checked before any video is decoded)."""
    for i, name in enumerate(names):
        try:
            prompt_tokens(predictor.config, [name])
        except ValueError as e:
            raise UsageError(f"class {i + 1} ({origin}): {e}") from None


# Finding videos ----------------------------------------------------------------------------


def _frame_pattern(template: str) -> re.Pattern:
    head, _, tail = template.partition("{")
    return re.compile(f"^{re.escape(head)}\\d+{re.escape(tail.partition('}')[2])}$")


def is_frame_folder(path: str, template: str) -> bool:
    pattern = _frame_pattern(template)
    return os.path.isdir(path) and any(pattern.match(n) for n in os.listdir(path))


def _read_list(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    videos = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) == 2 and parts[1].lstrip("-").isdigit() and not os.path.exists(line):
                line = parts[0]
            videos.append(line if os.path.isabs(line) else os.path.join(base, line))
    return videos


def find_videos(inputs: Sequence[str], frame_template: str = "img_{:05d}.jpg") -> list[str]:
    """Every video named by `inputs`, in order, each once: files as given (an unreadable one
    is reported when read), frame folders, folders searched recursively (sorted), list files."""
    found: dict[str, None] = {}
    for item in inputs:
        if os.path.isdir(item) and not is_frame_folder(item, frame_template):
            before = len(found)
            for root, dirs, files in os.walk(item):
                dirs.sort()
                for d in list(dirs):
                    if is_frame_folder(os.path.join(root, d), frame_template):
                        found[os.path.join(root, d)] = None
                        dirs.remove(d)
                for name in sorted(files):
                    if name.lower().endswith(VIDEO_EXTENSIONS):
                        found[os.path.join(root, name)] = None
            if len(found) == before:
                raise UsageError(
                    f"{item}: no video files ({', '.join(VIDEO_EXTENSIONS[:4])}, ...) or frame "
                    f"folders (frames named like {frame_template!r}) in this folder"
                )
        elif os.path.isfile(item) and item.lower().endswith(LIST_EXTENSIONS):
            listed = _read_list(item)
            if not listed:
                raise UsageError(f"{item}: the video list is empty")
            found.update(dict.fromkeys(listed))
        else:
            found[item] = None
    return list(found)


# Reading ahead -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _LoadViews:
    """path -> {"video", "views" uint8 [V, T, S, S, 3], "duration", "warning"} or {"video",
    "error"}: never raises, so one unreadable video cannot stop a worker."""

    spec: ClipSpec
    frame_template: str
    frame_start_index: int
    decode_threads: int

    def __call__(self, path: str) -> dict:
        warnings = []

        def short(n: int) -> None:
            warnings.append(
                f"{path}: {n} frames, fewer than the model's {self.spec.num_frames}; some repeat"
            )

        if os.path.isdir(path):
            reader = FrameFolderReader("", self.frame_template, self.frame_start_index)
        else:
            reader = VideoFileReader("", self.decode_threads)
        try:
            views = eval_views(reader, Entry(path, -1, "--video"), self.spec, short)
        except (ValueError, OSError) as e:  # VideoReadError and friends name the file
            return {"video": path, "error": str(e) if path in str(e) else f"{path}: {e}"}
        warning = warnings[0] if warnings else None
        try:  # from the header only: the video was just decoded, so no second pass for it
            duration = None if os.path.isdir(path) else duration_seconds(path, from_packets=False)
        except VideoReadError:
            duration = None
        return {"video": path, "views": views, "duration": duration, "warning": warning}


def read_ahead(
    videos: Sequence[str], cfg: ml_collections.ConfigDict, workers: int
) -> Iterator[dict]:
    """The test views (uint8) of `videos`, in order, decoded `workers` processes ahead (0:
    threads of this process); see `_LoadViews` for the elements."""
    spec = ClipSpec.from_config(cfg)
    load = _LoadViews(spec, cfg.frame_template, cfg.frame_start_index, cfg.decode_threads)
    if not videos:
        return iter(())
    ds = grain.MapDataset.source(list(videos)).map(load)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=4))
    cfg = ml_collections.ConfigDict({"num_workers": workers, "prefetch": 4})
    return iter(prefetch(ds, cfg))


def default_workers(num_videos: int, batch_size: int) -> int:
    """Decoding processes: none when one batch holds every video (starting them costs more
    than it saves), else one per spare core, at most 8."""
    if num_videos <= batch_size:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def view_batches(
    videos: Sequence[str], cfg: ml_collections.ConfigDict, workers: int, batch_size: int
) -> Iterator[list[dict]]:
    """`read_ahead`'s items in order, in lists holding `batch_size` readable videos each (the
    last one fewer) and the unreadable ones met on the way."""
    batch: list[dict] = []
    items = read_ahead(videos, cfg, workers)
    try:
        for item in items:
            batch.append(item)
            if sum("views" in i for i in batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        if hasattr(items, "close"):
            items.close()  # stops the worker processes


# Result rows -------------------------------------------------------------------------------


def top_classes(probs: np.ndarray, classnames: Sequence[str], k: int) -> list[dict]:
    """The `k` most probable classes: [{"rank", "index", "class", "probability"}], best first."""
    order = np.argsort(-probs, kind="stable")[: min(k, len(classnames))]
    return [
        {"rank": r + 1, "index": int(i), "class": classnames[i], "probability": float(probs[i])}
        for r, i in enumerate(order)
    ]


def _csv_header(top_k: int) -> list[str]:
    ranks = [f"{name}_{r}" for r in range(1, top_k + 1) for name in ("class", "probability")]
    return ["video", "duration_s", "views", *ranks, "error"]


def _csv_row(row: dict, top_k: int) -> list:
    top = row.get("top") or []
    ranks = []
    for r in range(top_k):
        ranks += [top[r]["class"], f"{top[r]['probability']:.6g}"] if r < len(top) else ["", ""]
    duration = "" if row.get("duration") is None else f"{row['duration']:.3f}"
    return [row["video"], duration, row.get("views", ""), *ranks, row.get("error") or ""]


class ResultFile:
    """One row per video in `path` (.csv or .jsonl), flushed as written.

    With `resume`, an existing file's rows are kept (a last line cut off by a kill is dropped,
    and so are failed videos' rows, so that those are tried again): `done` holds their videos.
    Without it, an existing file is an error rather than overwritten.
    """

    def __init__(self, path: str, top_k: int, resume: bool):
        self.path, self.top_k = path, top_k
        self.format = os.path.splitext(path)[1].lower().lstrip(".")
        if self.format not in ("csv", "jsonl"):
            raise UsageError(f"--output {path}: must end in .csv or .jsonl")
        self.done: set[str] = set()
        kept: list[str] = []
        if os.path.exists(path):
            if not resume:
                raise UsageError(
                    f"--output {path} exists; pass --resume to add to it, or remove it"
                )
            kept = self._kept_lines()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            if self.format == "csv":
                csv.writer(f).writerow(_csv_header(top_k))
            f.writelines(kept)
        os.replace(tmp, path)
        self._file = open(path, "a", newline="")  # noqa: SIM115 (closed by close())
        self._csv = csv.writer(self._file) if self.format == "csv" else None

    def _kept_lines(self) -> list[str]:
        with open(self.path, newline="") as f:
            text = f.read()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # cut off mid-write
        if self.format == "csv":
            if not lines:
                return []
            header = next(csv.reader([lines[0]]))
            if header != _csv_header(self.top_k):
                raise UsageError(
                    f"--output {self.path}: its columns are not those of this run (--top-k "
                    f"{self.top_k}); use another file"
                )
            lines = lines[1:]
        kept = []
        for line in lines:
            if self.format == "csv":
                row = next(csv.reader(io.StringIO(line)), None)
                video, failed = (row[0], bool(row[-1])) if row else (None, True)
            else:
                try:
                    record = json.loads(line)
                    video, failed = record["video"], record.get("error") is not None
                except (ValueError, KeyError, TypeError):
                    raise UsageError(
                        f"--output {self.path}: a line is not a result record: {line[:60]!r}"
                    ) from None
            if video is not None and not failed and video not in self.done:
                self.done.add(video)
                kept.append(line)
        return kept

    def write(self, row: dict) -> None:
        if self._csv is not None:
            self._csv.writerow(_csv_row(row, self.top_k))
        else:
            self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.done.add(row["video"])

    def close(self) -> None:
        self._file.close()


def stack_views(items: Sequence[dict], batch_size: int) -> np.ndarray:
    """The views of `items` as one [batch_size, V, T, S, S, 3] array, zero-padded to a full
    batch so that the model is compiled for one shape."""
    views = np.stack([item["views"] for item in items])
    pad = batch_size - len(items)
    if pad > 0:
        views = np.concatenate([views, np.zeros((pad, *views.shape[1:]), views.dtype)])
    return views
