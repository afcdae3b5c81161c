"""Baselines: what chance and position-free rules score, on exactly a run's evaluation samples.

  python -m experiments.baselines --config=configs/decoder.py --config.task.name=sorting
  python -m experiments.baselines --config=configs/sinusoidal.py --config.task.name=bucket_sort

:func:`baseline_results` returns, per rule, a dict with the keys of a run's ``results.json``
that hold scores (``per_length``, ``in_range_score``, ``out_of_range_score`` and, for a decoder
with ``eval.greedy``, ``greedy``), computed the way a run computes them:

* **The samples** are the run's own: the evaluation key (:func:`eval_key`, the one place that
  says how it derives from the config), then per length and chunk
  ``fold_in(fold_in(key, length), chunk)`` into ``posenc.data.make_batch_fn`` over the run's
  evaluation buckets, drawn at the longest evaluated width, as
  ``posenc.evaluation.evaluation_programs`` does. With ``num_seeds = S > 1`` each seed's samples
  are drawn and its scores kept, and the top level is their mean curve, as ``results.json``'s.
* **Teacher-forced accuracy** (``per_length``): the rule's answer symbol at every answer slot
  becomes a one-hot "logit" row scored by ``posenc.data.sequence_scores`` (the fraction of a
  sequence's scored answer tokens right, averaged over the sequences that have any). In a
  decoder the rule sees the true earlier answer tokens, as the model does under teacher forcing.
* **Greedy exact match** (decoders with ``eval.greedy``): the rule is fed its own earlier
  answers, and ``posenc.decoding.scores`` gives exact match and token accuracy.
* **Encoders** read every answer at once and see no answer token: a rule there is run on its own
  outputs (as greedy decoding), and its per-token accuracy is the ``per_length`` score.
* Ranges: ``posenc.results.summarize`` (mean over the lengths inside the training range, and over
  those beyond it; NaN lengths, whose samples have no scored token, are skipped).

Rules (symbols are the task's own ids; ties always go to the smallest id):

* ``chance``: uniform guessing over the task's ``output_vocab_size`` classes at every answer
  slot, its *expected* score computed exactly: per-token accuracy ``1/K`` for every sequence with
  a scored token, exact match the mean over those sequences of ``K**-n`` (``n`` its scored
  tokens). Every task has it.
* The others are **position-free**: the answer symbol is a function only of the multiset of
  prompt (input) symbols and the multiset of answer symbols emitted so far, never of their order
  (the number emitted so far, the size of that multiset, is therefore known to a rule). Run on its
  own outputs such a rule's answer is a function of the input bag and the answer slot's index.

  - ``most_frequent_remaining`` (copy, reverse_string, odds_first, duplicate_string): the most
    frequent symbol of (the answer's bag, which is the input bag, twice it for
    duplicate_string) minus the emitted bag; 0 (the task's termination token if it has one) once
    nothing remains. For these tasks the answer is a uniformly random arrangement of that bag, so
    this is the best a position-free rule can do per token, and a greedy run (some arrangement of
    the bag) maximises the probability of an exact match.
  - ``bag_majority`` (the same tasks, and stack_manipulation): the bag's most frequent symbol at
    every slot (stack_manipulation: of the stack bits and pushed bits, PUSH0 counting as 0 and
    PUSH1 as 1). The best constant answer per sequence; for an encoder stronger per token than
    ``most_frequent_remaining``, for a teacher-forced decoder weaker.
  - ``sorted_bag`` (sorting, bucket_sort): the smallest symbol of the input bag minus the emitted
    bag. The answer *is* the sorted bag: it scores 1 everywhere, the fact that makes these tasks
    insensitive to the position encoding.
  - ``next_larger`` (sorting, bucket_sort): the smallest input symbol larger than the largest one
    emitted (the largest input symbol when there is none; the smallest when nothing is emitted);
    the rule issue 37 quotes (82% teacher-forced beyond range), wrong at every repeated symbol,
    kept for comparison: ``sorted_bag`` is strictly stronger.
  - ``bag_answer`` (parity_check, missing_duplicate_string, cycle_navigation,
    summation_mod_10): the one-token answer is a function of the bag, computed exactly (the
    count of 1s mod 2; the hidden bit of ``ww`` is the parity of the 1s left in it; the walk's
    ``(#up - #down) mod 5``; the sum mod 10). Scores 1.
  - ``bag_posterior`` (even_pairs): the answer is "first bit != last bit"; given ``n0`` zeros and
    ``n1`` ones in ``l`` bits, every arrangement is equally likely and that has probability
    ``2 n0 n1 / (l (l - 1))``, so answer 1 iff ``4 n0 n1 > l (l - 1)`` (the Bayes rule from the
    bag; exact at ``l <= 2``, near chance for long inputs).
  - ``bag_digits`` (the three additions, a heuristic, not optimal: the sum is not a
    function of the bag; it ignores order, so it is the same rule for either digit order):
    the termination token when ``t = max(l - 2, 1)`` answer tokens are emitted (the longest sum
    without a carry; the sum's length is spread over about ``l / 2`` values, so any fixed guess is
    right about ``2 / l`` of the time), else the most frequent prompt digit not yet emitted (where
    one operand is longer the sum copies its upper digits).

Tasks with their own evaluation (language modelling) have no baselines here (ConfigError).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from posenc import data as data_lib
from posenc import decoding, positions as positions_lib, results as results_lib
from posenc import seeds as seeds_lib
from posenc import setup as setup_lib
from posenc.errors import ConfigError
from posenc.tasks.base import Task


# ----------------------------------------------------------------------------- the samples


def eval_key(config: ml_collections.ConfigDict, k: int = 0) -> jax.Array:
  """The evaluation key of seed ``k`` (0-based) of a run with ``config``: the ``"eval"`` key of
  :func:`posenc.seeds.root_keys` for ``config.seed + k``, as ``posenc.train`` passes it to
  ``posenc.evaluation.evaluate``. The one place this module derives it: a change of the run's
  derivation belongs here. With ``eval.seed >= 0`` every seed has that seed's key
  (:func:`posenc.seeds.evaluation_key`)."""
  run_key = seeds_lib.root_keys(int(config.seed) + int(k))["eval"]
  one = ml_collections.ConfigDict({"eval": {"seed": config.eval.get("seed", -1)}, "num_seeds": 1})
  return seeds_lib.evaluation_key(one, run_key)


def eval_batches(s: setup_lib.Setup, key: jax.Array) -> Iterator[tuple[int, dict]]:
  """``(length, batch)`` for every evaluated length and chunk, in the run's order: the batches
  ``posenc.evaluation.evaluation_programs`` scores for ``key``, as numpy arrays."""
  e = s.config.eval
  batch_size = min(e.batch_size, e.samples_per_length)
  chunks = math.ceil(e.samples_per_length / batch_size)
  sample_max = max(max(lengths) for lengths, _ in s.eval_buckets)
  sampler = positions_lib.make(s.config.positions, train=False)
  for lengths, padded in s.eval_buckets:
    batch_fn = data_lib.make_batch_fn(s.task, sampler, batch_size=batch_size, lengths=lengths,
                                      padded_length=padded, causal=s.causal, sample_max=sample_max)

    def draw(key, index, chunk, batch_fn=batch_fn, lengths=lengths):
      length = jnp.asarray(lengths, jnp.int32)[index]
      return batch_fn(jax.random.fold_in(jax.random.fold_in(key, length), chunk), index)

    draw = jax.jit(draw)
    for i, length in enumerate(lengths):
      for c in range(chunks):
        yield length, {k: np.asarray(v) for k, v in jax.device_get(draw(key, i, c)).items()}


# ----------------------------------------------------------------------------- the rules

# A rule's step: (task, prompt bag [B, input_vocab], emitted bag [B, output_vocab], length) ->
# the answer symbol [B] (an output id).
Step = Callable[[Task, np.ndarray, np.ndarray, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
  name: str
  step: Step


def _fallback(task: Task) -> int:
  return int(getattr(task, "TERMINATION", 0))


def _answer_bag(task: Task, prompt: np.ndarray) -> np.ndarray:
  """The bag of the answer's symbols, from the prompt's (tasks whose answer rearranges it)."""
  if task.name == "duplicate_string":
    return 2 * prompt
  return prompt


def _first_max(counts: np.ndarray) -> np.ndarray:
  return np.argmax(counts, axis=1)  # the first (smallest) id among the most frequent


def most_frequent_remaining(task, prompt, emitted, length):
  remaining = np.maximum(_answer_bag(task, prompt) - emitted, 0)
  return np.where(remaining.sum(1) > 0, _first_max(remaining), _fallback(task))


def bag_majority(task, prompt, emitted, length):
  if task.name == "stack_manipulation":  # stack bits 0, 1; PUSH0 (3) -> 0, PUSH1 (4) -> 1
    bits = np.stack([prompt[:, 0] + prompt[:, task.PUSH0], prompt[:, 1] + prompt[:, task.PUSH1]], 1)
    return _first_max(bits)
  return _first_max(_answer_bag(task, prompt))


def sorted_bag(task, prompt, emitted, length):
  remaining = np.maximum(prompt - emitted, 0) > 0
  return np.where(remaining.any(1), np.argmax(remaining, axis=1), 0)


def next_larger(task, prompt, emitted, length):
  present = prompt > 0
  ids = np.arange(prompt.shape[1])[None, :]
  largest_emitted = np.where(emitted > 0, ids, -1).max(1, keepdims=True)
  above = present & (ids > largest_emitted)
  largest_present = np.where(present, ids, -1).max(1)
  return np.where(above.any(1), np.argmax(above, axis=1), np.maximum(largest_present, 0))


def bag_answer(task, prompt, emitted, length):
  name = task.name
  if name in ("parity_check", "missing_duplicate_string"):
    return prompt[:, 1] % 2
  if name == "cycle_navigation":
    return (prompt[:, 2] - prompt[:, 0]) % task.CYCLE
  if name == "summation_mod_10":
    return (prompt @ np.arange(prompt.shape[1])) % task.MODULUS
  raise ValueError(f"bag_answer: no bag function for {name}")


def bag_posterior(task, prompt, emitted, length):
  n0, n1 = prompt[:, 0], prompt[:, 1]
  return (4 * n0 * n1 > length * (length - 1)).astype(np.int64)


def bag_digits(task, prompt, emitted, length):
  emitted_so_far = emitted.sum(1)
  digits = np.maximum(prompt[:, :10] - emitted[:, :10], 0)
  digit = np.where(digits.sum(1) > 0, _first_max(digits), 0)
  return np.where(emitted_so_far == max(length - 2, 1), task.TERMINATION, digit)


_REARRANGED = ("most_frequent_remaining", "bag_majority")
RULES: dict[str, tuple[str, ...]] = {
    "copy": _REARRANGED, "reverse_string": _REARRANGED, "odds_first": _REARRANGED,
    "duplicate_string": _REARRANGED,
    "stack_manipulation": ("bag_majority",),
    "sorting": ("sorted_bag", "next_larger"), "bucket_sort": ("sorted_bag", "next_larger"),
    "parity_check": ("bag_answer",), "missing_duplicate_string": ("bag_answer",),
    "cycle_navigation": ("bag_answer",), "summation_mod_10": ("bag_answer",),
    "even_pairs": ("bag_posterior",),
    "addition": ("bag_digits",),
    "addition_reversed": ("bag_digits",),
    "addition_little_endian": ("bag_digits",),
}
_STEPS: dict[str, Step] = {f.__name__: f for f in (
    most_frequent_remaining, bag_majority, sorted_bag, next_larger, bag_answer, bag_posterior,
    bag_digits)}


def rules_for(task_name: str) -> list[str]:
  """The rule names :func:`baseline_results` reports for a task, ``chance`` first."""
  return ["chance", *RULES.get(task_name, ())]


# ----------------------------------------------------------------------------- scoring


def prompt_bag(task: Task, batch: dict) -> np.ndarray:
  """int ``[B, input_vocab_size]``: how often each input symbol occurs in each prompt."""
  l = int(batch["length"])
  x = np.asarray(batch["tokens"])[:, :l] - data_lib.NUM_SPECIAL
  return (x[..., None] == np.arange(task.input_vocab_size)).sum(1)


def rule_answers(task: Task, rule: str, batch: dict, *, teacher_forced: bool) -> np.ndarray:
  """int ``[B, P]``: the rule's answer symbol at every answer slot (0 elsewhere), as
  ``posenc.decoding.greedy`` lays out its predictions. ``teacher_forced``: the emitted bag holds
  the true earlier answer tokens (what a teacher-forced decoder reads); else the rule's own."""
  step = _STEPS[rule]
  l = int(batch["length"])
  m = task.output_length(l)
  targets = np.asarray(batch["targets"])
  prompt = prompt_bag(task, batch)
  emitted = np.zeros((targets.shape[0], task.output_vocab_size), np.int64)
  rows = np.arange(targets.shape[0])
  out = np.zeros(targets.shape, np.int64)
  for t in range(m):
    answer = np.asarray(step(task, prompt, emitted, l), np.int64)
    out[:, l + t] = answer
    emitted[rows, targets[:, l + t] if teacher_forced else answer] += 1
  return out


