"""Multi-process start-up (`runtime.distributed`): which cluster a process finds from its
environment, as each cluster sets it, and real starts over loopback.

The Cloud TPU VM case answers JAX's metadata queries from a real HTTP server on loopback
(`GCE_METADATA_IP`, the variable JAX's client reads); on this machine JAX has marked itself as not
on a TPU VM (no TPU chips), so the tests set JAX's own flag for that.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from jax._src.clusters import cloud_tpu_cluster
from xla_env import xla_flags

from tcclip_jax.runtime import distributed
from tcclip_jax.runtime.errors import RunError, UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER_PREFIXES = ("JAX_", "SLURM_", "TPU_", "OMPI_", "MEGASCALE_", "GCE_METADATA")


@pytest.fixture
def clean_env(monkeypatch):
    """No cluster variables from the machine the tests run on."""
    for name in list(os.environ):
        if name.startswith(CLUSTER_PREFIXES) or name == "KUBERNETES_SERVICE_HOST":
            monkeypatch.delenv(name)
    return monkeypatch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Explicit variables ------------------------------------------------------------------------


def test_nothing_set_is_a_single_process(clean_env):
    assert distributed.detect() is None
    assert distributed.initialize() is False


def test_explicit_variables(clean_env):
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    clean_env.setenv("JAX_NUM_PROCESSES", "4")
    clean_env.setenv("JAX_PROCESS_ID", "3")
    cluster = distributed.detect()
    assert (cluster.num_processes, cluster.process_id) == (4, 3)
    assert cluster.coordinator == "10.0.0.1:1234" and cluster.env is None
    clean_env.setenv("JAX_NUM_PROCESSES", "1")
    clean_env.setenv("JAX_PROCESS_ID", "0")
    assert distributed.detect() is None  # one process: nothing to start


@pytest.mark.parametrize(
    "variables,message",
    [
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "but not JAX_PROCESS_ID"),
        ({"JAX_PROCESS_ID": "1"}, "but not JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "but not JAX_NUM_PROCESSES, JAX_PROCESS_ID"),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
            "JAX_PROCESS_ID=2 must be in 0..1",
        ),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
            "JAX_NUM_PROCESSES='two' is not a whole number",
        ),
    ],
)
def test_inconsistent_explicit_variables_are_one_line(clean_env, variables, message):
    for name, value in variables.items():
        clean_env.setenv(name, value)
    with pytest.raises(UserError, match=message) as info:
        distributed.detect()
    assert "\n" not in str(info.value)


# SLURM -------------------------------------------------------------------------------------


def _srun(monkeypatch, *, tasks: int, rank: int, per_node: str, node: int, local: int) -> None:
    """The variables `srun` sets in each task of a job step."""
    for name, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "gpu[001-004]",
        "SLURM_NTASKS": str(tasks),
        "SLURM_STEP_NUM_TASKS": str(tasks),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(local),
        "SLURM_NODEID": str(node),
        "SLURM_STEP_TASKS_PER_NODE": per_node,
    }.items():
        monkeypatch.setenv(name, value)


def test_slurm_one_task_per_node_drives_all_its_gpus(clean_env):
    _srun(clean_env, tasks=4, rank=2, per_node="1(x4)", node=2, local=0)
    cluster = distributed.detect()
    assert (cluster.how, cluster.num_processes, cluster.process_id) == ("SLURM", 4, 2)
    assert cluster.local_device_ids is None  # all local devices
    # The coordinator is JAX's: the step's first node, a port from the job id.
    address = cluster.env.get_coordinator_address(timeout_secs=1, override_coordinator_port=None)
    assert address.startswith("gpu001:")


def test_slurm_tasks_sharing_a_node_take_one_gpu_each(clean_env):
    _srun(clean_env, tasks=8, rank=5, per_node="4(x2)", node=1, local=1)
    cluster = distributed.detect()
    assert (cluster.num_processes, cluster.process_id, cluster.local_device_ids) == (8, 5, (1,))


def test_one_python_in_a_batch_script_is_a_single_process(clean_env):
    _srun(clean_env, tasks=8, rank=0, per_node="8", node=0, local=0)
    clean_env.setenv("SLURM_STEP_NUM_TASKS", "1")  # the batch step of an 8-task allocation
    assert distributed.detect() is None


def test_a_coordinator_address_alone_overrides_the_detected_one(clean_env):
    _srun(clean_env, tasks=2, rank=1, per_node="1(x2)", node=1, local=0)
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "10.1.2.3:5555")
    cluster = distributed.detect()
    assert (cluster.how, cluster.coordinator, cluster.process_id) == ("SLURM", "10.1.2.3:5555", 1)


# TPU: Cloud TPU VMs and GKE --------------------------------------------------------------


@pytest.fixture
def tpu_vm(clean_env):
    """What JAX sets at import on a TPU VM (it finds TPU chips on the PCI bus)."""
    clean_env.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    return clean_env


class _Metadata(http.server.BaseHTTPRequestHandler):
    """The GCE metadata server's instance attributes, as a TPU VM's workers see them."""

    attributes: dict[str, str] = {}

    def do_GET(self):
        key = self.path.rsplit("/", 1)[-1]
        ok = self.headers.get("Metadata-Flavor") == "Google" and key in self.attributes
        body = self.attributes.get(key, "").encode() if ok else b"not found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


TPU_ENV = "ACCELERATOR_TYPE: 'v5litepod-32'\nTOPOLOGY: '4x8'\n"


def _metadata_server(worker: int | None, endpoints: str = "") -> http.server.HTTPServer:
    """A metadata server on loopback answering as TPU VM worker `worker` of `endpoints` (None:
    a GKE node, whose metadata has the TPU environment but no worker attributes)."""
    attributes = {"tpu-env": TPU_ENV}
    if worker is not None:
        attributes |= {"agent-worker-number": str(worker), "worker-network-endpoints": endpoints}
    handler = type("Handler", (_Metadata,), {"attributes": attributes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_cloud_tpu_vm_slice_from_the_metadata_server(tpu_vm):
    server = _metadata_server(2, "10.0.0.5,10.0.0.6,10.0.0.7,10.0.0.8")
    try:
        tpu_vm.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_port}")
        cluster = distributed.detect()
        assert cluster.how == "Cloud TPU VM (metadata server)"
        assert (cluster.num_processes, cluster.process_id) == (4, 2)
        # The older 'name:id:ip' form of the endpoints, one host: nothing to start.
        server.RequestHandlerClass.attributes["worker-network-endpoints"] = "w-0:0:10.0.0.5"
        assert distributed.detect() is None
    finally:
        server.shutdown()


def test_gke_tpu_hosts_from_the_variables_gke_sets(tpu_vm):
    server = _metadata_server(None)
    try:
        tpu_vm.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_port}")
        # JAX asks for the TPU VM's worker number first unless this is set (a GKE node's
        # metadata answers 404, after 6 tries of 0.5 s each).
        tpu_vm.setenv("TPU_SKIP_MDS_QUERY", "1")
        tpu_vm.setenv("TPU_WORKER_HOSTNAMES", "w-0.svc,w-1.svc,w-2.svc,w-3.svc")
        tpu_vm.setenv("TPU_WORKER_ID", "3")
        cluster = distributed.detect()
        assert (cluster.how, cluster.num_processes, cluster.process_id) == ("GKE TPU", 4, 3)
        tpu_vm.setenv("TPU_WORKER_HOSTNAMES", "w-0.svc")
        tpu_vm.setenv("TPU_WORKER_ID", "0")
        assert distributed.detect() is None  # a single-host slice
    finally:
        server.shutdown()


def test_a_tpu_vm_whose_metadata_server_does_not_answer_is_one_line(tpu_vm):
    tpu_vm.setenv("GCE_METADATA_IP", f"127.0.0.1:{_free_port()}")  # nothing listens
    with pytest.raises(RunError, match="Cloud TPU VM .*TPU_SKIP_MDS_QUERY=1") as info:
        distributed.detect()
    assert "\n" not in str(info.value)
    tpu_vm.setenv("TPU_SKIP_MDS_QUERY", "1")  # as JAX sets it where it finds no TPU chips
    assert distributed.detect() is None


# Real starts -------------------------------------------------------------------------------

# Two processes, each a "TPU VM worker" answered by its own metadata server: they find each other
# through it and agree on a collective.
_TPU_WORKER = textwrap.dedent(
    """
    import os
    import jax
    import numpy as np
    from jax._src.clusters import cloud_tpu_cluster
    from jax.experimental import multihost_utils
    from tcclip_jax.runtime import distributed

    # What JAX would have found on a TPU VM: its TPU chips (and so no TPU_SKIP_MDS_QUERY).
    cloud_tpu_cluster.running_in_cloud_tpu_vm = True
    os.environ.pop("TPU_SKIP_MDS_QUERY", None)
    assert distributed.initialize()
    ranks = multihost_utils.process_allgather(np.int32(jax.process_index()))
    print("ranks", sorted(np.asarray(ranks).tolist()), "devices", jax.device_count(), flush=True)
    """
)


def _clean_subprocess_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_PREFIXES)}
    env["XLA_FLAGS"] = xla_flags()
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, **extra}


def test_two_tpu_vm_workers_start_through_the_metadata_server():
    port = _free_port()
    servers = [_metadata_server(w, "127.0.0.1,127.0.0.1") for w in range(2)]
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _TPU_WORKER],
                env=_clean_subprocess_env(
                    GCE_METADATA_IP=f"127.0.0.1:{s.server_port}",
                    JAX_COORDINATOR_PORT=str(port),  # JAX's own override of its port 8482
                    TCCLIP_STARTUP_TIMEOUT="60",
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for s in servers
        ]
        try:
            outputs = [p.communicate(timeout=120)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
    finally:
        for s in servers:
            s.shutdown()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert "ranks [0, 1] devices 2" in out


def _train_start(process_id: int, port: int, workdir) -> subprocess.Popen:
    env = _clean_subprocess_env(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(process_id),
        TCCLIP_STARTUP_TIMEOUT="4",
    )
    command = [
        sys.executable, "-m", "tcclip_jax.train",
        "--config", os.path.join(REPO, "configs", "demo.py") + ":ci", "--workdir", str(workdir),
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.parametrize("process_id", [0, 1])
def test_a_start_up_that_never_completes_is_one_line(process_id, tmp_path):
    """Process 1 with no coordinator, or process 0 whose partner never comes: after the time
    allowed, one line naming what was tried, exit status 1, nothing else on stderr (JAX alone
    aborts with a C++ stack dump)."""
    start = time.monotonic()
    proc = _train_start(process_id, _free_port(), tmp_path)
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - start < 60
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: the distributed runtime did not start in 4 s")
    assert f"process {process_id} of 2, coordinator 127.0.0.1:" in lines[0]
    assert not os.listdir(tmp_path)  # stopped before anything was written
