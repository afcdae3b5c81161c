"""Scale: data parallelism over a ``('data',)`` mesh, seeds in one program, multi-host start-up.

* One process, many devices: the batch is sharded over all local devices along its batch
  axis; parameters and optimizer state are replicated; XLA's SPMD partitioner inserts the
  gradient all-reduce. With one device this is a no-op.
* Many hosts: :func:`maybe_initialize_distributed` calls ``jax.distributed.initialize()``
  when asked (flag) or when cluster variables say so; the same mesh then spans hosts and
  only process 0 writes metrics and results.
* Many seeds: ``config.num_seeds = S`` runs whole training runs over seeds inside one
  compiled program, vmapped or as a ``lax.map`` loop (``config.seed_loop``; see
  posenc.train.seed_loop).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed(force: bool = False) -> bool:
  """Starts ``jax.distributed`` when ``force`` or a coordinator address is in the environment.

  SLURM and Cloud TPU VMs are detected by ``jax.distributed.initialize()`` itself when it is
  called with no arguments; this only decides whether to call it.
  """
  if not (force or any(os.environ.get(v) for v in _CLUSTER_VARS)):
    return False
  # CPU processes exchange collectives over gloo (accelerators use their own fabric).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  addr = os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("COORDINATOR_ADDRESS")
  if addr and "JAX_NUM_PROCESSES" in os.environ:
    jax.distributed.initialize(coordinator_address=addr,
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()
  return True


def data_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis name ``data``."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh, batch_size: int) -> dict:
  """Constrains every per-example array of ``batch`` to be split over ``data``.

  Works under ``vmap`` over seeds too (the seed axis stays unsharded).
  """
  if mesh.size == 1:
    return batch

  def constrain(x):
    if x.ndim and x.shape[0] == batch_size:
      return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("data")))
    return x

  return jax.tree_util.tree_map(constrain, batch)
