"""A run's setup: the config validated and turned into shapes, before any compute.

:func:`setup` checks every field (a bad value raises ``ConfigError`` naming it and the fix)
and derives the run's :class:`Setup`: task, model config, training and evaluation lengths and
their buckets, the workdir and :func:`config_hash`, the hash that names a run's workdir and
marks it done (``DONE``, ``results.json``). :func:`check_workdir` refuses a workdir that holds
another run. ``Setup.model`` builds the Transformer of one program.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import jax
import ml_collections
import numpy as np

from posenc import data as data_lib
from posenc import criterion, encodings, positions as positions_lib, tasks
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from posenc.model import ModelConfig, Transformer
from posenc.seeds import SEED_LOOPS, data_mesh

# Fields that may change between a run and its resumption without changing what is trained.
_RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.num_buckets", "eval", "checkpoint",
                     "workdir", "seed_loop", "plots")


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
  # train.num_buckets as resolved (0, automatic: auto_train_buckets)
  num_train_buckets: int = 1

  @property
  def causal(self) -> bool:
    return self.model_cfg.causal

  def model(self, max_position: int, *, contiguous: bool = False) -> Transformer:
    """The model of a program whose positions are all below ``max_position``;
    ``contiguous``: they are also ``[1, L]`` runs ``p0 + arange(L)`` (``Dims.contiguous``)."""
    dims = Dims(d_model=self.model_cfg.d_model, num_heads=self.model_cfg.num_heads,
                num_layers=self.model_cfg.num_layers, causal=self.causal,
                max_position=max_position, vocab_size=self.model_cfg.vocab_size,
                train_length=data_lib.total_length(self.task, self.config.task.train_max_length),
                contiguous=contiguous, train_positions=self.train_positions())
    return Transformer(self.model_cfg, encodings.build(self.config.encoding, dims))

  def train_bound(self) -> int:
    return positions_lib.bound(self.config.positions, self.train_padded, train=True)

  def train_buckets(self) -> list[tuple[tuple[int, ...], int]]:
    """``[(lengths, padded_length)]``: the training programs, one per bucket of training
    lengths (``config.train.num_buckets``; ``data.train_buckets``), shortest first."""
    return data_lib.train_buckets(self.task, self.train_lengths, self.num_train_buckets,
                                  multiple=1)

  def train_positions(self) -> int:
    """Every real training token's position is below this (``Dims.train_positions``);
    unlike ``train_bound`` it leaves out the padding of the training program."""
    return positions_lib.bound(
        self.config.positions,
        data_lib.total_length(self.task, self.config.task.train_max_length), train=True)

  def eval_bound(self, padded: int) -> int:
    return positions_lib.bound(self.config.positions, padded, train=False)


def diagnostics(variables: dict) -> dict:
  """``{name: value}`` of the ``"diagnostics"`` a module reported (by its own name, wherever
  the module sits) in the mutable variables that ``model.apply`` returned."""
  flat = jax.tree_util.tree_leaves_with_path(variables.get("diagnostics", {}))
  return {str(path[-1].key): value for path, value in flat}


# Settings that change how a run computes or what it draws, never its numbers: left out of the
# hash, so runs made before they existed keep their workdir names and DONE markers (sweeps do
# not redo them). ``train.num_buckets`` is in the hash: padding a batch to another length
# changes the rounding of its sums, so the same seed trains to other bits (tests/test_train_buckets.py).
_HASH_EXCLUDED = (("eval", "micro_batch"), (None, "plots"))
# Fields added after runs were committed: at these values they change nothing, and are left out
# of the hash so that those runs keep their names.
_HASH_DEFAULTS = {("train", "length_seed"): -1}


def config_hash(config: ml_collections.ConfigDict) -> str:
  d = config.to_dict()
  d.pop("workdir", None)
  for (section, name), value in _HASH_DEFAULTS.items():
    if isinstance(d.get(section), dict) and d[section].get(name, value) == value:
      d[section].pop(name, None)
  for section, name in _HASH_EXCLUDED:
    if section is None:
      d.pop(name, None)
    elif isinstance(d.get(section), dict):
      d[section].pop(name, None)
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


# The cost model behind ``train.num_buckets = 0`` (automatic): per backend, the model FLOP/s a
# small training step reaches, a fixed cost per step (dispatch, optimizer, small operations) and
# the seconds one training program takes to compile. Measured on this project's 2-core CPU
# (docs/throughput.md): the atlas protocol's step (2 layers, d = 64, batch 64) ran at 25-35
# GFLOP/s and compiled in 5-7 s; the paper preset's (5 layers, batch 128) at about 26 GFLOP/s,
# 6.6 s. The accelerator figures are rough (small models leave them latency-bound): there
# the choice leans to few programs unless a run is long.
_STEP_FLOPS = {"cpu": 3e10, "gpu": 3e13, "tpu": 5e13}
_STEP_FIXED_S = {"cpu": 1e-3, "gpu": 2e-3, "tpu": 2e-3}
_COMPILE_S = {"cpu": 6.0, "gpu": 20.0, "tpu": 30.0}
_MAX_AUTO_BUCKETS = 64


def projected_training_s(config: ml_collections.ConfigDict, plan, lengths,
                         backend: str | None = None) -> tuple[float, float]:
  """``(training seconds, compile seconds)`` the cost model projects for ``train.steps`` steps
  with the training programs of ``plan`` (``[(lengths, padded)]``): each step costs its
  program's model FLOPs (6 × tokens × the matmul work per token, attention scores included)
  over the backend's rate plus a fixed cost. Compiling is counted one program after another
  (the run compiles them side by side on the cores, but the choice must not depend on the core
  count). The projection is one seed's run, whatever ``num_seeds``: a seed's programs, and so
  its padding and its bits, must not depend on how many seeds share its program."""
  backend = backend or jax.default_backend()
  m, t = config.model, config.train
  per_token = lambda p: m.num_layers * (4 * m.d_model ** 2 + 2 * m.d_model * m.d_ff
                                        + 2 * p * m.d_model)
  step_s = lambda p: (6 * t.batch_size * p * per_token(p) / _STEP_FLOPS.get(backend, 3e10)
                      + _STEP_FIXED_S.get(backend, 1e-3))
  n = len(lengths)
  # each bucket runs its share of the steps (lengths drawn uniformly)
  mean_step = float(sum(len(g) / n * step_s(pad) for g, pad in plan))
  compile_s = len(plan) * _COMPILE_S.get(backend, 6.0)
  return t.steps * mean_step, compile_s


def auto_train_buckets(config: ml_collections.ConfigDict, task, lengths) -> int:
  """``train.num_buckets = 0``: the number of training programs that the cost model
  (:func:`projected_training_s`) projects to finish the run soonest, compiling included: a
  short run gets few programs (each would cost more to compile than it saves), the paper
  preset's million steps one per training length. Depends only on the config and the
  backend, so the same config trains to the same bits on the same kind of machine."""
  plans = data_lib.bucket_plans(task, lengths, _MAX_AUTO_BUCKETS, multiple=1)
  totals = [sum(projected_training_s(config, plan, lengths)) for plan in plans]
  return int(np.argmin(totals)) + 1  # argmin: the fewest programs among equal totals


def _positive(config, path: str, allow_zero: bool = False) -> None:
  value = config
  for part in path.split("."):
    value = value[part]
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
    raise ConfigError(f"config.{path}", f"must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def _check_micro_batch(config: ml_collections.ConfigDict) -> None:
  micro = config.eval.get("micro_batch", 0)
  if not isinstance(micro, int) or isinstance(micro, bool) or micro < 0:
    raise ConfigError("config.eval.micro_batch",
                      f"must be a non-negative integer (0: automatic), got {micro!r}")
  batch = min(config.eval.batch_size, config.eval.samples_per_length)
  if micro and batch % micro:
    divisors = [d for d in range(1, batch + 1) if batch % d == 0]
    raise ConfigError("config.eval.micro_batch",
                      f"{micro} rows per pass do not divide the evaluation batch of {batch} "
                      "(eval.batch_size, at most eval.samples_per_length); use 0 (automatic) or "
                      f"one of {divisors}")


def _check_finite(config: ml_collections.ConfigDict) -> None:
  """Every float field must be finite: NaN passes every ``<``/``>`` check (and would only show
  as a diverged loss steps later), and no field means anything by an infinity."""
  for key, value in _flatten(config.to_dict()).items():
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
      raise ConfigError(f"config.{key}", f"must be a finite number, got {value}; set a finite "
                        "value (or leave it out for the preset's)")


def setup(config: ml_collections.ConfigDict) -> Setup:
  """Validates ``config`` and derives the run's shapes; raises ConfigError naming the field."""
  _check_finite(config)
  # The config goes along so a task with settings of its own (language modelling: corpus,
  # evaluation lengths, decoder only) is built and validated here, before any compute.
  task = tasks.get(config.task.name, config)
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
  if config.train.schedule not in ("constant", "cosine", "rsqrt"):
    raise ConfigError("config.train.schedule", f"unknown {config.train.schedule!r}; choose "
                      "constant, cosine or rsqrt")
  if not isinstance(config.num_seeds, int) or config.num_seeds < 1:
    raise ConfigError("config.num_seeds", f"must be a positive integer, got {config.num_seeds!r}")
  if config.get("seed_loop", "auto") not in SEED_LOOPS:
    raise ConfigError("config.seed_loop", f"unknown {config.seed_loop!r}; choose one of {SEED_LOOPS}")
  if config.get("seed_loop") == "shard" and jax.process_count() > 1:
    raise ConfigError("config.seed_loop", "'shard' splits seeds over one process's devices; with "
                      f"{jax.process_count()} processes use auto, vmap or map")
  devices = data_mesh(config).size
  if config.train.batch_size % devices:
    raise ConfigError("config.train.batch_size",
                      f"{config.train.batch_size} does not split over {devices} devices; "
                      f"use a multiple of {devices}")
  t = config.task
  if t.train_min_length > t.train_max_length:
    raise ConfigError("config.task.train_min_length",
                      f"{t.train_min_length} exceeds train_max_length={t.train_max_length}; "
                      "lower it or raise config.task.train_max_length")
  _check_micro_batch(config)
  buckets_n = config.train.get("num_buckets", 1)
  if not isinstance(buckets_n, int) or isinstance(buckets_n, bool) or buckets_n < 0:
    raise ConfigError("config.train.num_buckets", f"must be a non-negative integer (0: chosen "
                      "from the run's length; 1: one training program padded to the longest "
                      f"length), got {buckets_n!r}")
  length_seed = config.train.get("length_seed", -1)
  if not isinstance(length_seed, int) or isinstance(length_seed, bool) or length_seed < -1:
    raise ConfigError("config.train.length_seed", "must be -1 (each seed draws its own step "
                      "lengths) or a seed >= 0 whose draw every seed shares, got "
                      f"{length_seed!r}")
  if config.eval.min_length > config.eval.max_length:
    raise ConfigError("config.eval.min_length",
                      f"{config.eval.min_length} exceeds eval.max_length={config.eval.max_length}; "
                      "lower it or raise config.eval.max_length")
  encodings.check_mode(cls, config.encoding.name, bool(m.causal))
  if config.eval.greedy and not m.causal:
    raise ConfigError("config.eval.greedy", "greedy decoding needs a decoder: set "
                      "--config.model.causal=True (an encoder predicts every answer token at once, "
                      "so its accuracy needs no decoding)")
  if config.eval.greedy and (hasattr(task, "evaluate") or hasattr(task, "layout")):
    raise ConfigError("config.eval.greedy", f"the {t.name} task has its own evaluation protocol "
                      "and no prompt/answer split to decode; set --config.eval.greedy=False")
  positions_lib.validate(config.positions)
  criterion.validate(config, task)
  eval_seed = config.eval.get("seed", -1)
  if not isinstance(eval_seed, int) or isinstance(eval_seed, bool) or eval_seed < -1:
    raise ConfigError("config.eval.seed", f"must be an integer >= -1 (-1: the run's seed), "
                      f"got {eval_seed!r}")

  train_lengths = tuple(range(t.train_min_length, t.train_max_length + 1))
  train_padded = data_lib.buckets(task, train_lengths, 1)[0][1]
  eval_lengths = range(config.eval.min_length, config.eval.max_length + 1)
  eval_buckets = data_lib.eval_buckets(task, eval_lengths, config.eval.num_buckets)
  positions_lib.check_length(config.positions, data_lib.total_length(task, t.train_max_length),
                             train=True, field="config.task.train_max_length")
  positions_lib.check_length(config.positions, data_lib.total_length(task, config.eval.max_length),
                             train=False, field="config.eval.max_length")

  model_cfg = ModelConfig(
      vocab_size=data_lib.vocab_size(task), output_vocab_size=task.output_vocab_size,
      d_model=m.d_model, num_heads=m.num_heads, num_layers=m.num_layers, d_ff=m.d_ff,
      dropout=float(m.dropout), pre_ln=bool(m.pre_ln), causal=bool(m.causal),
      embed_scale=bool(m.embed_scale), activation=m.activation, dtype=m.dtype,
      dropout_mask_length=train_padded)
  h = config_hash(config)
  workdir = config.workdir or os.path.join(
      "runs", f"{config.encoding.name}-{t.name}-{config.preset}-seed{config.seed}-{h}")
  num_train = config.train.get("num_buckets", 1) or auto_train_buckets(config, task, train_lengths)
  s = Setup(config, task, model_cfg, train_lengths, train_padded, eval_buckets, workdir, h,
            num_train)
  if config.num_seeds > 1 and hasattr(task, "evaluate"):
    raise ConfigError("config.num_seeds", f"the {t.name} task's evaluation runs one seed at a "
                      "time; set --config.num_seeds=1 and run seeds as separate runs (a sweep)")
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
  if parent and parent != wd and not os.path.isdir(parent):  # e.g. --workdir=some_file/run
    raise ConfigError("--workdir", f"{parent!r} is a file, so {wd!r} cannot be created under it; "
                      "pass a directory path")
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
