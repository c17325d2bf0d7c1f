"""Label smoothing, soft-target cross-entropy and on-device mixup / cutmix."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tcclip_jax.train import losses


def test_smooth_labels_values():
    t = np.asarray(losses.smooth_labels(jnp.array([2, 0]), 4, 0.1))
    np.testing.assert_allclose(t[0], [0.025, 0.025, 0.925, 0.025], rtol=1e-6)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_smooth_labels_is_the_published_formula_bit_for_bit(dtype):
    """optax's smoothing equals the published one-hot * (1 - s) + s / C, bit for bit."""
    labels = jnp.array([0, 3, 399, 17, 250])
    for classes, s in ((400, 0.1), (51, 0.1), (8, 0.0), (101, 0.37)):
        labels_c = labels % classes
        ours = losses.smooth_labels(labels_c, classes, s, dtype)
        published = jax.nn.one_hot(labels_c, classes, dtype=dtype) * (1.0 - s) + s / classes
        assert ours.dtype == dtype
        np.testing.assert_array_equal(
            np.asarray(ours, np.float32), np.asarray(published, np.float32)
        )


def test_soft_target_cross_entropy():
    logits = jnp.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    targets = jnp.array([[0.2, 0.7, 0.1], [0.0, 0.0, 1.0]])
    log_p = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    expected = -(targets * log_p).sum(-1).mean()
    np.testing.assert_allclose(
        losses.soft_target_cross_entropy(logits, targets), expected, rtol=1e-6
    )


def test_group_partners_permute_within_groups():
    x = jnp.arange(24).reshape(2, 12) * 10  # 2 micro-batches of 12 clips: 3 groups of 4 each
    perm = jnp.array([[[3, 0, 0, 1], [0, 1, 2, 3], [2, 2, 2, 2]]] * 2)
    expected = [30, 0, 0, 10, 40, 50, 60, 70, 100, 100, 100, 100]
    np.testing.assert_array_equal(losses.group_partners(x, perm)[0], expected)
    np.testing.assert_array_equal(losses.group_partners(x, perm)[1], np.add(expected, 120))
    video = jnp.arange(2 * 4 * 3 * 2).reshape(1, 4, 3, 2, 2)  # trailing axes move with the clip
    got = losses.group_partners(video, jnp.array([[[1, 2, 3, 0]]]))
    np.testing.assert_array_equal(got[0], video[0, [1, 2, 3, 0]])


def _group_draws(batch_shape, config=None, key=0):
    config = config or losses.MixConfig()
    return jax.jit(lambda k: losses.sample_group_mixes(k, batch_shape, H, W, config))(
        jax.random.key(key)
    )


def test_groups_of_four_draw_independently_and_alike_within():
    mix, perm = _group_draws((2, 64))  # 32 groups
    keep = np.asarray(mix.keep).reshape(32, 4, H, W)
    weight = np.asarray(mix.label_weight).reshape(32, 4)
    assert np.all(keep == keep[:, :1]) and np.all(weight == weight[:, :1])  # one draw per group
    # A fresh draw for every group (cutmix areas on a 16 x 20 frame can coincide).
    assert len(np.unique(weight[:, 0])) > 24
    cutmix = np.all((keep[:, 0] == 0) | (keep[:, 0] == 1), axis=(1, 2))
    assert 0 < cutmix.sum() < 32
    perm = np.asarray(perm).reshape(32, 4)
    assert all(sorted(p) == [0, 1, 2, 3] for p in perm)  # permutations of the group
    assert len({tuple(p) for p in perm}) > 10
    assert np.any(perm == np.arange(4))  # a clip can pair with itself
    # Groups are numbered micro-batch-major: the same clips draw the same however the step's
    # batch is split into micro-batches.
    mix4, perm4 = _group_draws((8, 16))
    np.testing.assert_array_equal(np.asarray(mix4.keep).reshape(keep.shape), keep)
    np.testing.assert_array_equal(np.asarray(perm4).reshape(perm.shape), perm)


