"""Plain-text tables and log scalars of a run's results (percentages)."""

from __future__ import annotations

from tcclip_jax.evaluation.results import Results, WeightsResults, split_key
from tcclip_jax.evaluation.specs import PLAIN, WISE_FT


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The scalars of a results file's layout as `dataset/top1`-style names, for logs
    (`wise_ft/dataset/top1` for the WiSE-FT ensemble)."""
    return Results.from_json(metrics).flat()


def _cell(value: float, std: float | None = None) -> str:
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def format_results(metrics: dict) -> str:
    """A results file's layout as plain-text tables, one row per evaluated list: the weights as
    trained, then (if evaluated) their WiSE-FT ensemble."""
    results = Results.from_json(metrics)
    tables = [_format_table(results.weights[PLAIN], f"protocol: {results.protocol}")]
    if WISE_FT in results.weights:
        title = f"protocol: {results.protocol}, with WiSE-FT (weight {metrics['wise_ft']})"
        tables.append(_format_table(results.weights[WISE_FT], title))
    return "\n\n".join(tables)


def _format_table(w: WeightsResults, title: str) -> str:
    rows = [("dataset", "split", "videos", "top-1", "top-5")]
    grouped: dict[str, list[tuple[str, object]]] = {}
    for key, r in w.lists.items():
        name, split = split_key(key)
        grouped.setdefault(name if name in w.split_means else key, []).append((split, r))
    for name, members in grouped.items():
        mean = w.split_means.get(name)
        if mean is None:
            ((_, r),) = members
            rows.append((name, "", str(r.num_videos), _cell(r.top1), _cell(r.top5)))
            continue
        for split, r in members:
            rows.append((name, split, str(r.num_videos), _cell(r.top1), _cell(r.top5)))
        rows.append((name, "mean ± std", str(mean.num_videos), _cell(mean.top1, mean.top1_std),
                     _cell(mean.top5, mean.top5_std)))  # fmt: skip
    if w.harmonic_mean is not None:
        rows.append(("harmonic mean", "", "", f"{w.harmonic_mean:.2f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    # Names left-aligned, numbers right-aligned.
    aligned = [
        [row[i].ljust(n) if i < 2 else row[i].rjust(n) for i, n in enumerate(widths)]
        for row in rows
    ]
    aligned.insert(1, ["-" * n for n in widths])
    return "\n".join([title, *("  ".join(row).rstrip() for row in aligned)])
