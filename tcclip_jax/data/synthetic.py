"""A small procedural action-video dataset whose classes can only be told apart by motion.

Each clip shows one shape on a smooth background. Every clip draws a start and end value for each
of four attributes (centre x, centre y, size, angle); its class picks one attribute and the
direction in which it is animated linearly over the clip, and every other attribute stays at a
uniformly random point between its own start and end. A single frame of any class is therefore a
sample from the same distribution, and the classes come in time-reversed pairs (left/right,
up/down, growing/shrinking, clockwise/counterclockwise) that only the order of frames separates.
Shape, colours and background are drawn the same way for every class.

Training augmentation must not flip clips horizontally (as for Something-Something v2): a flip
turns "moving left" into "moving right" and clockwise into counterclockwise.

Output layout, in the published code's formats:

  DIR/videos/<class_slug>/<split>_<index>.mp4   H.264 (libx264, yuv420p)
  DIR/train.txt, DIR/val.txt                    `videos/<class_slug>/<id>.mp4 LABEL` per line
  DIR/classes.csv                               `id,name` header, ids 0..C-1
  DIR/annotations.json                          per video: label, class, split, per-frame box

Usage:
  python -m tcclip_jax.data.synthetic --output /tmp/synthetic_actions

`prepare` is the data preparation hook of `configs/demo.py` (`config.prepare_data`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import av
import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageDraw

from tcclip_jax.runtime import agreement, storage

CLASS_NAMES: tuple[str, ...] = (
    "shape moving left",
    "shape moving right",
    "shape moving up",
    "shape moving down",
    "shape growing bigger",
    "shape shrinking smaller",
    "shape rotating clockwise",
    "shape rotating counterclockwise",
)

# Which attribute each class animates, and whether it runs from the segment's high end to its low
# end. Image y points down, so "up" is decreasing y and increasing angle turns clockwise on screen.
_CLASS_MOTION: tuple[tuple[str, bool], ...] = (
    ("x", True),
    ("x", False),
    ("y", True),
    ("y", False),
    ("radius", False),
    ("radius", True),
    ("angle", False),
    ("angle", True),
)
assert len(_CLASS_MOTION) == len(CLASS_NAMES)


def _centred(outline: np.ndarray) -> np.ndarray:
    """Moves a polygon's centroid to the origin and scales its farthest vertex to distance 1.

    Shapes then turn and grow about their centre of mass, and `radius` bounds them at any angle.
    """
    x, y = outline.T
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    centroid = np.stack([(x + np.roll(x, -1)) @ cross, (y + np.roll(y, -1)) @ cross]) / (
        3.0 * cross.sum()
    )
    outline = outline - centroid
    return outline / np.linalg.norm(outline, axis=1).max()


def _ellipse(num_points: int = 24) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, num_points, endpoint=False)
    return np.stack([np.cos(t), 0.5 * np.sin(t)], axis=1)


# Elongated outlines, so that turning is visible and no rotational symmetry below 180 degrees can
# make clockwise and counterclockwise look alike: rectangle, triangle, arrow, ellipse.
_SHAPES: tuple[np.ndarray, ...] = tuple(
    _centred(outline)
    for outline in (
        np.array([[1.0, 0.5], [-1.0, 0.5], [-1.0, -0.5], [1.0, -0.5]]),
        np.array([[1.0, 0.0], [-0.6, 0.45], [-0.6, -0.45]]),
        np.array(
            [
                [1.0, 0.0],
                [0.3, 0.5],
                [0.3, 0.2],
                [-0.9, 0.2],
                [-0.9, -0.2],
                [0.3, -0.2],
                [0.3, -0.5],
            ]
        ),
        _ellipse(),
    )
)

# Geometry as fractions of the shorter frame side (radius) or of the free range (travel).
_SMALL_RADIUS = (0.10, 0.14)
_LARGE_RADIUS = (0.18, 0.24)
_TRAVEL = (0.5, 0.8)
_ROTATION_DEGREES = (90.0, 180.0)
# Colour contrast between shape and background, in RGB distance and in luma, so that the shape
# stays visible after greyscale augmentation.
_MIN_RGB_DISTANCE = 100.0
_MIN_LUMA_GAP = 40.0
_LUMA = np.array([0.299, 0.587, 0.114])
_SUPERSAMPLE = 4


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def _segment(rng: np.random.Generator, low: float, high: float, length: float) -> np.ndarray:
    """A random [start, start + length] inside [low, high]."""
    start = rng.uniform(low, high - length)
    return np.array([start, start + length])


def _background(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A linear gradient between two similar colours in a random direction.

    Returns the image, float [H, W, 3], and the two end colours, [2, 3].
    """
    h, w = size
    colour_a = rng.uniform(0.0, 255.0, 3)
    colour_b = np.clip(colour_a + rng.uniform(-40.0, 40.0, 3), 0.0, 255.0)
    direction = rng.uniform(0.0, 2.0 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w]
    ramp = np.cos(direction) * xs / (w - 1) + np.sin(direction) * ys / (h - 1)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    return colour_a + ramp[..., None] * (colour_b - colour_a), np.stack([colour_a, colour_b])


