"""Joining a multi-process run (several hosts, or several processes on one host).

Call `initialize()` before anything touches devices. It starts JAX's distributed runtime when the
environment describes several processes, and does nothing otherwise:

* `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`;
* a SLURM job step with more than one task (`srun`); JAX reads SLURM's variables;
* a multi-host Cloud TPU slice (`TPU_WORKER_HOSTNAMES` lists several hosts); JAX asks the TPU
  metadata.

After it, `jax.devices()` lists the devices of all processes; every process runs the same program
on its own share of the data, and only process 0 writes logs and metrics.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def _slurm_tasks() -> int:
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def initialize() -> bool:
    """Start the distributed runtime if the environment asks for it; True if it did."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
        if "JAX_PROCESS_ID" not in env:
            raise ValueError(
                "JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES are set: set JAX_PROCESS_ID"
            )
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    elif ("SLURM_JOB_ID" in env and _slurm_tasks() > 1) or "," in env.get(
        "TPU_WORKER_HOSTNAMES", ""
    ):
        jax.distributed.initialize()  # JAX reads the cluster's own variables.
    else:
        return False
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)
    logging.info(
        "Process %d of %d; %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
