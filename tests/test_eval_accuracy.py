"""Accuracy bookkeeping on hand-made numbers: view fusion, top-k, padding, summaries, table."""

import numpy as np
import pytest

from tcclip_jax.evaluation import (
    format_table,
    harmonic_mean,
    multiview_scores,
    summarize_splits,
    tally,
    topk_hits,
)


def test_views_fuse_by_summed_softmax_not_summed_logits():
    # One very confident view for class 0, two moderately confident views for class 1.
    logits = np.array([[[20.0, 0.0], [0.0, 2.0], [0.0, 2.0]]], np.float32)
    scores = np.asarray(multiview_scores(logits))
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(scores, soft.sum(1), rtol=1e-6)
    assert scores.argmax(-1)[0] == 1
    assert logits.sum(1).argmax(-1)[0] == 0  # summed logits would pick the other class


def test_topk_hits():
    scores = np.array(
        [
            [0.1, 0.9, 0.0, 0.2, 0.3, 0.4, 0.5],  # label 1 is the best
            [0.1, 0.9, 0.0, 0.2, 0.3, 0.4, 0.5],  # label 3 is 5th best
            [0.1, 0.9, 0.0, 0.2, 0.3, 0.4, 0.5],  # label 0 is 6th best
        ],
        np.float32,
    )
    top1, top5 = topk_hits(scores, np.array([1, 3, 0]))
    np.testing.assert_array_equal(top1, [True, False, False])
    np.testing.assert_array_equal(top5, [True, True, False])


def test_top5_with_fewer_than_five_classes_counts_every_label():
    scores = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], np.float32)
    top1, top5 = topk_hits(scores, np.array([2, 0]))
    np.testing.assert_array_equal(top1, [False, True])
    np.testing.assert_array_equal(top5, [True, True])


def test_tally_ignores_padding_rows():
    counts = np.zeros((3, 4), np.int64)
    # Two real rows (videos 2 and 0), two padding rows that "hit" and point at video 0.
    tally(
        counts,
        index=np.array([2, 0, -1, -1]),
        valid=np.array([True, True, False, False]),
        top1=np.array([True, False, True, True]),
        top5=np.array([True, True, True, True]),
    )
    np.testing.assert_array_equal(counts, [[1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 1, 0]])
    tally(counts, np.array([1, 3]), np.array([True, True]), np.array([0, 1]), np.array([1, 1]))
    np.testing.assert_array_equal(counts, [[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]])


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
    lines = format_table(metrics).splitlines()
    assert lines[0] == "protocol: zeroshot (WiSE-FT weight 0.7)"
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
    lines = format_table(b2n).splitlines()
    assert lines[0] == "protocol: base2novel"
    assert lines[3].split() == ["base", "5", "80.00", "95.00"]
    assert lines[-1].split() == ["harmonic", "mean", "53.33"]
