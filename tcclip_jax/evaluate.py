"""Evaluate a model checkpoint directory as a config's protocol prescribes.

  python -m tcclip_jax.evaluate --config configs/fewshot.py:hmdb51,16 --checkpoint runs/fs/model \
      --config.splits_dir=TC-CLIP --config.data.root=/data/hmdb51/videos

  python -m tcclip_jax.evaluate --config configs/zeroshot.py --checkpoint runs/zs_k400/model \
      --config.clip_checkpoint=checkpoints/clip_vit_b16 --config.splits_dir=TC-CLIP \
      --config.eval.datasets[0].root=/data/hmdb51/videos ...

The checkpoint is any directory `weights.checkpoint.load_model` reads (converted weights or a
run's exported `model/`); its model config overrides the config's model fields. Zero-shot WiSE-FT
needs CLIP's weights: `--config.clip_checkpoint`. The table is printed, and written with the
checkpoint path to `WORKDIR/eval_metrics.json`, and the scalars appended to `WORKDIR/metrics.jsonl`
under `eval/`. WORKDIR defaults to the checkpoint's parent: the run directory of a run's `model/`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from tcclip_jax import cli, distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Protocol config file, e.g. configs/fewshot.py:hmdb51,16.", lock_config=True
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model checkpoint directory to evaluate.")
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where eval_metrics.json and metrics.jsonl go (default: the checkpoint's parent).",
)
_DEBUG = flags.DEFINE_bool("debug", False, cli.DEBUG_HELP)
flags.mark_flags_as_required(["config", "checkpoint"])

METRICS_FILE = "eval_metrics.json"


def main(argv: Sequence[str]) -> None:
    del argv
    distributed.initialize()
    # Imported after the distributed runtime is up: nothing may touch devices before it.
    import jax

    from tcclip_jax import sharding
    from tcclip_jax.config.resolve import check_eval_lists, resolve
    from tcclip_jax.evaluation.protocols import evaluate_protocol
    from tcclip_jax.evaluation.tables import flat_metrics, format_results
    from tcclip_jax.metrics import MetricWriter
    from tcclip_jax.weights.checkpoint import INFO_FILE, load_model

    checkpoint = os.path.abspath(_CHECKPOINT.value)
    workdir = _WORKDIR.value or os.path.dirname(checkpoint)
    model_config, params = load_model(checkpoint)
    config = resolve(_CONFIG.value, workdir)
    check_eval_lists(config)
    metrics = evaluate_protocol(config, params, sharding.create_mesh(), model_config=model_config)

    step = 0
    if os.path.isfile(os.path.join(checkpoint, INFO_FILE)):
        with open(os.path.join(checkpoint, INFO_FILE)) as f:
            step = int(json.load(f).get("step", 0))
    writer = MetricWriter(workdir)
    writer.write(step, flat_metrics(metrics), prefix="eval/")
    writer.close()
    if jax.process_index() == 0:
        print(format_results(metrics), flush=True)
        with open(os.path.join(workdir, METRICS_FILE), "w") as f:
            json.dump({**metrics, "checkpoint": checkpoint, "step": step}, f, indent=2)


if __name__ == "__main__":
    cli.run_absl(main, _DEBUG)
