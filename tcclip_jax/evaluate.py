"""Evaluate a model checkpoint directory as a config's protocol prescribes.

  python -m tcclip_jax.evaluate --config configs/fewshot.py:hmdb51,16 --checkpoint runs/fs/model \
      --config.splits_dir=TC-CLIP --config.data.root=/data/hmdb51/videos

  python -m tcclip_jax.evaluate --config configs/zeroshot.py --checkpoint runs/zs_k400/model \
      --config.clip_checkpoint=checkpoints/clip_vit_b16 --config.splits_dir=TC-CLIP \
      --config.eval.datasets[0].root=/data/hmdb51/videos ...

The checkpoint is any directory `tcclip_jax.checkpoints.load_model` reads (converted weights or a
run's exported `model/`); its model config overrides the config's model fields. Zero-shot WiSE-FT
needs CLIP's weights: `--config.clip_checkpoint`. The table is printed, and written with the
checkpoint path to `WORKDIR/eval_metrics.json`, and the scalars appended to `WORKDIR/metrics.jsonl`
under `eval/`. WORKDIR defaults to the checkpoint's parent: the run directory of a run's `model/`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from tcclip_jax import allocator, distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Protocol config file, e.g. configs/fewshot.py:hmdb51,16.", lock_config=True
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model checkpoint directory to evaluate.")
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where eval_metrics.json and metrics.jsonl go (default: the checkpoint's parent).",
)
flags.mark_flags_as_required(["config", "checkpoint"])

METRICS_FILE = "eval_metrics.json"


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize()
    # Imported after the distributed runtime is up: nothing may touch devices before it.
    import jax

    from tcclip_jax import evaluation, sharding, train_lib
    from tcclip_jax.checkpoints import INFO_FILE, CheckpointError, load_model
    from tcclip_jax.metrics import MetricWriter

    checkpoint = os.path.abspath(_CHECKPOINT.value)
    workdir = _WORKDIR.value or os.path.dirname(checkpoint)
    try:
        model_config, params = load_model(checkpoint)
        if _CONFIG.value.protocol == "demo":  # its data is generated on first use
            config = train_lib.prepare_config(_CONFIG.value, workdir)
        else:
            config = train_lib.resolve_paths(_CONFIG.value)
        metrics = evaluation.evaluate_protocol(
            config, params, sharding.create_mesh(), model_config=model_config
        )
    except (CheckpointError, ValueError) as e:  # bad paths, lists or configs: say which
        raise app.UsageError(str(e)) from e

    step = 0
    if os.path.isfile(os.path.join(checkpoint, INFO_FILE)):
        with open(os.path.join(checkpoint, INFO_FILE)) as f:
            step = int(json.load(f).get("step", 0))
    writer = MetricWriter(workdir)
    writer.write(step, evaluation.flat_metrics(metrics), prefix="eval/")
    writer.close()
    if jax.process_index() == 0:
        print(evaluation.format_table(metrics), flush=True)
        with open(os.path.join(workdir, METRICS_FILE), "w") as f:
            json.dump({**metrics, "checkpoint": checkpoint, "step": step}, f, indent=2)


if __name__ == "__main__":
    allocator.configure()
    app.run(main)
