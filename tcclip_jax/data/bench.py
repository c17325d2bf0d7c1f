"""Training-clip throughput of the input pipeline from videos, frame folders and tfds shards,
next to what accelerator hosts consume.

  python -m tcclip_jax.data.bench [--videos 24] [--batches 12] [--threads 1,2] [--workers 1,2]
      [--formats video,frames,tfds] [--slice v5e-8 --slice 8xH100] [--keep DIR]

Writes its own data first: short 320x240 H.264 videos (3-10 s at 25 fps) of moving, textured
procedural scenes, the same as JPEG frame folders, and as tfds ArrayRecord shards of JPEG frames
resized to short side 256. Then it times 16x224 training clips (full augmentation) per source, in
this process (1 and 2 decoding threads) and with 1 and 2 grain worker processes (one thread
each): clips per second of wall time, and clips per CPU-second of all processes together (the
per-core rate, which other load on the machine disturbs less).

Last, per named slice (default: all of `SLICES`), the clips per second one of its hosts consumes
at its roofline step (docs/tpu.md's table, from `python -m tcclip_jax.aot`) and what that takes
at the rates just measured: worker processes at the one-worker rate, cores at the per-core rate.
Set `data.num_workers` (default `auto`: `data.workers.auto_workers`) from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from tcclip_jax.bench.chips import CHIPS
from tcclip_jax.data import pipeline
from tcclip_jax.data.config import default_data_config
from tcclip_jax.data.tfds_builder import TcclipVideos
from tcclip_jax.data.video_encode import encode_video
from tcclip_jax.runtime import cli
from tcclip_jax.runtime.errors import UsageError

HEIGHT, WIDTH, FPS = 240, 320, 25


def scene(num_frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A drifting colour field with moving discs and sensor noise: compresses like real video."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    discs = rng.uniform([0, 0, 10, -4, -4], [WIDTH, HEIGHT, 40, 4, 4], size=(4, 5))
    colours = rng.integers(0, 256, size=(4, 3))
    frames = []
    for t in range(num_frames):
        base = [
            127 + 100 * np.sin(xx / (40 + 10 * c) + yy / 70 + phase[c] + 0.05 * t) for c in range(3)
        ]
        frame = np.stack(base, -1)
        for (x, y, r, dx, dy), colour in zip(discs, colours, strict=True):
            inside = (xx - (x + dx * t) % WIDTH) ** 2 + (yy - (y + dy * t) % HEIGHT) ** 2 < r * r
            frame[inside] = colour
        frame += rng.normal(0, 4, frame.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def make_data(
    directory: str, num_videos: int, seed: int = 0, formats: tuple[str, ...] = ("frames", "tfds")
) -> None:
    """Videos (always), frame folders and tfds shards (when in `formats`) of the same procedural
    scenes, plus the list."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "videos"))
    lines = []
    for k in range(num_videos):
        frames = scene(int(rng.integers(3 * FPS, 10 * FPS + 1)), rng)
        encode_video(os.path.join(directory, "videos", f"v{k:03d}.mp4"), frames, fps=FPS)
        if "frames" in formats:
            folder = os.path.join(directory, "frames", f"v{k:03d}.mp4")
            os.makedirs(folder)
            for i, frame in enumerate(frames):
                path = os.path.join(folder, f"img_{i + 1:05d}.jpg")
                Image.fromarray(frame).save(path, quality=90)
        lines.append(f"v{k:03d}.mp4 {k % 8}\n")
    with open(os.path.join(directory, "train.txt"), "w") as f:
        f.writelines(lines)
    if "tfds" not in formats:
        return
    TcclipVideos(
        name="bench",
        root=os.path.join(directory, "videos"),
        splits={"train": os.path.join(directory, "train.txt")},
        data_dir=os.path.join(directory, "tfds"),
        num_workers=os.cpu_count() or 1,
    ).download_and_prepare()


