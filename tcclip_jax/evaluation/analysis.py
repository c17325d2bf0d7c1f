"""What an evaluation got right and wrong, per video and per class, in files a person (or a
script) can look into. `write_analysis(directory, ...)` writes:

  predictions.jsonl       per video: file, label, class, top-5 (index, class, score), correct
  scores.npy              [N, C] every video's class probabilities (softmax averaged over views)
  per_class_accuracy.csv  per class: videos, top-1 and top-5 accuracy (%), most confused with
  confusion_matrix.csv    counts, true class rows x predicted (top-1) class columns
  confusion_matrix.png    the row-normalised matrix, for up to `MAX_PLOTTED_CLASSES` classes

Unreadable videos (`unreadable`, counted as misses by the evaluator) are marked in
predictions.jsonl (`"unreadable": true`, no top-5), count as misses in the per-class accuracy and
are left out of the confusion matrix (they have no predicted class). `directory` may be on
object storage (`runtime.storage`).

`worst_classes(directory)` reads the per-class file back, lowest top-1 first (`report --worst`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

import numpy as np

from tcclip_jax.runtime import storage

TOP_K = 5
MAX_PLOTTED_CLASSES = 100
PER_CLASS_FILE = "per_class_accuracy.csv"


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class(
    labels: np.ndarray, scores: np.ndarray, unreadable: np.ndarray | None = None
) -> list[dict]:
    """Per class: {"index", "videos", "top1", "top5", "confused_with"} (accuracies in %;
    `confused_with`: the wrong class its videos are most often given, or None). Videos marked
    `unreadable` count as misses."""
    num_classes = scores.shape[1]
    read = np.ones(len(labels), bool) if unreadable is None else ~np.asarray(unreadable, bool)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    matrix = confusion_matrix(labels[read], order[read, 0], num_classes)
    top5 = (order == labels[:, None]).any(axis=1) & read
    rows = []
    for c in range(num_classes):
        mine = labels == c
        n = int(mine.sum())
        wrong = matrix[c].copy()
        wrong[c] = 0
        rows.append({
            "index": c,
            "videos": n,
            "top1": 100.0 * matrix[c, c] / n if n else float("nan"),
            "top5": 100.0 * top5[mine].mean() if n else float("nan"),
            "confused_with": int(wrong.argmax()) if wrong.any() else None,
        })  # fmt: skip
    return rows


def write_analysis(
    directory: str,
    videos: Sequence[str],
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    unreadable: np.ndarray | None = None,
) -> dict[str, str]:
    """The files above for videos with `labels` [N] scored `scores` [N, C] (`unreadable` [N]
    marks the videos that could not be read); returns their paths."""
    from tcclip_jax.visualization.plots import confusion_figure  # matplotlib: only when writing

    labels, scores = np.asarray(labels), np.asarray(scores)
    bad = np.zeros(len(labels), bool) if unreadable is None else np.asarray(unreadable, bool)
    storage.makedirs(directory)
    paths = {name: storage.join(directory, name) for name in (
        "predictions.jsonl", "scores.npy", PER_CLASS_FILE, "confusion_matrix.csv"
    )}  # fmt: skip
    order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    with storage.open_write(paths["predictions.jsonl"]) as f:
        for video, label, best, row, missed in zip(videos, labels, order, scores, bad, strict=True):
            record = {"video": video, "label": int(label), "class": class_names[label]}
            if missed:
                record |= {"unreadable": True, "top5": [], "correct": False}
            else:
                record["top5"] = [
                    {"index": int(i), "class": class_names[i], "score": float(row[i])} for i in best
                ]
                record["correct"] = bool(best[0] == label)
            f.write(json.dumps(record) + "\n")
    with storage.open_write(paths["scores.npy"], binary=True) as f:
        np.save(f, scores.astype(np.float32))

    with storage.open_write(paths[PER_CLASS_FILE]) as f:
        writer = csv.writer(f)
        writer.writerow(["index", "class", "videos", "top1", "top5", "most_confused_with"])
        for r in per_class(labels, scores, bad):
            confused = "" if r["confused_with"] is None else class_names[r["confused_with"]]
            writer.writerow([r["index"], class_names[r["index"]], r["videos"],
                             f"{r['top1']:.2f}", f"{r['top5']:.2f}", confused])  # fmt: skip

    matrix = confusion_matrix(labels[~bad], order[~bad, 0], len(class_names))
    with storage.open_write(paths["confusion_matrix.csv"]) as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, matrix, strict=True):
            writer.writerow([name, *row.tolist()])
    if len(class_names) <= MAX_PLOTTED_CLASSES:
        paths["confusion_matrix.png"] = storage.join(directory, "confusion_matrix.png")
        png = io.BytesIO()
        confusion_figure(matrix, class_names).savefig(png, dpi=100, format="png")
        storage.write_bytes(paths["confusion_matrix.png"], png.getvalue())
    return paths


def worst_classes(directory: str, count: int) -> list[dict]:
    """The `count` classes with the lowest top-1 in `directory`'s per-class file (classes
    without videos left out): {"class", "videos", "top1", "top5", "most_confused_with"}."""
    path = storage.join(directory, PER_CLASS_FILE)
    text = storage.read_text(path)
    rows = [r for r in csv.DictReader(io.StringIO(text, newline="")) if int(r["videos"]) > 0]
    rows.sort(key=lambda r: (float(r["top1"]), float(r["top5"])))
    return [
        {"class": r["class"], "videos": int(r["videos"]), "top1": float(r["top1"]),
         "top5": float(r["top5"]), "most_confused_with": r["most_confused_with"]}
        for r in rows[:count]
    ]  # fmt: skip
