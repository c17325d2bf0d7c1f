"""Train (and finally evaluate) a model as a config says.

  python -m tcclip_jax.train --config configs/fewshot.py:hmdb51,16 --workdir runs/fs_hmdb_16 \
      --config.init_checkpoint=checkpoints/clip_vit_b16 --config.data.root=/data/hmdb51/videos

  python -m tcclip_jax.train --config configs/demo.py --workdir runs/demo   # CPU, minutes

  # Check every list and class list (and count missing videos) without training:
  python -m tcclip_jax.train --config configs/base2novel.py:hmdb51,1 --workdir runs/b2n \
      --config.splits_dir=TC-CLIP --config.init_checkpoint=ckpt/tcclip_init --dry_run

Rerun the same command to resume an interrupted run. See configs/*.py for each protocol.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags, logging
from ml_collections import config_flags

from tcclip_jax.runtime import allocator, cli, compile_cache, distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/fewshot.py:hmdb51,16.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "Resolve the config, check every list against its class list, count missing videos, print "
    "a table per list, write config.json and exit (no video or device needed).",
)
_RESUME_CHANGED = flags.DEFINE_list(
    "resume_changed",
    [],
    "Config fields allowed to differ from the work directory's config.json when resuming "
    "(only those that change neither shapes nor the recipe, e.g. num_epochs).",
)
_COMPILE_CACHE = flags.DEFINE_string("compile_cache", None, compile_cache.FLAG_HELP)
_DEBUG = flags.DEFINE_bool("debug", False, cli.DEBUG_HELP)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
    del argv
    # Before JAX starts (the distributed runtime included): glibc settings for large steps only.
    status = allocator.configure(large_temporaries=allocator.worthwhile(_CONFIG.value))
    distributed.initialize()
    logging.debug("malloc settings: %s", status)  # shown with --verbosity=1
    # Imported after the distributed runtime is up: nothing may touch devices before it.
    from tcclip_jax.config.dry_run import dry_run
    from tcclip_jax.train.loop import train_and_evaluate

    if _DRY_RUN.value:
        print(dry_run(_CONFIG.value, _WORKDIR.value), flush=True)
        return
    compile_cache.configure(compile_cache.choose(_COMPILE_CACHE.value, _WORKDIR.value))
    train_and_evaluate(_CONFIG.value, _WORKDIR.value, resume_changed=_RESUME_CHANGED.value)


if __name__ == "__main__":
    cli.run_absl(main, _DEBUG)
