"""Scale: data parallelism over a ``('data',)`` mesh, seeds in one program, multi-host start-up.

* One process, many devices: the batch is sharded over all local devices along its batch
  axis; parameters and optimizer state are replicated; XLA's SPMD partitioner inserts the
  gradient all-reduce. With one device this is a no-op.
* Many hosts: :func:`maybe_initialize_distributed` calls ``jax.distributed.initialize()``
  when asked (flag) or when cluster variables say so; the same mesh then spans hosts and
  only process 0 writes metrics and results.
* Many seeds: ``config.num_seeds = S`` runs whole training runs over seeds inside one
  compiled program, vmapped, as a ``lax.map`` loop, or split over the local devices along a
  ``seed`` mesh axis (``config.seed_loop``; see posenc.seeds.seed_loop). On a CPU host,
  :func:`provide_cpu_devices` (called by ``experiments.run`` before JAX starts) gives XLA one
  CPU device per core, so that the seeds' shares run side by side on separate cores.
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


def one_device_mesh() -> Mesh:
  """A ``data`` mesh of this process's first device: no data parallelism."""
  return Mesh(np.asarray(jax.local_devices()[:1]), ("data",))


SEED_AXIS = "seed"


def largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def seed_devices(num_seeds: int) -> int:
  """How many local devices ``num_seeds`` seeds split over: the largest divisor of
  ``num_seeds`` not above the local device count (every device gets the same share)."""
  return largest_divisor(num_seeds, jax.local_device_count())


def seed_mesh(num_seeds: int) -> Mesh:
  """A 1-D mesh, axis ``seed``, over the first :func:`seed_devices` local devices."""
  return Mesh(np.asarray(jax.local_devices()[:seed_devices(num_seeds)]), (SEED_AXIS,))


def available_cores() -> int:
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def provide_cpu_devices(num_seeds: int) -> int:
  """Before JAX starts: split the CPU into one device per core (up to a divisor of
  ``num_seeds``), so that ``num_seeds`` seeds run on the cores side by side.

  XLA:CPU spreads one small program's operations over cores poorly (the default preset's
  step is 1.2x faster on 2 cores than on 1), while separate devices run their programs
  concurrently. Returns the device count set, or 0 when nothing was changed: one seed, one
  core, a device count already chosen (``JAX_NUM_CPU_DEVICES`` or XLA's
  ``--xla_force_host_platform_device_count``), or JAX already started (then the seeds share
  one device). Only the CPU platform is affected: on an accelerator host the extra CPU
  devices sit unused.
  """
  if num_seeds < 2 or os.environ.get("JAX_NUM_CPU_DEVICES") or (
      "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
    return 0
  n = largest_divisor(num_seeds, available_cores())
  if n < 2 or jax.config.jax_num_cpu_devices not in (-1, 1, None):
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # JAX has already started in this process
    return 0
  patient_cpu_collectives()
  return n


# XLA:CPU aborts the process when one device waits more than 40 s for another at a collective
# (its deadlock guard). Devices that share cores with other work can be starved that long
# without any deadlock: FLOATER's seeds, split over 2 CPU devices on a loaded 2-core machine,
# aborted in their solver loop's all-reduce. posenc raises the guard to an hour.
CPU_COLLECTIVE_TIMEOUT_S = 3600
_CPU_COLLECTIVE_FLAGS = ("xla_cpu_collective_call_terminate_timeout_seconds",
                         "xla_cpu_collective_timeout_seconds")


def patient_cpu_collectives() -> None:
  """Before JAX starts: CPU devices wait up to :data:`CPU_COLLECTIVE_TIMEOUT_S` for each other
  at collectives (and warn after 10 minutes) instead of aborting after 40 s. Settings already in
  ``XLA_FLAGS`` are kept."""
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f"--{name}={CPU_COLLECTIVE_TIMEOUT_S}" for name in _CPU_COLLECTIVE_FLAGS
           if name not in flags]
  if "xla_cpu_collective_call_warn_stuck_timeout_seconds" not in flags:
    extra.append("--xla_cpu_collective_call_warn_stuck_timeout_seconds=600")
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


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
