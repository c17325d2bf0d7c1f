"""Accuracy bookkeeping on hand-made numbers: view fusion, top-k, padding."""

import numpy as np

from tcclip_jax.evaluation.accuracy import multiview_scores, tally, topk_hits


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
