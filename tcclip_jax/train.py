"""Train (and finally evaluate) a model as a config says.

  python -m tcclip_jax.train --config configs/fewshot.py:hmdb51,16 --workdir runs/fs_hmdb_16 \
      --config.init_checkpoint=checkpoints/clip_vit_b16 --config.data.root=/data/hmdb51/videos

  python -m tcclip_jax.train --config configs/demo.py --workdir runs/demo   # CPU, minutes

Rerun the same command to resume an interrupted run. See configs/*.py for each protocol.
"""

from __future__ import annotations

import logging as pylogging
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from tcclip_jax import allocator, distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/fewshot.py:hmdb51,16.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietCheckpointing(pylogging.Filter):
    """Orbax logs every stage of every save at INFO, and warns about each periodic save that
    has no validation metrics (by design here); keep its other warnings."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        return record.levelno >= pylogging.WARNING and "did not provide metrics" not in str(
            record.msg
        )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietCheckpointing())
    distributed.initialize()
    # Imported after the distributed runtime is up: nothing may touch devices before it.
    from tcclip_jax.train_lib import ConfigError, train_and_evaluate

    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        raise app.UsageError(str(e)) from e


if __name__ == "__main__":
    allocator.configure()
    app.run(main)
