"""Clip augmentation and test-time views on uint8 numpy clips [T, H, W, 3].

Geometry follows the released code (mmaction2 transforms as configured there): resize the short
side (`Resize(scale=(-1, 256))`, sizes rounded as mmcv's `rescale_size`), `MultiScaleCrop` with
fixed offsets (5 candidate positions, width/height scale levels at most `max_wh_scale_gap` apart,
sizes within 3 px of the output snapped to it), resize to the output size, flip. Colour jitter and
greyscale reproduce torchvision's PIL arithmetic (the released code calls torchvision on PIL
images): brightness, contrast, saturation, hue in random order, contrast around the frame's mean
luma. Resizing is PIL bilinear, which low-pass filters when shrinking (mmcv's OpenCV bilinear
does not), so pixels differ slightly from the released code. Crop, flip, whether to jitter and
greyscale are chosen once per clip; the jitter's factors and order are drawn for every frame, as
the released code does (`per_frame_jitter`; False draws them once per clip).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the short side `size`, rounded as mmcv.rescale_size does."""
    scale = size / min(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize(
    frames: np.ndarray,
    height: int,
    width: int,
    box: Sequence[float] | None = None,
    flip: bool = False,
) -> np.ndarray:
    """Bilinear resize of every frame (of the region `box` = (x0, y0, x1, y1) when given),
    mirrored left-right when `flip`."""
    if box is None and not flip and frames.shape[1:3] == (height, width):
        return frames
    out = np.empty((len(frames), height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        img = Image.fromarray(frame).resize((width, height), Image.BILINEAR, box=box)
        out[i] = np.asarray(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img)
    return out


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
    return resize(frames, *short_side_shape(*frames.shape[1:3], size))


def multi_scale_crop_box(
    height: int,
    width: int,
    output_size: int,
    scales: Sequence[float],
    max_wh_scale_gap: int,
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of mmaction2's MultiScaleCrop(random_crop=False, num_fixed_crops=5)."""
    crop_sizes = [int(min(height, width) * s) for s in scales]
    candidates = [
        (w, h)
        for i, h in enumerate(crop_sizes)
        for j, w in enumerate(crop_sizes)
        if abs(i - j) <= max_wh_scale_gap
    ]
    crop_w, crop_h = candidates[rng.integers(len(candidates))]
    crop_w = output_size if abs(crop_w - output_size) < 3 else crop_w
    crop_h = output_size if abs(crop_h - output_size) < 3 else crop_h
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    offsets = [
        (0, 0),
        (4 * w_step, 0),
        (0, 4 * h_step),
        (4 * w_step, 4 * h_step),
        (2 * w_step, 2 * h_step),
    ]
    x, y = offsets[rng.integers(len(offsets))]
    return x, y, x + crop_w, y + crop_h


# The photometric ops take a clip [t, H, W, 3] and one factor per frame [t]. torchvision's
# brightness, contrast and saturation on PIL images are ImageEnhance: `Image.blend(degenerate,
# frame, factor)` with a degenerate image of black, the frame's mean luma, or its luma. Brightness
# and contrast are then a table per frame that PIL's own Image.blend fills (bit for bit PIL's
# float32 arithmetic on any platform). Frames are processed one C call each, which is faster than
# one NumPy gather over the whole clip with per-frame offsets.


def _blend_tables(degenerate: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """[t, 256] uint8: PIL's blend(degenerate[i], v, factors[i]) for every value v."""
    values = Image.fromarray(np.arange(256, dtype=np.uint8)[None])
    return np.stack(
        [
            np.asarray(Image.blend(Image.new("L", (256, 1), int(d)), values, float(f)))[0]
            for d, f in zip(degenerate, factors, strict=True)
        ]
    )


def _lookup(frames: np.ndarray, tables: np.ndarray) -> np.ndarray:
    out = np.empty_like(frames)
    for frame, table, o in zip(frames, tables, out, strict=True):
        np.take(table, frame, out=o)
    return out


def _brightness(frames: np.ndarray, factors: np.ndarray) -> np.ndarray:
    return _lookup(frames, _blend_tables(np.zeros(len(frames)), factors))


def _contrast(frames: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Blend every frame with its own mean luma (torchvision is applied frame by frame)."""
    luma = np.asarray(_tall(frames).convert("L")).reshape(frames.shape[:3])
    means = (luma.mean(axis=(1, 2)) + 0.5).astype(np.int64)  # rounded as ImageEnhance does
    return _lookup(frames, _blend_tables(means, factors))


def _saturation(frames: np.ndarray, factors: np.ndarray) -> np.ndarray:
    out = np.empty_like(frames)
    for frame, factor, o in zip(frames, factors, out, strict=True):
        img = Image.fromarray(frame)
        o[...] = np.asarray(Image.blend(img.convert("L").convert("RGB"), img, float(factor)))
    return out


def _packed(img: Image.Image) -> np.ndarray:
    """The pixels of an RGB image as words R | G << 8 | B << 16."""
    return np.frombuffer(img.tobytes("raw", "RGBX"), "<u4") & 0xFFFFFF  # drops the padding


_HSV_TABLES_LOCK = threading.Lock()  # decoding threads would otherwise build them twice


def _hsv_tables() -> tuple[np.ndarray, np.ndarray]:
    with _HSV_TABLES_LOCK:
        return _build_hsv_tables()


@functools.cache
def _build_hsv_tables() -> tuple[np.ndarray, np.ndarray]:
    """PIL's RGB -> HSV and HSV -> RGB conversions of all 2^24 pixels as lookup tables.

    RGB words R | G << 8 | B << 16 map to HSV words V | S << 8 | H << 16 and back. Built by
    PIL itself (2 x 64 MiB, once per process), so a lookup is PIL's
    conversion bit for bit, at a fraction of its cost.
    """
    every = Image.frombytes("RGB", (4096, 4096), np.arange(1 << 24, dtype="<u4"), "raw", "RGBX")
    to_hsv = _packed(Image.merge("RGB", every.convert("HSV").split()[::-1]))
    to_rgb = _packed(Image.merge("HSV", every.split()[::-1]).convert("RGB"))
    return to_hsv, to_rgb


def _hue(frames: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Rotate each frame's hue by its factor in turns through PIL's HSV, as torchvision does for
    PIL images (the hue byte shifted by int(255 factor), wrapping around)."""
    to_hsv, to_rgb = _hsv_tables()
    pixels = np.take(to_hsv, _packed(_tall(frames))).reshape(len(frames), -1)
    shifts = np.trunc(np.asarray(factors, np.float64) * 255).astype(np.int64) % 256
    pixels += (shifts.astype(np.uint32) << 16)[:, None]
    pixels &= 0xFFFFFF  # the hue wraps around
    np.take(to_rgb, pixels, out=pixels)
    t, h, w, _ = frames.shape
    return np.asarray(Image.frombytes("RGB", (w, t * h), pixels, "raw", "RGBX")).reshape(t, h, w, 3)


def _tall(frames: np.ndarray) -> Image.Image:
    t, h, w, _ = frames.shape
    return Image.fromarray(np.ascontiguousarray(frames).reshape(t * h, w, 3))


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def color_jitter(
    frames: np.ndarray,
    strengths: Sequence[float],
    rng: np.random.Generator,
    per_frame: bool = False,
) -> np.ndarray:
    """torchvision ColorJitter(brightness, contrast, saturation, hue) on every frame.

    `per_frame`: fresh factors and op order for every frame, as the released code calls
    torchvision frame by frame; otherwise one draw for all frames. As in torchvision, an op with
    strength 0 is not applied at all.
    """
    b, c, s, h = strengths
    draws = len(frames) if per_frame else 1
    low = (max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h)
    high = (1 + b, 1 + c, 1 + s, h)
    factors = np.broadcast_to(rng.uniform(low, high, (draws, 4)), (len(frames), 4))
    orders = np.broadcast_to(
        rng.permuted(np.tile(np.arange(4), (draws, 1)), axis=1), (len(frames), 4)
    )
    frames = np.array(frames)
    for position in range(4):
        for k, op in enumerate(_JITTER_OPS):
            chosen = orders[:, position] == k
            if strengths[k] > 0 and chosen.any():
                frames[chosen] = op(frames[chosen], factors[chosen, k])
    return frames


def grayscale(frames: np.ndarray) -> np.ndarray:
    """torchvision Grayscale(num_output_channels=3) on PIL images: luma in all channels."""
    return np.asarray(_tall(frames).convert("L").convert("RGB")).reshape(frames.shape)


def train_augment(
    frames: np.ndarray,
    *,
    output_size: int,
    scales: Sequence[float],
    max_wh_scale_gap: int,
    hflip: bool,
    jitter_p: float,
    jitter: Sequence[float],
    per_frame_jitter: bool,
    grayscale_p: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Multi-scale crop, resize, flip, colour jitter, greyscale of short-side-resized frames."""
    box = multi_scale_crop_box(*frames.shape[1:3], output_size, scales, max_wh_scale_gap, rng)
    flip = hflip and rng.random() < 0.5
    frames = resize(frames, output_size, output_size, box=box, flip=flip)
    if rng.random() < jitter_p:
        frames = color_jitter(frames, jitter, rng, per_frame_jitter)
    if rng.random() < grayscale_p:
        frames = grayscale(frames)
    return frames


def test_crops(
    frames: np.ndarray, num_crops: int, output_size: int, resize_size: int
) -> np.ndarray:
    """[num_crops, T, S, S, 3] spatial views of native-size frames [T, H, W, 3].

    One crop: short side to `resize_size`, centre crop. Three crops: short side to the output
    size, then left, centre and right (top, middle, bottom for portrait video) squares.
    """
    if num_crops == 1:
        frames = resize_short_side(frames, resize_size)
        h, w = frames.shape[1:3]
        top, left = (h - output_size) // 2, (w - output_size) // 2
        return frames[None, :, top : top + output_size, left : left + output_size]
    if num_crops == 3:
        frames = resize_short_side(frames, output_size)
        h, w = frames.shape[1:3]
        step_y, step_x = (h - output_size) // 2, (w - output_size) // 2
        return np.stack(
            [
                frames[
                    :, k * step_y : k * step_y + output_size, k * step_x : k * step_x + output_size
                ]
                for k in range(3)
            ]
        )
    raise ValueError(f"test_crops must be 1 or 3, got {num_crops}")


def normalize(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 (frames - 255 mean) / (255 std), the same arithmetic as normalize_on_device."""
    shift = np.float32(255.0) * np.asarray(mean, np.float32)
    scale = np.float32(255.0) * np.asarray(std, np.float32)
    return (frames.astype(np.float32) - shift) / scale
