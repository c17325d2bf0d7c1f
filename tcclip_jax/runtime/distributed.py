"""Joining a multi-process run (several hosts, or several processes on one host).

Call `initialize()` before anything touches devices. It finds the cluster the process runs in
and starts JAX's distributed runtime when that cluster has more than one process; a single
process (a laptop, one GPU host, a single-host TPU VM) starts nothing. In order:

* explicit variables: `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID` (any cluster, e.g. GPU hosts started by hand or by a scheduler of your own);
* JAX's own cluster detection (`jax._src.clusters`, what `jax.distributed.initialize()` without
  arguments uses), in JAX's order: Open MPI (`mpirun`), SLURM (an `srun` job step), a Cloud
  TPU VM slice (the workers and this host's number from the metadata server, as `gcloud compute
  tpus tpu-vm create` sets them up), GKE TPU (`TPU_WORKER_HOSTNAMES` / `TPU_PROCESS_ADDRESSES`),
  Kubernetes (with the `kubernetes` package). Its answers (process count, this
  process's number, the coordinator) are JAX's; only two are refined here: a SLURM job step of
  one task (`SLURM_STEP_NUM_TASKS=1`: one `python` in a batch script of a larger allocation)
  is one process, and a SLURM task alone on its node drives all of the node's GPUs (JAX gives
  each SLURM task the one GPU of its local rank, right for one task per GPU).

A start-up that fails (the coordinator never answers, a process never comes) is a one-line
`RunError` naming the cluster found, the coordinator and this process's number, after
`TCCLIP_STARTUP_TIMEOUT` seconds (default 300), instead of JAX's abort with a C++ stack dump.

After it, `jax.devices()` lists the devices of all processes; every process runs the same program
on its own share of the data, and only process 0 writes logs and metrics.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import re
import threading
import warnings
from collections.abc import Mapping

import jax
from absl import logging

from tcclip_jax.runtime.errors import RunError, UserError

EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
TIMEOUT_VARIABLE = "TCCLIP_STARTUP_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
# JAX's cluster classes by what users call them.
_NAMES = {
    "OmpiCluster": "Open MPI",
    "SlurmCluster": "SLURM",
    "GkeTpuCluster": "GKE TPU",
    "GceTpuCluster": "Cloud TPU VM (metadata server)",
    "K8sCluster": "Kubernetes",
}


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A multi-process cluster as found: `how` names it for messages; `env` is JAX's cluster
    class (None: the explicit variables); `local_device_ids` None means all local devices."""

    how: str
    num_processes: int
    process_id: int
    coordinator: str | None = None  # None: asked of `env` when starting
    local_device_ids: tuple[int, ...] | None = None
    env: type | None = None

    def describe(self) -> str:
        where = f", coordinator {self.coordinator}" if self.coordinator else ""
        return f"{self.how}: process {self.process_id} of {self.num_processes}{where}"


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"{name}={env[name]!r} is not a whole number") from None


def _explicit(env: Mapping[str, str]) -> Cluster | None:
    """The cluster the three variables describe (None for one process or none set)."""
    if not all(env.get(v) for v in EXPLICIT):
        return None
    cluster = Cluster(
        how=", ".join(EXPLICIT),
        num_processes=_int(env, "JAX_NUM_PROCESSES"),
        process_id=_int(env, "JAX_PROCESS_ID"),
        coordinator=env["JAX_COORDINATOR_ADDRESS"],
    )
    if not 0 <= cluster.process_id < cluster.num_processes:
        raise UserError(
            f"JAX_PROCESS_ID={cluster.process_id} must be in 0..{cluster.num_processes - 1} "
            f"(JAX_NUM_PROCESSES={cluster.num_processes})"
        )
    return cluster if cluster.num_processes > 1 else None


def _jax_clusters() -> list[type]:
    """JAX's cluster classes in the order `jax.distributed.initialize()` tries them (those that
    need opting in, such as mpi4py, left out)."""
    try:
        from jax._src import clusters

        found = clusters.ClusterEnv._cluster_types
        return [c for c in found if not c.opt_in_only_method]
    except (ImportError, AttributeError) as e:  # a JAX whose internals moved
        logging.warning(
            "JAX's cluster detection is not where this code looks for it (%s): only %s start a "
            "multi-process run",
            e,
            ", ".join(EXPLICIT),
        )
        return []


def _tasks_on_node(env: Mapping[str, str]) -> int | None:
    """SLURM tasks of this job step on this node, from '2(x3),1'-style lists, or None."""
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if name in env:
            counts = []
            for part in env[name].split(","):
                m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
                if m is None:
                    return None
                counts += [int(m.group(1))] * int(m.group(2) or 1)
            node = int(env.get("SLURM_NODEID", "0"))
            return counts[node] if node < len(counts) else None
    return None


