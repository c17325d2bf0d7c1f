"""What a run records in its workdir: TensorBoard events, `metrics.jsonl` and `config.json`.

`metrics.jsonl` has one JSON object per logging step or evaluation, `{"step": int, name: value}`
(e.g. `loss`, `lr`, `clips_per_sec`, `top1`, `top5`), easy to read back without TensorBoard.
Only process 0 writes; the other processes get a writer that does nothing, so callers need not
branch on the process index.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "config.json"


def _scalar(value: Any) -> float | int:
    value = np.asarray(value)
    if value.size != 1:
        raise ValueError(f"metrics must be scalars, got shape {value.shape}")
    return value.item()


class MetricWriter:
    """Appends scalars to `metrics.jsonl` and TensorBoard events to `tensorboard/` in a workdir."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")  # noqa: SIM115
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        """Record scalar `metrics` at `step`; TensorBoard tags get `prefix` (e.g. "train/")."""
        if not self.enabled:
            return
        values = {name: _scalar(v) for name, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tb.add_scalar(prefix + name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of `workdir/metrics.jsonl` in order."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def drop_after(workdir: str, step: int) -> None:
    """Forget the records past `step` (process 0 only): a run resumed from the checkpoint of
    `step` logs those steps again, and `metrics.jsonl` then reads as an uninterrupted run."""
    path = os.path.join(workdir, METRICS_FILE)
    if jax.process_index() != 0 or not os.path.isfile(path):
        return
    kept = [r for r in read_metrics(workdir) if r["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(path + ".tmp", path)


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """The resolved config as JSON (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RUN_CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
