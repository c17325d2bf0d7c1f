"""`python -m tcclip_jax.app` on a loopback port with a tiny random TC-CLIP, driven with
gradio_client as a user's browser would: an upload gets `predict`'s top-5, the timeline and
TC's pictures; the search tab finds `search`'s clips and plays them; bad input gets one line and
the app keeps serving; no file of the host but the indexed videos is served. Then the page in
headless Chromium, whose screenshot is the README's (TCCLIP_WRITE_SCREENSHOT=1 writes
docs/app.png)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

gradio_client = pytest.importorskip("gradio_client", reason="pip install -e '.[app]'")

from tcclip_jax import embed  # noqa: E402
from tcclip_jax.data import synthetic  # noqa: E402
from tcclip_jax.weights.checkpoint import save_model  # noqa: E402
from tests.commands.test_predict import random_params  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = list(synthetic.CLASS_NAMES)
ALL_CLASSES = "\n".join(CLASSES)
QUERY = "a shape moving left"
CHROMIUM = "/usr/bin/chromium"
# The page's pictures served by the app (not its icons), all loaded: the timeline and TC's three.
LOADED_PICTURES = """() => {
  const pictures = [...document.images].filter((i) => i.src.includes("file="));
  return pictures.length >= 4 && pictures.every((i) => i.complete && i.naturalWidth > 0);
}"""
BROWSER_INSTALL = "apt-get install chromium && pip install playwright"


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tiny_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    clips = synthetic.generate(str(root / "clips"), videos_per_class=1, val_per_class=0,
                               num_frames=8, size=(32, 32), seed=4)  # fmt: skip
    long_video = str(root / "long.mp4")  # 10 s, longer than the model's 2 s window
    synthetic.write_long_video(long_video, [(0, 75), (3, 100), (6, 75)], size=(64, 64))
    checkpoint = str(root / "ckpt")
    save_model(checkpoint, tiny_config, random_params(tiny_config, 7), normalization="imagenet")
    index = str(root / "emb")
    command = [sys.executable, "-m"]
    predict = subprocess.Popen(
        [*command, "tcclip_jax.predict", "--checkpoint", checkpoint, "--video", long_video,
         "--classes", *CLASSES, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert embed.main(["--checkpoint", checkpoint, "--video", str(root / "clips" / "videos"),
                       "--output", index, "--workers", "0"]) == 0  # fmt: skip
    search = subprocess.Popen(
        [*command, "tcclip_jax.search", "--index", index, QUERY, "--top", "4", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    port = _port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(root / "tmp")}
    log_path = root / "app.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [*command, "tcclip_jax.app", "--checkpoint", checkpoint, "--index", index,
             "--port", str(port), "--max-file-size", "100kb", "--labels", clips["classes"]],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )  # fmt: skip
    outputs = {}
    for name, proc in (("predict", predict), ("search", search)):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs[name] = json.loads(out)["results"]
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while "serving on" not in log_path.read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"the app did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    client = gradio_client.Client(url, verbose=False, analytics_enabled=False,
                                  download_files=str(root / "downloads"))  # fmt: skip
    yield {"root": root, "url": url, "client": client, "checkpoint": checkpoint, "index": index,
           "long": long_video, "clips": sorted(clips["videos"]),
           "predicted": outputs["predict"][0]["top"], "searched": outputs["search"]}  # fmt: skip
    server.terminate()
    server.wait(timeout=30)


def _classify(site, video, classes=ALL_CLASSES):
    return site["client"].predict(gradio_client.handle_file(video), classes, None, 2, 1,
                                  api_name="/classify")  # fmt: skip


def test_an_upload_gets_predicts_top5_its_timeline_and_what_tc_looked_at(site):
    label, timeline, segments, pictures, status = _classify(site, site["long"])
    got = [(c["label"], c["confidence"]) for c in label["confidences"]]
    want = [(r["class"], r["probability"]) for r in site["predicted"]]
    assert [c for c, _ in got] == [c for c, _ in want]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-5)
    from PIL import Image

    assert Image.open(timeline).size[0] > 300  # the timeline picture
    assert segments["headers"] == ["start", "end", "probability", "class"]
    assert segments["data"] and segments["data"][0][0] == "0:00.00"
    assert segments["data"][-1][1] == "0:10.00" and {r[3] for r in segments["data"]} <= set(CLASSES)
    assert [p["caption"] for p in pictures] == [
        "seed tokens per frame", "the patches each context token merged", "CLS attention",
    ]  # fmt: skip
    assert all(Image.open(p["image"]).size[0] >= 640 for p in pictures)
    assert status.startswith("10.0 s video, 2 views, 8 classes")


def test_search_finds_the_search_commands_clips_and_plays_them(site):
    found = site["client"].predict(QUERY, api_name="/search")
    want = site["searched"]
    root = os.path.join(str(site["root"]), "clips")
    assert [item["caption"] for item in found] == [
        f"{r['rank']}. {os.path.relpath(r['video'], root)} ({r['score']:.3f})" for r in want
    ]
    for item, r in zip(found, want, strict=True):
        with open(item["video"], "rb") as a, open(r["video"], "rb") as b:
            assert a.read() == b.read()  # the clip itself, fetched from the page


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_no_host_file_is_served_but_the_indexed_videos(site):
    base = site["url"] + "gradio_api/file="
    assert _status(base + site["clips"][0]) == 200
    for path in ("/etc/passwd", site["checkpoint"] + "/model_config.json", site["long"],
                 os.path.join(site["index"], "index.jsonl")):  # fmt: skip
        assert _status(base + path) == 403, path


def test_bad_inputs_get_one_line_and_the_app_keeps_serving(site, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(200_000))  # over --max-file-size 100kb
    short = site["clips"][0]
    cases = [
        (str(empty), ALL_CLASSES, "empty.mp4 is empty"),
        (str(text), ALL_CLASSES, "notes.mp4 is not a video this app can read"),
        (str(big), ALL_CLASSES, "exceeds the maximum file size"),
        (short, "running\n/etc/passwd", "class 2 ('/etc/passwd') looks like a path"),
    ]
    for video, classes, message in cases:
        with pytest.raises(Exception) as caught:
            _classify(site, video, classes)
        line = str(caught.value).strip()
        assert message.lower() in line.lower(), line
        assert len(line.splitlines()) == 1, line
    label, *_, status = _classify(site, short)  # still serving
    assert len(label["confidences"]) == 5 and status.startswith("0.3 s video")


def test_the_page_in_chromium(site, tmp_path):
    """Upload the long video in the page, classify it, wait for every result, screenshot; then
    Chromium's fake camera on the webcam tab: windows classified as they come, with latency."""
    playwright = pytest.importorskip("playwright.sync_api", reason=BROWSER_INSTALL)
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: {BROWSER_INSTALL}")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-device-for-media-stream",  # a test pattern as the webcam
        "--use-fake-ui-for-media-stream",
    ]
    write = os.environ.get("TCCLIP_WRITE_SCREENSHOT") == "1"
    shot = os.path.join(REPO, "docs", "app.png") if write else str(tmp_path / "app.png")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=flags,
            headless=True,
            viewport={"width": 1280, "height": 900},
            permissions=["camera"],
        )  # a fresh profile
        page = browser.new_page()
        page.goto(site["url"], timeout=60_000)
        shown = page.locator("video").first  # the upload, played back in the Video component
        for _ in range(10):  # files given before the page's scripts listen are lost
            page.locator("input[type=file]").first.set_input_files(site["long"])
            try:
                shown.wait_for(timeout=3_000)
                break
            except playwright.Error:
                continue
        else:
            pytest.fail("the page's Video component never showed the uploaded video")
        page.get_by_role("button", name="Classify").click()
        status = page.get_by_label("Status")
        playwright.expect(status).to_have_value(re.compile("^10.0 s video"), timeout=60_000)
        page.get_by_text("CLS attention").first.scroll_into_view_if_needed(timeout=10_000)
        page.wait_for_function(LOADED_PICTURES, timeout=30_000)  # the timeline and TC's three
        page.screenshot(path=shot, full_page=True)

        page.get_by_role("tab", name="Webcam").click()
        record = page.get_by_role("button", name="capture photo")
        for _ in range(10):  # a click before the component is ready is lost
            page.get_by_role("button", name="Click to Access Webcam").click()
            try:
                record.wait_for(timeout=3_000)
                break
            except playwright.Error:
                continue
        record.click()  # starts streaming
        live = page.get_by_label("Window and latency")
        window = re.compile(r"^window (\d+) \((0:\d\d\.\d\d)-(0:\d\d\.\d\d)\): latency \d+ ms$")
        playwright.expect(live).to_have_value(window, timeout=30_000)
        first = window.match(live.input_value())
        playwright.expect(live).not_to_have_value(live.input_value(), timeout=30_000)
        later = window.match(live.input_value())
        assert later and int(later[1]) > int(first[1])  # the next windows, in order
        browser.close()
    from PIL import Image

    assert Image.open(shot).size[0] >= 1280
