"""Compile a run's train step for a TPU topology or NVIDIA GPUs on this host (no TPU or GPU
needed) and print, per chip, its memory against the chip's HBM, FLOPs, roofline step time,
compile time and a census of collectives and costly ops with their origin
(`tcclip_jax.bench.ahead_of_time`). Needs libtpu: pip install "tcclip-jax[tpu]"; for --gpu,
JAX's CUDA plugin: pip install "tcclip-jax[cuda-aot]".

  python -m tcclip_jax.aot --config configs/fewshot.py:hmdb51,16 --classes 51 --topology v5e:2x2
  python -m tcclip_jax.aot --config configs/zeroshot.py --classes 400 --topology v5e-8 \
      --per_chip_batch 8
  python -m tcclip_jax.aot --config configs/zeroshot.py --classes 400 --topology v5e-16 --fsdp
  python -m tcclip_jax.aot --config configs/zeroshot.py --classes 400 --topology v5e:2x2 \
      --remat --max_batch
  python -m tcclip_jax.aot --config configs/fewshot.py:hmdb51,16 --classes 51 --gpu h100

Without --per_chip_batch the step is the config's: `batch_size` clips over the topology's chips
in `grad_accum_steps` micro-batches. The evaluation step follows (`config.eval.batch_size`
videos of the test views, rounded up to a multiple of the chips as the evaluator does; --noeval
skips it). Config fields override as in training
(--config.remat=True).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from tcclip_jax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/zeroshot.py.", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU topology (v5e:2x2, v5e:2x4, v4:2x2x1, v5:2x2x1) or slice (v5e-8)."
)
_GPU = flags.DEFINE_string(
    "gpu",
    None,
    "NVIDIA GPUs of one host instead of a TPU slice: a100, h100, h200, b200, or "
    "e.g. h100:8 (needs JAX's CUDA plugin: the cuda-aot extra).",
)
_PER_CHIP_BATCH = flags.DEFINE_integer(
    "per_chip_batch", None, "Clips per chip in one step (one micro-batch); default: the config's."
)
_MAX_BATCH = flags.DEFINE_bool(
    "max_batch", False, "Find the largest per-chip batch whose step fits the chip's HBM."
)
_CLASSES = flags.DEFINE_integer(
    "classes", None, "Made-up class names (default: the config's class list, if readable)."
)
_FSDP = flags.DEFINE_bool("fsdp", None, "Shard parameters and optimiser state (config.sharding).")
_REMAT = flags.DEFINE_bool("remat", None, "Rematerialise the vision blocks (config.remat).")
_SCAN = flags.DEFINE_bool(
    "scan_blocks", None, "Scan the vision blocks (config.scan_blocks; default on TPU: yes)."
)
_EVAL = flags.DEFINE_bool(
    "eval", True, "Also compile the evaluation step (config.eval.batch_size videos, test views)."
)
_DEBUG = flags.DEFINE_bool("debug", False, cli.DEBUG_HELP)
flags.mark_flags_as_required(["config"])
flags.mark_flags_as_mutual_exclusive(["topology", "gpu"], required=True)


def main(argv: Sequence[str]) -> None:
    del argv
    from tcclip_jax.bench.ahead_of_time import run

    config = _CONFIG.value
    with config.unlocked():
        if _FSDP.value is not None:
            config.sharding.fsdp = _FSDP.value
        if _REMAT.value is not None:
            config.remat = _REMAT.value
        if _SCAN.value is not None:
            config.scan_blocks = _SCAN.value
    run(
        config,
        _TOPOLOGY.value,
        _PER_CHIP_BATCH.value,
        _MAX_BATCH.value,
        _CLASSES.value,
        evaluation=_EVAL.value,
        gpu=_GPU.value,
    )


if __name__ == "__main__":
    cli.run_absl(main, _DEBUG)
