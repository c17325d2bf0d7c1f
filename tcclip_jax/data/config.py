"""Every setting the video input pipeline reads, with the published recipe's values as defaults."""

from __future__ import annotations

import ml_collections
from ml_collections import FieldReference

# OpenAI CLIP's own normalisation: what CLIP's weights expect.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# What the released TC-CLIP / ViFi-CLIP code applies in training and testing (mmaction's
# `img_norm_cfg`, mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375] on 0..255), so
# what their released checkpoints expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Normalisations by name (mean, std on the 0..1 scale), for configs, flags and checkpoints.
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}


def normalization_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a normalisation named in NORMALIZATIONS."""
    if name not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {name!r}")
    return NORMALIZATIONS[name]


def default_data_config() -> ml_collections.ConfigDict:
    """The data config; training and evaluation configs override fields of it."""
    c = ml_collections.ConfigDict()

    # --- Where the data is (`format`: a reader of data/readers.py's READERS) ---------------
    # 'video': video files (any container/codec FFmpeg reads) under `root`;
    # 'frames': one JPEG per frame in `root/<relative path>/` named by `frame_template`;
    # 'tfds': ArrayRecord shards written by tools/build_tfds_dataset.py (see tfds_builder.py).
    c.format = "video"
    c.root = ""  # annotation paths are relative to this directory
    c.train_list = ""  # 'relative/path LABEL' per line
    c.val_list = ""
    c.class_list = ""  # CSV 'id,name' or JSON {"0": "name", ...}
    c.frame_template = "img_{:05d}.jpg"  # format string taking the frame number
    c.frame_start_index = 1  # number of the first frame file (img_00001.jpg)
    c.tfds_name = ""  # e.g. 'tcclip_videos/hmdb51_split1'
    c.tfds_dir = ""  # the tfds data_dir the builder wrote to
    c.tfds_train_split = "train"
    c.tfds_val_split = "val"

    # --- Clip sampling ---------------------------------------------------------------------
    c.num_frames = 16  # T segments, one frame each
    c.test_clips = 2  # temporal views at test time (2 few-shot/base-to-novel/zero-shot, 4 fully)
    c.test_crops = 1  # spatial views at test time: 1 (centre) or 3 (along the long side)
    # 'tsn_random': the released code's multi-view test sampling, i.e. training's random offsets
    # drawn C times (C=1: the segment centres), seeded by the video's name, so evaluation
    # is deterministic whatever the list, batch or process layout (pipeline.view_seed);
    # 'uniform': clip c of C takes frame (c + 0.5) / C through every segment (C=1: the centre).
    c.test_clip_sampling = "tsn_random"

    # --- Augmentation (training) and view geometry -----------------------------------------
    c.image_size = 224
    c.resize_size = 256  # short side before cropping (the released code: int(256 / 224 * size))
    c.crop_scales = (1.0, 0.875, 0.75, 0.66)
    c.max_wh_scale_gap = 1  # crop width and height scales differ by at most this many steps
    c.hflip = True  # set False for Something-Something v2 (left/right matter there)
    c.color_jitter_p = 0.8
    c.color_jitter = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue strengths
    # Jitter factors and op order drawn for every frame, as the released code calls torchvision's
    # ColorJitter frame by frame (whether to jitter is drawn per clip); False: one draw per clip.
    c.color_jitter_per_frame = True
    c.grayscale_p = 0.2
    # 'imagenet': the published training and testing (and what released checkpoints expect);
    # 'clip': CLIP's own statistics. Evaluation and inference of a checkpoint use the one it
    # records (weights.checkpoint.load_normalization) unless told otherwise.
    c.normalization = "imagenet"
    # True: 'video' is uint8 and the model input is `normalize_on_device(video, mean, std)`
    # (4x less host memory and host-to-device traffic); False: float32 normalised on host.
    c.uint8_output = True

    # --- Throughput ------------------------------------------------------------------------
    # Shuffling is global (a fresh index permutation every epoch), so there is no shuffle
    # buffer to size.
    # Grain worker processes (mp_prefetch); 0 = decode in this process; 'auto': from the cores
    # this process may use (none below 8 cores, else one per `num_threads` cores beyond 2, at
    # most 32: data/workers.py). `python -m tcclip_jax.data.bench` shows what a host needs.
    c.num_workers = FieldReference("auto", field_type=object)  # 'auto' or a whole number
    c.num_threads = 2  # decoding threads per process (PyAV and PIL release the GIL)
    c.prefetch = 2  # batches buffered per worker process
    c.decode_threads = 1  # FFmpeg threads per video decoder (0 = FFmpeg's choice)

    # --- Bad input -------------------------------------------------------------------------
    # Training skips unreadable videos, logging each; past this many the run stops with an
    # error listing them. Evaluation never skips: an unreadable video is an error naming it.
    c.max_bad_videos = 100
    return c
