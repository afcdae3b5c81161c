"""Seeds: the run's rng tree, and how several seeds share one compiled program.

Every random draw of a run descends from :func:`root_keys` of ``config.seed``; run ``k`` of
``config.num_seeds = S`` uses exactly the keys of a single run with seed ``seed + k``.
:func:`seeded` turns a one-seed function into one over a leading seed axis (vmapped, a
``lax.map`` loop, or split over devices, ``config.seed_loop``); :func:`data_mesh` is the mesh
the batch is split over once the seeds have taken their devices. The meshes themselves are
built in :mod:`posenc.parallel`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from posenc import encodings, parallel


def root_keys(seed: int, num_seeds: int = 1) -> dict[str, jax.Array]:
  """The run's rng tree: every random draw descends from one of these.

  With ``num_seeds = S > 1`` each key gets a leading axis of S: run k uses exactly the keys
  of a single run with seed ``seed + k``, so S vmapped runs equal S separate ones.
  """
  if num_seeds > 1:
    per_seed = [root_keys(seed + k) for k in range(num_seeds)]
    return {name: jnp.stack([k[name] for k in per_seed]) for name in per_seed[0]}
  root = jax.random.PRNGKey(seed)
  return dict(zip(("init", "train", "eval"), jax.random.split(root, 3)))


def evaluation_key(config: ml_collections.ConfigDict, run_key: jax.Array) -> jax.Array:
  """The run's evaluation key: ``run_key`` (``root_keys``' ``"eval"``, per seed), or with
  ``config.eval.seed >= 0`` that seed's evaluation key for every seed of the run, so all
  seeds and schemes of a task are scored on the same samples."""
  fixed = config.eval.get("seed", -1)
  if fixed < 0:
    return run_key
  key = root_keys(fixed)["eval"]
  S = config.get("num_seeds", 1)
  return jnp.stack([key] * S) if S > 1 else key


SEED_LOOPS = ("auto", "vmap", "map", "shard")


def seed_loop(config: ml_collections.ConfigDict) -> str:
  """How seeds share one program: ``config.seed_loop``, with ``auto`` chosen by backend.

  ``vmap`` widens every operation by the seed axis: on an accelerator, where one small
  model leaves the device mostly idle, that is what fills it. ``map`` (``lax.map``) runs
  the seeds one after another inside the program: on a CPU the step is already
  compute-bound, vmap's batched small matmuls and layout copies cost more than they
  save (the default preset on 2 cores: 167 ms per 8-seed step vmapped, 116 ms mapped,
  130 ms as 8 separate steps), and ``map`` keeps only the one-dispatch, one-compile gain.
  ``shard`` splits the seeds over the local devices (a ``seed`` mesh axis, no data
  parallelism) and maps (CPU) or vmaps (accelerators) each device's share. On a CPU
  split into one device per core (``posenc.parallel.provide_cpu_devices``) the shares
  run on separate cores at once: 8 seeds of the default preset on 2 cores, 54 ms per
  step against 85 ms mapped on one device.

  ``auto``: ``shard`` on a CPU with more than one device to share the seeds, else ``map``
  on a CPU and ``vmap`` on accelerators (whose devices then split the batch). A scheme that
  cannot run inside ``shard_map`` (``SHARD_MAP = False``: FLOATER) gets ``map`` on a CPU: its
  partitioned form (``shard_spmd``, still available by name) puts a cross-device all-reduce in
  every iteration of the ODE solver's while loop, and XLA's CPU collectives deadlocked there
  once (atlas v2, FLOATER on even_pairs, 6 seeds on 2 devices, another process on the cores:
  both device threads stopped at a rendezvous at step 400 and never resumed).
  """
  how = config.get("seed_loop", "auto")
  seeds = config.get("num_seeds", 1)
  shard_map_ok = getattr(encodings.get(config.encoding.name), "SHARD_MAP", True)
  if how == "auto":
    if jax.default_backend() != "cpu":
      return "vmap"
    shardable = seeds > 1 and jax.process_count() == 1 and parallel.seed_devices(seeds) > 1
    how = "shard" if shardable and shard_map_ok else "map"
  if how == "shard" and not shard_map_ok:
    return "shard_spmd"  # the same split without shard_map (see seeded)
  return how


def seeded(fn: Callable, num_seeds: int, how: str = "vmap") -> Callable:
  """``fn`` over a leading seed axis of every argument when ``num_seeds > 1``.

  ``how`` is ``"vmap"`` (one wide program), ``"map"`` (a ``lax.map`` loop over seeds) or
  ``"shard"`` (seeds split over :func:`posenc.parallel.seed_mesh`, each device's share
  mapped on a CPU and vmapped elsewhere; the results stay split along that axis); all
  give seed k exactly the computation of a single run (see :func:`seed_loop`).
  """
  if num_seeds == 1:
    return fn
  if how == "map":
    return lambda *args: jax.lax.map(lambda a: fn(*a), args)
  if how == "vmap":
    return jax.vmap(fn)
  if how not in ("shard", "shard_spmd"):
    raise ValueError(f"unknown seed loop {how!r}; choose one of {SEED_LOOPS[1:]}")
  mesh = parallel.seed_mesh(num_seeds)
  n = mesh.size
  share = num_seeds // n
  inner = seeded(fn, share, "map" if jax.default_backend() == "cpu" else "vmap")
  tree_map = jax.tree_util.tree_map
  seed_axis = jax.sharding.PartitionSpec(parallel.SEED_AXIS)
  if how == "shard":  # each device runs its share's program: no cross-device work at all
    if share == 1:
      local = lambda *args: tree_map(lambda x: x[None], fn(*tree_map(lambda x: x[0], args)))
    else:
      local = inner
    return jax.shard_map(local, mesh=mesh, in_specs=seed_axis, out_specs=seed_axis,
                         check_vma=False)

  # "shard_spmd": the same split written without shard_map, for schemes whose gradients go
  # through equinox's checkpointed while loops (FLOATER's diffrax solve), which fail inside
  # shard_map's manual axes (diffrax issue #765). [S, ...] -> [devices, share, ...], the
  # first axis vmapped and constrained to the devices, so that XLA partitions it away.
  split = jax.sharding.NamedSharding(mesh, seed_axis)

  def run(*args):
    grouped = tree_map(lambda x: jax.lax.with_sharding_constraint(
        x.reshape(n, *((share,) if share > 1 else ()), *x.shape[1:]), split), args)
    out = jax.vmap(inner)(*grouped)
    return tree_map(lambda x: jax.lax.with_sharding_constraint(x, split).reshape(
        num_seeds, *x.shape[2 if share > 1 else 1:]), out)

  return run


def seed_by_seed(fn: Callable, num_seeds: int, how: str = "vmap") -> Callable:
  """``fn`` over a leading seed axis, as :func:`seeded`, for work done once per run outside any
  compiled program (initialising the model and the optimizer): each seed's call runs on its own,
  op by op, exactly as a single run's does; the results are stacked on the host and placed as
  :func:`seeded`'s ``how`` programs hold them (split over the seed mesh for the shard loops).

  Run op by op, ``seeded`` would compile every operation again for the seed axis (inside an
  eager ``shard_map``, ~40 s of compiling for the smoke model's initialisation on 2 CPU
  devices); seed by seed each operation compiles once, and seed k starts from exactly its single
  run's state, bit for bit.
  """
  if num_seeds == 1:
    return fn
  tree_map = jax.tree_util.tree_map

  def run(*args):
    outs = [jax.device_get(fn(*tree_map(lambda x: x[k], args))) for k in range(num_seeds)]
    stacked = tree_map(lambda *xs: np.stack(xs), *outs)
    if how.startswith("shard"):
      split = jax.sharding.NamedSharding(parallel.seed_mesh(num_seeds),
                                         jax.sharding.PartitionSpec(parallel.SEED_AXIS))
      return jax.device_put(stacked, split)
    return jax.device_put(stacked)

  return run


def data_mesh(config: ml_collections.ConfigDict):
  """The mesh the batch is split over: every device, or one when the seeds take the devices."""
  if config.get("num_seeds", 1) > 1 and seed_loop(config).startswith("shard"):
    return parallel.one_device_mesh()
  return parallel.data_mesh()
