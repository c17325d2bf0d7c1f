"""Summaries and the results table on hand-made numbers: harmonic mean, split mean/std, rows."""

import numpy as np
import pytest

from tcclip_jax.evaluation.results import harmonic_mean, summarize_splits
from tcclip_jax.evaluation.tables import format_results


def test_harmonic_mean():
    assert harmonic_mean(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)
    assert harmonic_mean(50.0, 50.0) == pytest.approx(50.0)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.0, 70.0) == 0.0


def test_summarize_splits_mean_and_population_std():
    splits = [
        {"top1": 50.0, "top5": 80.0, "num_videos": 10},
        {"top1": 54.0, "top5": 90.0, "num_videos": 12},
        {"top1": 58.0, "top5": 85.0, "num_videos": 11},
    ]
    out = summarize_splits(splits)
    assert out["top1"] == pytest.approx(54.0)
    assert out["top1_std"] == pytest.approx(np.sqrt(32 / 3))
    assert out["top5"] == pytest.approx(85.0)
    assert out["top5_std"] == pytest.approx(np.sqrt(50 / 3))
    assert out["num_videos"] == 33


def test_format_table_rows():
    metrics = {
        "protocol": "zeroshot",
        "wise_ft": 0.7,
        "results": {
            "hmdb51": {
                "top1": 54.0,
                "top1_std": 3.266,
                "top5": 85.0,
                "top5_std": 4.0825,
                "num_videos": 33,
                "splits": {
                    "split1": {"top1": 50.0, "top5": 80.0, "num_videos": 10},
                    "split2": {"top1": 58.0, "top5": 90.0, "num_videos": 23},
                },
            }
        },
    }
    metrics["with_wise_ft"] = {
        "results": {"hmdb51": {**metrics["results"]["hmdb51"], "top1": 60.0}}
    }
    lines = format_results(metrics).splitlines()
    assert lines[0] == "protocol: zeroshot"
    wise = lines.index("protocol: zeroshot, with WiSE-FT (weight 0.7)")
    assert lines[wise + 5].split()[5] == "60.00"
    assert lines[1].split() == ["dataset", "split", "videos", "top-1", "top-5"]
    assert lines[3].split() == ["hmdb51", "split1", "10", "50.00", "80.00"]
    assert lines[5].split() == ["hmdb51", "mean", "±", "std", "33", "54.00", "±", "3.27"] + [
        "85.00",
        "±",
        "4.08",
    ]
    b2n = {
        "protocol": "base2novel",
        "wise_ft": None,
        "results": {
            "base": {"top1": 80.0, "top5": 95.0, "num_videos": 5},
            "novel": {"top1": 40.0, "top5": 70.0, "num_videos": 6},
        },
        "harmonic_mean": 53.333,
    }
    lines = format_results(b2n).splitlines()
    assert lines[0] == "protocol: base2novel"
    assert lines[3].split() == ["base", "5", "80.00", "95.00"]
    assert lines[-1].split() == ["harmonic", "mean", "53.33"]
