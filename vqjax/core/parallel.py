"""Mesh and sharding helpers: data parallelism as `jax.jit` over a one-axis device mesh.

Parameters and optimizer state are replicated (`P()`), batches are split on `P('data')`.
Host-local numpy batches become global `jax.Array`s, so a `jnp.sum` over the batch inside a
jitted step is a sum over every device and host, with no explicit collectives.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Multi-host start-up; call before any other JAX call. With no arguments JAX finds the
    cluster itself (TPU pods, SLURM, Open MPI, ...); elsewhere (several processes on one
    machine, clusters JAX does not detect) name the coordinator `host:port`, the number of
    processes and this one's index (0 on the coordinator's host)."""
    explicit = dict(coordinator_address=coordinator_address or None, num_processes=num_processes or None,
                    process_id=process_id if process_id >= 0 else None)
    jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
    """A one-axis `('data',)` mesh over `devices` (default: all devices of all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, what: str = "config.data.batch_size") -> None:
    num_devices = mesh.devices.size
    if batch_size % num_devices:
        raise ValueError(
            f"{what} is {batch_size}, which does not split evenly over {num_devices} devices; "
            f"use a multiple of {num_devices}."
        )


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """`tree`, whose values every process holds alike (weights read from a file, a restored
    checkpoint), as arrays replicated over every device of `mesh`. The values go through host
    memory: `jax.device_put` of one process's device arrays onto other hosts' devices is a
    cross-host transfer, which multi-process CPU and GPU runs do not support."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def gather_batch(local: Any) -> np.ndarray:
    """A process's rows of a global batch -> the whole global batch, on every process (in
    process order, as `to_global` lays the rows out)."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def to_global(batch: Any, mesh: jax.sharding.Mesh) -> Any:
    """Host-local numpy batch -> global arrays sharded on the batch axis."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


# XLA:CPU hands convolutions to YNNPACK by default, which runs the 3x3 convolutions of small
# feature maps (and their weight gradients above all) well below XLA's own convolution path
# on a few cores; dots, element-wise fusions and reductions stay with YNNPACK, where they are
# faster. An element-wise fusion may still take in the convolution that feeds it (a bias, a
# residual, an activation's derivative). `python bench/train_step.py --profile=3` shows where
# a step's time goes with and without these options.
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ",".join(
    f"LIBRARY_FUSION_TYPE_{kind}" for kind in ("INDIVIDUAL_DOT", "ELTWISE", "REDUCE"))}


CPU_CONVOLUTIONS = ("ynnpack", "xla")


def step_compiler_options(cpu_convolutions: str = "ynnpack") -> dict[str, str]:
    """The options a model's jits compile with, by `cpu_convolutions` (a config's
    `train.cpu_convolutions`): 'xla' -> `compiler_options()`, 'ynnpack' -> XLA's defaults.
    Measured on 2 cores, 'xla' makes the taming autoencoder's train step at 32x32 faster and
    the VQ-VAE's and 256x256 inference slower (bench/train_step.py, bench/taming_convert.py)."""
    if cpu_convolutions not in CPU_CONVOLUTIONS:
        raise ValueError(f"config.train.cpu_convolutions is {cpu_convolutions!r}; use one of "
                         f"{CPU_CONVOLUTIONS}.")
    return compiler_options() if cpu_convolutions == "xla" else {}


@functools.cache
def compiler_options(platform: str | None = None) -> dict[str, str]:
    """XLA options for compiling convolutional steps on `platform` (default: JAX's default
    backend): `_CPU_COMPILER_OPTIONS` on a CPU whose XLA knows them, else none."""
    platform = platform or jax.default_backend()
    if platform != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_COMPILER_OPTIONS).lower(
            np.zeros((), np.float32)).compile()
    except Exception:  # pylint: disable=broad-except  # an XLA without the option: its defaults
        return {}
    return dict(_CPU_COMPILER_OPTIONS)
