"""Pack a video dataset into tfds ArrayRecord shards for the grain pipeline (`format='tfds'`).

  python tools/build_tfds_dataset.py --name hmdb51_split1 --root /data/hmdb51/videos \
      --split train=/data/hmdb51/train1.txt --split val=/data/hmdb51/val1.txt \
      --data-dir /data/tfds --workers 16

then train with `format='tfds', tfds_name='tcclip_videos/hmdb51_split1', tfds_dir='/data/tfds'`.
`--storage frames` (default) stores every frame as a JPEG already resized to the pipeline's short
side: fast to read, bigger on disk. `--storage video` stores the video files' bytes unchanged.

The shards are written into a temporary folder beside the dataset's and renamed when complete:
an interrupted build (Ctrl-C, a kill, a full disk) leaves no dataset readers would open, and
running the same command again builds it from the start.
"""

from __future__ import annotations

import argparse
import sys

from tcclip_jax.data.tfds_builder import STORAGES, TcclipVideos
from tcclip_jax.data.video_decode import VideoReadError
from tcclip_jax.runtime import cli
from tcclip_jax.runtime.errors import RunError, UserError


def _split(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=ANNOTATION_LIST, got {text!r}")
    return name, path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", required=True, help="dataset config name, e.g. hmdb51_split1")
    p.add_argument("--root", required=True, help="directory the annotation paths are relative to")
    p.add_argument(
        "--split", type=_split, action="append", required=True, help="NAME=LIST, repeatable"
    )
    p.add_argument("--data-dir", required=True, help="tfds data_dir to write into")
    p.add_argument("--storage", choices=STORAGES, default="frames")
    p.add_argument("--source-format", choices=("video", "frames"), default="video")
    p.add_argument("--frame-template", default="img_{:05d}.jpg")
    p.add_argument("--frame-start-index", type=int, default=1)
    p.add_argument("--resize-size", type=int, default=256, help="short side of stored frames")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=1, help="processes decoding and encoding")
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave unreadable videos out (listed in the metadata) instead of stopping",
    )
    p.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.quiet_libraries()
    return cli.guarded(lambda: build(args), args.debug)


def build(args: argparse.Namespace) -> int:
    splits = dict(args.split)
    if len(splits) != len(args.split):
        raise UserError("a split name is given twice")
    builder = TcclipVideos(
        name=args.name,
        root=args.root,
        splits=splits,
        source_format=args.source_format,
        storage=args.storage,
        resize_size=args.resize_size,
        jpeg_quality=args.jpeg_quality,
        frame_template=args.frame_template,
        frame_start_index=args.frame_start_index,
        num_workers=args.workers,
        skip_unreadable=args.skip_unreadable,
        data_dir=args.data_dir,
    )
    try:
        builder.download_and_prepare()
    except VideoReadError as e:
        raise RunError(f"{e} (pass --skip-unreadable to leave such videos out)") from e
    skipped = {s: m["skipped"] for s, m in builder.info.metadata["splits"].items() if m["skipped"]}
    for split, messages in skipped.items():
        print(f"{split}: left out {len(messages)} unreadable videos:", *messages, sep="\n  ")
    print(f"wrote {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
