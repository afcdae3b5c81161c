"""The decoder tasks of Kazemnejad et al. (2023) against independent plain-Python solvers.

Each solver parses the sampled input tokens, asserts they are well formed (the ranges
and grammar of the official dataset builders), and computes the answer with Python
integers and lists. No task code is used. Every task is sampled through its padded
sampler, jitted once with a traced length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import data as data_lib
from posenc import tasks

BATCH = 64
MAX = 41
LENGTHS = (1, 2, 3, 4, 5, 20, 21, 40, 41)
NAMES = ("addition", "addition_reversed", "addition_little_endian", "copy", "sorting", "sorting_multi_digit",
         "summation_mod_10")
VOCABS = {"copy": (100, 100), "addition": (11, 11), "addition_reversed": (11, 11),
          "addition_little_endian": (11, 11),
          "summation_mod_10": (10, 10), "sorting": (50, 50), "sorting_multi_digit": (11, 11)}


def solve_copy(x, length):
  assert all(0 <= t < 100 for t in x)
  return list(x), [True] * length


def solve_sorting(x, length):
  assert all(0 <= t < 50 for t in x)
  return sorted(x), [True] * length


def parse_numbers(x):
  """The numbers of a multi-digit sorting sequence: digit groups split at the separator 10."""
  assert all(0 <= t <= 10 for t in x)
  groups, group = [], []
  for t in x + [10]:
    if t == 10:
      groups.append(group)
      group = []
    else:
      group.append(t)
  for g in groups:
    assert 2 <= len(g) <= 4, f"a number of 10..9999 has 2 to 4 digits, not {g}"
    assert g[0] != 0, "no leading zeros"
  values = [int("".join(map(str, g))) for g in groups]
  assert all(10 <= v <= 9999 for v in values)
  return values


def render_numbers(values):
  out = []
  for v in values:
    out += [int(c) for c in str(v)] + [10]
  return out[:-1]


def solve_sorting_multi_digit(x, length):
  if length < 2:
    assert x == [0] * length
    return [0] * length, [False] * length  # masked out: the target is not checked
  assert len(x) == length
  answer = render_numbers(sorted(parse_numbers(x)))
  assert len(answer) == length
  return answer, [True] * length


def solve_summation_mod_10(x, length):
  assert all(1 <= t <= 9 for t in x), "digits are drawn from 1..9"
  return [sum(x) % 10], [True]


def solve_addition(x, length, reverse=False):
  """The sum of ``a + b`` in decimal digits, most significant first (``reverse``: least)."""
  if length < 3:
    assert x == [0] * length
    return [0] * length, [False] * length  # masked out: the target is not checked
  assert x.count(10) == 1
  i = x.index(10)
  a, b = x[:i], x[i + 1:]
  assert a and b and all(d <= 9 for d in a + b)
  for digits in (a, b):
    assert len(digits) == 1 or digits[0] != 0, "no leading zeros"
  total = str(int("".join(map(str, a))) + int("".join(map(str, b))))
  answer = [int(c) for c in (reversed(total) if reverse else total)] + [10]
  pad = length - len(answer)
  assert pad >= 0
  return answer + [0] * pad, [True] * len(answer) + [False] * pad


def solve_addition_reversed(x, length):
  return solve_addition(x, length, reverse=True)


def solve_addition_little_endian(x, length):
  """Each operand's digits put back most significant first, then the reversed solver."""
  if 10 in x:
    i = x.index(10)
    x = x[:i][::-1] + [10] + x[i + 1:][::-1]
  return solve_addition_reversed(x, length)


SOLVERS = {name: globals()[f"solve_{name}"] for name in NAMES}


def test_registered_with_vocabularies():
  for name in NAMES:
    task = tasks.get(name)
    assert name in tasks.names() and task.level == "decoder"
    assert (task.input_vocab_size, task.output_vocab_size) == VOCABS[name]
    assert task.native_padded


