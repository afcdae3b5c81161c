"""From a task's sample to the model's padded sequence, on the device.

Layout of one sequence of input length ``l`` and answer length ``m``, padded to
a bucket length ``P``::

  encoder:  x_1 … x_l  BLANK … BLANK   PAD …     (the answer is read at the BLANKs)
  decoder:  x_1 … x_l  SEP y_1 … y_{m−1} PAD …   (teacher forcing: SEP predicts y_1)

In both modes answer token ``t`` is predicted at index ``l + t``, so the two
modes share every shape, and ``l`` may be a traced value. Token ids: 0 PAD, 1 BLANK, 2 SEP, then the task's
input alphabet, then its output alphabet.

Lengths are grouped into a few buckets and one program is compiled per bucket:
the length is a traced value (tasks with a native padded sampler) or picked by
``lax.switch`` (a branch per length), so a sweep over lengths 41..500 compiles
a handful of programs, not 460.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from posenc.tasks.base import Task

PAD, BLANK, SEP = 0, 1, 2
NUM_SPECIAL = 3


def vocab_size(task: Task) -> int:
  return NUM_SPECIAL + task.input_vocab_size + task.output_vocab_size


def total_length(task: Task, length: int) -> int:
  return task.sequence_length(length)


def layout(task: Task, sample: dict, length, *, causal: bool, padded_length: int) -> dict:
  """Places one task sample into the padded sequence (see the module docstring).

  ``length`` may be traced; ``sample`` may be padded past it (entries past
  ``length`` and past ``output_length(length)`` are ignored).
  """
  x, y, ymask = sample["input"], sample["target"], sample["target_mask"]
  batch = x.shape[0]
  out_len = task.output_length(length)
  i = jnp.arange(padded_length)
  j = i - length
  in_input = i < length
  in_answer = (j >= 0) & (j < out_len)
  take = lambda a, idx: jnp.take(a, jnp.clip(idx, 0, a.shape[1] - 1), axis=1)
  if causal:  # teacher forcing: SEP, then the answer shifted right by one
    filler = jnp.where(j == 0, SEP, take(y, j - 1) + NUM_SPECIAL + task.input_vocab_size)
  else:
    filler = jnp.full((batch, padded_length), BLANK, jnp.int32)
  tokens = jnp.where(in_input, take(x, i) + NUM_SPECIAL, jnp.where(in_answer, filler, PAD))
  return {
      "tokens": tokens.astype(jnp.int32),
      "targets": jnp.where(in_answer, take(y, j), 0).astype(jnp.int32),
      "loss_mask": in_answer & take(ymask, j),
      "valid": jnp.broadcast_to(i < length + out_len, (batch, padded_length)),
      "length": jnp.asarray(length, jnp.int32),
  }


def make_batch_fn(task: Task, position_sampler: Callable, *, batch_size: int,
                  lengths: Sequence[int], padded_length: int, causal: bool,
                  sample_max: int | None = None) -> Callable:
  """``f(rng, index) -> batch`` of length ``lengths[index]``, padded to ``padded_length``.

  Pure and jittable; ``index`` may be traced. Tasks with a native padded
  sampler give one straight-line program; others get a ``lax.switch`` with a
  branch per length.

  ``sample_max`` (default ``max(lengths)``): the width a native sampler draws at. A
  training bucket that holds only some of the training lengths passes the longest
  training length, so that it draws exactly the examples (and positions) that the
  one program over all lengths draws for the same key and length (see
  :func:`train_buckets`); the layout then keeps the first ``padded_length`` slots.
  """
  lengths = tuple(int(l) for l in lengths)
  longest = max(lengths)
  assert total_length(task, longest) <= padded_length, (longest, padded_length)
  sample_max = longest if sample_max is None else int(sample_max)
  assert sample_max >= longest, (sample_max, longest)

  def finish(batch, k_pos, length):
    pos = position_sampler(k_pos, batch_size, total_length(task, length), padded_length)
    batch["positions"] = pos
    return batch

  lay = getattr(task, "layout", None) or functools.partial(layout, task)

  if task.native_padded:

    def batch_fn(rng, index):
      # The table is built while tracing (a constant of the program), not eagerly, which
      # would compile a tiny conversion program per bucket.
      length = jnp.asarray(lengths, jnp.int32)[index]
      k_task, k_pos = jax.random.split(rng)
      sample = task.sample_padded(k_task, batch_size, length, sample_max)
      batch = lay(sample, length, causal=causal, padded_length=padded_length)
      return finish(batch, k_pos, length)

    return batch_fn

  def branch(length):
    def f(rng):
      k_task, k_pos = jax.random.split(rng)
      batch = lay(task.sample(k_task, batch_size, length), length, causal=causal,
                  padded_length=padded_length)
      pos = position_sampler(k_pos, batch_size, total_length(task, length), padded_length)
      # Every branch must return one shape: per-example positions are broadcast to [B, P].
      batch["positions"] = jnp.broadcast_to(pos, (batch_size, padded_length)) if pos.shape[0] > 1 else pos
      return batch
    return f

  branches = [branch(l) for l in lengths]

  def switch_fn(rng, index):
    if len(branches) == 1:
      return branches[0](rng)
    return jax.lax.switch(index, branches, rng)

  return switch_fn


def buckets(task: Task, lengths: Sequence[int], num_buckets: int,
            multiple: int = 8) -> list[tuple[tuple[int, ...], int]]:
  """Splits sorted ``lengths`` into at most ``num_buckets`` geometric groups.

  Returns ``[(lengths_in_bucket, padded_length)]``; the padded length is the
  longest sequence of the bucket rounded up to ``multiple``.
  """
  lengths = sorted(set(int(l) for l in lengths))
  if not lengths:
    return []
  lo, hi = lengths[0], lengths[-1]
  edges = np.geomspace(lo, hi + 1, num_buckets + 1)[1:]
  groups: dict[int, list[int]] = {}
  for l, i in zip(lengths, np.searchsorted(edges, lengths, side="right")):
    groups.setdefault(int(i), []).append(l)
  groups = [groups[k] for k in sorted(groups)]
  out = []
  for g in groups:
    longest = max(total_length(task, l) for l in g)
    out.append((tuple(g), int(math.ceil(longest / multiple) * multiple)))
  return out


def _bucket_table(task: Task, lengths: Sequence[int], max_buckets: int, multiple: int):
  """The dynamic programme of :func:`train_buckets`, solved once for every bucket count up to
  ``max_buckets``: ``(lengths, cost, plan)`` where ``cost[b]`` is the fewest padded tokens
  (summed over the lengths) with exactly ``b`` buckets and ``plan(b)`` that split."""
  lengths = sorted(set(int(l) for l in lengths))
  n = len(lengths)
  k = max(1, min(int(max_buckets), n))
  seq = [total_length(task, l) for l in lengths]
  # padded[i][j]: the padded length of a bucket holding lengths[i:j]
  padded = [[0] * (n + 1) for _ in range(n + 1)]
  for i in range(n):
    longest = 0
    for j in range(i + 1, n + 1):
      longest = max(longest, seq[j - 1])
      padded[i][j] = int(math.ceil(longest / multiple) * multiple)
  # cost[b][j]: fewest padded tokens covering lengths[:j] with b buckets; cut[b][j]: the start
  # of the last of them.
  inf = float("inf")
  cost = [[inf] * (n + 1) for _ in range(k + 1)]
  cut = [[0] * (n + 1) for _ in range(k + 1)]
  cost[0][0] = 0
  for b in range(1, k + 1):
    for j in range(1, n + 1):
      for i in range(b - 1, j):
        c = cost[b - 1][i] + (j - i) * padded[i][j]
        if c < cost[b][j]:
          cost[b][j], cut[b][j] = c, i

  def plan(b: int) -> list[tuple[tuple[int, ...], int]]:
    bounds, j = [], n
    while b:
      i = cut[b][j]
      bounds.append((i, j))
      j, b = i, b - 1
    out: list[tuple[tuple[int, ...], int]] = []
    for i, j in reversed(bounds):
      group, pad = tuple(lengths[i:j]), padded[i][j]
      if out and out[-1][1] == pad:
        out[-1] = (out[-1][0] + group, pad)
      else:
        out.append((group, pad))
    return out

  return lengths, [cost[b][n] for b in range(k + 1)], plan


def train_buckets(task: Task, lengths: Sequence[int], num_buckets: int,
                  multiple: int = 8) -> list[tuple[tuple[int, ...], int]]:
  """Splits the training lengths (each drawn equally often) into at most ``num_buckets``
  runs of consecutive lengths with the fewest expected padded tokens per step.

  Returns ``[(lengths_in_bucket, padded_length)]`` like :func:`buckets`, shortest first;
  a bucket's padded length is its longest sequence rounded up to ``multiple``. Training
  compiles one step per bucket and pads each batch only to its bucket's length. A
  geometric split (:func:`buckets`) would spend most buckets on the few shortest
  lengths; for a uniform draw the expected step cost is what matters, and it is nearly
  proportional to the padded length (exactly so for the projections and the FFN, which
  dominate at training lengths), so this minimises ``sum over lengths of padded_length``
  by dynamic programming over the split points. Buckets that round to one padded
  length are merged. ``num_buckets = 1``: one bucket, padded to the longest sequence.
  """
  if not lengths:
    return []
  _, cost, plan = _bucket_table(task, lengths, num_buckets, multiple)
  b = min(range(1, len(cost)), key=lambda b: (cost[b], b))  # fewest buckets among the best
  return plan(b)


def eval_buckets(task: Task, lengths: Sequence[int], num_buckets: int,
                 multiple: int = 8) -> list[tuple[tuple[int, ...], int]]:
  """The evaluation's buckets: :func:`train_buckets`' split of ``lengths``, at most
  ``num_buckets`` runs of consecutive lengths with the fewest padded tokens summed over the
  lengths, each padded to its longest sequence rounded up to ``multiple``.

  Evaluation scores every length on the same number of samples, so its cost is what training's
  uniform draw costs per step: the padded length summed over the lengths. The geometric split
  (:func:`buckets`, used before) put most buckets on the few shortest lengths and padded the
  rest to the longest: lengths 1–48 of reverse_string in 2 buckets were 1–6 and 7–48 (the
  second padded to 96 tokens); this split makes them 1–24 and 25–48, 16% fewer padded tokens and
  ~20% less evaluation time for an atlas point (docs/throughput.md). No score depends on the
  split (tests/test_eval_invariance.py).

  The dynamic programme's table grows with the square of the number of lengths, so beyond
  :data:`MAX_SPLIT_LENGTHS` lengths (an evaluation to 100,000 would need 10^10 entries) the
  geometric split is used."""
  n = len(set(int(l) for l in lengths))
  if n > MAX_SPLIT_LENGTHS:
    return buckets(task, lengths, num_buckets, multiple)
  return train_buckets(task, lengths, num_buckets, multiple)


# Evaluations over more lengths than this use the geometric split (eval_buckets): the dynamic
# programme over 600 lengths takes about 0.5 s of Python (460, an evaluation over 41-500: 0.3 s).
MAX_SPLIT_LENGTHS = 600


def bucket_plans(task: Task, lengths: Sequence[int], max_buckets: int, multiple: int = 1
                 ) -> list[list[tuple[tuple[int, ...], int]]]:
  """``[plan with 1 bucket, plan with 2, ...]``, up to ``max_buckets`` (or one per length):
  :func:`train_buckets`' split for each count, solved once (what ``train.num_buckets = 0``
  chooses among, :func:`posenc.setup.auto_train_buckets`)."""
  if not lengths:
    return []
  _, cost, plan = _bucket_table(task, lengths, max_buckets, multiple)
  return [plan(b) for b in range(1, len(cost))]


def sequence_scores(logits, batch) -> tuple[jax.Array, jax.Array]:
  """Per-sequence fraction of scored answer tokens right, and whether it has any."""
  pred = jnp.argmax(logits, axis=-1)
  mask = batch["loss_mask"]
  right = jnp.sum((pred == batch["targets"]) & mask, axis=1)
  count = jnp.sum(mask, axis=1)
  return right / jnp.maximum(count, 1), count > 0


def loss_and_accuracy(logits, batch) -> tuple[jax.Array, dict]:
  """Cross-entropy over scored answer tokens (mean), with token and sequence accuracy."""
  mask = batch["loss_mask"]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
  n = jnp.maximum(jnp.sum(mask), 1)
  loss = jnp.sum(jnp.where(mask, nll, 0.0)) / n
  seq, has = sequence_scores(logits, batch)
  token_acc = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) & mask) / n
  seq_acc = jnp.sum(jnp.where(has, seq, 0.0)) / jnp.maximum(jnp.sum(has), 1)
  return loss, {"loss": loss, "token_accuracy": token_acc, "accuracy": seq_acc}
