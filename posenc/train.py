"""Train short, test long: one run from a config to ``results.json``.

Everything is derived from ``config.seed`` through one rng tree (:mod:`posenc.seeds`):
``fold_in(key, step)`` for step ``step`` (so a resumed run sees the same data,
positions and dropout as an uninterrupted one) and ``fold_in(eval_key, length)``
for evaluation. No numpy or Python randomness touches training.

The whole step — sampling the batch on the device, forward, backward, optax
update — is one jitted program with the state donated (one per bucket of training lengths
with ``train.num_buckets > 1``). Evaluation compiles one program per length bucket.

:func:`train_and_evaluate` is the run, one named step after another. This module holds the
training state, the optimizer, the step and the loop; the other steps live in the room of
their job:

* :mod:`posenc.setup`: the config validated into the run's shapes (``setup``, ``Setup``,
  ``config_hash``, ``check_workdir``);
* :mod:`posenc.seeds`: the rng tree and several seeds in one program (``root_keys``,
  ``seed_loop``, ``seeded``, ``data_mesh``);
* :mod:`posenc.checkpoints`: the checkpoint manager, resuming with a fallback, warm starts;
* :mod:`posenc.evaluation`: the length sweep (``evaluate``, its programs, passes, caches,
  ``encoding_report``);
* :mod:`posenc.results`: ``results.json``, plots and ``DONE``;
* :mod:`posenc.errors`: ``TrainingDiverged`` and the one-line message of a failed program.

The names this module held before it was split stay reachable as ``posenc.train.<name>``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from posenc import checkpoints
from posenc import criterion as criterion_lib
from posenc import data as data_lib
from posenc import encodings, parallel, positions as positions_lib, reporting
from posenc import results as results_lib
from posenc.checkpoints import checkpoint_manager, restore_latest, warm_start
from posenc.errors import ConfigError, TrainingDiverged, runtime_error_message
from posenc.evaluation import encoding_report, evaluate
from posenc.seeds import data_mesh, evaluation_key, root_keys, seed_by_seed, seed_loop, seeded
from posenc.setup import Setup, check_workdir, diagnostics, setup

# Reachable as posenc.train.<name>, where code and tests found them before the split.
from posenc.checkpoints import check_checkpoint_fits, load_params  # noqa: F401
from posenc.errors import SchemeRuntimeError  # noqa: F401
from posenc.evaluation import (EVAL_PASS_TOKENS, EvalProgram, eval_cache,  # noqa: F401
                               eval_micro_batch, evaluation_programs, over_micro_batches)
from posenc.model import Transformer  # noqa: F401
from posenc.results import summarize  # noqa: F401
from posenc.seeds import SEED_LOOPS  # noqa: F401
from posenc.setup import _config_diff, config_hash  # noqa: F401


# ----------------------------------------------------------------------------- the state


def learning_rate(config: ml_collections.ConfigDict) -> optax.ScalarOrSchedule:
  """``config.train``'s learning rate: a float, or an optax schedule of the step."""
  t = config.train
  if t.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, max(t.warmup_steps, 1),
                                            max(t.steps, t.warmup_steps + 1), t.learning_rate * 0.01)
  elif t.schedule == "rsqrt":
    # linear warm-up, then lr * sqrt(warmup / step): decays without knowing the run's length,
    # so a seed that stops at the criterion had the schedule it would have had under any cap
    w = max(t.warmup_steps, 1)
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, t.learning_rate, w),
         lambda n: t.learning_rate * jnp.sqrt(w / jnp.maximum(n + w, w))], [w])
  elif t.warmup_steps:
    lr = optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
  else:
    lr = t.learning_rate
  return lr


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  t = config.train
  lr = learning_rate(config)
  parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip else []
  parts.append(optax.adamw(lr, weight_decay=t.weight_decay) if t.weight_decay else optax.adam(lr))
  return optax.chain(*parts)


def init_state(s: Setup, key: jax.Array) -> dict:
  model = s.model(s.train_bound())
  length = s.train_padded
  variables = model.init(key, jnp.zeros((1, length), jnp.int32), jnp.zeros((1, length), jnp.int32),
                         jnp.ones((1, length), bool), train=False)
  params = variables["params"]
  return {"params": params, "opt_state": make_optimizer(s.config).init(params),
          "step": jnp.zeros((), jnp.int32)}


