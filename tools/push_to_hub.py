"""Upload a Hub model folder (written by `python -m tcclip_jax.export --format hub`) to the
Hugging Face Hub.

  python tools/push_to_hub.py tcclip-k400 OWNER/tcclip-k400 [--private] [--revision BRANCH]

Creates the model repo if it does not exist, then uploads the folder's files in one commit. The
token is huggingface_hub's: `hf auth login`, or HF_TOKEN. Anyone can then run
`python -m tcclip_jax.predict --checkpoint OWNER/tcclip-k400 ...` or
`Predictor.from_pretrained("OWNER/tcclip-k400")`. Needs `pip install 'tcclip-jax[hub]'`.
"""

from __future__ import annotations

import argparse
import os
import sys

from tcclip_jax.runtime import cli
from tcclip_jax.runtime.errors import RunError, UsageError, error_line
from tcclip_jax.weights.hub import FILES, INSTALL, load_pretrained


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("folder", help="Hub model folder (config.json, model.safetensors, README.md)")
    p.add_argument("repo_id", help="OWNER/NAME on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument("--message", default="Upload tcclip_jax model", help="commit message")
    p.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    return p.parse_args(argv)


def check_folder(folder: str) -> None:
    """A UsageError unless `folder` is a complete, readable Hub model folder."""
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: not a folder (write one with python -m tcclip_jax.export "
                         "--format hub)")  # fmt: skip
    missing = [name for name in FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise UsageError(f"{folder}: not a Hub model folder (no {', '.join(missing)})")
    load_pretrained(folder)  # a damaged or incomplete one is refused before any upload


def push(args: argparse.Namespace) -> int:
    check_folder(args.folder)
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        raise UsageError(f"uploading needs huggingface_hub ({INSTALL})") from e
    api = HfApi()
    try:
        url = api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        info = api.upload_folder(
            repo_id=args.repo_id,
            folder_path=args.folder,
            revision=args.revision,
            commit_message=args.message,
            allow_patterns=list(FILES),
        )
    except (OSError, ValueError) as e:  # the Hub's HTTP errors, offline mode, a bad repo id
        raise RunError(f"upload to {args.repo_id} failed: {error_line(e)}") from e
    print(f"uploaded {args.folder} to {url}: {info.commit_url}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.quiet_libraries()
    return cli.guarded(lambda: push(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
