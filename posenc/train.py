"""Train short, test long: one run from a config to ``results.json``.

Everything is derived from ``config.seed`` through one rng tree:
``fold_in(key, step)`` for step ``step`` (so a resumed run sees the same data,
positions and dropout as an uninterrupted one) and ``fold_in(eval_key, length)``
for evaluation. No numpy or Python randomness touches training.

The whole step — sampling the batch on the device, forward, backward, optax
update — is one jitted program with the state donated. Evaluation compiles one
program per length bucket.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from posenc import data as data_lib
from posenc import decoding
from posenc import encodings, parallel, positions as positions_lib, reporting, tasks
from posenc.encodings.base import Dims
from posenc.checkpoints import (check_checkpoint_fits, checkpoint_manager, load_params,  # noqa: F401
                                restore_latest, warm_start)
from posenc.evaluation import (EVAL_PASS_TOKENS, EvalProgram, encoding_report,  # noqa: F401
                               eval_cache, eval_micro_batch, evaluate, evaluation_programs,
                               over_micro_batches)
from posenc.errors import (ConfigError, SchemeRuntimeError, TrainingDiverged,  # noqa: F401
                           runtime_error_message)
from posenc.model import ModelConfig, Transformer
from posenc.seeds import SEED_LOOPS, data_mesh, root_keys, seed_loop, seeded
from posenc.setup import (Setup, _config_diff, check_workdir, config_hash,  # noqa: F401
                          diagnostics, setup)


# ----------------------------------------------------------------------------- training


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  t = config.train
  if t.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, max(t.warmup_steps, 1),
                                            max(t.steps, t.warmup_steps + 1), t.learning_rate * 0.01)
  elif t.warmup_steps:
    lr = optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
  else:
    lr = t.learning_rate
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


def step_keys(key: jax.Array, step) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The keys of training step ``step`` (0-based): length, data (examples and positions),
  dropout. Also what :func:`length_schedule` evaluates on the host."""
  k_len, k_data, k_drop = jax.random.split(jax.random.fold_in(key, step), 3)
  return k_len, k_data, k_drop


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
    # Seeds share one program, and another seed's length may come from an earlier bucket.
    lo = 0 if s.config.num_seeds > 1 else first
    lengths, padded = s.train_lengths[lo:hi], plan[bucket][1]
  batch_fn = data_lib.make_batch_fn(
      s.task, sampler, batch_size=s.config.train.batch_size, lengths=lengths,
      padded_length=padded, causal=s.causal, sample_max=max(s.train_lengths))

  mesh = data_mesh(s.config)
  batch_size = s.config.train.batch_size

  def step_fn(state, key, index=None):
    k_len, k_data, k_drop = step_keys(key, state["step"])
    if index is None:
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


# ----------------------------------------------------------------------------- evaluation


def _nanmean(values) -> float:
  """Mean over the finite values; NaN (without numpy's warning) when there are none."""
  finite = [v for v in values if not math.isnan(v)]
  return float(np.mean(finite)) if finite else float("nan")


