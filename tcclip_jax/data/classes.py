"""Class lists and annotation lists in the formats of the published TC-CLIP / ViFi-CLIP code.

Class lists: CSV with an `id,name` header (extra columns are ignored, as `pandas.read_csv(usecols=)`
does in the published code), or the LLM-rephrased JSON object `{"0": "Brush hair: ...", ...}`.
Annotation lists: one video a line, `relative/path.ext LABEL`. Every problem is reported with the
file and line it comes from, because these lists are edited by hand. Lists may be local or on
object storage (`gs://`, `runtime.storage`).
"""

from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import io
import json

import numpy as np

from tcclip_jax.runtime import storage
from tcclip_jax.runtime.errors import UserError


class AnnotationError(UserError):
    """A malformed class list or annotation list; the message names the file and line."""


def _validate_ids(path: str, entries: list[tuple[int, str, str]]) -> list[str]:
    """`entries` are (id, name, where); ids must be exactly 0..C-1, each once."""
    if not entries:
        raise AnnotationError(f"{path}: the class list is empty")
    first_seen: dict[int, str] = {}
    for class_id, _, where in entries:
        if class_id in first_seen:
            raise AnnotationError(
                f"{where}: duplicate class id {class_id} (first defined at {first_seen[class_id]})"
            )
        first_seen[class_id] = where
    missing = sorted(set(range(len(entries))) - set(first_seen))
    if missing:
        beyond = sorted(i for i in first_seen if i >= len(entries) or i < 0)
        raise AnnotationError(
            f"{path}: class ids must be 0..{len(entries) - 1} without gaps; missing "
            f"{missing[:10]}, out of range {beyond[:10]}"
        )
    names = [""] * len(entries)
    for class_id, name, _ in entries:
        names[class_id] = name
    return names


def _parse_id(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise AnnotationError(f"{where}: class id {text!r} is not an integer") from None


def read_text(path: str) -> str:
    """A list file's text: UTF-8, with or without the byte-order mark Windows tools write (Excel's
    "CSV UTF-8", Notepad), or UTF-16 with its mark (Excel's "Unicode text"); CRLF or LF endings.
    Anything else is an AnnotationError naming the file and the byte."""
    try:
        raw = storage.read_bytes(path)
    except OSError as e:
        raise AnnotationError(
            f"{path}: cannot read ({getattr(e, 'strerror', None) or e})"
        ) from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise AnnotationError(
                f"{path}: not UTF-16 text after its byte-order mark ({e.reason})"
            ) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(
            f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 1]!r}); "
            "save it as UTF-8"
        ) from None


def _load_csv(path: str) -> list[str]:
    rows = list(csv.reader(io.StringIO(read_text(path), newline="")))
    if not rows:
        raise AnnotationError(f"{path}: the class list is empty (expected an 'id,name' header)")
    header = [h.strip().lower() for h in rows[0]]
    if "id" not in header or "name" not in header:
        raise AnnotationError(
            f"{path}:1: expected a header with columns 'id' and 'name', got {rows[0]}"
        )
    id_col, name_col = header.index("id"), header.index("name")
    entries = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{line_no}"
        if len(row) <= max(id_col, name_col):
            raise AnnotationError(f"{where}: expected columns {rows[0]}, got {row}")
        name = row[name_col].strip()
        if not name:
            raise AnnotationError(f"{where}: empty class name")
        entries.append((_parse_id(row[id_col], where), name, where))
    return _validate_ids(path, entries)


class _JsonPairs(list):
    """Key/value pairs of a JSON object in file order (json.load would drop duplicate keys)."""


