"""Training to a criterion: stop when the model has learned its task at the training lengths.

A beyond-range score says something about extrapolation only if the model first learned the
task where it was trained. With ``config.criterion.every = k > 0`` the training loop scores,
after every ``k``-th step, the longest training lengths (the top ``criterion.top_fraction`` of
``task.train_min_length..train_max_length``, at least one length) on a fixed held-out set,
and the run counts as *learned* at the first check whose score reaches
``criterion.threshold``. With ``criterion.stop`` (the default) the run then stops there;
otherwise it trains on to ``train.steps`` (the cap) and only records the step.

The score (``criterion.metric``): ``"exact_match"`` (greedy decoding of the whole answer, a
decoder with ``eval.greedy``), ``"accuracy"`` (teacher-forced per-token accuracy, as the
final evaluation's ``per_length``), or ``"auto"``: exact match where the run decodes greedily,
else accuracy. Each length weighs the same.

The held-out set is drawn from its own stream, ``fold_in(eval_key, HELD_OUT)`` then, per
length and chunk, the final evaluation's derivation: never a training batch, never the final
evaluation's samples, the same set at every check (and for every seed when ``eval.seed``
fixes the evaluation key).

Determinism and resumption: a check reads the parameters after step ``t`` and nothing else,
so it gives the same answer whenever it is computed; a run resumed from a checkpoint at step
``c`` re-reads the checks before ``c`` from ``criterion.jsonl`` and recomputes the one at
``c`` (a run killed after stopping at ``c`` stops there again). The training programs are not
changed: a run that never reaches the threshold equals a run without the criterion bit for
bit.

Several seeds in one program: the program trains every seed until all have learned (or the
cap). A seed that learns at step ``t_k`` keeps a copy of its state at ``t_k``; its copy is
what is saved in later checkpoints, evaluated and reported, so each seed's parameters are
those its single-seed run stops with, and each reports its own step. From ``t_k`` on the
programs skip that seed's steps (``posenc.train.skippable``: a branch per seed, not taken in
the ``lax.map`` seed loop of a CPU, so a device whose seeds have all learned idles rather
than training them on); the branch taken is the step itself, and the seeds still training
get the bits the unbranched program gives them (measured with XLA's default flags; under the
test suite's flags, within its float tolerance). Its per-seed metrics end at ``t_k``. With
``criterion.stop = False`` every seed trains to the cap and reports its state there, as its
single run does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from posenc import reporting
from posenc.errors import ConfigError
from posenc.ranges import top_lengths

METRICS = ("auto", "accuracy", "exact_match")
HELD_OUT = 0x5EED_C0DE  # folded into the evaluation key: the held-out set's own stream
LOG_FILE = "criterion.jsonl"


def enabled(config: ml_collections.ConfigDict) -> bool:
  c = config.get("criterion")
  return c is not None and c.every > 0


def validate(config: ml_collections.ConfigDict, task=None) -> None:
  """Refuses bad criterion fields (ConfigError naming the field) before any compute."""
  c = config.get("criterion")
  if c is None:
    return
  if not isinstance(c.every, int) or isinstance(c.every, bool) or c.every < 0:
    raise ConfigError("config.criterion.every", f"must be a non-negative integer (0: no "
                      f"criterion, train for train.steps), got {c.every!r}")
  if not 0 < c.threshold <= 1:
    raise ConfigError("config.criterion.threshold", f"must be in (0, 1], got {c.threshold}")
  if not 0 < c.top_fraction <= 1:
    raise ConfigError("config.criterion.top_fraction",
                      f"must be in (0, 1] (0.25: the longest quarter of the training lengths), "
                      f"got {c.top_fraction}")
  if not isinstance(c.samples_per_length, int) or c.samples_per_length < 1:
    raise ConfigError("config.criterion.samples_per_length",
                      f"must be a positive integer, got {c.samples_per_length!r}")
  if c.metric not in METRICS:
    raise ConfigError("config.criterion.metric", f"unknown {c.metric!r}; choose one of {METRICS}")
  if c.every > 0 and hasattr(task, "evaluate"):
    raise ConfigError("config.criterion.every", f"the {config.task.name} task has its own "
                      "evaluation protocol and no in-range accuracy to reach; set "
                      "--config.criterion.every=0 (train for train.steps)")
  if c.every > 0 and c.metric == "exact_match" and not config.eval.greedy:
    raise ConfigError("config.criterion.metric", "exact match needs greedy decoding: set "
                      "--config.eval.greedy=True (a decoder) or --config.criterion.metric=accuracy")


def metric(config: ml_collections.ConfigDict) -> str:
  m = config.criterion.metric
  if m == "auto":
    return "exact_match" if config.eval.greedy else "accuracy"
  return m


def lengths(config: ml_collections.ConfigDict) -> list[int]:
  """The lengths a check scores: the longest ``top_fraction`` of the training lengths
  (:func:`posenc.ranges.top_lengths`, the rule experiments.stats uses too)."""
  t = config.task
  return top_lengths(t.train_min_length, t.train_max_length, config.criterion.top_fraction)


@dataclasses.dataclass
class Check:
  """The compiled checks of one run: ``scores(params)`` -> one score per seed (a list)."""
  scores: Callable[[object], list[float]]
  lengths: list[int]
  metric: str


def make_check(s, key: jax.Array) -> Check:
  """The criterion's check for the run of ``s`` (``key``: the run's evaluation key, per seed
  with several seeds). Programs are built once and called at every check."""
  from posenc import evaluation  # noqa: PLC0415 — evaluation imports setup, which imports us
  from posenc.data import buckets  # noqa: PLC0415

  config = s.config
  S = config.num_seeds
  which = metric(config)
  lens = lengths(config)
  sub = ml_collections.ConfigDict(config.to_dict())
  sub.eval.samples_per_length = config.criterion.samples_per_length
  sub.eval.batch_size = min(config.eval.batch_size, config.criterion.samples_per_length)
  sub.eval.micro_batch = 0
  sub.eval.greedy = which == "exact_match"
  sub.eval.min_length, sub.eval.max_length = lens[0], lens[-1]
  cs = dataclasses.replace(s, config=sub, eval_buckets=buckets(s.task, lens, 1))
  fold = lambda k: jax.random.fold_in(k, HELD_OUT)
  held_out = jax.vmap(fold)(key) if S > 1 else fold(key)
  column = 2 if which == "exact_match" else 0
  programs: list = []

  def scores(params) -> list[float]:
    if not programs:  # built (jitted, not yet compiled) on the first check
      programs.extend(evaluation.evaluation_programs(cs, params, held_out, num_seeds=S,
                                                     greedy=sub.eval.greedy))
    # No evaluation cache: a scheme with one (FLOATER's solved table) computes it inside the
    # program, which is compiled once; eval_cache would compile a new program at every check.
    cache = {}
    sums: dict[int, list] = {}
    for prog in programs:
      for length, (_, _, k, i, c) in prog.calls:
        sums.setdefault(length, []).append(prog.score(params, cache, k, i, c))
    per_seed = np.zeros((S, len(sums)))
    for j, (length, parts) in enumerate(sorted(sums.items())):
      total = np.sum(np.stack(jax.device_get(parts)), axis=0).reshape(S, -1)
      per_seed[:, j] = total[:, column] / np.maximum(total[:, 1], 1)
    return [float(v) for v in per_seed.mean(axis=1)]

  return Check(scores, lens, which)


class Tracker:
  """The checks of one run so far, ``criterion.jsonl`` in its workdir, and per seed the step
  it learned at (None: not yet) and the state it is frozen at."""

  def __init__(self, s, resume_step: int, *, write: bool = True):
    self.config = s.config
    self.num_seeds = s.config.num_seeds
    self.path = os.path.join(s.workdir, LOG_FILE)
    self.write_enabled = write
    self.rows: list[dict] = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            row = json.loads(line)
          except json.JSONDecodeError:  # a line cut by a kill
            continue
          if row.get("step", 0) < resume_step:  # the check at the resume step is recomputed
            self.rows.append(row)
    if write:
      self._flush()
    self.learned_at: list[int | None] = [None] * self.num_seeds
    for row in self.rows:
      for k, ok in enumerate(row["learned"]):
        if ok and self.learned_at[k] is None:
          self.learned_at[k] = row["step"]

  @property
  def all_learned(self) -> bool:
    return all(t is not None for t in self.learned_at)

  def record(self, step: int, scores: list[float]) -> list[int]:
    """Adds the check at ``step``; returns the seeds that learned at it."""
    thr = self.config.criterion.threshold
    ok = [v >= thr for v in scores]
    self.rows.append({"step": int(step), "scores": [float(v) for v in scores], "learned": ok})
    if self.write_enabled:
      self._flush()
    new = [k for k, good in enumerate(ok) if good and self.learned_at[k] is None]
    for k in new:
      self.learned_at[k] = step
    return new

  def _flush(self) -> None:
    reporting.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

  def seed_record(self, k: int) -> dict:
    """What ``results.json`` says of seed ``k``: ``learned``, its step, the in-range curve."""
    c = self.config.criterion
    return {"learned": self.learned_at[k] is not None, "step": self.learned_at[k],
            "threshold": float(c.threshold), "metric": metric(self.config),
            "lengths": lengths(self.config), "every": int(c.every), "stop": bool(c.stop),
            "samples_per_length": int(c.samples_per_length),
            "curve": [[r["step"], r["scores"][k]] for r in self.rows]}


def take_seed(state, k: int):
  """Seed ``k``'s slice of a stacked state, on the host."""
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x[k])), state)


def put_seeds(state, frozen: dict[int, object]):
  """``state`` with seed ``k``'s slice replaced by ``frozen[k]`` (host copies), placed as
  ``state`` is (same shardings)."""
  if not frozen:
    return state

  def put(x, *slices):
    host = np.array(jax.device_get(x))
    for k, v in zip(frozen, slices):
      host[k] = v
    return jax.device_put(host, x.sharding)

  return jax.tree_util.tree_map(put, state, *frozen.values())
