"""The local web app (`python -m tcclip_jax.app`): one's own videos and the webcam, classified in
the browser.

A video in (an upload or a webcam recording) gets the top-5 classes of its test views, as
`predict` computes them; a video longer than one window also gets the timeline picture and
segments of `predict --timeline`; a TC-CLIP model also shows what it looked at (seed tokens per
frame, the patches each context token merged, CLS attention: `visualize`'s pictures) from the
same forward pass, for its middle temporal view. With an embedding folder, a text box searches it
(`search`'s two stages) and the best clips play in the page. The webcam is classified live, a
rolling window every stride (`tcclip_jax.apps.stream`), with each window's latency.

The page keeps nothing between users but the model: every answer is computed from its inputs.
What a user can reach on the host is what they upload and, with an index, its videos.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable, Sequence

import av
import gradio as gr
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from tcclip_jax.apps import retrieval
from tcclip_jax.apps.collection import (
    check_class_names,
    check_prompts,
    read_class_names,
    top_classes,
)
from tcclip_jax.apps.inference import Predictor, class_probabilities, view_config
from tcclip_jax.apps.stream import RollingWindows, Window, classify_window
from tcclip_jax.apps.timeline import (
    clock,
    decode_short_side,
    score_timeline,
    window_and_stride,
)
from tcclip_jax.data.pipeline import load_test_views
from tcclip_jax.data.video_decode import VideoReadError, duration_seconds, rgb_converter
from tcclip_jax.runtime.errors import UserError
from tcclip_jax.visualization.explain import explanation
from tcclip_jax.visualization.plots import timeline_figure
from tcclip_jax.visualization.render import render_attention, render_context, render_seeds

TOP_K = 5
SEARCH_RESULTS = 4
TIMELINE_BATCH = 1  # windows per model call: no padded windows (a CPU gains nothing from more)
SEGMENT_HEADERS = ["start", "end", "probability", "class"]


@dataclasses.dataclass
class VideoAnswer:
    """What the page shows for one video."""

    top: list[dict]  # top_classes rows
    timeline: Image.Image | None  # the timeline picture (videos longer than one window)
    segments: list[list]  # SEGMENT_HEADERS rows
    pictures: list[tuple[Image.Image, str]]  # (picture, caption) of the explanation
    status: str


def parse_class_names(text: str, upload: str | None) -> list[str]:
    """Class names typed one per line, or the uploaded class list (as `predict --labels` reads
    it). A name that looks like a path is refused: names are only ever names here."""
    if upload:
        try:
            names = read_class_names(upload)
        except (UserError, ValueError, OSError, UnicodeDecodeError) as e:
            raise UserError(f"the class list cannot be read: {_tail(e, upload)}") from None
        origin = "the class list"
    else:
        names, origin = [n for n in (text or "").splitlines() if n.strip()], "the class names"
    names = check_class_names(names, origin)
    for i, name in enumerate(names):
        if "/" in name or "\\" in name:
            raise UserError(f"class {i + 1} ({name[:40]!r}) looks like a path; type class names")
    return names


def _tail(error: BaseException, path: str) -> str:
    """An error's message without the upload's path on the host."""
    return str(error).replace(path, os.path.basename(path))


def check_video(path: str | None) -> float:
    """The duration of an uploaded video; a UserError in one line if PyAV cannot read it."""
    if not path:
        raise UserError("no video: upload one or record one with the webcam")
    name = os.path.basename(path)
    if os.path.getsize(path) == 0:
        raise UserError(f"{name} is empty")
    try:
        duration = duration_seconds(path)
    except VideoReadError as e:
        raise UserError(f"{name} is not a video this app can read ({_tail(e, path)})") from None
    return duration or 0.0


class WebApp:
    """The handlers behind the page: a predictor compiled once, an optional embedding index."""

    def __init__(
        self,
        predictor: Predictor,
        index: retrieval.EmbeddingIndex | None = None,
        default_classes: Sequence[str] = (),
    ):
        self.predictor = predictor
        self.index = index
        self.default_classes = list(default_classes)
        cfg = predictor.config
        self.window, self.stride = window_and_stride(cfg.num_frames)
        self.explains = bool(cfg.summary_layers)

    def view_config(self, clips: int, crops: int):
        cfg = view_config(self.predictor.config, clips, crops, self.predictor.normalization)
        cfg.uint8_output = True
        return cfg

    def warm_up(self, clips: int = 2, crops: int = 1) -> None:
        """Compile what the default views run: a video's views (with attention), a batch of
        timeline windows, a webcam window."""
        names = self.default_classes or ["something"]
        cfg = self.view_config(clips, crops)
        size, views = cfg.image_size, clips * crops
        self._forward(np.zeros((views, cfg.num_frames, size, size, 3), np.uint8), names)
        batch = np.zeros((TIMELINE_BATCH, views, cfg.num_frames, size, size, 3), np.uint8)
        class_probabilities(self.predictor, self.predictor.normalize(batch), names)
        side = decode_short_side(cfg)
        blank = np.zeros((clips * cfg.num_frames, side, side, 3), np.uint8)
        classify_window(self.predictor, Window(0, 0.0, 0.0, blank, time.monotonic()), names, cfg)

    def _forward(self, views: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, dict]:
        """[V, T, S, S, 3] uint8 views -> (class probabilities, vision outputs): the views'
        softmax averaged, as `class_probabilities`, from one pass that also returns what TC
        attended to."""
        out = self.predictor.encode_video(
            self.predictor.normalize(views), return_attention=self.explains
        )
        video = {k: out[k] for k in ("video_embedding", "context_embeddings") if k in out}
        logits = self.predictor.score(video, names)
        probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1).mean(axis=0)
        return np.asarray(probs), out

    def classify(
        self,
        path: str | None,
        class_text: str,
        class_file: str | None,
        clips: int,
        crops: int,
        progress: Callable[[float, str], None] = lambda fraction, what: None,
    ) -> VideoAnswer:
        """The page's answer for one video; a UserError in one line for unusable input."""
        started = time.monotonic()
        names = parse_class_names(class_text, class_file)
        check_prompts(self.predictor, names, "the class names")
        duration = check_video(path)
        cfg = self.view_config(int(clips), int(crops))
        progress(0.0, "decoding the views")
        try:
            views = load_test_views(path, cfg)
        except (ValueError, OSError) as e:
            raise UserError(f"{os.path.basename(path)}: {_tail(e, path)}") from None
        progress(0.1, "classifying")
        probs, out = self._forward(views, names)
        top = top_classes(probs, names, TOP_K)
        pictures = []
        if self.explains:
            row = (cfg.test_clips // 2) * cfg.test_crops + cfg.test_crops // 2
            exp = explanation(self.predictor.config, out, row=row)
            frames = views[row]
            pictures = [
                (render_seeds(frames, exp), "seed tokens per frame"),
                (render_context(frames, exp), "the patches each context token merged"),
                (render_attention(frames, exp), "CLS attention"),
            ]
        picture, segments = None, []
        if duration > self.window:
            timeline = score_timeline(
                self.predictor, path, names, cfg, self.window, self.stride, TIMELINE_BATCH,
                progress=lambda done, total: progress(0.2 + 0.8 * done / total,
                                                      f"timeline: window {done} of {total}"),
            )  # fmt: skip
            segments = [
                [clock(s["start"]), clock(s["end"]), round(s["mean_probability"], 4), s["class"]]
                for s in timeline.segments
            ]
            fig = timeline_figure(timeline.bounds, timeline.probabilities, names,
                                  timeline.segments, timeline.duration)  # fmt: skip
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100)
            picture = Image.open(buffer)
        seconds = time.monotonic() - started
        status = (
            f"{duration:.1f} s video, {views.shape[0]} views, {len(names)} classes: "
            f"{seconds:.2f} s" + (f"; {len(segments)} segments" if picture else "")
        )
        return VideoAnswer(top, picture, segments, pictures, status)

    def search(self, query: str) -> list[tuple[str, str]]:
        """(video path, caption) of the best clips of the index for `query`."""
        query = (query or "").strip()
        if self.index is None:
            raise UserError("no embedding folder: start the app with --index")
        if not query:
            raise UserError("type what to look for")
        check_prompts(self.predictor, [query], "the query")
        found = retrieval.search(self.predictor, self.index, query, SEARCH_RESULTS, 100)
        root = os.path.dirname(os.path.commonpath([os.path.abspath(v) for v in self.index.videos]))
        return [
            (r["video"], f"{r['rank']}. {os.path.relpath(r['video'], root)} ({r['score']:.3f})")
            for r in found
        ]

    def webcam(self, frame: np.ndarray | None, class_text: str, state: dict | None):
        """One webcam frame in: (the latest window's top classes or None, a status line, the
        session's state: its rolling windows)."""
        if frame is None:
            return None, "waiting for the webcam", state
        names = parse_class_names(class_text, None)
        cfg = self.view_config(2, 1)
        now = time.monotonic()
        if state is None or state["names"] != names:
            rolling = RollingWindows(self.window, self.stride, cfg.num_frames, cfg.test_clips)
            state = {"names": names, "start": now, "last": None, "rolling": rolling}
        to_rgb = rgb_converter(decode_short_side(cfg))  # one per call: calls change threads
        rgb = to_rgb(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[..., :3]), "rgb24"))
        for window in state["rolling"].push(now - state["start"], rgb, np.asarray, now):
            result = classify_window(self.predictor, window, names, cfg)
            top = top_classes(result.probabilities, names, TOP_K)
            state["last"] = (
                {r["class"]: r["probability"] for r in top},
                f"window {result.index} ({clock(result.start)}-{clock(result.end)}): "
                f"latency {result.latency * 1000:.0f} ms",
            )
        if state["last"] is None:
            left = self.window - (now - state["start"])
            return None, f"first window in {max(left, 0):.1f} s", state
        return *state["last"], state