def _shape_colour(rng: np.random.Generator, ends: np.ndarray) -> np.ndarray:
    """A colour that contrasts with every colour of the background gradient between `ends`."""
    start, span = ends[0], ends[1] - ends[0]
    lumas = ends @ _LUMA
    while True:
        colour = rng.uniform(0.0, 255.0, 3)
        nearest = start + np.clip((colour - start) @ span / max(span @ span, 1e-9), 0, 1) * span
        luma = colour @ _LUMA
        luma_gap = max(lumas.min() - luma, luma - lumas.max())
        if np.linalg.norm(colour - nearest) >= _MIN_RGB_DISTANCE and luma_gap >= _MIN_LUMA_GAP:
            return colour


def _coverage(outline: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a polygon given in pixel coordinates, [H, W]."""
    h, w = size
    mask = Image.new("L", (w * _SUPERSAMPLE, h * _SUPERSAMPLE), 0)
    points = [(float(x), float(y)) for x, y in outline * _SUPERSAMPLE]
    ImageDraw.Draw(mask).polygon(points, fill=255)
    mask = mask.resize((w, h), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


def render_clip(
    class_id: int, rng: np.random.Generator, num_frames: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Renders one clip of class `class_id`.

    Returns frames uint8 [F, H, W, 3] and the shape's bounding box per frame, float [F, 4] as
    (x0, y0, x1, y1), the extent of the drawn outline in pixel units (pixel i spans [i, i + 1)).
    The random draws do not depend on the class, so the same `rng` state gives the same shape,
    colours and attribute ranges for any class.
    """
    if not 0 <= class_id < len(CLASS_NAMES):
        raise ValueError(f"class_id must be in [0, {len(CLASS_NAMES)}), got {class_id}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2 to show motion, got {num_frames}")
    h, w = size
    if min(h, w) < 16:
        raise ValueError(f"size must be at least 16x16, got {size}")
    side = min(h, w)

    outline = _SHAPES[rng.integers(len(_SHAPES))]
    background, ends = _background(rng, (h, w))
    colour = _shape_colour(rng, ends)
    radius = np.array([rng.uniform(*_SMALL_RADIUS), rng.uniform(*_LARGE_RADIUS)]) * side
    reach = radius[1] + 1.0  # Keeps the shape a pixel inside the frame at its largest.
    segments = {
        "radius": radius,
        "x": _segment(rng, reach, w - reach, rng.uniform(*_TRAVEL) * (w - 2 * reach)),
        "y": _segment(rng, reach, h - reach, rng.uniform(*_TRAVEL) * (h - 2 * reach)),
        "angle": rng.uniform(0.0, 360.0) + np.array([0.0, rng.uniform(*_ROTATION_DEGREES)]),
    }
    held_at = {name: rng.uniform() for name in segments}

    animated, reverse = _CLASS_MOTION[class_id]
    progress = np.linspace(0.0, 1.0, num_frames)
    if reverse:
        progress = 1.0 - progress
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    boxes = np.empty((num_frames, 4), np.float32)
    for t in range(num_frames):
        state = {
            name: low + (progress[t] if name == animated else held_at[name]) * (high - low)
            for name, (low, high) in segments.items()
        }
        theta = np.deg2rad(state["angle"])
        rotation = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
        points = outline @ rotation * state["radius"] + [state["x"], state["y"]]
        alpha = _coverage(points, (h, w))[..., None]
        frames[t] = np.round(background * (1.0 - alpha) + colour * alpha).astype(np.uint8)
        boxes[t] = [*points.min(0), *points.max(0)]
    return frames, boxes


def write_video(path: str, frames: np.ndarray, fps: int = 25) -> None:
    """Encodes uint8 RGB frames [F, H, W, 3] (H and W even) as H.264 yuv420p."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {h}x{w} for {path}")
    # x264's macroblock-tree rate control gave different bitstreams (pixels off by up to ~40) for
    # the same frames in about a third of small encodes; without it the output is reproducible.
    options = {"crf": "18", "threads": "1", "x264-params": "mbtree=0"}
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_long_video(
    path: str,
    segments: Sequence[tuple[int, int]],
    size: tuple[int, int] = (64, 64),
    fps: int = 25,
    seed: int = 0,
) -> list[dict]:
    """One video of consecutive clips, `segments` (class_id, num_frames) each rendered as
    `render_clip` does (a new shape and background per segment), encoded as they are rendered
    (never the whole video in memory). Returns the truth: {"index", "class", "start", "end"}
    in seconds per segment."""
    h, w = size
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {h}x{w} for {path}")
    options = {"crf": "18", "threads": "1", "x264-params": "mbtree=0"}
    truth, start = [], 0
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k, (class_id, num_frames) in enumerate(segments):
            rng = np.random.default_rng([seed, 2, class_id, k])
            frames, _ = render_clip(class_id, rng, num_frames, size)
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            truth.append({"index": class_id, "class": CLASS_NAMES[class_id],
                          "start": start / fps, "end": (start + num_frames) / fps})  # fmt: skip
            start += num_frames
        container.mux(stream.encode())
    return truth


def _clip_rng(seed: int, split: str, class_id: int, index: int) -> np.random.Generator:
    """One generator per clip, so a clip's content does not depend on how many others there are."""
    return np.random.default_rng([seed, ("train", "val").index(split), class_id, index])


def generate(
    output_dir: str,
    *,
    videos_per_class: int = 24,
    val_per_class: int = 8,
    num_frames: int = 32,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    fps: int = 25,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes the dataset under `output_dir`.

    Returns the paths written: "train", "val" (annotation lists), "classes" (CSV), "annotations"
    (JSON) and "videos" (list of all video paths).
    """
    h, w = size
    if h % 2 or w % 2:
        raise ValueError(f"size must be even for yuv420p, got {h}x{w}")
    if videos_per_class < 1 or val_per_class < 0:
        raise ValueError(
            f"need videos_per_class >= 1 and val_per_class >= 0, "
            f"got {videos_per_class} and {val_per_class}"
        )
    if fps < 1:
        raise ValueError(f"fps must be positive, got {fps}")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise FileExistsError(
                f"output directory {output_dir} is not empty; pass overwrite=True (--overwrite) "
                "to replace its dataset"
            )
        shutil.rmtree(os.path.join(output_dir, "videos"), ignore_errors=True)

    paths: dict[str, Any] = {
        "train": os.path.join(output_dir, "train.txt"),
        "val": os.path.join(output_dir, "val.txt"),
        "classes": os.path.join(output_dir, "classes.csv"),
        "annotations": os.path.join(output_dir, "annotations.json"),
        "videos": [],
    }
    lists: dict[str, list[str]] = {"train": [], "val": []}
    videos: dict[str, dict[str, Any]] = {}
    for class_id, name in enumerate(CLASS_NAMES):
        os.makedirs(os.path.join(output_dir, "videos", _slug(name)), exist_ok=True)
        for split, count in (("train", videos_per_class), ("val", val_per_class)):
            for index in range(count):
                rng = _clip_rng(seed, split, class_id, index)
                frames, boxes = render_clip(class_id, rng, num_frames, (h, w))
                relative = f"videos/{_slug(name)}/{split}_{index:04d}.mp4"
                write_video(os.path.join(output_dir, relative), frames, fps)
                paths["videos"].append(os.path.join(output_dir, relative))
                lists[split].append(f"{relative} {class_id}\n")
                videos[relative] = {
                    "label": class_id,
                    "class": name,
                    "split": split,
                    "boxes": np.round(boxes, 2).tolist(),
                }

    for split, lines in lists.items():
        with open(paths[split], "w") as f:
            f.writelines(lines)
    with open(paths["classes"], "w") as f:
        f.write("id,name\n")
        f.writelines(f"{i},{name}\n" for i, name in enumerate(CLASS_NAMES))
    annotations = {
        "num_frames": num_frames,
        "height": h,
        "width": w,
        "fps": fps,
        "seed": seed,
        "box_format": "x0,y0,x1,y1 in pixels",
        "classes": list(CLASS_NAMES),
        "videos": videos,
    }
    with open(paths["annotations"], "w") as f:
        json.dump(annotations, f)
    return paths


def prepare(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Generate the dataset `config.synthetic` describes into `config.data.root` (default
    WORKDIR/synthetic) unless it is there, and point the config's lists at it."""
    s = config.synthetic
    root = storage.abspath(config.data.root or storage.join(workdir, "synthetic"))
    with agreement.agreed():  # process 0 writes; the others wait for it, or all stop
        if jax.process_index() == 0 and not storage.isfile(storage.join(root, "classes.csv")):
            logging.info("Generating the synthetic dataset in %s", root)
            with tempfile.TemporaryDirectory() as staging:  # object storage: copied after
                local = staging if storage.is_remote(root) else root
                generate(
                    local,
                    videos_per_class=s.videos_per_class,
                    val_per_class=s.val_per_class,
                    num_frames=s.num_frames,
                    size=(s.size, s.size),
                    seed=config.seed,
                    overwrite=True,
                )
                if local != root:
                    storage.upload_tree(local, root)
    config.data.root = root
    config.data.train_list = config.data.train_list or storage.join(root, "train.txt")
    config.data.val_list = config.data.val_list or storage.join(root, "val.txt")
    config.data.class_list = config.data.class_list or storage.join(root, "classes.csv")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tcclip_jax.data.synthetic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output", required=True, help="Directory to write the dataset to.")
    parser.add_argument("--videos-per-class", type=int, default=24, help="Training videos.")
    parser.add_argument("--val-per-class", type=int, default=8, help="Validation videos.")
    parser.add_argument("--frames", type=int, default=32, help="Frames per video.")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing dataset.")
    args = parser.parse_args(argv)
    try:
        paths = generate(
            args.output,
            videos_per_class=args.videos_per_class,
            val_per_class=args.val_per_class,
            num_frames=args.frames,
            size=tuple(args.size),
            seed=args.seed,
            fps=args.fps,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    print(f"Wrote {len(paths['videos'])} videos, {paths['train']} and {paths['val']}.")


if __name__ == "__main__":
    main()