def score_batch(task: Task, rule: str, batch: dict, *, causal: bool, greedy: bool) -> np.ndarray:
  """float64 sums over the batch's rows, as a run's evaluation program returns them:
  ``[sum of sequence scores, sequences with a scored token]`` (+ ``[exact matches, sum of greedy
  token accuracies]`` with ``greedy``)."""
  mask = np.asarray(batch["loss_mask"], bool)
  count = mask.sum(1)
  has = count > 0
  k = task.output_vocab_size
  if rule == "chance":  # expected values of uniform guessing over the K output classes
    out = [has.sum() / k, has.sum()]
    if greedy:
      out += [np.sum(np.where(has, float(k) ** -count.astype(np.float64), 0.0)), has.sum() / k]
    return np.asarray(out, np.float64)
  jbatch = {key: jnp.asarray(batch[key]) for key in ("targets", "loss_mask")}
  answers = rule_answers(task, rule, batch, teacher_forced=causal)
  seq, has_j = data_lib.sequence_scores(jax.nn.one_hot(answers, k), jbatch)
  seq, has_j = np.asarray(seq, np.float64), np.asarray(has_j)
  out = [np.sum(np.where(has_j, seq, 0.0)), has_j.sum()]
  if greedy:
    own = answers if not causal else rule_answers(task, rule, batch, teacher_forced=False)
    exact, frac, has_g = (np.asarray(a) for a in decoding.scores(jnp.asarray(own), jbatch))
    out += [exact.sum(), np.sum(np.where(has_g, frac.astype(np.float64), 0.0))]
  return np.asarray(out, np.float64)


