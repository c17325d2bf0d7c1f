"""`python -m tcclip_jax.report`: the paper's aggregation on hand-computed numbers."""

from __future__ import annotations

import json
import math

import pytest

from tcclip_jax import report as cli
from tcclip_jax.evaluation.paper_tables import load_run, markdown, summarize


def _write(path, metrics, name="final_metrics.json"):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(metrics))
    return str(path)


def _b2n(base, novel, seed):
    return {
        "protocol": "base2novel",
        "dataset": "hmdb51",
        "train_list": f"fs_base_s{seed}_train.txt",
        "class_list": "hmdb_51_base_labels.csv",
        "wise_ft": None,
        "results": {
            "base": {"top1": base, "top5": 99.0, "num_videos": 10},
            "novel": {"top1": novel, "top5": 99.0, "num_videos": 10},
        },
        "harmonic_mean": 2 * base * novel / (base + novel),
    }


def _splits(*top1):
    return {f"split{i + 1}": {"top1": t, "top5": 90.0, "num_videos": 5} for i, t in enumerate(top1)}


ZEROSHOT = {
    "protocol": "zeroshot",
    "dataset": "k400",
    "class_list": "kinetics_400_labels.csv",
    "wise_ft": 0.7,
    # The stored summaries are stale on purpose: the report recomputes them from the splits.
    "results": {"hmdb51": {"top1": 0.0, "top1_std": 0.0, "splits": _splits(50.0, 54.0, 58.0)}},
    "with_wise_ft": {"results": {"hmdb51": {"splits": _splits(52.0, 56.0, 60.0)}}},
}


@pytest.fixture
def runs(tmp_path):
    seeds = [(80.0, 60.0), (70.0, 50.0), (75.0, 40.0)]
    paths = [
        _write(tmp_path / f"b2n_s{i + 1}", _b2n(b, n, i + 1)) for i, (b, n) in enumerate(seeds)
    ]
    paths.append(_write(tmp_path / "zs", ZEROSHOT))
    few = {
        "protocol": "fewshot",
        "dataset": "ucf101",
        "train_list": "train1_few_shot_2.txt",
        "class_list": "ucf_101_labels.csv",
        "results": {"ucf101": {"top1": 85.9, "top5": 97.0, "num_videos": 3783}},
    }
    paths.append(_write(tmp_path / "fs", few))
    # An `evaluate` output in the same directory wins over the training's own metrics.
    _write(tmp_path / "fs", {**few, "results": {"ucf101": {"top1": 86.5, "top5": 97.5}}},
           name="eval_metrics.json")  # fmt: skip
    return paths


def test_the_papers_aggregation_by_hand(runs):
    summary = summarize([load_run(p) for p in runs])
    (b2n,) = summary["base2novel"]
    # Means over the seeds: base (80 + 70 + 75) / 3 = 75, novel (60 + 50 + 40) / 3 = 50; the
    # harmonic mean of those means is 2 * 75 * 50 / 125 = 60 (the mean of per-seed harmonic
    # means would be 59.69).
    assert (b2n["base"], b2n["novel"]) == (75.0, 50.0)
    assert b2n["harmonic_mean"] == pytest.approx(60.0, abs=1e-12)
    assert len(b2n["runs"]) == 3
    (zs,) = summary["zeroshot"]
    std = math.sqrt(((50 - 54) ** 2 + 0 + (58 - 54) ** 2) / 3)  # population std, 3.266
    assert zs["without_wise_ft"]["top1"] == pytest.approx(54.0)
    assert zs["without_wise_ft"]["top1_std"] == pytest.approx(std)
    assert zs["with_wise_ft"]["top1"] == pytest.approx(56.0)
    assert zs["with_wise_ft"]["top1_std"] == pytest.approx(std)
    (fs,) = summary["fewshot"]
    assert (fs["top1"], fs["train_list"]) == (86.5, "train1_few_shot_2.txt")


def test_markdown_rows(runs):
    text = markdown(summarize([load_run(p) for p in runs]))
    assert "| hmdb51 | hmdb_51_base_labels.csv | 3 | 75.0 | 50.0 | 60.0 |" in text
    assert "| hmdb51 | 54.0 ± 3.3 | 56.0 ± 3.3 |" in text
    assert "| ucf101 | train1_few_shot_2.txt | ucf_101_labels.csv | 86.5 | 97.5 |" in text
    assert text.index("### Zero-shot") < text.index("### Few-shot") < text.index("### Base-to")


def test_cli_markdown_and_json(runs, capsys, tmp_path):
    assert cli.main(runs[:3]) == 0
    assert "| 75.0 | 50.0 | 60.0 |" in capsys.readouterr().out
    assert cli.main([*runs, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["base2novel"][0]["harmonic_mean"] == pytest.approx(60.0)
    (tmp_path / "empty").mkdir()
    assert cli.main([str(tmp_path / "empty")]) == 2
    assert "no eval_metrics.json or final_metrics.json" in capsys.readouterr().err
