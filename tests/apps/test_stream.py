"""`predict --stream`: the rolling windows take the frames the timeline takes, a video served over
loopback TCP (`tools/serve_video.py`) gets the timeline's windows and classes as it plays, and a
dropped stream reconnects, then ends in one line."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tcclip_jax.apps.segments import sample_times, windows
from tcclip_jax.apps.stream import RollingWindows
from tcclip_jax.data import synthetic
from tcclip_jax.weights.checkpoint import save_model
from tests.commands.test_predict import random_params

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FPS = 25
SEGMENTS = [(0, 50), (3, 50), (6, 50)]  # 6 s: three classes, 2 s each


@pytest.mark.parametrize("clips", [1, 2])
def test_rolling_windows_take_the_frames_on_screen(clips):
    """Frames pushed at 25 fps (each frame is its index): every window of the video, in order,
    holds the last frame at or before each sample time (the first before the first), and the end
    of the stream completes exactly the windows a file of that duration has."""
    window, stride, num_frames, count = 1.0, 0.3, 4, 62  # 2.48 s
    rolling = RollingWindows(window, stride, num_frames, clips)
    got = []
    for i in range(count):
        got += rolling.push(i / FPS, np.array(i))
    got += rolling.finish()
    bounds = windows(count / FPS, window, stride)
    assert [w.index for w in got] == list(range(len(bounds)))
    np.testing.assert_allclose([[w.start, w.end] for w in got], bounds, atol=1e-9)
    times = sample_times(bounds, num_frames, clips)
    want = np.clip(np.floor(times * FPS + 1e-9).astype(int), 0, count - 1)
    np.testing.assert_array_equal(np.stack([w.frames for w in got]), want)
    assert all(later.ready >= earlier.ready for earlier, later in zip(got, got[1:], strict=False))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(video: str, port: int, *flags: str) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "serve_video.py"), video,
         "--port", str(port), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert server.stdout.readline().startswith("listening")
    return server


@pytest.fixture(scope="module")
def served(tiny_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    video = str(root / "long.mp4")
    synthetic.write_long_video(video, SEGMENTS, size=(32, 48), fps=FPS)
    checkpoint = str(root / "ckpt")
    save_model(checkpoint, tiny_config, random_params(tiny_config, 5), normalization="imagenet")
    return {"video": video, "checkpoint": checkpoint, "root": root}


def _predict(checkpoint: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tcclip_jax.predict", "--checkpoint", checkpoint,
         "--classes", *synthetic.CLASS_NAMES, "--window", "2", "--stride", "1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip


def test_a_served_video_gets_the_timelines_windows_and_classes(served):
    """The stream's windows are the file's timeline windows, in order, with its probabilities
    (the same frames, views and model), each with a latency."""
    port = _port()
    timeline = _predict(served["checkpoint"], "--video", served["video"], "--timeline",
                        "--output", str(served["root"] / "timeline"))  # fmt: skip
    server = _serve(served["video"], port)
    live = _predict(served["checkpoint"], "--stream", f"tcp://127.0.0.1:{port}", "--json",
                    "--timeout", "20")  # fmt: skip
    out, err = live.communicate(timeout=300)
    assert live.returncode == 0, err
    assert "end of stream" in err.splitlines()[-1]
    assert timeline.wait(timeout=300) == 0, timeline.stderr.read()
    server.wait(timeout=30)

    records = [json.loads(line) for line in out.splitlines()]
    with open(served["root"] / "timeline" / "long.windows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(windows(6.0, 2.0, 1.0)) == 5
    assert [r["window"] for r in records] == list(range(len(rows)))
    np.testing.assert_allclose(
        [[r["start"], r["end"]] for r in records],
        [[float(row["start_s"]), float(row["end_s"])] for row in rows],
        atol=1e-6,
    )
    assert [r["top"][0]["class"] for r in records] == [row["top_class"] for row in rows]
    for record, row in zip(records, rows, strict=True):
        for entry in record["top"]:
            assert entry["probability"] == pytest.approx(float(row[entry["class"]]), abs=2e-6)
        assert 0 <= record["latency_ms"] < 10_000


def test_a_dropped_stream_reconnects_then_ends_in_one_line_and_ctrl_c_stops_it(served):
    """Cut at 2.5 s and served again: with --reconnect the windows go on in order through the
    gap; when the server is gone for good, one error line. Ctrl-C on a stream played at its
    pace stops the run at once, in one line."""
    port, paced = _port(), _port()
    server = _serve(served["video"], port, "--drop-after", "2.5", "--connections", "2")
    live = _serve(served["video"], paced, "--realtime")
    again = _predict(served["checkpoint"], "--stream", f"tcp://127.0.0.1:{port}",
                     "--reconnect", "1", "--timeout", "20")  # fmt: skip
    stopped = _predict(served["checkpoint"], "--stream", f"tcp://127.0.0.1:{paced}")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 1, err
    lines = err.strip().splitlines()
    assert "reconnecting" in lines[0] and "0:02.4" in lines[0]
    assert lines[-1].startswith("error: ") and "did not come back after 1 tries" in lines[-1]
    assert sum(line.startswith("error") for line in lines) == 1
    numbers = [int(line.split()[0]) for line in out.splitlines()[1:]]
    assert numbers == list(range(len(numbers))) and len(numbers) >= 6  # 2.5 s + gap + 6 s
    server.wait(timeout=30)

    stopped.stdout.readline()  # the header
    assert stopped.stdout.readline().split()[0] == "0"  # window 0, at about 2 s of the video
    stopped.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = stopped.communicate(timeout=60)
    assert time.monotonic() - sent < 5 and stopped.returncode == 130
    assert err.strip().splitlines() == ["error: interrupted"]
    live.kill()
    live.wait(timeout=30)