def _per_length(sums: dict[int, np.ndarray], column: int) -> dict[int, float]:
  return {l: float(v[column] / v[1]) if v[1] > 0 else float("nan") for l, v in sorted(sums.items())}


def _nanmean(values) -> float:
  finite = [v for v in values if not math.isnan(v)]
  return float(np.mean(finite)) if finite else float("nan")


def baseline_results(config: ml_collections.ConfigDict) -> dict[str, dict]:
  """Rule name -> the scores a run with ``config`` would report for that rule (module docstring):
  ``per_length`` ({"length": score}), ``in_range_score``, ``out_of_range_score``, and with greedy
  decoding ``greedy`` (``per_length_exact_match``, ``per_length_token_accuracy``,
  ``in_range_exact_match``, ``out_of_range_exact_match``)."""
  s = setup_lib.setup(config)
  if hasattr(s.task, "evaluate") or hasattr(s.task, "layout"):
    raise ConfigError("config.task.name", f"the {s.task.name} task has its own evaluation "
                      "protocol; baselines cover the prompt/answer tasks")
  greedy = bool(config.eval.greedy)
  names = rules_for(s.task.name)
  # sums[seed][rule][length]: the run's per-program sums, added over chunks
  # Seeds with the same evaluation key (every seed, with a fixed ``eval.seed``) score the same
  # samples: each key's sums are computed once and stand for every seed that has it.
  per_seed, by_key = [], {}
  for k in range(int(config.num_seeds)):
    key = eval_key(config, k)
    known = np.asarray(jax.random.key_data(key)).tobytes()
    if known not in by_key:
      sums: dict[str, dict[int, np.ndarray]] = {n: {} for n in names}
      for length, batch in eval_batches(s, key):
        for n in names:
          part = score_batch(s.task, n, batch, causal=s.causal, greedy=greedy)
          sums[n][length] = sums[n].get(length, 0.0) + part
      by_key[known] = sums
    per_seed.append(by_key[known])
  if len(by_key) == 1:  # one set of samples: its curve is the seeds' mean, without rounding
    per_seed = per_seed[:1]

  out = {}
  for n in names:
    columns = [0, 2, 3] if greedy else [0]
    curves = []  # [metric] -> per-length, the seeds' mean
    for col in columns:
      seed_curves = [_per_length(sums[n], col) for sums in per_seed]
      curves.append({l: _nanmean([c[l] for c in seed_curves]) for l in seed_curves[0]})
    ranges = results_lib.summarize(s, curves[0])
    r = {"per_length": {str(l): v for l, v in curves[0].items()}, **ranges}
    if greedy:
      exact = results_lib.summarize(s, curves[1])
      r["greedy"] = {
          "per_length_exact_match": {str(l): v for l, v in curves[1].items()},
          "per_length_token_accuracy": {str(l): v for l, v in curves[2].items()},
          "in_range_exact_match": exact["in_range_score"],
          "out_of_range_exact_match": exact["out_of_range_score"]}
    out[n] = r
  return out