def test_group_size_must_divide_the_micro_batch():
    with pytest.raises(ValueError, match="groups of 4 clips do not divide micro-batches of 6"):
        losses.sample_group_mixes(jax.random.key(0), (1, 6), H, W, losses.MixConfig())
    mix, perm = _group_draws((1, 6), losses.MixConfig(group_size=6))
    assert len(np.unique(np.asarray(mix.label_weight))) == 1 and perm.shape == (1, 1, 6)


N, H, W = 1000, 16, 20


@functools.cache
def _draws(config):
    """N draws for one config, compiled once per config."""
    keys = jax.random.split(jax.random.key(0), N)
    return jax.jit(jax.vmap(lambda k: losses.sample_mix(k, H, W, config)))(keys)


def test_cutmix_box_and_label_weight():
    mix = _draws(losses.MixConfig(mixup_alpha=0.0))
    keep = np.asarray(mix.keep)
    assert set(np.unique(keep)) <= {0.0, 1.0}
    # Label weight = 1 - pasted area / frame area, and the pasted region is one rectangle.
    np.testing.assert_allclose(mix.label_weight, keep.mean(axis=(1, 2)), rtol=1e-6)
    for k in keep[:50]:
        rows, cols = np.where(k == 0)
        if rows.size:
            assert rows.size == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    # lambda ~ Beta(1, 1): the kept fraction is spread over (0, 1], mean near 1/2 (boxes are
    # clipped at the border, so it leans high).
    assert 0.45 < float(np.mean(mix.label_weight)) < 0.75


def test_mixup_lambda_and_blend():
    mix = _draws(losses.MixConfig(cutmix_alpha=0.0))
    lam = np.asarray(mix.label_weight)
    np.testing.assert_allclose(np.asarray(mix.keep)[:, 0, 0], lam)
    assert np.all(np.asarray(mix.keep) == lam[:, None, None])
    # Beta(0.8, 0.8): mean 1/2, variance 1/(4 * 2.6).
    assert abs(lam.mean() - 0.5) < 0.03
    assert abs(lam.var() - 1 / (4 * 2.6)) < 0.015
    one = losses.Mix(keep=jnp.full((2, 2), 0.25), label_weight=jnp.float32(0.25))
    a, b = jnp.ones((3, 2, 2, 3)), jnp.zeros((3, 2, 2, 3))
    np.testing.assert_allclose(one.clips(a, b), 0.25)
    np.testing.assert_allclose(
        one.targets(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])), [0.25, 0.75]
    )


def test_switch_between_mixup_and_cutmix():
    mix = _draws(losses.MixConfig())
    keep = np.asarray(mix.keep)
    is_cutmix = np.all((keep == 0) | (keep == 1), axis=(1, 2))
    assert 0.43 < is_cutmix.mean() < 0.57
    assert len(np.unique(np.asarray(mix.label_weight))) > N // 2  # a fresh draw per key


def test_cutmix_pastes_the_same_box_in_every_frame():
    draws = _draws(losses.MixConfig(mixup_alpha=0.0))
    # A box neither empty nor the whole frame.
    i = int(
        np.argmax((np.asarray(draws.label_weight) > 0.3) & (np.asarray(draws.label_weight) < 0.7))
    )
    mix = jax.tree.map(lambda x: x[i], draws)
    clips = np.random.default_rng(1).uniform(size=(2, 4, H, W, 3)).astype(np.float32)
    partner = np.random.default_rng(2).uniform(size=(2, 4, H, W, 3)).astype(np.float32)
    mixed = np.asarray(mix.clips(clips, partner))
    inside = np.asarray(mix.keep) == 0
    np.testing.assert_array_equal(mixed[:, :, inside], partner[:, :, inside])
    np.testing.assert_array_equal(mixed[:, :, ~inside], clips[:, :, ~inside])


def test_disabled_mixing_is_identity():
    mix = losses.sample_mix(jax.random.key(0), 4, 4, losses.MixConfig(0.0, 0.0))
    assert float(mix.label_weight) == 1.0
    np.testing.assert_array_equal(mix.keep, 1.0)
