"""Seconds per clip of an exported model: a `jax.export` artifact run by jax and an ONNX file run
by onnxruntime (`python -m tcclip_jax.export --format jax|onnx`), on the same random uint8 clip.

  python tools/time_exported.py --jax tcclip.jax --onnx tcclip.onnx [--batch 1] [--repeats 5]

Each is called once to warm up (jax compiles there), then `--repeats` times; the median is
printed. Neither reads tcclip_jax: the clip's shape comes from the files.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def median_seconds(run, clips: np.ndarray, repeats: int) -> float:
    run(clips)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(clips)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jax", help="jax.export artifact")
    p.add_argument("--onnx", help="ONNX file")
    p.add_argument("--batch", type=int, default=1, help="clips per call")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if not (args.jax or args.onnx):
        p.error("give --jax and/or --onnx")
    rng = np.random.default_rng(0)
    if args.jax:
        import jax
        from jax import export

        with open(args.jax, "rb") as f:
            exported = export.deserialize(f.read())
        shape = (args.batch, *exported.in_avals[0].shape[1:])
        clips = rng.integers(0, 256, shape, dtype=np.uint8)
        seconds = median_seconds(
            lambda c: jax.block_until_ready(exported.call(c)), clips, args.repeats
        )
        print(f"jax.export ({jax.__version__}): {seconds / args.batch:.3f} s per clip")
    if args.onnx:
        import onnxruntime

        session = onnxruntime.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
        (clips_input,) = session.get_inputs()
        clips = rng.integers(0, 256, (args.batch, *clips_input.shape[1:]), dtype=np.uint8)
        seconds = median_seconds(
            lambda c: session.run(None, {clips_input.name: c}), clips, args.repeats
        )
        print(f"onnxruntime ({onnxruntime.__version__}): {seconds / args.batch:.3f} s per clip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