# ----------------------------------------------------------------------------- the command line


def format_table(config: ml_collections.ConfigDict, res: dict[str, dict]) -> str:
  """A plain-text table: one row per rule, its range scores (and greedy exact match)."""
  t = config.task
  fmt = lambda v: "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.3f}"
  greedy = any("greedy" in r for r in res.values())
  head = (f"{config.task.name} ({'decoder' if config.model.causal else 'encoder'}), training "
          f"lengths {t.train_min_length}-{t.train_max_length}, evaluated "
          f"{config.eval.min_length}-{config.eval.max_length}, {config.eval.samples_per_length} "
          f"samples per length, seed {config.seed}" + (f" (+{config.num_seeds - 1})"
                                                       if config.num_seeds > 1 else ""))
  cols = ["rule".ljust(24), "in range", "  beyond"]
  if greedy:
    cols += ["exact in", "exact beyond"]
  lines = [head, "  ".join(cols)]
  for name, r in res.items():
    row = [name.ljust(24), f"  {fmt(r['in_range_score'])}", f"  {fmt(r['out_of_range_score'])}"]
    if greedy:
      g = r["greedy"]
      row += [f"  {fmt(g['in_range_exact_match'])}", f"      {fmt(g['out_of_range_exact_match'])}"]
    lines.append("  ".join(row))
  return "\n".join(lines)


def main(argv):
  from absl import flags
  if len(argv) > 1:
    print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
    sys.exit(2)
  config = flags.FLAGS["config"].value
  if config is None:
    print("error: --config: required, e.g. --config=configs/decoder.py", file=sys.stderr)
    sys.exit(2)
  try:
    res = baseline_results(config)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(config, res))
  path = flags.FLAGS["json"].value
  if path:
    with open(path, "w") as f:
      json.dump(res, f, indent=1, sort_keys=True)
      f.write("\n")
    print(f"written: {path}")


if __name__ == "__main__":
  from absl import flags as _flags
  from ml_collections import config_flags

  from experiments import cli

  config_flags.DEFINE_config_file("config", None, "Config file, optionally with a preset: "
                                  "configs/<scheme>.py[:smoke|paper].", lock_config=True)
  _flags.DEFINE_string("json", None, "Also write the results (rule -> scores) to this JSON file.")
  cli.main_with_clear_errors(main)