@pytest.mark.parametrize("name", NAMES)
def test_padded_sampler_matches_reference_solver(name):
  task = tasks.get(name)
  sample = jax.jit(task.sample_padded, static_argnums=(1, 3))
  out_max = task.output_length(MAX)
  seen_inputs, seen_answers = set(), set()
  for length in LENGTHS:
    out = {k: np.asarray(v) for k, v in
           sample(jax.random.key(100 + length), BATCH, jnp.int32(length), MAX).items()}
    out_len = int(task.output_length(length))
    assert out["input"].shape == (BATCH, MAX) and out["target"].shape == (BATCH, out_max)
    assert not out["target_mask"][:, out_len:].any()
    x, y = out["input"][:, :length], out["target"][:, :out_len]
    assert x.min() >= 0 and x.max() < task.input_vocab_size
    assert y.min() >= 0 and y.max() < task.output_vocab_size
    for b in range(BATCH):
      want, want_mask = SOLVERS[name](x[b].tolist(), length)
      assert out["target_mask"][b, :out_len].tolist() == want_mask, (name, length)
      if any(want_mask):
        assert y[b].tolist() == want, (name, length, x[b].tolist())
    if length >= 20:
      seen_inputs |= set(x.ravel().tolist())
      seen_answers |= {tuple(t) for t in y.tolist()}
  assert sample._cache_size() == 1
  never = {0} if name == "summation_mod_10" else set()
  assert seen_inputs == set(range(task.input_vocab_size)) - never
  assert len(seen_answers) > 1
  # Deterministic per key; the static form is the padded one at max_length = length.
  a = task.sample(jax.random.key(9), 8, 7)
  b = task.sample(jax.random.key(9), 8, 7)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert a["input"].shape == (8, 7) and a["target"].shape == (8, int(task.output_length(7)))


def test_addition_examples_and_distribution():
  # 537 + 19 = 556 (the solver itself, hand-checked), then the sampler's operand lengths.
  assert solve_addition([5, 3, 7, 10, 1, 9], 6)[0] == [5, 5, 6, 10, 0, 0]
  assert solve_addition([0, 10, 0], 3)[0] == [0, 10, 0]
  task = tasks.get("addition")
  out = task.sample(jax.random.key(0), 512, 12)
  x = np.asarray(out["input"])
  len_a = (x == 10).argmax(axis=1)
  assert set(len_a.tolist()) == set(range(1, 11)), "|a| uniform on 1..l-2"


def test_addition_reversed_examples_and_same_prompts_as_addition():
  # 537 + 19 = 556 -> 6 5 5 END; 95 + 7 = 102 -> 2 0 1 END; 0 + 0 -> 0 END (hand-checked).
  assert solve_addition_reversed([5, 3, 7, 10, 1, 9], 6)[0] == [6, 5, 5, 10, 0, 0]
  assert solve_addition_reversed([9, 5, 10, 7], 4)[0] == [2, 0, 1, 10]
  assert solve_addition_reversed([0, 10, 0], 3) == ([0, 10, 0], [True, True, False])
  plain, rev = tasks.get("addition"), tasks.get("addition_reversed")
  assert isinstance(rev, type(plain)) and rev.output_length(17) == 17
  assert (rev.TERMINATION, rev.PLUS) == (plain.TERMINATION, plain.PLUS)
  padded_plain = jax.jit(plain.sample_padded, static_argnums=(1, 3))
  padded_rev = jax.jit(rev.sample_padded, static_argnums=(1, 3))
  carried = 0
  for length in (1, 2, 3, 4, 12, 41):
    for p, r in ((padded_plain(jax.random.key(length), BATCH, jnp.int32(length), MAX),
                  padded_rev(jax.random.key(length), BATCH, jnp.int32(length), MAX)),
                 (plain.sample(jax.random.key(50 + length), BATCH, length),
                  rev.sample(jax.random.key(50 + length), BATCH, length))):
      p, r = ({k: np.asarray(v) for k, v in o.items()} for o in (p, r))
      # The same key gives the same prompt and the same scored span; only the order differs.
      np.testing.assert_array_equal(p["input"], r["input"])
      np.testing.assert_array_equal(p["target_mask"], r["target_mask"])
      for x, y, m in zip(r["input"].tolist(), r["target"].tolist(), r["target_mask"].tolist()):
        want, want_mask = solve_addition_reversed(x[:length], length)
        assert m[:length] == want_mask and not any(m[length:])
        if any(want_mask):
          assert y[:length] == want, (length, x[:length])
          len_a = x.index(10)
          carried += want.index(10) > max(len_a, length - 1 - len_a)  # a final carry
  assert carried > 0, "some sums have one digit more than the longer operand"


