"""One device mesh for every topology: data parallel, optionally FSDP over the same axis.

The mesh has a single axis, `data`, over all devices of all processes. Batches are split along
it. With FSDP, parameters and optimiser state are split along it too (each array on its largest
axis that the device count divides; others stay replicated) and XLA inserts the all-gathers and
reduce-scatters. The same code runs on one CPU, one GPU, a TPU slice or several hosts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named `data` over `devices` (default: all devices of all processes).

    Axis types are Auto: Linen's logical constraints assert under Explicit axes.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def traced_under(mesh: Mesh, fn: Callable) -> Callable:
    """`fn` traced with `mesh` in context (inside jit too): ops that XLA cannot split, TC's
    Pallas kernels, split the batch themselves over it (`per_device`)."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced


def per_device(fn: Callable, *args: Any, whole: tuple[int, ...] = ()) -> Any:
    """`fn(*args)`, or with a mesh of several devices in context, `fn` on each device's share of
    the batch (the leading axis of every argument but those at the positions `whole`, passed
    whole; None stays None): for kernels XLA cannot partition (Mosaic)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(*args)
    batch = PartitionSpec(mesh.axis_names)
    specs = tuple(
        None if a is None else PartitionSpec() if i in whole else batch for i, a in enumerate(args)
    )
    run = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=batch, check_vma=False)
    return run(*args)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = 0) -> PartitionSpec:
    """Split the largest axis that `num_shards` divides; replicate small or indivisible arrays.

    A function of the shape only, so the Adam moments of a parameter get its sharding.
    """
    if num_shards == 1 or int(np.prod(shape, dtype=np.int64)) < max(min_size, 1):
        return PartitionSpec()
    candidates = [(size, i) for i, size in enumerate(shape) if size % num_shards == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    return PartitionSpec(*([None] * axis + [DATA_AXIS]))


def state_shardings(tree: Any, mesh: Mesh, fsdp: bool, min_size: int = 0) -> Any:
    """NamedSharding for every leaf (arrays or ShapeDtypeStructs) of a params / state tree."""
    if not fsdp:
        return jax.tree.map(lambda _: replicated(mesh), tree)
    n = mesh.shape[DATA_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, n, min_size)), tree)


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Split `batch_axis` over the data axis (1 for [micro-batches, batch, ...] step batches)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis + [DATA_AXIS])))


def put_replicated_value(tree: Any, shardings: Any) -> Any:
    """Place host values that every process holds in full (e.g. loaded weights) on the mesh."""

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)


def put_process_batch(local: Any, sharding: NamedSharding) -> Any:
    """Assemble the global batch from each process's own rows along the sharded axis (the
    global shape follows from the processes the sharding spans)."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local
    )
