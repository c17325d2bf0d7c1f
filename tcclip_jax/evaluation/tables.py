"""Summaries and tables of evaluation results, as the paper reports them (percentages)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def harmonic_mean(base: float, novel: float) -> float:
    """The base-to-novel summary 2 * base * novel / (base + novel); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def summarize_splits(splits: Sequence[dict]) -> dict:
    """Mean and (population) standard deviation of top-1 / top-5 over a dataset's splits."""
    out = {"num_videos": int(sum(s["num_videos"] for s in splits))}
    for key in ("top1", "top5"):
        values = np.array([s[key] for s in splits], np.float64)
        out[key], out[f"{key}_std"] = float(values.mean()), float(values.std())
    return out


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The scalars of `evaluate_protocol`'s output as `dataset/top1`-style names, for logs
    (`wise_ft/dataset/top1` for the WiSE-FT ensemble)."""
    out = {
        f"{name}/{key}": value
        for name, result in metrics["results"].items()
        for key, value in result.items()
        if isinstance(value, int | float)
    }
    if "harmonic_mean" in metrics:
        out["harmonic_mean"] = metrics["harmonic_mean"]
    if "with_wise_ft" in metrics:
        out.update({f"wise_ft/{k}": v for k, v in flat_metrics(metrics["with_wise_ft"]).items()})
    return out


def _cell(result: dict, key: str) -> str:
    if f"{key}_std" in result:
        return f"{result[key]:.2f} ± {result[key + '_std']:.2f}"
    return f"{result[key]:.2f}"


def format_results(metrics: dict) -> str:
    """The metrics of `evaluate_protocol` as plain-text tables, one row per evaluated list: the
    weights as trained, then (if evaluated) their WiSE-FT ensemble."""
    tables = [_format_table(metrics, f"protocol: {metrics['protocol']}")]
    if "with_wise_ft" in metrics:
        title = f"protocol: {metrics['protocol']}, with WiSE-FT (weight {metrics['wise_ft']})"
        tables.append(_format_table(metrics["with_wise_ft"], title))
    return "\n\n".join(tables)


def _format_table(metrics: dict, title: str) -> str:
    rows = [("dataset", "split", "videos", "top-1", "top-5")]
    for name, result in metrics["results"].items():
        splits = result.get("splits", {})
        for split, r in splits.items():
            rows.append((name, split, str(r["num_videos"]), _cell(r, "top1"), _cell(r, "top5")))
        summary = "mean ± std" if splits else ""
        rows.append(
            (name, summary, str(result["num_videos"]), _cell(result, "top1"), _cell(result, "top5"))
        )
    if "harmonic_mean" in metrics:
        rows.append(("harmonic mean", "", "", f"{metrics['harmonic_mean']:.2f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    # Names left-aligned, numbers right-aligned.
    aligned = [
        [row[i].ljust(w) if i < 2 else row[i].rjust(w) for i, w in enumerate(widths)]
        for row in rows
    ]
    aligned.insert(1, ["-" * w for w in widths])
    return "\n".join([title, *("  ".join(row).rstrip() for row in aligned)])
