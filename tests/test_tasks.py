"""Every task against an independent plain-Python solver.

Each solver below parses the sampled input tokens and computes the answer (and
which answer tokens are scored) from scratch, with Python integers and lists, in
the official code's conventions; it also asserts that the input is well formed
(the grammar and ranges the official samplers draw from). No task code is used.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import tasks

BATCH = 64
# The static form (``sample``, derived from the padded sampler with max_length = length):
# the edge cases of tiny widths, and one long length. Each length costs one compile per task.
LENGTHS = (1, 2, 3, 41)
# The padded sampler: one program (traced length) for every length up to PADDED_MAX.
PADDED_MAX = 41
PADDED_LENGTHS = (1, 2, 3, 4, 5, 6, 17, 40, 41)

LEVELS = {
    "even_pairs": "R", "modular_arithmetic": "R", "parity_check": "R", "cycle_navigation": "R",
    "stack_manipulation": "DCF", "reverse_string": "DCF", "modular_arithmetic_brackets": "DCF",
    "solve_equation": "DCF", "duplicate_string": "CS", "missing_duplicate_string": "CS",
    "odds_first": "CS", "binary_addition": "CS", "binary_multiplication": "CS",
    "compute_sqrt": "CS", "bucket_sort": "CS",
}
NAMES = sorted(LEVELS)

# (input vocab, output vocab) of the official tasks.
VOCABS = {
    "even_pairs": (2, 2), "modular_arithmetic": (9, 5), "parity_check": (2, 2),
    "cycle_navigation": (3, 5), "stack_manipulation": (5, 3), "reverse_string": (2, 2),
    "modular_arithmetic_brackets": (11, 5), "solve_equation": (11, 5),
    "duplicate_string": (2, 2), "missing_duplicate_string": (4, 2), "odds_first": (2, 2),
    "binary_addition": (3, 3), "binary_multiplication": (3, 3), "compute_sqrt": (2, 2),
    "bucket_sort": (5, 5),
}
# Input tokens in the vocabulary that the official sampler never emits.
NEVER_EMITTED = {"modular_arithmetic_brackets": {10}}


def _all_scored(answer):
  return list(answer), [True] * len(answer)


# --------------------------------------------------------------------------- R


def solve_parity_check(x, length):
  assert set(x) <= {0, 1}
  return _all_scored([sum(x) % 2])


def solve_even_pairs(x, length):
  assert set(x) <= {0, 1}
  pairs = sum(1 for a, b in zip(x, x[1:]) if (a, b) in ((0, 1), (1, 0)))
  return _all_scored([pairs % 2])


def solve_modular_arithmetic(x, length):
  if length % 2 == 0:
    assert x[-1] == 8, "even lengths end with the blank token"
    x = x[:-1]
  assert 8 not in x and len(x) % 2 == 1
  digits, ops = x[0::2], x[1::2]
  assert all(d <= 4 for d in digits) and all(o in (5, 6, 7) for o in ops)
  total, term = 0, digits[0]
  for op, d in zip(ops, digits[1:]):
    if op == 7:
      term *= d
    else:
      total += term
      term = d if op == 5 else -d
  return _all_scored([(total + term) % 5])


def solve_cycle_navigation(x, length):
  assert set(x) <= {0, 1, 2}
  position = 0
  for move in x:
    position = (position + {0: -1, 1: 0, 2: 1}[move]) % 5
  return _all_scored([position])


# --------------------------------------------------------------------------- DCF


def solve_reverse_string(x, length):
  return _all_scored(x[::-1])


def solve_stack_manipulation(x, length):
  n_stack = 0
  while n_stack < length and x[n_stack] in (0, 1):
    n_stack += 1
  assert n_stack >= 1 and set(x[n_stack:]) <= {2, 3, 4}
  if length > 1:
    assert n_stack <= length - 1, "at least one action"
  stack = list(x[:n_stack])
  for action in x[n_stack:]:
    if action == 2:
      if stack:
        stack.pop()
    else:
      stack.append(action - 3)
  answer = stack[::-1] + [2]
  pad = length + 1 - len(answer)
  return answer + [0] * pad, [True] * len(answer) + [False] * pad


def _parse_bracketed(text):
  """Value of an expression of the official grammar; asserts the grammar.

  E -> d | -d | (d) | (-d) | (E op E), op in + - *.
  """

  def expr(i):
    c = text[i]
    if c.isdigit():
      return int(c), i + 1, "digit"
    if c == "-":
      assert text[i + 1].isdigit()
      return -int(text[i + 1]), i + 2, "digit"
    assert c == "("
    left, j, kind = expr(i + 1)
    if text[j] == ")":
      assert kind == "digit", "(E) only wraps d or -d"
      return left, j + 1, "paren"
    op = text[j]
    assert op in "+-*"
    right, k, _ = expr(j + 1)
    assert text[k] == ")"
    value = {"+": left + right, "-": left - right, "*": left * right}[op]
    return value, k + 1, "binary"

  value, end, _ = expr(0)
  assert end == len(text)
  return value % 5


BRACKET_SYMBOLS = "01234+-*()"


def solve_modular_arithmetic_brackets(x, length):
  assert max(x) <= 9
  return _all_scored([_parse_bracketed("".join(BRACKET_SYMBOLS[t] for t in x))])


EQUATION_SYMBOLS = "01234+-()x="


def solve_solve_equation(x, length):
  if length < 3:
    assert x == [0] * length
    return [0], [False]
  text = "".join(EQUATION_SYMBOLS[t] for t in x)
  lhs, rhs = text[:-2], text[-1]
  assert text[-2] == "=" and rhs.isdigit() and lhs.count("x") == 1 and "=" not in lhs
  roots = [v for v in range(5) if _parse_bracketed(lhs.replace("x", str(v))) == int(rhs)]
  assert len(roots) == 1, (text, roots)
  return _all_scored(roots)


# --------------------------------------------------------------------------- CS


def solve_duplicate_string(x, length):
  return _all_scored(x + x)


def solve_missing_duplicate_string(x, length):
  if length == 1:
    assert x == [1]
    return [1], [False]
  half = length // 2
  if length % 2:
    assert x[-1] == 3
    x = x[:-1]
  assert 3 not in x and x.count(2) == 1
  i = x.index(2)
  j = (i + half) % (2 * half)  # the same symbol in the other copy
  filled = list(x)
  filled[i] = x[j]
  assert filled[:half] == filled[half:], "the input is ww with one symbol hidden"
  return _all_scored([x[j]])


def solve_odds_first(x, length):
  odd = [t for i, t in enumerate(x) if i % 2 == 1]
  even = [t for i, t in enumerate(x) if i % 2 == 0]
  return _all_scored(odd + even)


def _from_le(bits):
  return sum(b << i for i, b in enumerate(bits))


def _to_le(value):
  return [int(c) for c in reversed(format(value, "b"))]  # 0 -> [0]


def _operands(x, length):
  assert x.count(2) == 1
  i = x.index(2)
  a, b = x[:i], x[i + 1:]
  assert a and b
  n, m = _from_le(a), _from_le(b)
  assert n >= 1 and m >= 1
  return n, m


def _terminated(answer, out_len):
  answer = answer + [2]
  pad = out_len - len(answer)
  assert pad >= 0
  return answer + [0] * pad, [True] * len(answer) + [False] * pad


def solve_binary_addition(x, length):
  if length <= 2:
    assert 2 not in x and _from_le(x) <= 2 ** length - 2
    return _terminated(_to_le(_from_le(x)), length + 1)
  n, m = _operands(x, length)
  return _terminated(_to_le(n + m), length + 1)


def solve_binary_multiplication(x, length):
  if length <= 2:
    assert 2 not in x and _from_le(x) <= 2 ** length - 2
    answer, _ = _terminated([0] * (length - 1), length)
    return answer, [False] * length
  n, m = _operands(x, length)
  return _terminated(_to_le(n * m), length)


def solve_compute_sqrt(x, length):
  assert set(x) <= {0, 1}
  value = int("".join(map(str, x)), 2)
  assert value >= 1
  out_len = math.ceil(length / 2)
  return _all_scored([int(c) for c in format(math.isqrt(value), "b").zfill(out_len)])


def solve_bucket_sort(x, length):
  return _all_scored(sorted(x))


SOLVERS = {name: globals()[f"solve_{name}"] for name in NAMES}

# --------------------------------------------------------------------------- tests


@functools.lru_cache(maxsize=None)
def _task_and_jitted(name):
  task = tasks.get(name)
  return task, jax.jit(task.sample, static_argnums=(1, 2))


@functools.lru_cache(maxsize=None)
def _task_and_padded(name):
  task = tasks.get(name)
  return task, jax.jit(task.sample_padded, static_argnums=(1, 3))


def _numpy(out):
  return {k: np.asarray(v) for k, v in out.items()}


def test_registry_lists_all_fifteen_tasks():
  reg = tasks.registry()
  assert sorted(n for n in reg if reg[n].level in ("R", "DCF", "CS")) == NAMES
  for name in NAMES:
    task = tasks.get(name)
    assert task.name == name and task.level == LEVELS[name]
    assert (task.input_vocab_size, task.output_vocab_size) == VOCABS[name]
    assert "tokens" in (task.__doc__ or "").lower()


@pytest.mark.parametrize("name", NAMES)
def test_sampler_matches_reference_solver(name):
  task, sample = _task_and_jitted(name)
  solver = SOLVERS[name]
  for length in LENGTHS:
    out = _numpy(sample(jax.random.key(1000 + length), BATCH, length))
    out_len = task.output_length(length)
    assert out["input"].shape == (BATCH, length) and out["input"].dtype == np.int32
    assert out["target"].shape == (BATCH, out_len) and out["target"].dtype == np.int32
    assert out["target_mask"].shape == (BATCH, out_len) and out["target_mask"].dtype == bool
    assert out["input"].min() >= 0 and out["input"].max() < task.input_vocab_size
    assert out["target"].min() >= 0 and out["target"].max() < task.output_vocab_size
    for b in range(BATCH):
      x = out["input"][b].tolist()
      want, want_mask = solver(x, length)
      assert out["target"][b].tolist() == want, (name, length, x)
      assert out["target_mask"][b].tolist() == want_mask, (name, length, x)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_key(name):
  _, sample = _task_and_jitted(name)
  length = 41  # already compiled by the test above
  a = _numpy(sample(jax.random.key(7), BATCH, length))
  b = _numpy(sample(jax.random.key(7), BATCH, length))
  c = _numpy(sample(jax.random.key(8), BATCH, length))
  for k in ("input", "target", "target_mask"):
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["input"], c["input"])


@pytest.mark.parametrize("name", NAMES)
def test_padded_sampler_matches_reference_solver(name):
  # One compiled program (the length traced) serves every length up to PADDED_MAX; the
  # first `length` input tokens and first output_length(length) answer tokens are checked
  # by the same independent solvers, and nothing past the answer is scored.
  task, sample = _task_and_padded(name)
  assert task.native_padded and "_sample" not in vars(type(task)), \
      "the static sampler is derived from the padded one, not written separately"
  out_max = task.output_length(PADDED_MAX)
  seen_inputs, seen_targets = set(), set()
  for length in PADDED_LENGTHS:
    traced = jnp.int32(length)
    out = _numpy(sample(jax.random.key(2000 + length), BATCH, traced, PADDED_MAX))
    out_len = task.output_length(length)
    assert int(jax.jit(task.output_length)(traced)) == out_len
    assert out["input"].shape == (BATCH, PADDED_MAX) and out["input"].dtype == np.int32
    assert out["target"].shape == (BATCH, out_max) and out["target"].dtype == np.int32
    assert out["target_mask"].shape == (BATCH, out_max) and out["target_mask"].dtype == bool
    assert not out["target_mask"][:, out_len:].any(), (name, length)
    x = out["input"][:, :length]
    assert x.min() >= 0 and x.max() < task.input_vocab_size
    y = out["target"][:, :out_len]
    assert y.min() >= 0 and y.max() < task.output_vocab_size
    for b in range(BATCH):
      want, want_mask = SOLVERS[name](x[b].tolist(), length)
      assert out["target"][b, :out_len].tolist() == want, (name, length, x[b].tolist())
      assert out["target_mask"][b, :out_len].tolist() == want_mask, (name, length)
    if length >= 40:
      seen_inputs |= set(x.ravel().tolist())
      seen_targets |= {tuple(t) for t in y.tolist()}
  # Long samples use the whole input alphabet and do not all share one answer.
  expected = set(range(task.input_vocab_size)) - NEVER_EMITTED.get(name, set())
  assert seen_inputs == expected, (name, seen_inputs)
  assert len(seen_targets) > 1
  assert sample._cache_size() == 1, "the length must be traced, not baked in"
  # Deterministic per key and length.
  a = _numpy(sample(jax.random.key(5), BATCH, jnp.int32(17), PADDED_MAX))
  b = _numpy(sample(jax.random.key(5), BATCH, jnp.int32(17), PADDED_MAX))
  c = _numpy(sample(jax.random.key(6), BATCH, jnp.int32(17), PADDED_MAX))
  for k in ("input", "target", "target_mask"):
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["input"], c["input"])


def test_reference_solvers_on_official_examples():
  # The solvers themselves, on examples from the official docstrings (hand-checked).
  stack = tasks.get("stack_manipulation")
  assert solve_stack_manipulation([0, 1, 1, 0, 4, 2, 2], 7) == (
      [1, 1, 0, 2, 0, 0, 0, 0], [True] * 4 + [False] * 4)
  assert stack.output_length(7) == 8
  # 001 + 01101 = 4 + 22 = 26 -> 01011, termination, zero padding to l + 1.
  assert solve_binary_addition([0, 0, 1, 2, 0, 1, 1, 0, 1], 9)[0] == [0, 1, 0, 1, 1, 2, 0, 0, 0, 0]
  # 001 * 01101 = 88 -> 0001101, termination, zero padding to l.
  assert solve_binary_multiplication([0, 0, 1, 2, 0, 1, 1, 0, 1], 9)[0] == [
      0, 0, 0, 1, 1, 0, 1, 2, 0]
  assert solve_compute_sqrt([1, 0, 0, 1, 0, 1], 6)[0] == [1, 1, 0]
  assert solve_modular_arithmetic([1, 6, 1, 6, 1], 5)[0] == [4]
  assert solve_modular_arithmetic_brackets([8, 3, 6, 6, 2, 9], 6)[0] == [0]  # (3--2)
  assert solve_odds_first([1, 1, 0], 3)[0] == [1, 1, 0]
  assert solve_missing_duplicate_string([0, 1, 1, 0, 0, 2, 1, 0], 8)[0] == [1]


def test_long_samples_are_well_formed():
  # The vectorised generators must also hold at evaluation lengths.
  for name in ("stack_manipulation", "modular_arithmetic_brackets", "solve_equation",
               "binary_addition", "binary_multiplication", "compute_sqrt"):
    _, sample = _task_and_jitted(name)
    length = 137
    out = _numpy(sample(jax.random.key(3), 8, length))
    for b in range(8):
      want, want_mask = SOLVERS[name](out["input"][b].tolist(), length)
      assert out["target"][b].tolist() == want, name
      assert out["target_mask"][b].tolist() == want_mask, name
