"""tools/choice_agreement.py: the shares of seeds and merges two forward passes share."""

import numpy as np
from choice_agreement import agreement


def _choices(seeds, assignment):
    # one video, one summarising block: [1, 1, T, n_s]
    return {
        "seed_index": np.array(seeds)[None, None],
        "assignment": np.array(assignment)[None, None],
    }


def test_identical_choices_agree_fully():
    a = _choices([[3, 5], [1, 2]], [[0, 1], [0, 1]])
    assert agreement(a, a) == {"seeds": 1.0, "merges": 1.0}


def test_a_different_seed_and_the_groups_it_touches():
    exact = _choices([[3, 5], [1, 2]], [[0, 1], [0, 1]])  # tokens {(0,3),(1,1)} and {(0,5),(1,2)}
    low = _choices([[3, 6], [1, 2]], [[0, 1], [0, 1]])  # frame 0 picked 6 instead of 5
    shares = agreement(low, exact)
    assert shares["seeds"] == 3 / 4
    assert shares["merges"] == 2 / 4  # only the group {(0,3),(1,1)} is the same


def test_same_seeds_merged_differently():
    exact = _choices([[3, 5], [1, 2]], [[0, 1], [0, 1]])
    low = _choices([[3, 5], [1, 2]], [[0, 0], [1, 1]])  # {(0,3),(0,5)} and {(1,1),(1,2)}
    assert agreement(low, exact) == {"seeds": 1.0, "merges": 0.0}