def initial_state(s: Setup, key: jax.Array) -> dict:
  """:func:`init_state` of every seed (``key``: ``root_keys``' ``"init"``). A scheme failing here
  (pure compute: nothing is written yet) is refused as a ConfigError naming the scheme."""
  config = s.config
  try:
    return seed_by_seed(lambda k: init_state(s, k), config.num_seeds, seed_loop(config))(key)
  except Exception as e:  # noqa: BLE001 — only a compiled program's runtime failure is translated
    msg = runtime_error_message(e)
    if msg is None:
      raise
    raise ConfigError("config.encoding", f"the {config.encoding.name} scheme failed while "
                      f"initialising the model: {msg}") from None


def resume(s: Setup, state: dict, found: checkpoints.Start, log: Callable[[str], None]
           ) -> tuple[dict, int, ocp.CheckpointManager]:
  """``(state, start step, checkpoint manager)``: the workdir's newest readable checkpoint
  (:func:`posenc.checkpoints.restore_latest`), else the warm-start parameters of ``found`` with
  a fresh optimizer state, else ``state`` as initialised (step 0)."""
  config = s.config
  mngr = found.manager or checkpoint_manager(s)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  restored, start = restore_latest(mngr, abstract)
  if restored is not None:
    state = restored
    log(f"resumed from checkpoint at step {start}")
  elif found.source is not None:
    params, copied, fresh = warm_start(state["params"], found.source, config.init.from_workdir)
    opt_init = seed_by_seed(make_optimizer(config).init, config.num_seeds, seed_loop(config))
    state = {**state, "params": params, "opt_state": opt_init(params)}
    log(f"warm start: {len(copied)} parameter arrays from {config.init.from_workdir} "
        f"(step {found.source_step}); {len(fresh)} fresh" + (f": {', '.join(fresh[:6])}" if fresh else ""))
  return state, start, mngr


# ----------------------------------------------------------------------------- the step


def step_keys(key: jax.Array, step) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The keys of training step ``step`` (0-based): length, data (examples and positions),
  dropout. Also what :func:`length_schedule` evaluates on the host."""
  k_len, k_data, k_drop = jax.random.split(jax.random.fold_in(key, step), 3)
  return k_len, k_data, k_drop


def length_key(config: ml_collections.ConfigDict, key: jax.Array) -> jax.Array:
  """The key whose :func:`step_keys` draw each step's length: the training key ``key`` (per
  seed), or with ``train.length_seed = s >= 0`` seed s's training key, one for every seed."""
  shared = config.train.get("length_seed", -1)
  return key if shared < 0 else root_keys(shared)["train"]


def length_index(k_len: jax.Array, num_lengths: int) -> jax.Array:
  """Which training length a step draws (uniform over ``setup.train_lengths``)."""
  return jax.random.randint(k_len, (), 0, num_lengths)


_SCHEDULE_CHUNK = 1 << 14


def length_schedule(key, start: int, stop: int, num_lengths: int) -> np.ndarray:
  """int32 ``[stop - start]`` (``[stop - start, S]`` for a key per seed ``[S, 2]``): the index
  into ``setup.train_lengths`` that steps ``start..stop-1`` draw, computed on the host CPU
  from the run's training key: exactly the draw the one-program step makes on its device
  (the same :func:`step_keys` and :func:`length_index`, in integer arithmetic), so the
  training loop picks each step's bucket program without waiting for the device."""
  cpu = jax.devices("cpu")[0]
  key = jax.device_put(np.asarray(jax.device_get(key)), cpu)
  per_seed = key.ndim > 1

  @jax.jit
  def chunk(key, first):
    steps = first + jnp.arange(_SCHEDULE_CHUNK, dtype=jnp.int32)
    one = lambda k: jax.vmap(lambda t: length_index(step_keys(k, t)[0], num_lengths))(steps)
    return jax.vmap(one, out_axes=1)(key) if per_seed else one(key)

  out = []
  for first in range(start, stop, _SCHEDULE_CHUNK):
    got = chunk(key, jax.device_put(np.int32(first), cpu))
    out.append(np.asarray(got)[:stop - first])
  shape = (0, key.shape[0]) if per_seed else (0,)
  return np.concatenate(out).astype(np.int32) if out else np.zeros(shape, np.int32)


