"""A local web app: classify one's own videos and the webcam in the browser.

  pip install -e ".[app]"
  python -m tcclip_jax.app --checkpoint checkpoints/tcclip_k400 [--labels k400.csv] [--index emb/]

Opens http://127.0.0.1:7860: a video (upload or webcam recording) gets its top-5 classes, the
timeline of a video longer than a window, and what TC looked at; the webcam is classified live;
with `--index` (written by `python -m tcclip_jax.embed`) a text box searches the embedded clips.
The model is compiled once at start. It listens on 127.0.0.1 only, with no public link unless
`--share`, and serves no file of the host but the uploads and the indexed videos
(`tcclip_jax.apps.web`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tcclip_jax.apps.collection import check_prompts, class_names
from tcclip_jax.apps.inference import DTYPES, NORMALIZATION_CHOICES, load_predictor
from tcclip_jax.runtime import allocator, cli
from tcclip_jax.runtime.errors import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcclip_jax.app", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="Model checkpoint directory.")
    parser.add_argument("--index", help="Embedding folder to search (python -m tcclip_jax.embed).")
    parser.add_argument("--labels", help="Class list the page starts with (as predict reads it).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=7860, help="Port (default 7860).")
    parser.add_argument("--share", action="store_true", help="Also open a public gradio link.")
    parser.add_argument(
        "--max-file-size", default="500mb", help="Largest upload, e.g. 200kb, 500mb, 2gb."
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--normalization", choices=NORMALIZATION_CHOICES, default="checkpoint")
    parser.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return parser


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from tcclip_jax.apps import retrieval, web
    except ImportError as e:
        raise UsageError(f"the app needs gradio ({e}): pip install 'tcclip-jax[app]'") from None
    index = retrieval.EmbeddingIndex.load(args.index) if args.index else None
    predictor = load_predictor(args.checkpoint, args.dtype, args.normalization)
    names = class_names(args.labels, None)[0] if args.labels else []
    if names:
        check_prompts(predictor, names, args.labels)
    app = web.WebApp(predictor, index, names)
    app.warm_up()
    page, url = web.serve(app, host=args.host, port=args.port, share=args.share,
                          max_file_size=args.max_file_size)  # fmt: skip
    print(f"serving on {url}" + (f" and {page.share_url}" if page.share_url else ""), flush=True)
    page.block_thread()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_argparse(_parser(), run, argv)


if __name__ == "__main__":
    allocator.configure()
    sys.exit(main())
