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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from posenc import data as data_lib
from posenc import encodings, positions as positions_lib, reporting, tasks
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from posenc.model import ModelConfig, Transformer

# Fields that may change between a run and its resumption without changing what is trained.
_RESUMABLE_FIELDS = ("train.steps", "train.log_every", "eval", "checkpoint", "workdir")


class TrainingDiverged(RuntimeError):
  """Loss or gradients became NaN/Inf; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Setup:
  """Everything derived from a config, validated before any compute."""

  config: ml_collections.ConfigDict
  task: tasks.Task
  model_cfg: ModelConfig
  train_lengths: tuple[int, ...]
  train_padded: int
  eval_buckets: list
  workdir: str
  config_hash: str

  @property
  def causal(self) -> bool:
    return self.model_cfg.causal

  def model(self, max_position: int) -> Transformer:
    dims = Dims(d_model=self.model_cfg.d_model, num_heads=self.model_cfg.num_heads,
                num_layers=self.model_cfg.num_layers, causal=self.causal,
                max_position=max_position, vocab_size=self.model_cfg.vocab_size,
                train_length=data_lib.total_length(self.task, self.config.task.train_max_length))
    return Transformer(self.model_cfg, encodings.build(self.config.encoding, dims))

  def train_bound(self) -> int:
    return positions_lib.bound(self.config.positions, self.train_padded, train=True)

  def eval_bound(self, padded: int) -> int:
    return positions_lib.bound(self.config.positions, padded, train=False)


def config_hash(config: ml_collections.ConfigDict) -> str:
  d = config.to_dict()
  d.pop("workdir", None)
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _positive(config, path: str, allow_zero: bool = False) -> None:
  value = config
  for part in path.split("."):
    value = value[part]
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
    raise ConfigError(f"config.{path}", f"must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def setup(config: ml_collections.ConfigDict) -> Setup:
  """Validates ``config`` and derives the run's shapes; raises ConfigError naming the field."""
  task = tasks.get(config.task.name)
  cls = encodings.get(config.encoding.name)
  for path in ("train.steps",):
    _positive(config, path, allow_zero=True)
  for path in ("model.d_model", "model.num_heads", "model.num_layers", "model.d_ff",
               "train.batch_size", "train.learning_rate", "train.log_every",
               "task.train_min_length", "task.train_max_length", "eval.min_length",
               "eval.max_length", "eval.samples_per_length", "eval.batch_size",
               "eval.num_buckets", "checkpoint.every_steps", "checkpoint.max_to_keep"):
    _positive(config, path)
  for path in ("train.warmup_steps", "train.weight_decay", "train.grad_clip", "model.dropout"):
    _positive(config, path, allow_zero=True)
  if not 0 <= config.model.dropout < 1:
    raise ConfigError("config.model.dropout", f"must be in [0, 1), got {config.model.dropout}")
  m = config.model
  if m.d_model % m.num_heads:
    raise ConfigError("config.model.num_heads",
                      f"{m.num_heads} heads do not divide d_model={m.d_model}; pick a divisor of {m.d_model}")
  if (m.d_model // m.num_heads) % 2:
    raise ConfigError("config.model.d_model",
                      f"head width d_model/num_heads = {m.d_model // m.num_heads} must be even "
                      "(rotary and sinusoidal schemes pair channels)")
  if m.activation not in ("relu", "gelu", "silu"):
    raise ConfigError("config.model.activation", f"unknown {m.activation!r}; choose relu, gelu or silu")
  if m.dtype not in ("float32", "bfloat16"):
    raise ConfigError("config.model.dtype", f"unknown {m.dtype!r}; choose float32 or bfloat16")
  if config.train.schedule not in ("constant", "cosine"):
    raise ConfigError("config.train.schedule", f"unknown {config.train.schedule!r}; choose constant or cosine")
  if config.num_seeds != 1:
    raise ConfigError("config.num_seeds", "only 1 is supported by this version; run seeds as separate runs")
  t = config.task
  if t.train_min_length > t.train_max_length:
    raise ConfigError("config.task.train_min_length",
                      f"{t.train_min_length} exceeds train_max_length={t.train_max_length}")
  if config.eval.min_length > config.eval.max_length:
    raise ConfigError("config.eval.min_length",
                      f"{config.eval.min_length} exceeds eval.max_length={config.eval.max_length}")
  encodings.check_mode(cls, config.encoding.name, bool(m.causal))
  positions_lib.validate(config.positions)

  train_lengths = tuple(range(t.train_min_length, t.train_max_length + 1))
  train_padded = data_lib.buckets(task, train_lengths, 1)[0][1]
  eval_lengths = range(config.eval.min_length, config.eval.max_length + 1)
  eval_buckets = data_lib.buckets(task, eval_lengths, config.eval.num_buckets)
  positions_lib.check_length(config.positions, data_lib.total_length(task, t.train_max_length),
                             train=True, field="config.task.train_max_length")
  positions_lib.check_length(config.positions, data_lib.total_length(task, config.eval.max_length),
                             train=False, field="config.eval.max_length")

  model_cfg = ModelConfig(
      vocab_size=data_lib.vocab_size(task), output_vocab_size=task.output_vocab_size,
      d_model=m.d_model, num_heads=m.num_heads, num_layers=m.num_layers, d_ff=m.d_ff,
      dropout=float(m.dropout), pre_ln=bool(m.pre_ln), causal=bool(m.causal),
      embed_scale=bool(m.embed_scale), activation=m.activation, dtype=m.dtype)
  h = config_hash(config)
  workdir = config.workdir or os.path.join(
      "runs", f"{config.encoding.name}-{t.name}-{config.preset}-seed{config.seed}-{h}")
  s = Setup(config, task, model_cfg, train_lengths, train_padded, eval_buckets, workdir, h)
  src = config.init.from_workdir
  if src:
    if not os.path.isdir(os.path.join(src, "checkpoints")) or not any(
        n.isdigit() for n in os.listdir(os.path.join(src, "checkpoints"))):
      raise ConfigError("config.init.from_workdir",
                        f"{src!r} holds no checkpoints; point it at a finished run's workdir")
    if os.path.abspath(src) == os.path.abspath(workdir):
      raise ConfigError("config.init.from_workdir", "is this run's own workdir; a run resumes "
                        "from its own checkpoints by itself, so leave it empty")

  # The scheme's own limits, at the largest position this run will use.
  probe = s.model(1).encoding
  longest_train = positions_lib.bound(config.positions, data_lib.total_length(task, t.train_max_length), train=True)
  longest_eval = positions_lib.bound(config.positions, data_lib.total_length(task, config.eval.max_length), train=False)
  probe.check(max(longest_train, longest_eval))
  return s


def check_workdir(s: Setup) -> None:
  """Refuses a workdir that is a file, unwritable, or holds a different run."""
  wd = s.workdir
  if os.path.exists(wd) and not os.path.isdir(wd):
    raise ConfigError("--workdir", f"{wd!r} is a file, not a directory; pass a directory path")
  parent = wd
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.access(parent or ".", os.W_OK):
    raise ConfigError("--workdir", f"{parent or '.'!r} is not writable; choose a writable --workdir")
  saved = os.path.join(wd, "config.json")
  if os.path.exists(saved):
    with open(saved) as f:
      old = json.load(f)
    diff = _config_diff(old, s.config.to_dict())
    if diff:
      raise ConfigError("--workdir", f"{wd!r} holds a run with a different config "
                        f"(differs in {', '.join(diff[:4])}); choose a new --workdir")


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _config_diff(old: dict, new: dict) -> list[str]:
  a, b = _flatten(old), _flatten(json.loads(json.dumps(new, default=str)))
  keys = sorted(set(a) | set(b))
  return [k for k in keys if a.get(k) != b.get(k)
          and not any(k == f or k.startswith(f + ".") for f in _RESUMABLE_FIELDS)]


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


def root_keys(seed: int) -> dict[str, jax.Array]:
  """The run's rng tree: every random draw descends from one of these."""
  root = jax.random.PRNGKey(seed)
  return dict(zip(("init", "train", "eval"), jax.random.split(root, 3)))


def init_state(s: Setup, key: jax.Array) -> dict:
  model = s.model(s.train_bound())
  length = s.train_padded
  variables = model.init(key, jnp.zeros((1, length), jnp.int32), jnp.zeros((1, length), jnp.int32),
                         jnp.ones((1, length), bool), train=False)
  params = variables["params"]
  return {"params": params, "opt_state": make_optimizer(s.config).init(params),
          "step": jnp.zeros((), jnp.int32)}


def make_train_step(s: Setup) -> Callable:
  """``step(state, key) -> (state, metrics)``: sample, forward, backward, update; not yet jitted."""
  model = s.model(s.train_bound())
  tx = make_optimizer(s.config)
  batch_fn = data_lib.make_batch_fn(
      s.task, positions_lib.make(s.config.positions, train=True),
      batch_size=s.config.train.batch_size, lengths=s.train_lengths,
      padded_length=s.train_padded, causal=s.causal)
  n = len(s.train_lengths)

  def step_fn(state, key):
    rng = jax.random.fold_in(key, state["step"])
    k_len, k_data, k_drop = jax.random.split(rng, 3)
    batch = batch_fn(k_data, jax.random.randint(k_len, (), 0, n))

    def loss_fn(params):
      logits = model.apply({"params": params}, batch["tokens"], batch["positions"], batch["valid"],
                           train=True, rngs={"dropout": k_drop})
      return data_lib.loss_and_accuracy(logits, batch)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["length"] = batch["length"].astype(jnp.float32)
    new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
           "step": state["step"] + 1}
    return new, metrics

  return step_fn