def compile_programs(lowerings: list[Callable[[], Any]]) -> list:
  """Lowers and compiles programs side by side, one thread per core; ``lowerings`` are
  callables that return a ``jax.stages.Lowered`` (e.g. ``lambda: fn.lower(*args)``).

  XLA compiles outside the GIL and mostly on one thread per program, so on two cores two
  programs compile at once, and one program's tracing (Python) overlaps another's
  compilation. A ``jax.jit`` function whose lowering was compiled here finds the program
  in its cache. Returns the ``jax.stages.Compiled`` programs in order."""
  if len(lowerings) <= 1:
    return [lower().compile() for lower in lowerings]
  import concurrent.futures  # noqa: PLC0415
  workers = min(len(lowerings), parallel.available_cores())
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(lambda lower: lower().compile(), lowerings))


def make_train_step(s: Setup, bucket: int | None = None) -> Callable:
  """A training step, not yet jitted: sample, forward, backward, update.

  ``bucket=None``: ``step(state, key) -> (state, metrics)``, the one program of
  ``num_buckets = 1``: it draws the step's length on the device and pads to the longest
  training length. ``bucket=b`` (an index into ``s.train_buckets()``):
  ``step(state, key, index) -> (state, metrics)`` pads to bucket ``b``'s length, and
  ``index`` (into ``s.train_lengths``; a length of bucket ``b``, or of an earlier bucket
  when seeds share the program) is the draw the one program would make, which the host
  knows ahead (:func:`length_schedule`). Examples, positions and the rest of the rng tree
  are the one program's for the same step and length.
  """
  model = s.model(s.train_bound())
  tx = make_optimizer(s.config)
  sampler = positions_lib.make(s.config.positions, train=True)
  n = len(s.train_lengths)
  if bucket is None:
    lo, lengths, padded = 0, s.train_lengths, s.train_padded
  else:
    plan = s.train_buckets()
    first = s.train_lengths.index(plan[bucket][0][0])
    hi = first + len(plan[bucket][0])
    # Seeds share one program, and another seed's length may come from an earlier bucket
    # (unless they share their draws, train.length_seed).
    own_draws = s.config.num_seeds > 1 and s.config.train.get("length_seed", -1) < 0
    lo = 0 if own_draws else first
    lengths, padded = s.train_lengths[lo:hi], plan[bucket][1]
  batch_fn = data_lib.make_batch_fn(
      s.task, sampler, batch_size=s.config.train.batch_size, lengths=lengths,
      padded_length=padded, causal=s.causal, sample_max=max(s.train_lengths))

  mesh = data_mesh(s.config)
  batch_size = s.config.train.batch_size
  shared_key = length_key(s.config, None)  # None: each seed draws its own lengths

  def step_fn(state, key, index=None):
    k_len, k_data, k_drop = step_keys(key, state["step"])
    if index is None:
      if shared_key is not None:  # every seed draws the length of seed train.length_seed
        k_len = step_keys(shared_key, state["step"])[0]
      index = length_index(k_len, n)
    batch = batch_fn(k_data, index - lo)
    batch = parallel.shard_batch(batch, mesh, batch_size)  # data parallel over all devices

    def loss_fn(params):
      # "diagnostics": scalars a scheme reports instead of checking them mid-step (FLOATER's
      # solver outcome and step count); they join the metrics.
      logits, diag = model.apply({"params": params}, batch["tokens"], batch["positions"],
                                 batch["valid"], train=True, rngs={"dropout": k_drop},
                                 mutable=["diagnostics"])
      loss, metrics = data_lib.loss_and_accuracy(logits, batch)
      return loss, {**metrics, **diagnostics(diag)}

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["length"] = batch["length"].astype(jnp.float32)
    new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
           "step": state["step"] + 1}
    return new, metrics

  if bucket is None:
    return lambda state, key: step_fn(state, key)
  return step_fn



