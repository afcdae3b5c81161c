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
NAMES = ("addition", "copy", "sorting", "summation_mod_10")
VOCABS = {"copy": (100, 100), "addition": (11, 11), "summation_mod_10": (10, 10),
          "sorting": (50, 50)}


def solve_copy(x, length):
  assert all(0 <= t < 100 for t in x)
  return list(x), [True] * length


def solve_sorting(x, length):
  assert all(0 <= t < 50 for t in x)
  return sorted(x), [True] * length


def solve_summation_mod_10(x, length):
  assert all(1 <= t <= 9 for t in x), "digits are drawn from 1..9"
  return [sum(x) % 10], [True]


def solve_addition(x, length):
  if length < 3:
    assert x == [0] * length
    return [0] * length, [False] * length  # masked out: the target is not checked
  assert x.count(10) == 1
  i = x.index(10)
  a, b = x[:i], x[i + 1:]
  assert a and b and all(d <= 9 for d in a + b)
  for digits in (a, b):
    assert len(digits) == 1 or digits[0] != 0, "no leading zeros"
  total = int("".join(map(str, a))) + int("".join(map(str, b)))
  answer = [int(c) for c in str(total)] + [10]
  pad = length - len(answer)
  assert pad >= 0
  return answer + [0] * pad, [True] * len(answer) + [False] * pad


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