def test_addition_little_endian_writes_additions_numbers_digit_by_digit_from_the_right():
  # 537 + 19 = 556, written 7 3 5 + 9 1 -> 6 5 5 END; 95 + 7 = 102: 5 9 + 7 -> 2 0 1 END.
  assert solve_addition_little_endian([7, 3, 5, 10, 9, 1], 6)[0] == [6, 5, 5, 10, 0, 0]
  assert solve_addition_little_endian([5, 9, 10, 7], 4)[0] == [2, 0, 1, 10]
  plain, little = tasks.get("addition"), tasks.get("addition_little_endian")
  assert baselines_rules("addition_little_endian") == baselines_rules("addition")
  padded_plain = jax.jit(plain.sample_padded, static_argnums=(1, 3))
  padded_little = jax.jit(little.sample_padded, static_argnums=(1, 3))
  for length in (1, 2, 3, 4, 12, 41):
    p, q = ({k: np.asarray(v) for k, v in o.items()} for o in (
        padded_plain(jax.random.key(length), BATCH, jnp.int32(length), MAX),
        padded_little(jax.random.key(length), BATCH, jnp.int32(length), MAX)))
    np.testing.assert_array_equal(p["target_mask"], q["target_mask"])
    for a, b in zip(p["input"].tolist(), q["input"].tolist()):
      # The same numbers: each operand's digits in the opposite order, padding unchanged.
      if length < 3:
        assert a == b == [0] * MAX
        continue
      i = a.index(10)
      assert b.index(10) == i and b[length:] == a[length:] == [0] * (MAX - length)
      assert b[:i] == a[:i][::-1] and b[i + 1:length] == a[i + 1:length][::-1]


def baselines_rules(name):
  from experiments import baselines
  return baselines.rules_for(name)


def test_addition_reversed_has_additions_baseline_rule():
  from experiments import baselines
  assert baselines.rules_for("addition_reversed") == baselines.rules_for("addition") == [
      "chance", "bag_digits"]
  # 5 + 1 9 = 24 -> 4 2 END. bag_digits, teacher-forced: 1 (the smallest of the tied digits
  # 5 1 9), 1 again (the true 4 is no prompt digit), END at t = l - 2 = 2: 1 of 3 right;
  # on its own outputs 1 5 END, no exact match.
  task = tasks.get("addition_reversed")
  out = {"input": jnp.asarray([[5, 10, 1, 9]]), "target": jnp.asarray([[4, 2, 10, 0]]),
         "target_mask": jnp.asarray([[True, True, True, False]])}
  b = {k: np.asarray(v) for k, v in
       data_lib.layout(task, out, 4, causal=True, padded_length=16).items()}
  np.testing.assert_array_equal(
      baselines.rule_answers(task, "bag_digits", b, teacher_forced=True)[0, 4:7], [1, 1, 10])
  np.testing.assert_array_equal(
      baselines.rule_answers(task, "bag_digits", b, teacher_forced=False)[0, 4:7], [1, 5, 10])
  sums = baselines.score_batch(task, "bag_digits", b, causal=True, greedy=True)
  np.testing.assert_allclose(sums / sums[1], [1 / 3, 1.0, 0.0, 1 / 3])
  # Over a run's own evaluation samples, against tests/test_baselines.py's plain-Python count.
  from tests import helpers
  from tests.test_baselines import _independent
  config = helpers.config("decoder", **{"task.name": "addition_reversed", "eval.greedy": True})
  res = baselines.baseline_results(config)["bag_digits"]
  score, exact = _independent(config, "bag_digits")
  np.testing.assert_allclose([res["per_length"][l] for l in score], list(score.values()),
                             rtol=1e-6)
  np.testing.assert_allclose([res["greedy"]["per_length_exact_match"][l] for l in exact],
                             list(exact.values()), rtol=1e-6)


def test_decoder_layout_teacher_forces_the_answer():
  # prompt SEP answer: the answer token t is predicted at index l + t.
  task = tasks.get("copy")
  out = task.sample_padded(jax.random.key(1), 2, jnp.int32(3), 5)
  lay = data_lib.layout(task, out, jnp.int32(3), causal=True, padded_length=12)
  toks = np.asarray(lay["tokens"][0])
  x = np.asarray(out["input"][0, :3])
  assert toks[:3].tolist() == (x + data_lib.NUM_SPECIAL).tolist()
  assert toks[3] == data_lib.SEP
  offset = data_lib.NUM_SPECIAL + task.input_vocab_size
  assert toks[4:6].tolist() == (x[:2] + offset).tolist()
  assert np.asarray(lay["targets"][0, 3:6]).tolist() == x.tolist()
  assert np.asarray(lay["loss_mask"][0]).tolist() == [False] * 3 + [True] * 3 + [False] * 6


