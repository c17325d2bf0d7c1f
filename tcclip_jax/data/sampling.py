"""Which frames a clip takes: TSN segment sampling as the released code does it (mmaction2's
`SampleFrames(clip_len=1, num_clips=T)`).

Training: `avg = n // T`; if `avg > 0`, frame `i * avg + randint(avg)` for segment i (frames past
`T * avg` are never used, as in the released code); a video shorter than T frames takes
`round(i * n / T)`, so frames repeat. Testing: `avg = n / T`, frame `int(avg * i + avg / 2)`,
the segment centre. With C > 1 temporal clips the released code (X-CLIP's `SampleFrames(...,
multiview=C)`) draws the training offsets C times ('tsn_random'); evenly spaced clips
('uniform': clip c takes `int(avg * i + avg * (c + 0.5) / C)`) are the alternative.
Indices wrap modulo n ('loop'), again as released.
"""

from __future__ import annotations

import numpy as np


def _check(num_frames: int) -> None:
    if num_frames <= 0:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")


def train_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """[num_segments] frame indices with a random offset inside every segment."""
    _check(num_frames)
    avg = num_frames // num_segments
    if avg > 0:
        idx = np.arange(num_segments) * avg + rng.integers(avg, size=num_segments)
    else:
        idx = np.around(np.arange(num_segments) * (num_frames / num_segments)).astype(np.int64)
    return idx % num_frames


def test_indices(
    num_frames: int, num_segments: int, clip: int = 0, num_clips: int = 1
) -> np.ndarray:
    """[num_segments] frame indices of temporal view `clip` of `num_clips` (centres for 1)."""
    _check(num_frames)
    avg = num_frames / num_segments
    # Written as the released code does (`base + avg / 2`) so that one clip matches bit for bit.
    idx = (np.arange(num_segments) * avg + avg * ((clip + 0.5) / num_clips)).astype(np.int64)
    return idx % num_frames


def view_indices(
    num_frames: int,
    num_segments: int,
    num_clips: int,
    mode: str,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """[num_clips, num_segments] indices of the test-time temporal views.

    `mode` 'uniform' spreads the clips evenly through each segment; 'tsn_random' draws the
    training offsets once per clip from `rng`, as the released code's multi-view test does (one
    clip: the segment centres, as its single-view test does).
    """
    if mode == "uniform" or (mode == "tsn_random" and num_clips == 1):
        return np.stack(
            [test_indices(num_frames, num_segments, c, num_clips) for c in range(num_clips)]
        )
    if mode == "tsn_random":
        if rng is None:
            raise ValueError("test_clip_sampling='tsn_random' needs an rng")
        return np.stack([train_indices(num_frames, num_segments, rng) for _ in range(num_clips)])
    raise ValueError(f"test_clip_sampling must be 'uniform' or 'tsn_random', got {mode!r}")