@dataclasses.dataclass
class StepPrograms:
  """A run's jitted training programs, from its start step on.

  ``buckets`` maps a bucket of training lengths (an index into ``Setup.train_buckets()``) to
  its program and ``schedule`` holds each step's length index (:func:`length_schedule`); with
  one program, which draws every step's length itself, they are empty and None.
  """

  # run(state, key, step[, active]) -> (state, metrics): the program of 0-based step `step`;
  # with `skips`, `active` ([S] bools, on the device) says which seeds the step trains
  run: Callable
  buckets: dict[int, Callable]
  schedule: np.ndarray | None
  padded: list[int]  # the padded length of each program of `buckets`, in order
  chosen: str = ""  # with train.num_buckets = 0: what the cost model projected for the choice
  skips: bool = False  # the programs take `active` (several seeds that stop at a criterion)

  def compile(self, state: dict, key: jax.Array, active=None) -> None:
    """Compiles every bucket's program before the first step (side by side)."""
    if self.buckets:
      extra = (active,) if self.skips else ()
      compile_programs([lambda fn=fn: fn.lower(state, key, *extra, self.schedule[0])
                        for fn in self.buckets.values()])

  def compiled_line(self, compile_s: float) -> str:
    if self.buckets:
      pads = ", ".join(str(p) for p in self.padded)
      n = len(self.buckets)
      return (f"compiled {n} training program{'s' if n > 1 else ''} (one per bucket of lengths, "
              f"padded to {pads}) in {compile_s:.1f}s{self.chosen}")
    return f"compiled the training step in {compile_s:.1f}s"


def skippable(step: Callable) -> Callable:
  """``step(state, key, *rest)`` as ``fn(state, key, active, *rest)``: with ``active`` false
  the step does nothing (the state comes back as it was, the metrics are zeros).

  For several seeds that stop at a criterion (:func:`step_programs` with ``skip``): a seed that
  has learned keeps its state from then on, so its steps are not computed. Inside a ``lax.map``
  (the seed loop on a CPU) the branch is not taken at all; vmapped seeds compute both branches
  and select. The taken branch is the step itself, operation for operation: a seed still
  training gets the bits it gets without the branch (tests/test_criterion.py)."""
  def fn(state, key, active, *rest):
    train = lambda: step(state, key, *rest)
    metrics = jax.eval_shape(train)[1]
    rest_of_it = lambda: (state, jax.tree_util.tree_map(
        lambda m: jnp.zeros(m.shape, m.dtype), metrics))
    return jax.lax.cond(active, train, rest_of_it)
  return fn


def step_programs(s: Setup, key: jax.Array, start: int, skip: bool = False) -> StepPrograms:
  """The training programs of steps ``start..train.steps-1`` (``key``: the training key),
  jitted with the state donated and over the run's seeds; not yet compiled. ``skip`` (several
  seeds): each program also takes which seeds to train (:func:`skippable`)."""
  config = s.config
  S = config.num_seeds
  skip = skip and S > 1
  mesh = data_mesh(config)
  rep = parallel.replicated(mesh)
  wrap = skippable if skip else (lambda fn: fn)
  jit_step = lambda fn: jax.jit(seeded(wrap(fn), S, seed_loop(config)), donate_argnums=0,
                                out_shardings=(rep, rep) if mesh.size > 1 else None)
  plan = s.train_buckets()
  if len(plan) == 1 and config.train.get("num_buckets", 1) == 1:
    # one program padded to s.train_padded; it draws each step's length itself
    one = jit_step(make_train_step(s))
    return StepPrograms(lambda state, key, step, *active: one(state, key, *active), {}, None, [],
                        skips=skip)
  # a program per bucket of lengths (padded to the bucket's longest sequence), picked by the
  # host from the length schedule
  schedule = length_schedule(length_key(config, key), start, config.train.steps,
                             len(s.train_lengths))
  if S > 1 and schedule.ndim == 1:  # shared draws: every seed's index is the same
    schedule = np.repeat(schedule[:, None], S, axis=1)
  bucket_of = np.repeat(np.arange(len(plan)), [len(g) for g, _ in plan])[schedule]
  step_bucket = bucket_of if S == 1 else bucket_of.max(axis=1, initial=0)
  bucket_fns = {int(b): jit_step(make_train_step(s, int(b))) for b in np.unique(step_bucket)}
  run = lambda state, key, step, *active: bucket_fns[step_bucket[step - start]](
      state, key, *active, schedule[step - start])
  chosen = ""
  if not config.train.get("num_buckets", 1):
    from posenc.setup import projected_training_s  # noqa: PLC0415
    train_s, compile_s = projected_training_s(config, plan, s.train_lengths)
    chosen = (f"; chosen from the run's length (train.num_buckets=0): the cost model projects "
              f"one seed's {train_s:.0f}s of training to the cap and {compile_s:.0f}s of compiling, "
              f"{100 * compile_s / (train_s + compile_s):.0f}%")
  return StepPrograms(run, bucket_fns, schedule, [plan[b][1] for b in bucket_fns], chosen,
                      skips=skip)