def test_sorting_multi_digit_examples_and_edge_lengths():
  # 537 19 2024 -> 19 537 2024 (the solver itself, hand-checked).
  assert solve_sorting_multi_digit([5, 3, 7, 10, 1, 9, 10, 2, 0, 2, 4], 11)[0] == [
      1, 9, 10, 5, 3, 7, 10, 2, 0, 2, 4]
  assert parse_numbers([9, 9, 10, 1, 0, 0, 0]) == [99, 1000]
  for bad in ([1, 2, 10, 10, 3, 4], [1, 10, 2, 3], [0, 5, 10, 1, 2], [1, 2, 3, 4, 5]):
    with pytest.raises(AssertionError):
      parse_numbers(bad)
  task = tasks.get("sorting_multi_digit")
  pad_max, batch = 40, 128
  padded = jax.jit(task.sample_padded, static_argnums=(1, 3))
  static_sample = jax.jit(task.sample, static_argnums=(1, 2))  # max_length = length
  # The widths that fill a short length; (2, 4) at l = 7 is rare (90 / 9990), not required.
  forced = {2: {(2,)}, 3: {(3,)}, 4: {(4,)}, 5: {(2, 2)}, 6: {(2, 3), (3, 2)},
            7: {(3, 3), (4, 2)}}
  allowed = {**forced, 7: {(2, 4), (3, 3), (4, 2)}}
  for length in (1, 2, 3, 4, 5, 6, 7, 11, 12, 40):
    static = static_sample(jax.random.key(length), batch, length)
    traced = padded(jax.random.key(200 + length), batch, jnp.int32(length), pad_max)
    for out, width in ((static, length), (traced, pad_max)):
      out = {k: np.asarray(v) for k, v in out.items()}
      assert out["input"].shape == out["target"].shape == out["target_mask"].shape == (
          batch, width)
      # Zero padding past the length; the mask covers exactly the answer (nothing for l < 2).
      assert not out["input"][:, length:].any() and not out["target"][:, length:].any()
      assert not out["target_mask"][:, length:].any()
      assert (out["target_mask"][:, :length] == (length >= 2)).all()
      widths = set()
      for b in range(batch):
        x = out["input"][b, :length].tolist()
        want, want_mask = solve_sorting_multi_digit(x, length)
        assert out["target_mask"][b, :length].tolist() == want_mask
        assert out["target"][b, :length].tolist() == want, (length, x)
        if length >= 2:
          widths.add(tuple(len(str(v)) for v in parse_numbers(x)))
      if length in forced:
        assert forced[length] <= widths <= allowed[length], (length, widths)
  assert padded._cache_size() == 1
  # Deterministic per key, different across keys.
  a = static_sample(jax.random.key(3), batch, 40)
  b = static_sample(jax.random.key(3), batch, 40)
  c = static_sample(jax.random.key(4), batch, 40)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["input"], c["input"])


def test_sorting_multi_digit_distribution():
  # Unconstrained, a number is uniform on 10..9999 (the official randint(10, 10000)): 90%
  # have 4 digits, and a number of w digits is uniform on 10**(w-1)..10**w - 1.
  task = tasks.get("sorting_multi_digit")
  x = np.asarray(task.sample(jax.random.key(0), 128, 400)["input"])
  values = np.array([v for row in x.tolist() for v in parse_numbers(row)])
  assert len(values) > 9000
  frac = {w: np.mean((values >= 10 ** (w - 1)) & (values < 10 ** w)) for w in (2, 3, 4)}
  assert 0.87 < frac[4] < 0.93 and 0.07 < frac[3] < 0.12 and 0.002 < frac[2] < 0.02, frac
  four = values[values >= 1000]
  assert abs(four.mean() - 5499.5) < 100, four.mean()
  three = values[(values >= 100) & (values < 1000)]
  assert abs(three.mean() - 549.5) < 40, three.mean()
  assert abs(values.mean() - 5004.5) < 150, values.mean()
  # Renormalised over the widths that still fill the length: at l = 6 (widths 2+3 or
  # 3+2) the first number has 3 digits with probability 900 / (90 + 900).
  x6 = np.asarray(task.sample(jax.random.key(1), 4096, 6)["input"])
  first3 = np.mean(x6[:, 3] == 10)
  assert abs(first3 - 900 / 990) < 0.02, first3
