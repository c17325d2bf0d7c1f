"""What an evaluation got right and wrong, per video and per class, in files a person (or a
script) can look into. `write_analysis(directory, ...)` writes:

  predictions.jsonl       per video: file, label, class, top-5 (index, class, score), correct
  scores.npy              [N, C] every video's class probabilities (softmax averaged over views)
  per_class_accuracy.csv  per class: videos, top-1 and top-5 accuracy (%), most confused with
  confusion_matrix.csv    counts, true class rows x predicted (top-1) class columns
  confusion_matrix.png    the row-normalised matrix, for up to `MAX_PLOTTED_CLASSES` classes

`worst_classes(directory)` reads the per-class file back, lowest top-1 first (`report --worst`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

import numpy as np

TOP_K = 5
MAX_PLOTTED_CLASSES = 100
PER_CLASS_FILE = "per_class_accuracy.csv"


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class(labels: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Per class: {"index", "videos", "top1", "top5", "confused_with"} (accuracies in %;
    `confused_with`: the wrong class its videos are most often given, or None)."""
    num_classes = scores.shape[1]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    matrix = confusion_matrix(labels, order[:, 0], num_classes)
    top5 = (order == labels[:, None]).any(axis=1)
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
) -> dict[str, str]:
    """The files above for videos with `labels` [N] scored `scores` [N, C]; returns their paths."""
    from tcclip_jax.visualization.plots import confusion_figure  # matplotlib: only when writing

    labels, scores = np.asarray(labels), np.asarray(scores)
    os.makedirs(directory, exist_ok=True)
    paths = {name: os.path.join(directory, name) for name in (
        "predictions.jsonl", "scores.npy", PER_CLASS_FILE, "confusion_matrix.csv"
    )}  # fmt: skip
    order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    with open(paths["predictions.jsonl"], "w") as f:
        for video, label, best, row in zip(videos, labels, order, scores, strict=True):
            record = {
                "video": video,
                "label": int(label),
                "class": class_names[label],
                "top5": [
                    {"index": int(i), "class": class_names[i], "score": float(row[i])} for i in best
                ],
                "correct": bool(best[0] == label),
            }
            f.write(json.dumps(record) + "\n")
    np.save(paths["scores.npy"], scores.astype(np.float32))

    with open(paths[PER_CLASS_FILE], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "class", "videos", "top1", "top5", "most_confused_with"])
        for r in per_class(labels, scores):
            confused = "" if r["confused_with"] is None else class_names[r["confused_with"]]
            writer.writerow([r["index"], class_names[r["index"]], r["videos"],
                             f"{r['top1']:.2f}", f"{r['top5']:.2f}", confused])  # fmt: skip

    matrix = confusion_matrix(labels, order[:, 0], len(class_names))
    with open(paths["confusion_matrix.csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, matrix, strict=True):
            writer.writerow([name, *row.tolist()])
    if len(class_names) <= MAX_PLOTTED_CLASSES:
        paths["confusion_matrix.png"] = os.path.join(directory, "confusion_matrix.png")
        confusion_figure(matrix, class_names).savefig(paths["confusion_matrix.png"], dpi=100)
    return paths


def worst_classes(directory: str, count: int) -> list[dict]:
    """The `count` classes with the lowest top-1 in `directory`'s per-class file (classes
    without videos left out): {"class", "videos", "top1", "top5", "most_confused_with"}."""
    path = os.path.join(directory, PER_CLASS_FILE)
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["videos"]) > 0]
    rows.sort(key=lambda r: (float(r["top1"]), float(r["top5"])))
    return [
        {"class": r["class"], "videos": int(r["videos"]), "top1": float(r["top1"]),
         "top5": float(r["top5"]), "most_confused_with": r["most_confused_with"]}
        for r in rows[:count]
    ]  # fmt: skip
