"""Tiny videos and datasets shared by the tests/test_data_*.py modules (no tests here).

Grey-coded videos make frame sampling observable after decoding: frame i is a flat grey of level
`20 + 5 i`, which H.264 reproduces to within 1, so `frame_index` reads the index back.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from tcclip_jax.data.config import default_data_config
from tcclip_jax.data.video_encode import encode_video

HEIGHT, WIDTH = 32, 40


def grey_frames(num_frames: int, height: int = HEIGHT, width: int = WIDTH) -> list[np.ndarray]:
    assert num_frames <= 47
    return [np.full((height, width, 3), 20 + 5 * i, np.uint8) for i in range(num_frames)]


def frame_index(frame: np.ndarray) -> int:
    return int(round((float(frame.mean()) - 20) / 5))


def textured_frames(num_frames: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Moving gradients: enough detail for encoders to use B-frames and motion."""
    yy, xx = np.mgrid[0:height, 0:width]
    return [
        np.stack(
            [(xx * 4 + 7 * i) % 256, (yy * 5 + 3 * i) % 256, np.full_like(xx, (11 * i) % 256)], -1
        ).astype(np.uint8)
        for i in range(num_frames)
    ]


def write_grey_dataset(
    root: str, lengths: list[int], *, ext: str = ".mp4", list_name: str = "train.txt"
) -> str:
    """Video k has lengths[k] frames and label k; returns the annotation list's path."""
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    lines = []
    for k, n in enumerate(lengths):
        rel = f"videos/v{k:02d}{ext}"
        encode_video(os.path.join(root, rel), grey_frames(n))
        lines.append(f"{rel} {k}\n")
    with open(os.path.join(root, list_name), "w") as f:
        f.writelines(lines)
    with open(os.path.join(root, "classes.csv"), "w") as f:
        f.write("id,name\n" + "".join(f"{k},class{k}\n" for k in range(len(lengths))))
    return os.path.join(root, list_name)


def small_config(root: str, **overrides) -> ml_collections.ConfigDict:
    """A config for tiny clips (4 frames of 32 px) that keeps tests fast."""
    cfg = default_data_config()
    cfg.root = root
    cfg.train_list = os.path.join(root, "train.txt")
    cfg.val_list = os.path.join(root, "train.txt")
    cfg.class_list = os.path.join(root, "classes.csv")
    cfg.num_frames = 4
    cfg.image_size = 32
    cfg.resize_size = 36
    cfg.num_threads = 1
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def no_augmentation(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    cfg.hflip = False
    cfg.color_jitter_p = 0.0
    cfg.grayscale_p = 0.0
    return cfg