# The page ----------------------------------------------------------------------------------


def _answer_error(error: UserError) -> gr.Error:
    return gr.Error(str(error).splitlines()[0], print_exception=False)


def build(app: WebApp, title: str = "TC-CLIP") -> gr.Blocks:
    """The page: a video tab, a webcam tab and (with an index) a search tab."""
    classes = "\n".join(app.default_classes)

    def classify(video, class_text, class_file, clips, crops, progress=gr.Progress()):  # noqa: B008
        try:
            answer = app.classify(video, class_text, class_file, clips, crops,
                                  lambda f, what: progress(f, desc=what))  # fmt: skip
        except UserError as e:
            raise _answer_error(e) from None
        label = {r["class"]: r["probability"] for r in answer.top}
        return label, answer.timeline, answer.segments, answer.pictures, answer.status

    def search(query):
        try:
            return app.search(query)
        except UserError as e:
            raise _answer_error(e) from None

    def webcam(frame, class_text, state):
        try:
            return app.webcam(frame, class_text, state)
        except UserError as e:
            return None, str(e).splitlines()[0], state

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(f"# {title}: what happens in a video")
        class_text = gr.Textbox(classes, lines=4, label="Class names, one per line")
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column():
                    video = gr.Video(sources=["upload", "webcam"], include_audio=True, height=320,
                                     label="Video (upload or record)")  # fmt: skip
                    class_file = gr.File(file_types=[".csv", ".json", ".txt"],
                                         label="or a class list (CSV, JSON, text)")  # fmt: skip
                    with gr.Row():
                        clips = gr.Radio([1, 2, 3, 4], value=2, label="temporal views")
                        crops = gr.Radio([1, 3], value=1, label="spatial views")
                    run = gr.Button("Classify", variant="primary")
                with gr.Column():
                    top = gr.Label(num_top_classes=TOP_K, label="Top 5")
                    status = gr.Textbox(label="Status", interactive=False)
            timeline = gr.Image(label="Timeline", type="pil", format="png", interactive=False)
            segments = gr.Dataframe(headers=SEGMENT_HEADERS, label="Segments", interactive=False)
            pictures = gr.Gallery(label="What TC looked at", columns=3, type="pil", format="png",
                                  object_fit="contain", height="auto")  # fmt: skip
            run.click(classify, [video, class_text, class_file, clips, crops],
                      [top, timeline, segments, pictures, status], api_name="classify")  # fmt: skip
        with gr.Tab("Webcam"):
            with gr.Row():
                camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam")
                with gr.Column():
                    live_top = gr.Label(num_top_classes=TOP_K, label="Latest window")
                    live_status = gr.Textbox(label="Window and latency", interactive=False)
            state = gr.State(None)
            camera.stream(webcam, [camera, class_text, state], [live_top, live_status, state],
                          stream_every=min(0.5, app.window / app.predictor.config.num_frames),
                          api_name="webcam")  # fmt: skip
        if app.index is not None:
            with gr.Tab("Search"):
                query = gr.Textbox(label="Find clips", placeholder="someone juggling balls")
                found = gr.Gallery(label="Best clips", columns=SEARCH_RESULTS)
                query.submit(search, query, found, api_name="search")
    return page


def serve(
    app: WebApp,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    max_file_size: str = "500mb",
) -> tuple[gr.Blocks, str]:
    """Start the page in a thread; only the uploads, the app's own pictures and (with an index)
    the indexed videos can be fetched from it. Returns (page, local URL): `page.block_thread()`
    serves until Ctrl-C, `page.close()` stops it."""
    page = build(app)
    allowed = list(app.index.videos) if app.index is not None else []
    _, url, _ = page.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=share, max_file_size=max_file_size,
        allowed_paths=allowed, prevent_thread_lock=True, ssr_mode=False, mcp_server=False,
        pwa=False, quiet=True, show_error=True, footer_links=[],
    )  # fmt: skip
    return page, url