# ----------------------------------------------------------------------------- the loop


def log_parallelism(s: Setup, log: Callable[[str], None]) -> None:
  """Says how the run uses the devices: data parallelism, and how its seeds share a program."""
  config = s.config
  S = config.num_seeds
  mesh = data_mesh(config)
  if jax.process_count() > 1:
    log(f"data parallel: {jax.process_count()} processes, {jax.device_count()} devices in one mesh")
  elif mesh.size > 1:
    log(f"data parallel over {mesh.size} devices")
  if S > 1:
    how = seed_loop(config)
    if how.startswith("shard"):
      n = parallel.seed_devices(S)
      inner = "" if S == n else ", mapped" if jax.default_backend() == "cpu" else ", vmapped"
      log(f"seeds: {S} over {n} {jax.default_backend()} devices ({S // n} each{inner})")
    else:
      cores = parallel.available_cores()
      hint = ""
      if (how == "map" and jax.default_backend() == "cpu" and cores > 1
          and parallel.largest_divisor(S, cores) == 1):
        which = "an even num_seeds" if cores == 2 else f"a num_seeds with a divisor in 2..{cores}"
        hint = (f"; {which} would run side by side on this CPU's {cores} cores "
                "(experiments.run splits the CPU into one device per core)")
      log(f"seeds: {S} in one program ({how}){hint}")


def check_diverged(s: Setup, stacked: dict, step: int, kept: str,
                   trained: np.ndarray | None = None) -> None:
  """Raises TrainingDiverged when a loss or gradient norm of the steps up to ``step`` (their
  metrics ``stacked``, ``[steps]`` or ``[steps, seeds]``) is NaN/Inf, with the scheme's own
  explanation when it has one. ``trained`` (``[steps, seeds]``): the seeds each step trained;
  the others are not looked at."""
  config = s.config
  bad_at = ~(np.isfinite(stacked["loss"]) & np.isfinite(stacked["grad_norm"]))
  if trained is not None:
    bad_at &= trained
  if bad_at.any():
    bad_at = bad_at.reshape(len(bad_at), -1).any(axis=1)  # per step, over the seeds
    bad = step - len(bad_at) + int(np.argmax(bad_at)) + 1
    cause = encodings.get(config.encoding.name).explain_failure(
        stacked, config.encoding, s.train_bound())
    if cause is not None:
      raise TrainingDiverged(f"training failed at step {bad}: {cause}; {kept}")
    raise TrainingDiverged(
        f"training diverged at step {bad}: loss or gradient norm is NaN/Inf; likely cause: "
        f"learning rate too high (config.train.learning_rate={config.train.learning_rate}) "
        f"or an unstable scheme setting; {kept}")