def summarize(s: Setup, per_length: dict[int, float]) -> dict:
  lo, hi = s.config.task.train_min_length, s.config.task.train_max_length

  def mean(sel):
    vals = [v for l, v in per_length.items() if sel(l) and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None

  return {"in_range_score": mean(lambda l: lo <= l <= hi),
          "out_of_range_score": mean(lambda l: l > hi)}


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config: ml_collections.ConfigDict, *, log: Callable[[str], None] = print) -> dict:
  """Trains (resuming from the workdir's latest checkpoint), evaluates, writes results."""
  s = setup(config)
  check_workdir(s)
  wd = s.workdir
  writer_process = jax.process_index() == 0
  done_path = os.path.join(wd, "DONE")
  results_path = os.path.join(wd, "results.json")
  if os.path.exists(done_path) and os.path.exists(results_path):
    with open(done_path) as f:
      done_hash = f.read().strip()
    if done_hash == s.config_hash:  # the same run finished: nothing to redo
      with open(results_path) as f:
        results = json.load(f)
      log(f"{wd}: already complete (DONE exists); results in {results_path}")
      return results
  # Everything that can refuse this run is checked before anything is written.
  S = config.num_seeds
  keys = root_keys(config.seed, S)
  mesh = data_mesh(config)
  try:  # the model's initial state (pure compute, so a scheme that fails here writes nothing)
    state = seeded(lambda k: init_state(s, k), S, seed_loop(config))(keys["init"])
  except Exception as e:  # noqa: BLE001 — only a compiled program's runtime failure is translated
    msg = runtime_error_message(e)
    if msg is None:
      raise
    raise ConfigError("config.encoding", f"the {config.encoding.name} scheme failed while "
                      f"initialising the model: {msg}") from None
  mngr = checkpoint_manager(s) if os.path.isdir(os.path.join(wd, "checkpoints")) else None
  has_own = mngr is not None and bool(mngr.all_steps())
  if has_own:
    check_checkpoint_fits(mngr, state["params"], wd)
  source = None
  if config.init.from_workdir and not has_own:
    source, src_step = load_params(config.init.from_workdir, config.init.step)
    warm_start(state["params"], source, config.init.from_workdir, check_only=True)

  try:
    os.makedirs(wd, exist_ok=True)
    if writer_process:
      reporting.atomic_write_json(os.path.join(wd, "config.json"), config.to_dict())
  except OSError as e:  # e.g. a read-only file system, where os.access cannot tell (root)
    raise ConfigError("--workdir", f"cannot write {wd!r} ({e.strerror or e}); "
                      "choose a writable --workdir") from None
  log(f"run: {config.encoding.name} on {config.task.name} ({config.preset} preset, seed {config.seed}) "
      f"-> {wd}")

  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state["params"]))
  mngr = mngr or checkpoint_manager(s)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  restored, start = restore_latest(mngr, abstract)
  if restored is not None:
    state = restored
    log(f"resumed from checkpoint at step {start}")
  elif source is not None:
    params, copied, fresh = warm_start(state["params"], source, config.init.from_workdir)
    state = {**state, "params": params, "opt_state": seeded(make_optimizer(config).init, S, seed_loop(config))(params)}
    log(f"warm start: {len(copied)} parameter arrays from {config.init.from_workdir} "
        f"(step {src_step}); {len(fresh)} fresh" + (f": {', '.join(fresh[:6])}" if fresh else ""))
  log(f"model: {config.model.num_layers} layers, d={config.model.d_model}, {n_params:,} parameters; "
      f"train lengths {s.train_lengths[0]}–{s.train_lengths[-1]} padded to {s.train_padded}")

  total = config.train.steps
  writer = reporting.MetricsWriter(wd, enabled=writer_process, resume_step=start)
  progress = reporting.Progress(total, start)
  if mesh.size > 1:  # parameters and optimizer state replicated; the batch is split in the step
    state = jax.device_put(state, parallel.replicated(mesh))
  rep = parallel.replicated(mesh)
  jit_step = lambda fn: jax.jit(seeded(fn, S, seed_loop(config)), donate_argnums=0,
                                out_shardings=(rep, rep) if mesh.size > 1 else None)
  plan = s.train_buckets()
  if len(plan) == 1:  # one program; it draws each step's length itself
    step_fn = jit_step(make_train_step(s))
    bucket_fns = {}
  else:  # a program per bucket of lengths, picked by the host from the length schedule
    schedule = length_schedule(keys["train"], start, total, len(s.train_lengths))
    bucket_of = np.repeat(np.arange(len(plan)), [len(g) for g, _ in plan])[schedule]
    step_bucket = bucket_of if S == 1 else bucket_of.max(axis=1, initial=0)
    bucket_fns = {int(b): jit_step(make_train_step(s, int(b))) for b in np.unique(step_bucket)}
    step_fn = lambda state, key: bucket_fns[step_bucket[step - start]](
        state, key, schedule[step - start])
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
  pending: list[dict] = []
  t_start = time.perf_counter()
  compile_s = None
  last_good = start
  step = start
  synced = dispatched = start  # last step whose metrics reached the host; last step launched
  kept = lambda: (f"the last good checkpoint (step {last_good}) is kept" if last_good
                  else "no checkpoint had been written yet")
  try:
    if bucket_fns:  # every program the run will use is compiled before the first step
      compile_programs([lambda fn=fn: fn.lower(state, keys["train"], schedule[0])
                        for fn in bucket_fns.values()])
    while step < total:
      dispatched = step + 1
      state, metrics = step_fn(state, keys["train"])
      step += 1
      pending.append(metrics)
      if compile_s is None:
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t_start
        progress.started(step)
        if bucket_fns:
          pads = ", ".join(str(plan[b][1]) for b in bucket_fns)
          log(f"compiled {len(bucket_fns)} training programs (one per bucket of lengths, "
              f"padded to {pads}) in {compile_s:.1f}s")
        else:
          log(f"compiled the training step in {compile_s:.1f}s")
      save_now = step % config.checkpoint.every_steps == 0 or step == total
      if step % config.train.log_every == 0 or save_now:
        stacked = jax.device_get(jax.tree_util.tree_map(lambda *x: jnp.stack(x), *pending))
        pending = []
        synced = step
        if not (np.all(np.isfinite(stacked["loss"])) and np.all(np.isfinite(stacked["grad_norm"]))):
          bad = step - len(stacked["loss"]) + int(np.argmax(~(np.isfinite(stacked["loss"])
                                                               & np.isfinite(stacked["grad_norm"])))) + 1
          cause = encodings.get(config.encoding.name).explain_failure(
              stacked, config.encoding, s.train_bound())
          if cause is not None:
            raise TrainingDiverged(f"training failed at step {bad}: {cause}; {kept()}")
          raise TrainingDiverged(
              f"training diverged at step {bad}: loss or gradient norm is NaN/Inf; likely cause: "
              f"learning rate too high (config.train.learning_rate={config.train.learning_rate}) "
              f"or an unstable scheme setting; {kept()}")
        summary = {k: float(np.mean(v)) for k, v in stacked.items() if k != "length"}
        summary["mean_length"] = float(np.mean(stacked["length"]))
        writer.write(step, summary)
        if step % config.train.log_every == 0 or step == total:
          shown = ("loss", "accuracy", "grad_norm", "ode_steps")  # ode_steps: FLOATER's solver
          progress.line(step, {k: summary[k] for k in shown if k in summary})
        if save_now:
          mngr.save(step, args=ocp.args.StandardSave(state), force=(step == total))
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
  train_s = time.perf_counter() - t_start

  log(f"evaluating lengths {config.eval.min_length}–{config.eval.max_length} "
      f"in {len(s.eval_buckets)} buckets")
  t_eval = time.perf_counter()
  try:
    extra = {}
    if hasattr(s.task, "evaluate"):  # a task with its own protocol (language modelling)
      extra = dict(s.task.evaluate(s, state["params"], keys["eval"], log=log))
      per_length = extra.pop("per_length")
    else:
      greedy = None
      if config.eval.greedy:
        per_length, *greedy = evaluate(s, state["params"], keys["eval"], log=log, num_seeds=S,
                                       greedy=True)
        greedy = [g if S > 1 else [g] for g in greedy]  # [metric][seed] -> per-length dict
      else:
        per_length = evaluate(s, state["params"], keys["eval"], log=log, num_seeds=S)
  except Exception as e:  # noqa: BLE001 — a scheme failing at a longer length (e.g. its solver)
    msg = runtime_error_message(e)
    if msg is None:
      raise
    kept_eval = (f"training finished and its checkpoint (step {total}) is kept: re-evaluate it in "
                 f"a new --workdir with --config.init.from_workdir={wd} --config.train.steps=0 "
                 "and the changed setting") if total else "no training step was run"
    raise TrainingDiverged(f"evaluation failed: {msg}; {kept_eval}") from None
  eval_s = time.perf_counter() - t_eval
  reports = encoding_report(s, state["params"], S)  # e.g. FLOATER's trajectory growth
  for k, r in enumerate(reports if reports[0] else []):
    log(f"{config.encoding.name}" + (f" (seed {config.seed + k})" if S > 1 else "") + ": "
        + ", ".join(f"{name} {value:.4g}" for name, value in r.items()))
  if hasattr(s.task, "evaluate"):
    summary = {k: extra.pop(k) for k in ("in_range_score", "out_of_range_score")}
  per_seed = per_length if S > 1 else [per_length]

  def greedy_of(k):  # seed k's greedy-decoding metrics, or the seeds' mean (k=None)
    if not config.eval.greedy or hasattr(s.task, "evaluate"):
      return {}
    pick = lambda m: greedy[m][k] if k is not None else {
        l: _nanmean([g[l] for g in greedy[m]]) for l in greedy[m][0]}
    exact, tokens = pick(0), pick(1)
    ranges = summarize(s, exact)
    return {"greedy": {
        "per_length_exact_match": {str(l): v for l, v in sorted(exact.items())},
        "per_length_token_accuracy": {str(l): v for l, v in sorted(tokens.items())},
        "in_range_exact_match": ranges["in_range_score"],
        "out_of_range_exact_match": ranges["out_of_range_score"]}}

  def results_of(per_length, summary, seed, k=None):
    return {
        "scheme": config.encoding.name, "task": config.task.name, "preset": config.preset,
        "seed": seed, "config_hash": s.config_hash, "steps": total,
        "train_range": [config.task.train_min_length, config.task.train_max_length],
        "eval_range": [config.eval.min_length, config.eval.max_length],
        "per_length": {str(k): v for k, v in sorted(per_length.items())},
        **summary, "score": summary["out_of_range_score"],
        "eval_programs": len(s.eval_buckets), "num_params": n_params // S,
        "timing": {"compile_s": compile_s, "train_s": train_s, "eval_s": eval_s},
        "mode": "decoder" if s.causal else "encoder", **extra, **greedy_of(k),
        **({} if not reports[0] else {"encoding_report": reports[k]} if k is not None
           else {"encoding_report_per_seed": reports}),
    }

  title = f"{config.encoding.name} on {config.task.name}"
  seed_results = []
  for k, pl in enumerate(per_seed):
    seed_results.append(results_of(pl, summary if hasattr(s.task, "evaluate") else summarize(s, pl),
                                   config.seed + k, k))
  if S == 1:
    results = seed_results[0]
  else:  # one results.json per seed under seeds/, and their aggregate at the top
    mean_pl = {l: _nanmean([pl[l] for pl in per_seed]) for l in per_seed[0]}
    results = results_of(mean_pl, summarize(s, mean_pl), config.seed)
    results["num_seeds"] = S
    results["seeds"] = [r["seed"] for r in seed_results]
    for key in ("in_range_score", "out_of_range_score"):
      vals = [r[key] for r in seed_results if r[key] is not None]
      results[key + "_per_seed"] = vals
      if vals:
        results[key + "_max"] = float(np.max(vals))
        results[key + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
  def greedy_curve(r):
    return {"greedy exact match": r["greedy"]["per_length_exact_match"]} if "greedy" in r else None

  if writer_process:
    for r in seed_results if S > 1 else []:
      sub = os.path.join(wd, "seeds", f"seed{r['seed']}")
      os.makedirs(sub, exist_ok=True)
      reporting.atomic_write_json(os.path.join(sub, "results.json"), r)
      reporting.plot_accuracy(os.path.join(sub, "plots", "accuracy.png"), r["per_length"],
                              tuple(r["train_range"]), f"{title} (seed {r['seed']})",
                              extra=greedy_curve(r))
    reporting.atomic_write_json(results_path, results)
    if hasattr(s.task, "plot"):
      s.task.plot(results, os.path.join(wd, "plots"), title)
    else:
      reporting.plot_accuracy(os.path.join(wd, "plots", "accuracy.png"), results["per_length"],
                              tuple(results["train_range"]),
                              title + (f" (mean of {S} seeds)" if S > 1 else ""),
                              extra=greedy_curve(results))
    reporting.plot_training(os.path.join(wd, "plots", "training.png"), reporting.read_metrics(wd))
    reporting.atomic_write_text(done_path, f"{s.config_hash}\n")
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  what = "score (bits per byte)" if hasattr(s.task, "evaluate") else "accuracy"
  if "greedy" in results:
    g = results["greedy"]
    log(f"greedy decoding: in-range exact match {fmt(g['in_range_exact_match'])}, beyond "
        f"training {fmt(g['out_of_range_exact_match'])}")
  log(f"done: in-range {what} {fmt(results['in_range_score'])}, beyond training "
      f"{fmt(results['out_of_range_score'])}" + (f" (mean of {S} seeds)" if S > 1 else "")
      + f"; results in {results_path}")
  return results
