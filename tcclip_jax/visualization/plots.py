"""Charts drawn with matplotlib (no pyplot: figures are objects, safe under any backend): a
long video's classes over time, and a confusion matrix."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

# Heat-strip rows: every class that tops a window, then the likeliest others up to this many.
TIMELINE_ROWS = 8


def _clock(seconds: float, _=None) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes}:{s:02d}"


def timeline_figure(
    bounds: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    segments: Sequence[dict],
    duration: float,
    title: str = "",
) -> Figure:
    """Top: the segments as coloured spans labelled with their class; below: a heat strip of
    the window probabilities of the classes that matter (rows), over time."""
    top_classes = list(dict.fromkeys(s["index"] for s in segments))
    others = [int(c) for c in np.argsort(-probabilities.max(axis=0)) if c not in top_classes]
    rows = top_classes + others[: max(0, TIMELINE_ROWS - len(top_classes))]
    palette = colormaps["tab10" if len(top_classes) <= 10 else "tab20"]
    colour = {c: palette(i % palette.N) for i, c in enumerate(top_classes)}

    fig = Figure(figsize=(10, 1.6 + 0.28 * len(rows)), layout="constrained")
    bar, heat = fig.subplots(2, 1, sharex=True, height_ratios=[1.2, max(1.0, 0.28 * len(rows))])
    for k, s in enumerate(segments):
        bar.axvspan(s["start"], s["end"], color=colour[s["index"]], alpha=0.85, lw=0)
        # Wrapped to the segment's width (about 100 characters span the axis at this size).
        chars = int((s["end"] - s["start"]) / duration * 100)
        label = textwrap.fill(classes[s["index"]], max(chars, 6), break_long_words=False)
        tall = label.count("\n") >= 2
        bar.text((s["start"] + s["end"]) / 2, 0.5 if not tall else (0.3 if k % 2 else 0.7),
                 label, ha="center", va="center", fontsize=8, linespacing=0.9,
                 clip_on=True)  # fmt: skip
    bar.set_yticks([])
    bar.set_ylim(0, 1)
    bar.set_title(title, fontsize=10, loc="left")

    centres = bounds.mean(axis=1)
    edges = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [duration]])
    image = heat.pcolormesh(
        edges, np.arange(len(rows) + 1), probabilities[:, rows].T, cmap="magma", vmin=0, vmax=1
    )
    heat.set_yticks(np.arange(len(rows)) + 0.5, [classes[c] for c in rows], fontsize=8)
    heat.invert_yaxis()
    heat.set_xlim(0, duration)
    heat.xaxis.set_major_formatter(_clock)
    heat.set_xlabel("time (min:s)")
    fig.colorbar(image, ax=heat, label="probability", fraction=0.03, pad=0.01)
    return fig


def confusion_figure(matrix: np.ndarray, classes: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (true class rows, predicted class columns)."""
    n = len(classes)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(24.0, 3.0 + 0.22 * n)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    font = max(4, min(9, int(400 / max(n, 1))))
    ax.set_xticks(range(n), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(n), classes, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label="fraction of the true class", fraction=0.04, pad=0.02)
    return fig
