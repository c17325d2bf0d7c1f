"""The paper's tables from a set of runs (each run's `final_metrics.json` or `eval_metrics.json`).

How the paper reports each protocol (spec, "Reported metrics"), read from the summaries in each
run's results (`results.Results`), one table per protocol and layout:
- base-to-novel (a harmonic mean): base top-1 and novel top-1 each averaged over the training
  seeds (runs of one dataset, class-name set and starting point), and the harmonic mean of those
  two means;
- zero-shot (datasets of splits): per dataset, mean and (population) std of top-1 over its
  splits, without and with WiSE-FT;
- few-shot, fully supervised (and the demo): the single top-1 of the run.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np

from tcclip_jax.evaluation.results import Results, harmonic_mean, split_key
from tcclip_jax.evaluation.specs import PLAIN, PROTOCOLS, WISE_FT

# A run directory's metrics, most specific first: an explicit `evaluate` over the training's own.
METRICS_FILES = ("eval_metrics.json", "final_metrics.json")
# Row layouts: seeds of base-to-novel, mean ± std over splits, one list.
SEEDS, SPLITS, SINGLE = "seeds", "splits", "single"


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
    if metrics["protocol"] not in PROTOCOLS:
        raise ValueError(f"{file}: unknown protocol {metrics['protocol']!r}")
    return {**metrics, "run": path}


def _split_means(results: Results, weights: str) -> dict[str, dict]:
    """Mean and std of top-1 over each dataset's splits (recomputed from the splits)."""
    top1 = collections.defaultdict(list)
    lists = results.weights[weights].lists if weights in results.weights else {}
    for key, accuracy in lists.items():
        name, split = split_key(key)
        if split:
            top1[name].append(accuracy.top1)
    return {
        name: {"top1": float(np.mean(v)), "top1_std": float(np.std(v)), "splits": len(v)}
        for name, v in top1.items()
    }


def summarize(runs: list[dict]) -> dict[str, list[dict]]:
    """The rows of every protocol's table, as plain numbers (the JSON output).

    A run with a harmonic mean (base-to-novel) is one seed of the row of its dataset, class
    names and starting point (`pretraining`); a dataset of splits gives a row of mean ± std
    without and with WiSE-FT; any other list a row of its top-1 and top-5.
    """
    out: dict[str, list[dict]] = collections.defaultdict(list)
    seeds = collections.defaultdict(list)
    for run in runs:
        results = Results.from_json(run)
        protocol, plain = results.protocol, results.weights[PLAIN]
        if plain.harmonic_mean is not None:
            key = (protocol, run.get("dataset", ""), run.get("class_list", ""),
                   run.get("pretraining", ""))  # fmt: skip
            seeds[key].append((run["run"], plain))
            continue
        with_wise_ft = _split_means(results, WISE_FT)
        for name, summary in _split_means(results, PLAIN).items():
            out[protocol].append(
                {
                    "run": run["run"],
                    "dataset": name,
                    "class_list": run.get("class_list", ""),
                    "without_wise_ft": summary,
                    "with_wise_ft": with_wise_ft.get(name),
                    "wise_ft": run.get("wise_ft"),
                }
            )
        for key, accuracy in plain.lists.items():
            if not split_key(key)[1]:
                out[protocol].append(
                    {
                        "run": run["run"],
                        "dataset": key,
                        "train_list": run.get("train_list", ""),
                        "class_list": run.get("class_list", ""),
                        "top1": accuracy.top1,
                        "top5": accuracy.top5,
                    }
                )
    for (protocol, dataset, class_list, pretraining), members in seeds.items():
        base = float(np.mean([m.lists["base"].top1 for _, m in members]))
        novel = float(np.mean([m.lists["novel"].top1 for _, m in members]))
        row = {"dataset": dataset, "class_list": class_list, "runs": [r for r, _ in members]}
        if pretraining:
            row["pretraining"] = pretraining
        row.update(base=base, novel=novel, harmonic_mean=harmonic_mean(base, novel))
        out[protocol].append(row)
    return dict(out)


def _layout(row: dict) -> str:
    return SEEDS if "harmonic_mean" in row else SPLITS if "without_wise_ft" in row else SINGLE


def _pm(x: dict | None) -> str:
    return "" if x is None else f"{x['top1']:.1f} ± {x['top1_std']:.1f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _dataset(r: dict) -> str:
    return r["dataset"] + (f" ({r['pretraining']} pre-trained)" if r.get("pretraining") else "")


_TABLES = {
    SEEDS: (
        ["dataset", "class names", "seeds", "base", "novel", "HM"],
        lambda r: [_dataset(r), r["class_list"], str(len(r["runs"])), f"{r['base']:.1f}",
                   f"{r['novel']:.1f}", f"{r['harmonic_mean']:.1f}"],
    ),
    SPLITS: (
        ["run", "dataset", "top-1 (mean ± std)", "with WiSE-FT"],
        lambda r: [r["run"], r["dataset"], _pm(r["without_wise_ft"]), _pm(r["with_wise_ft"])],
    ),
    SINGLE: (
        ["run", "dataset", "training list", "class names", "top-1", "top-5"],
        lambda r: [r["run"], r["dataset"], r["train_list"], r["class_list"], f"{r['top1']:.1f}",
                   f"{r['top5']:.1f}"],
    ),
}  # fmt: skip


def markdown(summary: dict[str, list[dict]]) -> str:
    """The tables as the paper lays them out (top-1, %), one per protocol and row layout."""
    parts = []
    for protocol, spec in PROTOCOLS.items():
        for layout, (header, cells) in _TABLES.items():
            rows = [r for r in summary.get(protocol, []) if _layout(r) == layout]
            if rows:
                table = _markdown_table(header, [cells(r) for r in rows])
                parts.append(f"### {spec.title}\n\n{table}")
    return "\n\n".join(parts)
