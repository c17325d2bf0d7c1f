"""How long the web app and a live stream take on this machine (docs/app.md).

  python tools/measure_app.py --model tiny --workdir /tmp/measure_app
  python tools/measure_app.py --model ViT-B/16 --workdir /tmp/measure_app_b16

Writes a TC-CLIP checkpoint with random weights of that size (`tiny`: the tests' 2-block model
at 32 px, 4 frames; `ViT-B/16`: the published architecture, 16 frames at 224 px) and a 10 s
synthetic video (`--seconds`), then:

  app     starts `python -m tcclip_jax.app` (its start-up: loading and compiling), then uploads the
          video with gradio_client and times each request from upload to result (`--runs`); the
          first is what a user waits for after opening the page.
  stream  serves the video at its pace over loopback TCP (`tools/serve_video.py --realtime`) to
          `python -m tcclip_jax.predict --stream --json` and reports the windows' latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS = 25


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_inputs(model: str, workdir: str, seconds: float) -> tuple[str, str]:
    """(checkpoint, video) with random weights and a synthetic video of `seconds`."""
    from tcclip_jax.data import synthetic
    from tcclip_jax.models.config import ModelConfig, arch_config
    from tcclip_jax.models.initialization import random_params
    from tcclip_jax.weights.checkpoint import save_model

    if model == "tiny":
        config = ModelConfig(
            vision_layers=2, text_layers=2, num_frames=4, vision_width=64, vision_heads=2,
            text_width=32, text_heads=2, embed_dim=32, image_resolution=32, vision_patch_size=8,
            context_tokens=4,
        )  # fmt: skip
    else:
        config = arch_config(model, num_frames=16)
    checkpoint = os.path.join(workdir, "checkpoint")
    if not os.path.isdir(checkpoint):
        save_model(checkpoint, config, random_params(config, 0), normalization="imagenet")
    video = os.path.join(workdir, "clip.mp4")
    parts = np.array_split(np.arange(round(seconds * FPS)), 4)  # four actions
    segments = [(c, len(p)) for c, p in zip((0, 3, 6, 1), parts, strict=True)]
    synthetic.write_long_video(video, segments, size=(128, 160))
    return checkpoint, video


def measure_app(checkpoint: str, video: str, runs: int) -> dict:
    from gradio_client import Client, handle_file

    from tcclip_jax.data import synthetic

    port = _port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.monotonic()
    app = subprocess.Popen(
        [sys.executable, "-m", "tcclip_jax.app", "--checkpoint", checkpoint, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    try:
        for line in app.stdout:
            if line.startswith("serving on"):
                break
        else:
            raise SystemExit("the app did not start")
        start_up = time.monotonic() - started
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        names = "\n".join(synthetic.CLASS_NAMES)
        times = []
        for _ in range(runs):
            t = time.monotonic()
            *_, status = client.predict(handle_file(video), names, None, 2, 1, api_name="/classify")
            times.append(time.monotonic() - t)
        return {"start_up_s": start_up, "upload_to_result_s": times, "status": status}
    finally:
        app.terminate()
        app.wait(timeout=60)


def measure_stream(checkpoint: str, video: str) -> dict:
    from tcclip_jax.data import synthetic

    port = _port()
    server = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "serve_video.py"), video,
         "--port", str(port), "--realtime"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    server.stdout.readline()  # listening
    live = subprocess.run(
        [sys.executable, "-m", "tcclip_jax.predict", "--checkpoint", checkpoint,
         "--stream", f"tcp://127.0.0.1:{port}", "--classes", *synthetic.CLASS_NAMES, "--json",
         "--timeout", "600"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    server.wait(timeout=60)
    if live.returncode != 0:
        raise SystemExit(live.stderr)
    latencies = [json.loads(line)["latency_ms"] for line in live.stdout.splitlines()]
    return {"windows": len(latencies), "latency_ms": latencies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, or a CLIP architecture name.")
    parser.add_argument("--workdir", required=True, help="Checkpoint and video go here.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of the video.")
    parser.add_argument("--runs", type=int, default=3, help="Uploads timed.")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    checkpoint, video = write_inputs(args.model, args.workdir, args.seconds)
    app = measure_app(checkpoint, video, args.runs)
    print(f"app start-up (load, compile): {app['start_up_s']:.1f} s")
    runs = ", ".join(f"{t:.2f}" for t in app["upload_to_result_s"])
    print(f"upload to result, {args.seconds:g} s video: {runs} s ({app['status']})")
    stream = measure_stream(checkpoint, video)
    ms = np.array(stream["latency_ms"])
    print(f"stream: {stream['windows']} windows, latency median {np.median(ms):.0f} ms, "
          f"max {ms.max():.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