def checkpoint_manager(s: Setup) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=s.config.checkpoint.every_steps,
      max_to_keep=s.config.checkpoint.max_to_keep, create=True,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(s.workdir, "checkpoints")), options=options)


def load_params(workdir: str, step: int = 0) -> tuple[dict, int]:
  """The parameters saved in another run's checkpoint (``step`` 0: the latest)."""
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  step = step or mngr.latest_step()
  if step not in mngr.all_steps():
    raise ConfigError("config.init.step", f"no checkpoint at step {step} in {workdir!r}; "
                      f"available: {sorted(mngr.all_steps())}")
  tree = mngr.restore(step, args=ocp.args.StandardRestore())
  return tree["params"], step


def warm_start(params: dict, source: dict, origin: str, *,
               check_only: bool = False) -> tuple[dict, list[str], list[str]]:
  """Copies every array of ``source`` whose path exists in ``params``; shapes must agree.

  Returns the new params, the copied paths and the paths left at their initial values.
  """
  flat_src = {"/".join(str(getattr(k, "key", k)) for k in path): v
              for path, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  copied, fresh = [], []

  def pick(path, value):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name not in flat_src:
      fresh.append(name)
      return value
    got = np.asarray(flat_src[name])
    if got.shape != value.shape:
      raise ConfigError("config.init.from_workdir",
                        f"parameter {name} has shape {got.shape} in {origin!r} but {value.shape} "
                        "here; the two runs' model configs differ")
    copied.append(name)
    return value if check_only else jnp.asarray(got, value.dtype)

  new = jax.tree_util.tree_map_with_path(pick, params)
  return new, copied, fresh


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: dict) -> tuple[dict | None, int]:
  """Restores the newest readable checkpoint; a damaged one is skipped with a warning."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
      return state, step
    except Exception as e:  # noqa: BLE001 — any unreadable checkpoint falls back to an older one
      print(f"warning: checkpoint at step {step} is unreadable ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); falling back to an older one", flush=True)
  return None, 0


# ----------------------------------------------------------------------------- evaluation


def evaluate(s: Setup, params, key: jax.Array, *, log: Callable[[str], None] | None = print) -> dict:
  """Scores every length in ``[eval.min_length, eval.max_length]``; one program per bucket."""
  e = s.config.eval
  batch_size = min(e.batch_size, e.samples_per_length)
  chunks = math.ceil(e.samples_per_length / batch_size)
  sums: dict[int, list] = {}
  t0 = time.perf_counter()
  for lengths, padded in s.eval_buckets:
    model = s.model(s.eval_bound(padded))
    batch_fn = data_lib.make_batch_fn(
        s.task, positions_lib.make(s.config.positions, train=False), batch_size=batch_size,
        lengths=lengths, padded_length=padded, causal=s.causal)

    @jax.jit
    def score(params, key, index, chunk, model=model, batch_fn=batch_fn, lengths=lengths):
      length = jnp.asarray(lengths, jnp.int32)[index]
      batch = batch_fn(jax.random.fold_in(jax.random.fold_in(key, length), chunk), index)
      logits = model.apply({"params": params}, batch["tokens"], batch["positions"], batch["valid"],
                           train=False)
      seq, has = data_lib.sequence_scores(logits, batch)
      return jnp.stack([jnp.sum(jnp.where(has, seq, 0.0)), jnp.sum(has)])

    for i, length in enumerate(lengths):
      sums[length] = [score(params, key, i, c) for c in range(chunks)]
    if log:
      log(f"eval: lengths {lengths[0]}–{lengths[-1]} (padded to {padded}) "
          f"dispatched, {time.perf_counter() - t0:.1f}s")
  per_length = {}
  for length, parts in sums.items():
    total = np.sum(np.stack(jax.device_get(parts)), axis=0)
    per_length[length] = float(total[0] / total[1]) if total[1] > 0 else float("nan")
  return per_length


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
    with open(results_path) as f:
      results = json.load(f)
    if results.get("steps") == config.train.steps:
      log(f"{wd}: already complete (DONE exists); results in {results_path}")
      return results
  # Everything that can refuse this run is checked before anything is written.
  keys = root_keys(config.seed)
  mngr = checkpoint_manager(s) if os.path.isdir(os.path.join(wd, "checkpoints")) else None
  has_own = mngr is not None and bool(mngr.all_steps())
  source = None
  if config.init.from_workdir and not has_own:
    source, src_step = load_params(config.init.from_workdir, config.init.step)
    abstract_params = jax.eval_shape(lambda: init_state(s, keys["init"]))["params"]
    warm_start(abstract_params, source, config.init.from_workdir, check_only=True)

  os.makedirs(wd, exist_ok=True)
  if writer_process:
    reporting.atomic_write_json(os.path.join(wd, "config.json"), config.to_dict())
  log(f"run: {config.encoding.name} on {config.task.name} ({config.preset} preset, seed {config.seed}) "
      f"-> {wd}")

  state = init_state(s, keys["init"])
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state["params"]))
  mngr = mngr or checkpoint_manager(s)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
  restored, start = restore_latest(mngr, abstract)
  if restored is not None:
    state = restored
    log(f"resumed from checkpoint at step {start}")
  elif source is not None:
    params, copied, fresh = warm_start(state["params"], source, config.init.from_workdir)
    state = {**state, "params": params, "opt_state": make_optimizer(config).init(params)}
    log(f"warm start: {len(copied)} parameter arrays from {config.init.from_workdir} "
        f"(step {src_step}); {len(fresh)} fresh" + (f": {', '.join(fresh[:6])}" if fresh else ""))
  log(f"model: {config.model.num_layers} layers, d={config.model.d_model}, {n_params:,} parameters; "
      f"train lengths {s.train_lengths[0]}–{s.train_lengths[-1]} padded to {s.train_padded}")

  total = config.train.steps
  writer = reporting.MetricsWriter(wd, enabled=writer_process, resume_step=start)
  progress = reporting.Progress(total, start)
  step_fn = jax.jit(make_train_step(s), donate_argnums=0)
  pending: list[dict] = []
  t_start = time.perf_counter()
  compile_s = None
  last_good = start
  step = start
  try:
    while step < total:
      state, metrics = step_fn(state, keys["train"])
      step += 1
      pending.append(metrics)
      if compile_s is None:
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t_start
        progress.started(step)
        log(f"compiled the training step in {compile_s:.1f}s")
      save_now = step % config.checkpoint.every_steps == 0 or step == total
      if step % config.train.log_every == 0 or save_now:
        stacked = jax.device_get(jax.tree_util.tree_map(lambda *x: jnp.stack(x), *pending))
        pending = []
        if not (np.all(np.isfinite(stacked["loss"])) and np.all(np.isfinite(stacked["grad_norm"]))):
          bad = step - len(stacked["loss"]) + int(np.argmax(~(np.isfinite(stacked["loss"])
                                                               & np.isfinite(stacked["grad_norm"])))) + 1
          raise TrainingDiverged(
              f"training diverged at step {bad}: loss or gradient norm is NaN/Inf; likely cause: "
              f"learning rate too high (config.train.learning_rate={config.train.learning_rate}) "
              f"or an unstable scheme setting; the last good checkpoint (step {last_good}) is kept")
        summary = {k: float(np.mean(v)) for k, v in stacked.items() if k != "length"}
        summary["mean_length"] = float(np.mean(stacked["length"]))
        writer.write(step, summary)
        if step % config.train.log_every == 0 or step == total:
          progress.line(step, {k: summary[k] for k in ("loss", "accuracy", "grad_norm")})
        if save_now:
          mngr.save(step, args=ocp.args.StandardSave(state), force=(step == total))
          last_good = step
    mngr.wait_until_finished()
  finally:
    writer.close()
  train_s = time.perf_counter() - t_start

  log(f"evaluating lengths {config.eval.min_length}–{config.eval.max_length} "
      f"in {len(s.eval_buckets)} buckets")
  t_eval = time.perf_counter()
  per_length = evaluate(s, state["params"], keys["eval"], log=log)
  eval_s = time.perf_counter() - t_eval
  summary = summarize(s, per_length)
  results = {
      "scheme": config.encoding.name, "task": config.task.name, "preset": config.preset,
      "seed": config.seed, "config_hash": s.config_hash, "steps": total,
      "train_range": [config.task.train_min_length, config.task.train_max_length],
      "eval_range": [config.eval.min_length, config.eval.max_length],
      "per_length": {str(k): v for k, v in sorted(per_length.items())},
      **summary, "score": summary["out_of_range_score"],
      "eval_programs": len(s.eval_buckets), "num_params": n_params,
      "timing": {"compile_s": compile_s, "train_s": train_s, "eval_s": eval_s},
      "mode": "decoder" if s.causal else "encoder",
  }
  if writer_process:
    reporting.atomic_write_json(results_path, results)
    title = f"{config.encoding.name} on {config.task.name}"
    reporting.plot_accuracy(os.path.join(wd, "plots", "accuracy.png"), results["per_length"],
                            tuple(results["train_range"]), title)
    reporting.plot_training(os.path.join(wd, "plots", "training.png"), reporting.read_metrics(wd))
    reporting.atomic_write_text(done_path, f"{s.config_hash}\n")
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  log(f"done: in-range accuracy {fmt(summary['in_range_score'])}, beyond training "
      f"{fmt(summary['out_of_range_score'])}; results in {results_path}")
  return results
