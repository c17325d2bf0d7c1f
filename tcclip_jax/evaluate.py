"""Evaluate a model checkpoint directory as a config's protocol prescribes.

  python -m tcclip_jax.evaluate --config configs/fewshot.py:hmdb51,16 --checkpoint runs/fs/model \
      --config.splits_dir=TC-CLIP --config.data.root=/data/hmdb51/videos

  python -m tcclip_jax.evaluate --config configs/zeroshot.py --checkpoint runs/zs_k400/model \
      --config.clip_checkpoint=checkpoints/clip_vit_b16 --config.splits_dir=TC-CLIP \
      --config.eval.datasets[0].root=/data/hmdb51/videos ...

  python -m tcclip_jax.evaluate --config configs/base2novel.py:hmdb51,1 --checkpoint ckpt/b2n \
      --config.splits_dir=TC-CLIP --config.data.root=/data/hmdb51/videos   # base and novel

The checkpoint is any directory `weights.checkpoint.load_model` reads (converted weights, e.g.
the authors' released files, or a run's exported `model/`); its model config overrides the
config's model fields, and the input normalisation it records overrides
`config.data.normalization` (`--normalization` chooses). The protocol's test lists and views are
used (zero-shot: HMDB-51, UCF-101 and K-600, three splits each), every list checked against its
class list first. Zero-shot is evaluated as the weights are and with WiSE-FT, which needs CLIP's
weights (`--config.clip_checkpoint`, a converted OpenAI CLIP). The table is printed, and written
with the checkpoint path and normalisation to `WORKDIR/eval_metrics.json` (what `python -m
tcclip_jax.report` reads), and the scalars appended to `WORKDIR/metrics.jsonl` under `eval/`;
per evaluated list, `WORKDIR/analysis/<list>/` holds every video's predictions, the per-class
accuracy and the confusion matrix (`tcclip_jax.evaluation.analysis`).
WORKDIR defaults to the checkpoint's parent: the run directory of a run's `model/`. Both may be
on object storage (`gs://...`, see docs/storage.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import flags, logging
from ml_collections import config_flags

from tcclip_jax.data.config import NORMALIZATIONS
from tcclip_jax.runtime import agreement, allocator, cli, compile_cache, distributed, storage

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Protocol config file, e.g. configs/fewshot.py:hmdb51,16.", lock_config=True
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model checkpoint directory to evaluate.")
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where eval_metrics.json and metrics.jsonl go (default: the checkpoint's parent).",
)
_NORMALIZATION = flags.DEFINE_enum(
    "normalization",
    "checkpoint",
    ["checkpoint", *sorted(NORMALIZATIONS)],
    "Input normalisation: the one the checkpoint records, or this one.",
)
_COMPILE_CACHE = flags.DEFINE_string("compile_cache", None, compile_cache.FLAG_HELP)
_DEBUG = flags.DEFINE_bool("debug", False, cli.DEBUG_HELP)
flags.mark_flags_as_required(["config", "checkpoint"])

METRICS_FILE = "eval_metrics.json"
ANALYSIS_DIR = "analysis"  # per evaluated list: predictions, per-class accuracy, confusion


def main(argv: Sequence[str]) -> None:
    del argv
    distributed.initialize()
    # Imported after the distributed runtime is up: nothing may touch devices before it.
    import jax

    from tcclip_jax.apps.inference import checkpoint_normalization
    from tcclip_jax.config.resolve import check_eval_lists, check_lists, resolve
    from tcclip_jax.evaluation.protocols import evaluate_protocol
    from tcclip_jax.evaluation.tables import flat_metrics, format_results
    from tcclip_jax.runtime import sharding
    from tcclip_jax.runtime.metrics import MetricWriter
    from tcclip_jax.weights.checkpoint import INFO_FILE, load_model

    storage.check(_CHECKPOINT.value, "--checkpoint")
    checkpoint = storage.abspath(_CHECKPOINT.value)
    workdir = _WORKDIR.value or storage.dirname(checkpoint)
    storage.check(workdir, "--workdir")
    compile_cache.configure(compile_cache.choose(_COMPILE_CACHE.value, workdir))
    model_config, params = load_model(checkpoint)
    with agreement.agreed():  # one process's unreadable copy stops all, in one line
        config = resolve(_CONFIG.value, workdir)
        check_eval_lists(config)  # every list and folder exists (named by its config field)
        check_lists(config, training=False)  # each test list against its class list, first
        config.data.normalization = checkpoint_normalization(checkpoint, _NORMALIZATION.value)
    metrics = evaluate_protocol(
        config, params, sharding.create_mesh(), model_config=model_config,
        analysis_dir=storage.join(workdir, ANALYSIS_DIR),
    )  # fmt: skip

    with agreement.agreed():  # process 0 writes; a failure there stops all
        step = 0
        if storage.isfile(storage.join(checkpoint, INFO_FILE)):
            step = int(json.loads(storage.read_text(storage.join(checkpoint, INFO_FILE)))
                       .get("step", 0))  # fmt: skip
        writer = MetricWriter(workdir)
        writer.write(step, flat_metrics(metrics), prefix="eval/")
        writer.close()
        if jax.process_index() == 0:
            print(format_results(metrics), flush=True)
            record = {"checkpoint": checkpoint, "step": step}
            record["normalization"] = config.data.normalization
            storage.write_text(
                storage.join(workdir, METRICS_FILE), json.dumps({**metrics, **record}, indent=2)
            )
    logging.info("%s", compile_cache.LOG.summary())


if __name__ == "__main__":
    allocator.configure()
    cli.run_absl(main, _DEBUG)
