"""Frame sampling: the released code's TSN rules for long and short videos, and test views."""

import numpy as np
import pytest

from tcclip_jax.data import sampling


@pytest.mark.parametrize("num_frames", [16, 17, 40, 300])
def test_train_indices_take_one_random_frame_per_segment(num_frames):
    avg = num_frames // 16
    draws = np.stack(
        [sampling.train_indices(num_frames, 16, np.random.default_rng(s)) for s in range(200)]
    )
    segment = draws // avg
    np.testing.assert_array_equal(segment, np.broadcast_to(np.arange(16), draws.shape))
    # The offset inside a segment is uniform over all of it, not pinned to its start.
    assert set(np.unique(draws % avg)) == set(range(avg))


def test_train_indices_match_released_formula():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    avg = 301 // 16
    expected = np.arange(16) * avg + rng_b.integers(avg, size=16)
    np.testing.assert_array_equal(sampling.train_indices(301, 16, rng_a), expected)


@pytest.mark.parametrize(
    "num_frames, expected",
    [
        # round(15 * 8 / 16) = 8 wraps to frame 0: the released code's 'loop' does the same.
        (8, [0, 0, 1, 2, 2, 2, 3, 4, 4, 4, 5, 6, 6, 6, 7, 0]),
        (1, [0] * 16),
        (15, [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13, 14]),
    ],
)
def test_short_videos_repeat_frames_evenly(num_frames, expected):
    """n < T: round(i * n / T) mod n (numpy rounds halves to even), as released."""
    got = sampling.train_indices(num_frames, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(got, expected)
    assert got.max() < num_frames


@pytest.mark.parametrize("num_frames", [5, 16, 40, 301])
def test_test_indices_are_segment_centres(num_frames):
    avg = num_frames / 16
    expected = (np.arange(16) * avg + avg / 2.0).astype(int)  # the released formula
    np.testing.assert_array_equal(sampling.test_indices(num_frames, 16), expected)


def test_uniform_views_spread_clips_inside_segments():
    views = sampling.view_indices(320, 16, 2, "uniform")
    np.testing.assert_array_equal(views[0], np.arange(16) * 20 + 5)
    np.testing.assert_array_equal(views[1], np.arange(16) * 20 + 15)
    np.testing.assert_array_equal(
        sampling.view_indices(320, 16, 1, "uniform")[0], np.arange(16) * 20 + 10
    )


def test_tsn_random_views_follow_the_rng():
    a = sampling.view_indices(100, 8, 3, "tsn_random", np.random.default_rng(5))
    b = sampling.view_indices(100, 8, 3, "tsn_random", np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 8)
    assert not np.array_equal(a[0], a[1])
    # One view is the segment centres, as the released single-view test takes.
    np.testing.assert_array_equal(
        sampling.view_indices(100, 8, 1, "tsn_random", np.random.default_rng(5)),
        sampling.test_indices(100, 8)[None],
    )
    with pytest.raises(ValueError, match="needs an rng"):
        sampling.view_indices(100, 8, 3, "tsn_random")
    with pytest.raises(ValueError, match="'uniform' or 'tsn_random'"):
        sampling.view_indices(100, 8, 3, "dense")


def test_empty_video_cannot_be_sampled():
    with pytest.raises(ValueError, match="0 frames"):
        sampling.train_indices(0, 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="0 frames"):
        sampling.test_indices(0, 16)