def _present(cls: type) -> bool:
    """JAX's test of whether this process runs in `cls`'s cluster; a TPU VM whose metadata server
    cannot be asked is an error (its slice could not be joined)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            present = bool(cls.is_env_present())
        for w in caught:  # e.g. Kubernetes without the `kubernetes` package: one line, not a box
            logging.info("%s: %s", cls.__name__, " ".join(str(w.message).split()))
        return present
    except Exception as e:  # requests' errors, among others
        name = _NAMES.get(cls.__name__, cls.__name__)
        hint = "TPU_SKIP_MDS_QUERY=1 skips it on a single host; " if "Tpu" in cls.__name__ else ""
        raise RunError(
            f"looking for a {name} cluster failed: {type(e).__name__}: {_first_line(e)} "
            f"({hint}or set {', '.join(EXPLICIT)})"
        ) from e


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _detected(env: Mapping[str, str]) -> Cluster | None:
    for cls in _jax_clusters():
        if not _present(cls):
            continue
        name = _NAMES.get(cls.__name__, cls.__name__)
        try:
            count, index = int(cls.get_process_count()), int(cls.get_process_id())
        except Exception as e:  # whatever the cluster's own look-up raises
            raise RunError(
                f"{name} found, but its process count and number could not be read: "
                f"{type(e).__name__}: {_first_line(e)}"
            ) from e
        local = None
        if cls.__name__ == "SlurmCluster":
            if "SLURM_STEP_NUM_TASKS" in env:  # the step's own count, not the allocation's
                count = int(env["SLURM_STEP_NUM_TASKS"])
            if _tasks_on_node(env) != 1:  # several tasks per node: one GPU each, as JAX does
                local = cls.get_local_process_id()
                local = None if local is None else (int(local),)
        if count <= 1:
            logging.info("%s found with one process: not starting a distributed runtime", name)
            return None
        return Cluster(how=name, num_processes=count, process_id=index,
                       local_device_ids=local, env=cls)  # fmt: skip
    return None


def detect() -> Cluster | None:
    """The multi-process cluster this process belongs to, or None for a single process.

    All three explicit variables win; `JAX_COORDINATOR_ADDRESS` alone overrides the coordinator
    of a cluster JAX detects; any other part of them alone is an error (a forgotten variable
    would otherwise train as one process)."""
    env = os.environ
    given = [v for v in EXPLICIT if env.get(v)]
    if len(given) == len(EXPLICIT):
        return _explicit(env)
    if env.get("JAX_NUM_PROCESSES") == "1":
        return None
    found = _detected(env)
    if given == ["JAX_COORDINATOR_ADDRESS"] and found is not None:
        return dataclasses.replace(found, coordinator=env["JAX_COORDINATOR_ADDRESS"])
    if given:
        missing = [v for v in EXPLICIT if v not in given]
        also = f"; {found.how} was found too" if found is not None else ""
        raise UserError(
            f"{', '.join(given)} set but not {', '.join(missing)}: set all of "
            f"{', '.join(EXPLICIT)} for a multi-process run, or none{also}"
        )
    return found


def _timeout(env: Mapping[str, str]) -> float:
    value = env.get(TIMEOUT_VARIABLE, "")
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise UserError(f"{TIMEOUT_VARIABLE}={value!r} must be a positive number of seconds")
    return seconds


def _silence_stderr_at_exit() -> None:
    """After a start-up that timed out, the runtime's threads and destructors still log their
    own account of it (C++ lines) while the process exits: the one-line error says it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


def _start(cluster: Cluster, timeout_s: float) -> None:
    """jax.distributed.initialize for `cluster` in a helper thread, waited for `timeout_s`: JAX
    itself aborts the process (a C++ check failure) when its own deadline passes, so ours comes
    first and raises a RunError instead."""
    outcome: dict = {}

    def run():
        try:
            coordinator = cluster.coordinator
            if coordinator is None:
                port = os.environ.get("JAX_COORDINATOR_PORT")
                coordinator = cluster.env.get_coordinator_address(
                    timeout_secs=int(timeout_s), override_coordinator_port=port
                )
                outcome["coordinator"] = coordinator
            jax.distributed.initialize(
                coordinator_address=coordinator,
                num_processes=cluster.num_processes,
                process_id=cluster.process_id,
                local_device_ids=cluster.local_device_ids,
                cluster_detection_method="deactivate",  # found above, once
                initialization_timeout=int(timeout_s) + 60,
            )
            outcome["done"] = True
        except BaseException as e:  # handed to the waiting thread
            outcome["error"] = e

    thread = threading.Thread(target=run, name="jax-distributed-start", daemon=True)
    thread.start()
    thread.join(timeout_s)
    coordinator = outcome.get("coordinator", cluster.coordinator)
    found = dataclasses.replace(cluster, coordinator=coordinator)
    if "error" in outcome:
        e = outcome["error"]
        raise RunError(
            f"the distributed runtime did not start ({found.describe()}): "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from e
    if not outcome.get("done"):
        atexit.register(_silence_stderr_at_exit)
        waited = (
            "the other processes to connect"
            if cluster.process_id == 0
            else "the coordinator (process 0) to answer"
        )
        raise RunError(
            f"the distributed runtime did not start in {timeout_s:.0f} s ({found.describe()}): "
            f"waited for {waited}; are all {cluster.num_processes} processes started, with the "
            f"same settings, and the coordinator's port reachable? ({TIMEOUT_VARIABLE} sets the "
            "wait)"
        )


def initialize(timeout_s: float | None = None) -> bool:
    """Start the distributed runtime if this process is one of several; True if it did (or it
    was already running). A UserError for inconsistent variables, a RunError (one line) for a
    start-up that failed."""
    if jax.distributed.is_initialized():
        return True
    cluster = detect()
    if cluster is None:
        return False
    _start(cluster, _timeout(os.environ) if timeout_s is None else timeout_s)
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)
    logging.info(
        "Distributed runtime started (%s): process %d of %d; %d local of %d devices",
        cluster.how,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
