"""Augmentation and test views: released-code geometry, torchvision's PIL arithmetic, and the
same random choice for every frame of a clip."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tcclip_jax.data import transforms
from tcclip_jax.data.config import CLIP_MEAN, CLIP_STD
from tcclip_jax.data.normalize import normalize_on_device

RNG = np.random.default_rng(0)
CLIP = RNG.integers(0, 256, (3, 20, 28, 3), dtype=np.uint8)
CLIP[1] = CLIP[1] // 3 + 90  # a low-contrast frame: contrast uses each frame's own mean


def per_frame(fn, clip):
    return np.stack([np.asarray(fn(Image.fromarray(f))) for f in clip])


@pytest.mark.parametrize("factor", [0.6, 0.93, 1.0, 1.4])
@pytest.mark.parametrize(
    "op, enhancer",
    [
        (transforms._brightness, ImageEnhance.Brightness),
        (transforms._contrast, ImageEnhance.Contrast),
        (transforms._saturation, ImageEnhance.Color),
    ],
)
def test_photometric_ops_equal_torchvision_pil_path(op, enhancer, factor):
    """torchvision's adjust_brightness/contrast/saturation on PIL images are ImageEnhance."""
    got = op(CLIP, np.full(len(CLIP), factor))
    np.testing.assert_array_equal(got, per_frame(lambda im: enhancer(im).enhance(factor), CLIP))
    factors = [factor, 1.3, 0.7]  # each frame its own
    expected = np.stack(
        [enhancer(Image.fromarray(f)).enhance(x) for f, x in zip(CLIP, factors, strict=True)]
    )
    np.testing.assert_array_equal(op(CLIP, np.asarray(factors)), expected)


def torchvision_adjust_hue(img, hue_factor):
    """torchvision.transforms.functional_pil.adjust_hue, step by step."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        np_h += np.int64(hue_factor * 255).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


# Every hue factor's shift int(255 f) mod 256 matters: negative ones wrap around, small ones
# truncate to 0, and the drawn ones are random.
HUE_FACTORS = [-0.5, -0.1, -0.004, -1 / 255, 0.0, 0.0039, 1 / 255, 0.03, 0.1, 0.5]
HUE_FACTORS += np.random.default_rng(4).uniform(-0.5, 0.5, 30).tolist()


@pytest.mark.parametrize("factor", HUE_FACTORS)
def test_hue_equals_torchvision_pil_path(factor):
    rng = np.random.default_rng(int(abs(factor) * 1e6))
    clip = rng.integers(0, 256, (2, 24, 20, 3), dtype=np.uint8)
    clip[1, :12] = clip[1, :12, :, :1]  # grey pixels: no hue (saturation 0)
    for c in (CLIP, clip):
        got = transforms._hue(c, np.full(len(c), factor))
        expected = per_frame(lambda im: torchvision_adjust_hue(im, factor), c)
        np.testing.assert_array_equal(got, expected)
    factors = [factor, -0.3, 0.2]  # each frame its own
    expected = [
        np.asarray(torchvision_adjust_hue(Image.fromarray(f), x))
        for f, x in zip(CLIP, factors, strict=True)
    ]
    np.testing.assert_array_equal(transforms._hue(CLIP, np.asarray(factors)), expected)


@pytest.mark.parametrize("factor", [-0.1, 0.07])
def test_hue_lookup_equals_pil_for_every_colour(factor):
    """The lookup tables reproduce PIL's HSV round trip on all 2^24 colours."""
    every = np.arange(1 << 24, dtype="<u4").view(np.uint8).reshape(4096, 4096, 4)[..., :3]
    got = transforms._hue(every[None], np.array([factor]))[0]
    np.testing.assert_array_equal(
        got, np.asarray(torchvision_adjust_hue(Image.fromarray(every), factor))
    )