def _load_json(path: str) -> list[str]:
    def no_duplicate_keys(pairs):
        counts = collections.Counter(k for k, _ in pairs)
        dups = [k for k, c in counts.items() if c > 1]
        if dups:
            raise AnnotationError(f"{path}: duplicate class ids {dups} in the JSON object")
        return _JsonPairs(pairs)

    try:
        pairs = json.loads(read_text(path), object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(pairs, _JsonPairs):
        raise AnnotationError(f'{path}: expected a JSON object {{"0": "name", ...}}')
    entries = []
    for key, value in pairs:
        where = f"{path}: key {key!r}"
        if not isinstance(value, str) or not value.strip():
            raise AnnotationError(f"{where}: class name must be a non-empty string, got {value!r}")
        entries.append((_parse_id(key, where), value.strip(), where))
    return _validate_ids(path, entries)


def load_class_names(path: str) -> list[str]:
    """Class names ordered by id, from a CSV (`id,name` header) or JSON (`{"0": name}`) file."""
    if not storage.isfile(path):
        raise AnnotationError(f"class list {path} does not exist")
    if path.lower().endswith(".json"):
        return _load_json(path)
    return _load_csv(path)


def read_annotation_entries(
    path: str, num_classes: int | None = None
) -> list[tuple[str, int, int]]:
    """(relative path, label, line number) per non-blank line of an annotation list.

    The label is the last whitespace-separated field, so paths may contain spaces.
    """
    if not storage.isfile(path):
        raise AnnotationError(f"annotation list {path} does not exist")
    out = []
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = line.rsplit(None, 1)
        if len(fields) != 2:
            raise AnnotationError(f"{path}:{line_no}: expected 'relative/path LABEL', got {line!r}")
        rel, label_text = fields
        try:
            label = int(label_text)
        except ValueError:
            raise AnnotationError(
                f"{path}:{line_no}: label {label_text!r} is not an integer (line {line!r})"
            ) from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise AnnotationError(
                f"{path}:{line_no}: label {label} is outside the class list ({bound})"
            )
        out.append((rel, label, line_no))
    if not out:
        raise AnnotationError(f"{path}: the annotation list has no entries")
    return out


def read_annotations(path: str, num_classes: int | None = None) -> list[tuple[str, int]]:
    """(relative path, label) per non-blank line of `path`; labels checked against `num_classes`."""
    return [(rel, label) for rel, label, _ in read_annotation_entries(path, num_classes)]


def few_shot_subset(
    annotations: list[tuple[str, int]], shots: int, seed: int
) -> list[tuple[str, int]]:
    """`shots` examples of every class present, drawn without replacement; original order kept."""
    by_class: dict[int, list[int]] = collections.defaultdict(list)
    for i, (_, label) in enumerate(annotations):
        by_class[label].append(i)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) < shots:
            raise AnnotationError(
                f"class {label} has {len(members)} examples, fewer than {shots} shots"
            )
        chosen.extend(rng.choice(members, size=shots, replace=False).tolist())
    return [annotations[i] for i in sorted(chosen)]


@dataclasses.dataclass(frozen=True)
class ListSummary:
    """What an annotation list holds, checked against the class list its labels index."""

    annotation_file: str
    class_list: str
    class_names: list[str]
    annotations: list[tuple[str, int]]
    labels_used: int  # distinct labels in the list

    @property
    def label_range(self) -> tuple[int, int]:
        labels = [label for _, label in self.annotations]
        return min(labels), max(labels)


def check_list(annotation_file: str, class_list: str, *, every_class: bool = True) -> ListSummary:
    """Reads `annotation_file` against `class_list`; raises AnnotationError (one line) when a
    label is outside the class list or, with `every_class`, when a class has no video.

    Every published list (training, few-shot, validation, base and novel halves, zero-shot
    splits, temporal/static subsets) has videos of every class of its class file, so a class
    without any is how a list paired with the wrong class file shows when its labels fit: e.g. a
    base-to-novel base list (26 HMDB classes) read against the full 51-class file.
    """
    names = load_class_names(class_list)
    try:
        annotations = read_annotations(annotation_file, len(names))
    except AnnotationError as e:
        raise AnnotationError(f"{e} (class list {class_list}: {len(names)} classes)") from None
    used = {label for _, label in annotations}
    if every_class and len(used) != len(names):
        unused = sorted(set(range(len(names))) - used)
        raise AnnotationError(
            f"{annotation_file}: no video of {len(unused)} of the {len(names)} classes of "
            f"{class_list} (first: {unused[0]} {names[unused[0]]!r}): is it paired with the "
            "right class list?"
        )
    return ListSummary(annotation_file, class_list, names, annotations, len(used))
