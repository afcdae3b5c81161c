"""experiments/baselines.py: each rule's score against hand-written answers and against an
independent plain-Python count over the same samples; the samples are the run's own."""

from __future__ import annotations

import collections
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import baselines
from posenc import data as data_lib
from posenc import evaluation, seeds, setup as setup_lib, tasks, train
from tests import helpers


def _batch(task_name: str, inputs, targets, masks=None, *, causal: bool, padded: int = 16):
  """A posenc batch (``posenc.data.layout``) from hand-written task samples of one length."""
  task = tasks.get(task_name)
  x = jnp.asarray(inputs, jnp.int32)
  y = jnp.asarray(targets, jnp.int32)
  mask = jnp.ones(y.shape, bool) if masks is None else jnp.asarray(masks, bool)
  length = x.shape[1]
  b = data_lib.layout(task, {"input": x, "target": y, "target_mask": mask}, length,
                      causal=causal, padded_length=padded)
  return task, {k: np.asarray(v) for k, v in b.items()}


def _scores(task, rule, batch, *, causal, greedy):
  """(teacher-forced / encoder score, exact match, greedy token accuracy), means over rows."""
  s = baselines.score_batch(task, rule, batch, causal=causal, greedy=greedy)
  return tuple(float(v / s[1]) for v in s[[0, 2, 3] if greedy else [0]])


# ----------------------------------------------------------------------------- hand-written


def test_sorting_rules_on_a_hand_written_sample():
  # 3 1 3 5 -> 1 3 3 5. sorted_bag: always right. next_larger, teacher-forced: 1, 3, then 5
  # (the true 3 repeats: wrong), then 5 (nothing above the emitted 3s but 5): 3 of 4. Fed its
  # own answers: 1 3 5 5, 3 of 4 right, no exact match.
  task, b = _batch("sorting", [[3, 1, 3, 5]], [[1, 3, 3, 5]], causal=True)
  assert _scores(task, "sorted_bag", b, causal=True, greedy=True) == (1.0, 1.0, 1.0)
  assert _scores(task, "next_larger", b, causal=True, greedy=True) == (0.75, 0.0, 0.75)
  np.testing.assert_array_equal(
      baselines.rule_answers(task, "next_larger", b, teacher_forced=False)[0, 4:8], [1, 3, 5, 5])


def test_copy_and_reverse_rules_on_hand_written_samples():
  # copy 7 2 7: the most frequent remaining is 7, then a 7/2 tie goes to 2, then 7: all right.
  task, b = _batch("copy", [[7, 2, 7]], [[7, 2, 7]], causal=True)
  assert _scores(task, "most_frequent_remaining", b, causal=True, greedy=True) == (1.0, 1.0, 1.0)
  assert _scores(task, "bag_majority", b, causal=True, greedy=True) == pytest.approx(
      (2 / 3, 0.0, 2 / 3))
  # chance over 100 classes: 1/100 per token, exact match 100**-3.
  assert _scores(task, "chance", b, causal=True, greedy=True) == pytest.approx((0.01, 1e-6, 0.01))
  # reverse_string encoder, 0 1 1 -> 1 1 0: majority 1 1 1 (2 of 3); run on its own outputs the
  # most frequent remaining gives 1 0 1 (1 of 3).
  task, b = _batch("reverse_string", [[0, 1, 1]], [[1, 1, 0]], causal=False)
  assert _scores(task, "bag_majority", b, causal=False, greedy=False) == pytest.approx((2 / 3,))
  assert _scores(task, "most_frequent_remaining", b, causal=False, greedy=False) == pytest.approx(
      (1 / 3,))
  assert _scores(task, "chance", b, causal=False, greedy=False) == (0.5,)


