"""Print the paper's tables for a set of finished runs (or `evaluate` outputs).

  python -m tcclip_jax.report runs/b2n_hmdb_1 runs/b2n_hmdb_2 runs/b2n_hmdb_3 runs/zs_k400
  python -m tcclip_jax.report runs/* --format json > results.json

Each RUN is a run directory (its `eval_metrics.json`, else `final_metrics.json`) or such a file.
Base-to-novel runs of the same dataset and class names are seeds of one row: mean base, mean
novel, harmonic mean of the two means; zero-shot rows give mean ± std over the splits without
and with WiSE-FT; few-shot and fully supervised runs give their single top-1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tcclip_jax.evaluation.report import load_run, markdown, summarize


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tcclip_jax.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories or metrics files")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args(argv)
    try:
        summary = summarize([load_run(path) for path in args.runs])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.format == "json" else markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
