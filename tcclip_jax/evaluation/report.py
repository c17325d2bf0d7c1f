"""The paper's tables from a set of runs (each run's `final_metrics.json` or `eval_metrics.json`).

How the paper reports each protocol (spec, "Reported metrics"):
- base-to-novel: base top-1 and novel top-1 each averaged over the training seeds (runs of one
  dataset and class-name set), and the harmonic mean of those two means;
- zero-shot: per evaluation dataset, mean and (population) std of top-1 over its three splits,
  without and with WiSE-FT;
- few-shot, fully supervised (and the demo): the single top-1 of the run.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np

from tcclip_jax.evaluation.tables import harmonic_mean, summarize_splits

# A run directory's metrics, most specific first: an explicit `evaluate` over the training's own.
METRICS_FILES = ("eval_metrics.json", "final_metrics.json")
# In the paper's order (Tables 2-5).
PROTOCOL_TITLES = {
    "zeroshot": "Zero-shot",
    "fewshot": "Few-shot",
    "base2novel": "Base-to-novel",
    "fully_supervised": "Fully supervised",
    "demo": "Demo",
}


def load_run(path: str) -> dict:
    """The metrics of a run directory (or a metrics JSON file itself), with `run` set to it."""
    file = path
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in METRICS_FILES]
        found = [f for f in found if os.path.isfile(f)]
        if not found:
            raise ValueError(f"{path}: no {' or '.join(METRICS_FILES)} (has the run finished?)")
        file = found[0]
    try:
        with open(file) as f:
            metrics = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: cannot read the run's metrics ({e})") from None
    if not isinstance(metrics, dict) or "protocol" not in metrics or "results" not in metrics:
        raise ValueError(f"{file}: not the metrics of a run (no 'protocol' and 'results')")
    if metrics["protocol"] not in PROTOCOL_TITLES:
        raise ValueError(f"{file}: unknown protocol {metrics['protocol']!r}")
    return {**metrics, "run": path}


def _zeroshot(result: dict) -> dict:
    """Mean and std of top-1 over a dataset's splits (recomputed from the splits)."""
    summary = summarize_splits(list(result["splits"].values()))
    return {
        "top1": summary["top1"],
        "top1_std": summary["top1_std"],
        "splits": len(result["splits"]),
    }


def summarize(runs: list[dict]) -> dict[str, list[dict]]:
    """The rows of every protocol's table, as plain numbers (the JSON output)."""
    out: dict[str, list[dict]] = collections.defaultdict(list)
    groups = collections.defaultdict(list)
    for run in runs:
        protocol = run["protocol"]
        if protocol == "base2novel":
            groups[(run.get("dataset", ""), run.get("class_list", ""))].append(run)
        elif protocol == "zeroshot":
            plain, with_wise_ft = run["results"], run.get("with_wise_ft", {}).get("results", {})
            for name, result in plain.items():
                out[protocol].append(
                    {
                        "run": run["run"],
                        "dataset": name,
                        "class_list": run.get("class_list", ""),
                        "without_wise_ft": _zeroshot(result),
                        "with_wise_ft": _zeroshot(with_wise_ft[name])
                        if name in with_wise_ft
                        else None,
                        "wise_ft": run.get("wise_ft"),
                    }
                )
        else:
            for name, result in run["results"].items():
                out[protocol].append(
                    {
                        "run": run["run"],
                        "dataset": name,
                        "train_list": run.get("train_list", ""),
                        "class_list": run.get("class_list", ""),
                        "top1": result["top1"],
                        "top5": result["top5"],
                    }
                )
    for (dataset, class_list), members in groups.items():
        base = float(np.mean([r["results"]["base"]["top1"] for r in members]))
        novel = float(np.mean([r["results"]["novel"]["top1"] for r in members]))
        out["base2novel"].append(
            {
                "dataset": dataset,
                "class_list": class_list,
                "runs": [r["run"] for r in members],
                "base": base,
                "novel": novel,
                "harmonic_mean": harmonic_mean(base, novel),
            }
        )
    return dict(out)


def _pm(x: dict | None) -> str:
    return "" if x is None else f"{x['top1']:.1f} ± {x['top1_std']:.1f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(summary: dict[str, list[dict]]) -> str:
    """The tables as the paper lays them out (top-1, %), one per protocol present."""
    parts = []
    for protocol, title in PROTOCOL_TITLES.items():
        if protocol not in summary:
            continue
        rows, title = summary[protocol], f"### {title}"
        if protocol == "base2novel":
            table = _markdown_table(
                ["dataset", "class names", "seeds", "base", "novel", "HM"],
                [
                    [r["dataset"], r["class_list"], str(len(r["runs"])), f"{r['base']:.1f}",
                     f"{r['novel']:.1f}", f"{r['harmonic_mean']:.1f}"]
                    for r in rows
                ],
            )  # fmt: skip
        elif protocol == "zeroshot":
            table = _markdown_table(
                ["run", "dataset", "top-1 (mean ± std)", "with WiSE-FT"],
                [
                    [r["run"], r["dataset"], _pm(r["without_wise_ft"]), _pm(r["with_wise_ft"])]
                    for r in rows
                ],
            )
        else:
            table = _markdown_table(
                ["run", "dataset", "training list", "class names", "top-1", "top-5"],
                [
                    [r["run"], r["dataset"], r["train_list"], r["class_list"], f"{r['top1']:.1f}",
                     f"{r['top5']:.1f}"]
                    for r in rows
                ],
            )  # fmt: skip
        parts.append(f"{title}\n\n{table}")
    return "\n\n".join(parts)