def train_steps(s: Setup, state: dict, key: jax.Array, start: int, mngr: ocp.CheckpointManager,
                log: Callable[[str], None], eval_key: jax.Array | None = None
                ) -> tuple[dict, dict, "criterion_lib.Tracker | None"]:
  """Steps ``start+1..train.steps`` (``key``: the training key): metrics every ``log_every``
  steps (``metrics.jsonl``, the progress line), a checkpoint every ``checkpoint.every_steps``
  and at the end. Step t+1 is dispatched before step t's metrics are read. With
  ``config.criterion.every > 0`` (``eval_key``: the evaluation key), the criterion's check
  runs after every ``every``-th step and the run stops once every seed has learned
  (:mod:`posenc.criterion`). Returns the state, ``{"compile_s", "train_s"}`` and the
  criterion's tracker (None without one); raises TrainingDiverged (keeping the last
  checkpoint)."""
  config = s.config
  total = config.train.steps
  S = config.num_seeds
  mesh = data_mesh(config)
  if mesh.size > 1:  # parameters and optimizer state replicated; the batch is split in the step
    # before anything reads the state: a state restored from a checkpoint sits on one device,
    # and the seeds frozen from it below (a run resumed at its criterion stop) are what the
    # evaluation reads
    state = jax.device_put(state, parallel.replicated(mesh))
  tracker = check = None
  frozen: dict[int, Any] = {}  # seed -> its state at the step it learned (several seeds)
  if criterion_lib.enabled(config):
    tracker = criterion_lib.Tracker(s, start, write=jax.process_index() == 0)
    check = criterion_lib.make_check(s, eval_key)
  every = config.criterion.every if tracker else 0
  stop_early = tracker is not None and config.criterion.stop
  # Several seeds that stop at the criterion: a seed that learned keeps its state from then on
  # (frozen: saved, evaluated and reported as its single run stops), and the programs skip
  # its steps. Without `stop` every seed trains to the cap, as its single run does.
  skip = stop_early and S > 1
  if skip:  # seeds that learned before the checkpoint are frozen in it
    frozen = {k: criterion_lib.take_seed(state, k)
              for k, t in enumerate(tracker.learned_at) if t is not None}

  def run_check(state, step):
    scores = check.scores(state["params"])
    new = tracker.record(step, scores)
    for k in new:
      if skip:
        frozen[k] = criterion_lib.take_seed(state, k)
      who = f"seed {config.seed + k} " if S > 1 else ""
      log(f"criterion: {who}learned at step {step} ({check.metric} {scores[k]:.3f} >= "
          f"{config.criterion.threshold} at lengths {check.lengths[0]}–{check.lengths[-1]})")
    shown = ", ".join(f"{v:.3f}" for v in scores)
    return shown

  if tracker and start > 0 and start % every == 0:
    # the check at the resume step (the run may have stopped there, or ended at the cap)
    run_check(state, start)
  learned_stop = stop_early and tracker.all_learned
  writer = reporting.MetricsWriter(s.workdir, enabled=jax.process_index() == 0, resume_step=start)
  # with several seeds, each seed's own curve too (seeds/seed<k>/metrics.jsonl)
  seed_writers = [reporting.MetricsWriter(os.path.join(s.workdir, "seeds", f"seed{config.seed + k}"),
                                          enabled=jax.process_index() == 0, resume_step=start,
                                          tensorboard=False)
                  for k in range(config.num_seeds if config.num_seeds > 1 else 0)]
  progress = reporting.Progress(total, start)
  programs = step_programs(s, key, start, skip=skip)
  # which seeds the programs train ([S] on the device; placed anew when a seed stops)
  training = lambda: np.array([k not in frozen for k in range(S)])
  active = training()
  active_arg = lambda: (jax.device_put(active),) if skip else ()
  on_device = active_arg()
  pending_active: list[np.ndarray] = []
  log_parallelism(s, log)
  pending: list[dict] = []
  t_start = time.perf_counter()
  compile_s = None
  last_good = start
  step = start
  synced = dispatched = start  # last step whose metrics reached the host; last step launched
  kept = lambda: (f"the last good checkpoint (step {last_good}) is kept" if last_good
                  else "no checkpoint had been written yet")
  try:
    programs.compile(state, key, *on_device)  # every program the run will use, first
    while step < total and not learned_stop:
      dispatched = step + 1
      state, metrics = programs.run(state, key, step, *on_device)
      step += 1
      pending.append(metrics)
      pending_active.append(active)
      if compile_s is None:
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t_start
        progress.started(step)
        log(programs.compiled_line(compile_s))
      checked = None
      if every and step % every == 0:
        checked = run_check(state, step)
        learned_stop = stop_early and tracker.all_learned
        if skip and len(frozen) < S and not np.array_equal(training(), active):
          active = training()
          on_device = active_arg()
      save_now = step % config.checkpoint.every_steps == 0 or step == total or learned_stop
      if step % config.train.log_every == 0 or save_now or checked is not None:
        stacked = jax.device_get(jax.tree_util.tree_map(lambda *x: jnp.stack(x), *pending))
        # [steps, seeds]: the seeds each step trained (a skipped seed's metrics are zeros)
        trained = np.stack(pending_active)
        pending, pending_active = [], []
        synced = step
        check_diverged(s, stacked, step, kept(), trained if skip else None)
        if skip:  # the means below are over the seeds each step trained
          stacked = {name: (np.where(trained, v, np.nan) if np.ndim(v) == 2 else v)
                     for name, v in stacked.items()}
        summary = {k: float(np.nanmean(v)) for k, v in stacked.items() if k != "length"}
        summary["mean_length"] = float(np.nanmean(stacked["length"]))
        if checked is not None:
          summary["criterion"] = tracker.rows[-1]["scores"]
        writer.write(step, summary)
        for k, w in enumerate(seed_writers):  # metrics are [steps, seeds]
          if not trained[:, k].any():
            continue  # the seed had learned: no step trained it since the last row
          row = {name: float(np.nanmean(np.asarray(v)[:, k])) for name, v in stacked.items()
                 if name != "length" and np.ndim(v) == 2}
          if checked is not None:
            row["criterion"] = tracker.rows[-1]["scores"][k]
          w.write(step, row)
        if step % config.train.log_every == 0 or step == total or learned_stop:
          shown = ("loss", "accuracy", "grad_norm", "ode_steps")  # ode_steps: FLOATER's solver
          line = {k: summary[k] for k in shown if k in summary}
          progress.line(step, line, extra=f"in-range check {checked}" if checked else "")
        if save_now:
          saved = criterion_lib.put_seeds(state, frozen)
          mngr.save(step, args=ocp.args.StandardSave(saved), force=(step == total or learned_stop))
          last_good = step
    mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001 — only a compiled step's runtime failure is translated
    # Steps run asynchronously: an error raised inside one (e.g. FLOATER's ODE solver giving up)
    # surfaces at a later dispatch or sync, so the failing step is known to within a range.
    msg = runtime_error_message(e)
    if msg is None:
      raise
    where = (f"at step {dispatched}" if dispatched <= synced + 1
             else f"between steps {synced + 1} and {dispatched}")
    raise TrainingDiverged(f"training failed {where}: {msg}; {kept()}") from None
  finally:
    writer.close()
    for w in seed_writers:
      w.close()
  state = criterion_lib.put_seeds(state, frozen)
  if tracker is not None:
    learned = sum(t is not None for t in tracker.learned_at)
    log(f"criterion: {learned} of {S} seed{'s' if S > 1 else ''} learned in range"
        + (f"; stopped at step {step}" if step < total else f" by step {step} (the cap)"))
  timing = {"compile_s": compile_s, "train_s": time.perf_counter() - t_start,
            "train_programs": len(programs.buckets) or 1, "steps": step}
  if S > 1:  # how the seeds shared the program (posenc.seeds.seed_loop), for the record
    timing["seed_loop"] = seed_loop(s.config)
  return state, timing, tracker