def test_addition_even_pairs_parity_and_masks_on_hand_written_samples():
  # 9 + 1 3 = 22: answer 2 2 END (then padding, masked). Digits left: 1 (the smallest of the
  # most frequent) twice, then END at t = l - 2 = 2: 1 of 3, teacher-forced and greedily
  # (greedy: 1, then 3 as 1 is used, then END).
  task, b = _batch("addition", [[9, 10, 1, 3]], [[2, 2, 10, 0]], [[1, 1, 1, 0]], causal=True)
  assert _scores(task, "bag_digits", b, causal=True, greedy=True) == pytest.approx(
      (1 / 3, 0.0, 1 / 3))
  np.testing.assert_array_equal(
      baselines.rule_answers(task, "bag_digits", b, teacher_forced=False)[0, 4:7], [1, 3, 10])
  assert _scores(task, "chance", b, causal=True, greedy=True) == pytest.approx(
      (1 / 11, 11.0 ** -3, 1 / 11))
  # even_pairs: 0 1 -> 1 (4*1*1 > 2: right); 0 1 1 0 -> 0 (4*2*2 > 12 says 1: wrong).
  task, b2 = _batch("even_pairs", [[0, 1]], [[1]], causal=False)
  assert _scores(task, "bag_posterior", b2, causal=False, greedy=False) == (1.0,)
  task, b4 = _batch("even_pairs", [[0, 1, 1, 0]], [[0]], causal=False)
  assert _scores(task, "bag_posterior", b4, causal=False, greedy=False) == (0.0,)
  # parity_check, summation and a hidden duplicate bit are functions of the bag.
  task, b = _batch("parity_check", [[1, 1, 0, 1], [1, 0, 0, 1]], [[1], [0]], causal=False)
  assert _scores(task, "bag_answer", b, causal=False, greedy=False) == (1.0,)
  task, b = _batch("missing_duplicate_string", [[0, 2, 0, 1], [1, 1, 0, 2]], [[1], [0]],
                   causal=False)  # w = 01 -> 0?01 hides 1; w = 10 -> 110? hides 0
  assert _scores(task, "bag_answer", b, causal=False, greedy=False) == (1.0,)
  # No scored token (addition shorter than 3): no score, as a run's NaN length.
  task, b = _batch("addition", [[0, 0]], [[0, 0]], [[0, 0]], causal=True)
  sums = baselines.score_batch(task, "bag_digits", b, causal=True, greedy=True)
  assert sums[1] == 0 and sums[2] == 0


# ----------------------------------------------------------------------------- independent count


def _remaining(prompt, emitted):
  return collections.Counter(prompt) - collections.Counter(emitted)


def _rule(task, name, prompt, emitted, length):
  """Plain-Python rules, written apart from experiments/baselines.py."""
  if name == "most_frequent_remaining":
    bag = prompt * 2 if task.name == "duplicate_string" else prompt
    rem = _remaining(bag, emitted)
    if not rem:
      return getattr(task, "TERMINATION", 0)
    top = max(rem.values())
    return min(s for s, c in rem.items() if c == top)
  if name == "bag_majority":
    c = collections.Counter(prompt)
    top = max(c.values())
    return min(s for s, n in c.items() if n == top)
  if name == "sorted_bag":
    rem = _remaining(prompt, emitted)
    return min(rem) if rem else 0
  if name == "next_larger":
    if not emitted:
      return min(prompt)
    above = [v for v in prompt if v > max(emitted)]
    return min(above) if above else max(prompt)
  if name == "bag_answer":
    return sum(prompt) % 2
  if name == "bag_posterior":
    n0, n1 = prompt.count(0), prompt.count(1)
    return 1 if 4 * n0 * n1 > length * (length - 1) else 0
  if name == "bag_digits":
    if len(emitted) == max(length - 2, 1):
      return task.TERMINATION
    rem = _remaining([v for v in prompt if v < 10], [v for v in emitted if v < 10])
    if not rem:
      return 0
    top = max(rem.values())
    return min(s for s, c in rem.items() if c == top)
  raise AssertionError(name)


