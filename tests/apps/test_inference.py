"""`Predictor`'s cache of class-list text embeddings: bounded, least recently used dropped first,
and a list dropped and asked for again computed as a fresh Predictor computes it."""

import jax
import numpy as np
from model_helpers import random_params

from tcclip_jax.apps.inference import TEXT_CACHE_SIZE, Predictor


def test_class_lists_beyond_the_cache_size_drop_the_least_recently_used(tiny_config):
    predictor = Predictor(tiny_config, random_params(tiny_config, 0))
    lists = [(f"class {i}", f"other {i}") for i in range(TEXT_CACHE_SIZE + 2)]
    for names in lists[:TEXT_CACHE_SIZE]:
        predictor.encode_classes(names)
    predictor.encode_classes(lists[0])  # used again: now the most recent
    for names in lists[TEXT_CACHE_SIZE:]:
        predictor.encode_classes(names)
    cached = list(predictor._text_cache)
    assert len(cached) == TEXT_CACHE_SIZE
    assert lists[0] in cached and lists[1] not in cached and lists[2] not in cached
    assert cached[-2:] == lists[-2:]
    again = jax.tree.leaves(predictor.encode_classes(lists[1]))
    fresh = jax.tree.leaves(Predictor(tiny_config, predictor.params).encode_classes(lists[1]))
    assert all(np.array_equal(a, b) for a, b in zip(again, fresh, strict=True))