# ----------------------------------------------------------------------------- the run


def open_workdir(s: Setup, log: Callable[[str], None]) -> None:
  """The run's first write: the workdir and its ``config.json`` (process 0)."""
  config, wd = s.config, s.workdir
  try:
    os.makedirs(wd, exist_ok=True)
    if jax.process_index() == 0:
      reporting.atomic_write_json(os.path.join(wd, "config.json"), config.to_dict())
  except OSError as e:  # e.g. a read-only file system, where os.access cannot tell (root)
    raise ConfigError("--workdir", f"cannot write {wd!r} ({e.strerror or e}); "
                      "choose a writable --workdir") from None
  log(f"run: {config.encoding.name} on {config.task.name} ({config.preset} preset, seed {config.seed}) "
      f"-> {wd}")


def evaluate_trained(s: Setup, params, key: jax.Array, log: Callable[[str], None]
                     ) -> tuple[Any, list | None, dict, float]:
  """The final evaluation (``key``: the evaluation key): ``(per_length, greedy, extra, eval_s)``.

  ``per_length`` is :func:`posenc.evaluation.evaluate`'s (per seed with several seeds), or
  the task's own protocol's (language modelling), whose other numbers are ``extra``;
  ``greedy``: ``[exact match, token accuracy]``, each a list of per-seed ``{length: value}``,
  when ``eval.greedy`` decodes. A program failing at run time raises TrainingDiverged.
  """
  config = s.config
  S = config.num_seeds
  total = config.train.steps
  n = len(s.eval_buckets)
  log(f"evaluating lengths {config.eval.min_length}–{config.eval.max_length} "
      f"in {n} bucket{'s' if n > 1 else ''}")
  t_eval = time.perf_counter()
  greedy = None
  try:
    extra = {}
    if hasattr(s.task, "evaluate"):  # a task with its own protocol (language modelling)
      extra = dict(s.task.evaluate(s, params, key, log=log))
      per_length = extra.pop("per_length")
    elif config.eval.greedy:
      per_length, *greedy = evaluate(s, params, key, log=log, num_seeds=S, greedy=True)
      greedy = [g if S > 1 else [g] for g in greedy]  # [metric][seed] -> per-length dict
    else:
      per_length = evaluate(s, params, key, log=log, num_seeds=S)
  except Exception as e:  # noqa: BLE001 — a scheme failing at a longer length (e.g. its solver)
    msg = runtime_error_message(e)
    if msg is None:
      raise
    kept_eval = (f"training finished and its checkpoint (step {total}) is kept: re-evaluate it in "
                 f"a new --workdir with --config.init.from_workdir={s.workdir} --config.train.steps=0 "
                 "and the changed setting") if total else "no training step was run"
    raise TrainingDiverged(f"evaluation failed: {msg}; {kept_eval}") from None
  return per_length, greedy, extra, time.perf_counter() - t_eval