def _independent(config, rule):
  """(per length score, per length exact match) counted in plain Python over the task's own
  samples, drawn with the evaluation's keys."""
  s = setup_lib.setup(config)
  task, e = s.task, config.eval
  bs = min(e.batch_size, e.samples_per_length)
  key = seeds.root_keys(config.seed)["eval"]
  widest = config.eval.max_length
  score, exact = {}, {}
  for length in range(config.eval.min_length, config.eval.max_length + 1):
    fracs, matches = [], []
    for chunk in range(math.ceil(e.samples_per_length / bs)):
      k_task, _ = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, length), chunk))
      smp = jax.device_get(task.sample_padded(k_task, bs, length, widest))
      m = task.output_length(length)
      for x, y, mask in zip(smp["input"], smp["target"], smp["target_mask"]):
        prompt, y, mask = [int(v) for v in x[:length]], [int(v) for v in y[:m]], list(mask[:m])
        if not any(mask):
          continue
        answers, own = [], []
        for t in range(m):  # teacher-forced in a decoder; on its own outputs in an encoder
          answers.append(_rule(task, rule, prompt, y[:t] if s.causal else answers[:t], length))
          own.append(_rule(task, rule, prompt, own[:t], length))
        right = [a == v for a, v, k in zip(answers, y, mask) if k]
        fracs.append(sum(right) / len(right))
        matches.append(all(a == v for a, v, k in zip(own, y, mask) if k))
    score[str(length)] = sum(fracs) / len(fracs) if fracs else float("nan")
    exact[str(length)] = sum(matches) / len(matches) if matches else float("nan")
  return score, exact


CASES = [
    ("decoder", {"task.name": "sorting"}),
    ("decoder", {"task.name": "copy"}),
    ("decoder", {"task.name": "addition"}),
    ("decoder", {"task.name": "reverse_string", "eval.samples_per_length": 6,
                 "eval.batch_size": 4}),  # two chunks, the second one full as in a run
    ("sinusoidal", {"task.name": "reverse_string"}),
    ("sinusoidal", {"task.name": "parity_check"}),
    ("sinusoidal", {"task.name": "even_pairs"}),
    ("sinusoidal", {"task.name": "bucket_sort", "eval.num_buckets": 3}),
    ("sinusoidal", {"task.name": "duplicate_string"}),
]


@pytest.mark.parametrize("scheme,overrides", CASES,
                         ids=[f"{s}-{o['task.name']}" for s, o in CASES])
def test_rules_equal_an_independent_count(scheme, overrides):
  decoder = scheme == "decoder"
  config = helpers.config(scheme, **overrides, **({"eval.greedy": True} if decoder else {}))
  res = baselines.baseline_results(config)
  assert list(res) == baselines.rules_for(config.task.name)
  k = tasks.get(config.task.name).output_vocab_size
  for rule, r in res.items():
    if rule == "chance":
      assert all(v == pytest.approx(1 / k) for v in r["per_length"].values() if not math.isnan(v))
      continue
    score, exact = _independent(config, rule)
    np.testing.assert_allclose([r["per_length"][l] for l in score], list(score.values()),
                               rtol=1e-6, err_msg=rule)
    if decoder:
      np.testing.assert_allclose([r["greedy"]["per_length_exact_match"][l] for l in exact],
                                 list(exact.values()), rtol=1e-6, err_msg=rule)
    lo, hi = config.task.train_min_length, config.task.train_max_length
    inside = [v for l, v in score.items() if lo <= int(l) <= hi and not math.isnan(v)]
    beyond = [v for l, v in score.items() if int(l) > hi and not math.isnan(v)]
    assert r["in_range_score"] == pytest.approx(np.mean(inside))
    assert r["out_of_range_score"] == pytest.approx(np.mean(beyond))
  if config.task.name in ("sorting", "bucket_sort"):
    assert res["sorted_bag"]["in_range_score"] == res["sorted_bag"]["out_of_range_score"] == 1.0


