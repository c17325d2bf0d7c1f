"""Print the paper's tables for a set of finished runs (or `evaluate` outputs).

  python -m tcclip_jax.report runs/b2n_hmdb_1 runs/b2n_hmdb_2 runs/b2n_hmdb_3 runs/zs_k400
  python -m tcclip_jax.report runs/* --format json > results.json
  python -m tcclip_jax.report runs/fs_hmdb --worst 10     # its least accurate classes

Each RUN is a run directory (its `eval_metrics.json`, else `final_metrics.json`) or such a file.
Base-to-novel runs of the same dataset and class names are seeds of one row: mean base, mean
novel, harmonic mean of the two means; zero-shot rows give mean ± std over the splits without
and with WiSE-FT; few-shot and fully supervised runs give their single top-1. `--worst N` lists,
for each evaluated list of each run (`RUN/analysis/<list>/`, written by `evaluate` and by the
final test of `train`), the N classes with the lowest top-1 and what they are mistaken for.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence

from tcclip_jax.evaluation.analysis import PER_CLASS_FILE, worst_classes
from tcclip_jax.evaluation.paper_tables import load_run, markdown, summarize


def print_worst(runs: Sequence[str], count: int) -> int:
    """The worst classes of every analysed list of `runs`; 2 if a run has none."""
    for run in runs:
        found = sorted(
            glob.glob(os.path.join(run, "analysis", "**", PER_CLASS_FILE), recursive=True)
        )
        if not found:
            print(f"error: {run}: no analysis/*/{PER_CLASS_FILE} (evaluate the run first)",
                  file=sys.stderr)  # fmt: skip
            return 2
        for path in found:
            print(f"{os.path.dirname(path)}: the {count} classes with the lowest top-1")
            print(f"  {'top1':>6}  {'top5':>6}  {'videos':>6}  class  (most often taken for)")
            for r in worst_classes(os.path.dirname(path), count):
                print(f"  {r['top1']:6.1f}  {r['top5']:6.1f}  {r['videos']:>6}  {r['class']}  "
                      f"({r['most_confused_with'] or '-'})")  # fmt: skip
            print()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tcclip_jax.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories or metrics files")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    parser.add_argument("--worst", type=int, metavar="N", help="List each run's N worst classes.")
    args = parser.parse_args(argv)
    if args.worst is not None:
        if args.worst < 1:
            print(f"error: --worst must be positive, got {args.worst}", file=sys.stderr)
            return 2
        return print_worst(args.runs, args.worst)
    try:
        summary = summarize([load_run(path) for path in args.runs])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.format == "json" else markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