def report_encoding(s: Setup, params, log: Callable[[str], None]) -> list[dict]:
  """Each seed's :func:`posenc.evaluation.encoding_report` (e.g. FLOATER's trajectory growth),
  logged."""
  config = s.config
  S = config.num_seeds
  reports = encoding_report(s, params, S)
  for k, r in enumerate(reports if reports[0] else []):
    log(f"{config.encoding.name}" + (f" (seed {config.seed + k})" if S > 1 else "") + ": "
        + ", ".join(f"{name} {value:.4g}" for name, value in r.items()))
  return reports


def train_and_evaluate(config: ml_collections.ConfigDict, *, log: Callable[[str], None] = print) -> dict:
  """Trains (resuming from the workdir's latest checkpoint), evaluates, writes results."""
  s = setup(config)
  check_workdir(s)
  done = results_lib.finished(s)
  if done is not None:  # the same run finished: nothing to redo
    log(f"{s.workdir}: already complete (DONE exists); results in {results_lib.results_path(s)}")
    return done
  # Everything that can refuse this run is checked before anything is written.
  keys = root_keys(config.seed, config.num_seeds)
  keys["eval"] = evaluation_key(config, keys["eval"])
  state = initial_state(s, keys["init"])
  found = checkpoints.find_start(s, state["params"])
  open_workdir(s, log)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state["params"]))
  state, start, mngr = resume(s, state, found, log)
  per_model = n_params // config.num_seeds
  log(f"model: {config.model.num_layers} layers, d={config.model.d_model}, {per_model:,} parameters"
      + (f" per seed ({config.num_seeds} seeds)" if config.num_seeds > 1 else "")
      + (f", {config.model.dtype} activations" if config.model.dtype != "float32" else "") + "; "
      f"train lengths {s.train_lengths[0]}–{s.train_lengths[-1]} padded to {s.train_padded}")

  state, timing, tracker = train_steps(s, state, keys["train"], start, mngr, log, keys["eval"])
  trained = timing.pop("steps")
  per_length, greedy, extra, timing["eval_s"] = evaluate_trained(s, state["params"], keys["eval"], log)
  reports = report_encoding(s, state["params"], log)
  results, seed_results = results_lib.assemble(s, per_length, greedy, extra, reports,
                                               n_params=n_params, timing=timing, tracker=tracker,
                                               steps_trained=trained)
  if jax.process_index() == 0:
    results_lib.write(s, results, seed_results)
  results_lib.log_summary(s, results, log)
  return results