FORMATS = ("video", "frames", "tfds")
FORMAT_OF = {
    "H.264 videos": "video",
    "JPEG frame folders": "frames",
    "tfds ArrayRecord (JPEG, short side 256)": "tfds",
}


def source_configs(directory: str) -> dict:
    base = default_data_config()
    base.train_list = os.path.join(directory, "train.txt")
    configs = {}
    for name, fields in [
        ("H.264 videos", {"format": "video", "root": os.path.join(directory, "videos")}),
        ("JPEG frame folders", {"format": "frames", "root": os.path.join(directory, "frames")}),
        (
            "tfds ArrayRecord (JPEG, short side 256)",
            {
                "format": "tfds",
                "tfds_name": "tcclip_videos/bench",
                "tfds_dir": os.path.join(directory, "tfds"),
            },
        ),
    ]:
        cfg = base.copy_and_resolve_references()
        cfg.update(fields)
        configs[name] = cfg
    return configs


def _cpu_seconds() -> float:
    """CPU time of this process and its children (the grain workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    me = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == me:  # fields[1] is the parent pid; utime, stime follow at 11, 12
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def measure(
    cfg, num_workers: int, batches: int, batch_size: int, num_threads: int = 1
) -> tuple[float, float]:
    """(clips per second, clips per CPU-second of all processes) after a warm-up batch from
    every worker (each starts, opens files and builds the hue tables in its first batch)."""
    cfg = cfg.copy_and_resolve_references()
    with cfg.ignore_type():  # `num_workers` may hold 'auto'
        cfg.num_workers = num_workers
    cfg.num_threads = num_threads
    it = pipeline.create_train_iterator(cfg, batch_size=batch_size, seed=0)
    for _ in range(max(1, num_workers)):
        next(it)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        batch = next(it)
        assert batch["video"].shape == (batch_size, 16, 224, 224, 3)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    it.close()
    clips = batches * batch_size
    return clips / wall, clips / cpu


@dataclasses.dataclass(frozen=True)
class Slice:
    """What one host of an accelerator slice consumes: `clips` per step (global) in `step_s` at
    the roofline, over `hosts` hosts."""

    name: str
    workload: str
    clips: int
    step_s: float
    hosts: int
    source: str

    @property
    def clips_per_second_per_host(self) -> float:
        return self.clips / self.step_s / self.hosts


# The training FLOPs of one 16-frame ViT-B/16 clip (docs/tpu.md: the few-shot step's model FLOPs
# per chip over its clips per chip); a GPU host without a compiled figure is bounded by them.
TRAIN_FLOP_PER_CLIP = 1.659e12
H100 = CHIPS["H100"]
SLICES = {
    s.name: s
    for s in (
        # docs/tpu.md, per-protocol table: roofline step of the few-shot HMDB-51 K=16 batch (64
        # clips) and of zero-shot K-400's (256), remat, data parallel; each slice one host.
        Slice("v4-8", "few-shot (64 clips)", 64, 0.098, 1, "aot roofline, docs/tpu.md"),
        Slice("v5e-8", "few-shot (64 clips)", 64, 0.089, 1, "aot roofline, docs/tpu.md"),
        Slice("v5p-8", "few-shot (64 clips)", 64, 0.058, 1, "aot roofline, docs/tpu.md"),
        Slice("v5e-8 zero-shot", "zero-shot (256 clips)", 256, 0.271, 1, "aot roofline"),
        Slice("v5p-8 zero-shot", "zero-shot (256 clips)", 256, 0.232, 1, "aot roofline"),
        # 8 x H100 on one host: bf16 peak over the FLOPs per clip (no HBM term: an upper bound).
        Slice(
            "8xH100",
            "few-shot (64 clips)",
            64,
            64 * TRAIN_FLOP_PER_CLIP / (8 * H100.bfloat16_flops),
            1,
            "FLOPs at the bf16 peak",
        ),
    )
}


def needs_table(slices: list[Slice], per_worker: float, per_core: float, source: str) -> str:
    """Per slice: clips/s one host consumes, worker processes and cores that takes."""
    rows = [["slice", "workload", "step (roofline)", "clips/s per host", "workers", "cores"]]
    for sl in slices:
        need = sl.clips_per_second_per_host
        rows.append(
            [
                sl.name,
                sl.workload,
                f"{1e3 * sl.step_s:.0f} ms ({sl.source})",
                f"{need:.0f}",
                str(math.ceil(need / per_worker)) if per_worker > 0 else "-",
                str(math.ceil(need / per_core)) if per_core > 0 else "-",
            ]
        )
    head = (
        f"\nWhat a host consumes at the roofline step, and what decoding {source} takes at the "
        f"rates above: worker processes at {per_worker:.1f} clips/s each (1 worker), cores at "
        f"{per_core:.1f} clips per CPU-second"
    )
    return head + "\n" + _markdown(rows)


def _markdown(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rows = [rows[0], ["-" * w for w in widths], *rows[1:]]
    return "\n".join(
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    )


def _counts(text: str) -> list[int]:
    try:
        counts = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,2, got {text!r}") from None
    if any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"worker counts must be >= 1, got {text!r}")
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--batches", type=int, default=12, help="timed batches of 8 clips per run")
    p.add_argument("--workers", type=_counts, default="1,2", help="worker-process counts to time")
    p.add_argument(
        "--threads", type=_counts, default="1,2", help="decoding-thread counts to time in process"
    )
    p.add_argument(
        "--formats",
        default="video,frames,tfds",
        help="sources to time, of video (H.264 files), frames (JPEG folders), tfds",
    )
    p.add_argument(
        "--slice",
        action="append",
        choices=sorted(SLICES),
        help="slices to size the input for (repeatable; default: all)",
    )
    p.add_argument("--keep", help="write the data here and keep it (default: a temporary dir)")
    p.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    args = p.parse_args(argv)
    cli.quiet_libraries()
    return cli.guarded(lambda: run(args), args.debug)


def run(args: argparse.Namespace) -> int:

    directory = args.keep or tempfile.mkdtemp(prefix="tcclip_bench_")
    try:
        formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown:
            raise UsageError(
                f"--formats: unknown {', '.join(unknown)}; known: {', '.join(FORMATS)}"
            )
        if not os.path.exists(os.path.join(directory, "train.txt")):
            start = time.perf_counter()
            make_data(directory, args.videos, formats=formats)
            print(f"made {args.videos} videos in {time.perf_counter() - start:.0f} s: {directory}")
        for f in formats:
            if f != "video" and not os.path.isdir(os.path.join(directory, f)):
                raise UsageError(f"--keep {directory} has no {f}/: it was made without it")
        modes = [(f"in process, {t} thread{'s' * (t > 1)}", 0, t) for t in args.threads]
        modes += [(f"{w} worker{'s' * (w > 1)}", w, 1) for w in args.workers]
        rows = [["source", "processes", "clips/s", "clips per CPU-second"]]
        rates = {}
        for name, cfg in source_configs(directory).items():
            if FORMAT_OF[name] not in formats:
                continue
            for mode, workers, threads in modes:
                per_second, per_cpu = measure(cfg, workers, args.batches, 8, threads)
                rates[name, workers, threads] = (per_second, per_cpu)
                rows.append([name, mode, f"{per_second:.1f}", f"{per_cpu:.1f}"])
                print(" | ".join(rows[-1]), flush=True)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n16 x 224 px training clips, full augmentation; {os.cpu_count()} cores")
        print(f"load average {load}: other processes competing for the cores lower clips/s")
        print(_markdown(rows))
        slices = [SLICES[n] for n in (args.slice or SLICES)]
        for name in source_configs(directory):
            one = rates.get((name, 1, 1))
            if one is not None:
                per_core = max(per_cpu for (n, _, _), (_, per_cpu) in rates.items() if n == name)
                print(needs_table(slices, one[0], per_core, name))
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