def test_grayscale_equals_pil_luma():
    got = transforms.grayscale(CLIP)
    expected = per_frame(lambda im: im.convert("L"), CLIP)
    np.testing.assert_array_equal(got, np.repeat(expected[..., None], 3, -1))


def torchvision_color_jitter(frame: np.ndarray, factors, order) -> np.ndarray:
    """torchvision ColorJitter.forward on one PIL frame with given parameters."""
    img = Image.fromarray(frame)
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for k in order:
        if k < 3:
            img = enhancers[k](img).enhance(factors[k])
        else:
            img = torchvision_adjust_hue(img, factors[3])
    return np.asarray(img)


JITTER = (0.4, 0.4, 0.2, 0.1)


def _jitter_draws(seed: int, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """The factors and op orders color_jitter draws from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    factors = rng.uniform((0.6, 0.6, 0.8, -0.1), (1.4, 1.4, 1.2, 0.1), (draws, 4))
    return factors, rng.permuted(np.tile(np.arange(4), (draws, 1)), axis=1)


def test_per_frame_jitter_is_torchvision_called_frame_by_frame():
    """The released code calls torchvision's ColorJitter on every frame: fresh factors and a
    fresh op order per frame."""
    clip = np.repeat(CLIP[:1], 8, axis=0)
    clip[3] = CLIP[1]  # the low-contrast frame
    out = transforms.color_jitter(clip, JITTER, np.random.default_rng(5), per_frame=True)
    factors, orders = _jitter_draws(5, len(clip))
    assert len({tuple(o) for o in orders}) > 1  # the orders differ too
    expected = [
        torchvision_color_jitter(f, x, o) for f, x, o in zip(clip, factors, orders, strict=True)
    ]
    np.testing.assert_array_equal(out, expected)
    assert len({f.tobytes() for f in out}) == len(clip)


def test_per_clip_jitter_draws_once():
    same = np.repeat(CLIP[:1], 4, axis=0)
    out = transforms.color_jitter(same, JITTER, np.random.default_rng(1))
    factors, orders = _jitter_draws(1, 1)
    expected = torchvision_color_jitter(same[0], factors[0], orders[0])
    assert not np.array_equal(expected, same[0])
    np.testing.assert_array_equal(out, np.broadcast_to(expected, out.shape))


def test_train_augment_jitters_per_frame_when_asked():
    same = np.repeat(CLIP[:1], 4, axis=0)
    kwargs = dict(
        output_size=20, scales=(1.0,), max_wh_scale_gap=1, hflip=False, jitter_p=1.0,
        jitter=JITTER, grayscale_p=0.0,
    )  # fmt: skip
    per = transforms.train_augment(
        same, per_frame_jitter=True, rng=np.random.default_rng(1), **kwargs
    )
    assert len({f.tobytes() for f in per}) == 4
    once = transforms.train_augment(
        same, per_frame_jitter=False, rng=np.random.default_rng(1), **kwargs
    )
    assert len({f.tobytes() for f in once}) == 1


def test_zero_strength_ops_are_not_applied():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(transforms.color_jitter(CLIP, (0, 0, 0, 0), rng), CLIP)
    only_hue = transforms.color_jitter(CLIP, (0, 0, 0, 0.1), np.random.default_rng(3))
    factor = np.random.default_rng(3).uniform(size=4)[3] * 0.2 - 0.1  # the hue factor drawn
    expected = per_frame(lambda im: torchvision_adjust_hue(im, factor), CLIP)
    np.testing.assert_array_equal(only_hue, expected)


def test_short_side_shape_rounds_like_mmcv():
    assert transforms.short_side_shape(240, 320, 256) == (256, 341)
    assert transforms.short_side_shape(320, 240, 224) == (299, 224)
    assert transforms.short_side_shape(256, 340, 256) == (256, 340)
    out = transforms.resize_short_side(CLIP, 10)
    assert out.shape == (3, 10, 14, 3)
    assert transforms.resize_short_side(out, 10) is out


def test_multi_scale_crop_candidates_are_the_released_ones():
    rng = np.random.default_rng(0)
    boxes = {
        transforms.multi_scale_crop_box(256, 340, 224, (1, 0.875, 0.75, 0.66), 1, rng)
        for _ in range(3000)
    }
    sizes = {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes}
    # Base 256: crop sizes [256, 224, 192, 168] (224 within 3 px stays 224); scale levels of
    # width and height at most one apart.
    levels = [256, 224, 192, 168]
    expected = {(levels[j], levels[i]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    assert sizes == expected
    for x0, y0, x1, y1 in boxes:
        w_step, h_step = (340 - (x1 - x0)) // 4, (256 - (y1 - y0)) // 4
        corners = {
            (0, 0),
            (4 * w_step, 0),
            (0, 4 * h_step),
            (4 * w_step, 4 * h_step),
            (2 * w_step, 2 * h_step),
        }
        assert (x0, y0) in corners


def test_train_augment_is_consistent_across_frames_and_keeps_range():
    # An asymmetric frame repeated over time: every output frame must be identical.
    frame = np.zeros((36, 48, 3), np.uint8)
    frame[:, :8] = 255
    clip = np.repeat(frame[None], 5, axis=0)
    flipped = 0
    for seed in range(40):
        out = transforms.train_augment(
            clip, output_size=32, scales=(1, 0.875, 0.75, 0.66), max_wh_scale_gap=1,
            hflip=True, jitter_p=0.8, jitter=(0.4, 0.4, 0.2, 0.1), per_frame_jitter=False,
            grayscale_p=0.2, rng=np.random.default_rng(seed),
        )  # fmt: skip
        assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
        assert all(np.array_equal(f, out[0]) for f in out)
        left, right = out[0, :, :4].mean(), out[0, :, -4:].mean()
        flipped += right > left
    assert 5 < flipped < 35  # flips about half of the clips


def test_no_flip_when_disabled():
    frame = np.zeros((36, 48, 3), np.uint8)
    frame[:, :20] = 255  # some of it in every crop
    for seed in range(20):
        out = transforms.train_augment(
            frame[None], output_size=32, scales=(1.0,), max_wh_scale_gap=1, hflip=False,
            jitter_p=0.0, jitter=(0.4, 0.4, 0.2, 0.1), per_frame_jitter=False, grayscale_p=0.0,
            rng=np.random.default_rng(seed),
        )  # fmt: skip
        assert out[0, :, :2].mean() > out[0, :, -2:].mean()


def test_test_crops_geometry():
    clip = np.zeros((2, 30, 60, 3), np.uint8)
    clip[:, :, :, 0] = np.arange(60, dtype=np.uint8)  # red = column
    one = transforms.test_crops(clip, 1, 24, 30)
    assert one.shape == (1, 2, 24, 24, 3)
    assert one[0, 0, 0, 0, 0] == 18  # (60 - 24) // 2
    three = transforms.test_crops(clip, 3, 30, 30)
    assert three.shape == (3, 2, 30, 30, 3)
    assert [v[0, 0, 0, 0] for v in three] == [0, 15, 30]  # left, centre, right
    portrait = np.transpose(clip, (0, 2, 1, 3))
    assert transforms.test_crops(portrait, 3, 30, 30).shape == (3, 2, 30, 30, 3)
    with pytest.raises(ValueError, match="1 or 3"):
        transforms.test_crops(clip, 2, 24, 30)


def test_host_and_device_normalisation_agree():
    host = transforms.normalize(CLIP, CLIP_MEAN, CLIP_STD)
    device = np.asarray(normalize_on_device(jnp.asarray(CLIP)))
    assert host.dtype == np.float32
    np.testing.assert_allclose(host, device, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        host[..., 0], (CLIP[..., 0] / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(TypeError, match="uint8"):
        normalize_on_device(jnp.asarray(host))