def test_chance_exact_match_is_the_expected_value_over_the_samples():
  config = helpers.config("decoder", **{"task.name": "addition", "eval.greedy": True})
  res = baselines.baseline_results(config)["chance"]["greedy"]["per_length_exact_match"]
  s = setup_lib.setup(config)
  for length, batch in baselines.eval_batches(s, baselines.eval_key(config)):
    counts = [int(c) for c in batch["loss_mask"].sum(1) if c > 0]
    want = sum(11.0 ** -c for c in counts) / len(counts) if counts else float("nan")
    np.testing.assert_allclose(res[str(length)], want, rtol=1e-9)


# ----------------------------------------------------------------------------- the run's samples


def test_batches_are_the_ones_a_run_evaluates():
  """A model's scores on eval_batches equal posenc.evaluation.evaluate's, bucket by bucket."""
  config = helpers.config("decoder", **{"task.name": "reverse_string", "eval.num_buckets": 2})
  s = setup_lib.setup(config)
  params = train.init_state(s, jax.random.PRNGKey(3))["params"]
  key = baselines.eval_key(config)
  want = evaluation.evaluate(s, params, key, log=None)
  bound = {l: s.eval_bound(p) for lengths, p in s.eval_buckets for l in lengths}
  sums = {}
  for length, b in baselines.eval_batches(s, key):
    model = s.model(bound[length])
    logits = model.apply({"params": params}, b["tokens"], b["positions"], b["valid"], train=False)
    seq, has = data_lib.sequence_scores(logits, {k: jnp.asarray(v) for k, v in b.items()})
    prev = sums.get(length, (0.0, 0))
    sums[length] = (prev[0] + float(jnp.sum(jnp.where(has, seq, 0.0))), prev[1] + int(has.sum()))
  got = {l: a / n for l, (a, n) in sums.items()}
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose([got[l] for l in sorted(want)], [want[l] for l in sorted(want)],
                             rtol=1e-5)
  assert len(set(round(v, 6) for v in want.values())) > 2  # the check can tell samples apart


def test_several_seeds_give_the_mean_curve():
  one = [baselines.baseline_results(helpers.config("sinusoidal", **{"task.name": "even_pairs",
                                                                    "seed": k}))
         for k in (4, 5)]
  both = baselines.baseline_results(helpers.config("sinusoidal", **{
      "task.name": "even_pairs", "seed": 4, "num_seeds": 2, "seed_loop": "map"}))
  for l, v in both["bag_posterior"]["per_length"].items():
    assert v == pytest.approx((one[0]["bag_posterior"]["per_length"][l]
                               + one[1]["bag_posterior"]["per_length"][l]) / 2)
  assert one[0]["bag_posterior"]["per_length"] != one[1]["bag_posterior"]["per_length"]


def test_seeds_sharing_a_fixed_evaluation_set_are_scored_once(monkeypatch):
  """With ``eval.seed`` fixed every seed scores the same samples: they are drawn and scored once,
  and the result is the single seed's exactly."""
  single = baselines.baseline_results(helpers.config("sinusoidal", **{
      "task.name": "even_pairs", "eval.seed": 7}))
  drawn = []
  real = baselines.eval_batches
  monkeypatch.setattr(baselines, "eval_batches", lambda s, key: drawn.append(1) or real(s, key))
  three = baselines.baseline_results(helpers.config("sinusoidal", **{
      "task.name": "even_pairs", "eval.seed": 7, "seed": 2, "num_seeds": 3, "seed_loop": "map"}))
  assert len(drawn) == 1
  assert three == single


def test_command_line_prints_the_table():
  out = subprocess.run(
      [sys.executable, "-m", "experiments.baselines", "--config=configs/decoder.py:smoke",
       "--config.task.name=sorting", "--config.eval.greedy=True"],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert "sorted_bag" in out.stdout and "next_larger" in out.stdout and "exact beyond" in out.stdout
  bad = subprocess.run(
      [sys.executable, "-m", "experiments.baselines", "--config=configs/decoder.py:smoke",
       "--config.task.name=nope"], capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "config.task.name" in bad.stderr
