"""From a task's sample to the model's padded sequence, on the device.

Layout of one sequence of input length ``l`` and answer length ``m``, padded to
a bucket length ``P``::

  encoder:  x_1 … x_l  BLANK … BLANK   PAD …     (the answer is read at the BLANKs)
  decoder:  x_1 … x_l  SEP y_1 … y_{m−1} PAD …   (teacher forcing: SEP predicts y_1)

In both modes answer token ``t`` is predicted at index ``l + t``, so the two
modes share every shape. Token ids: 0 PAD, 1 BLANK, 2 SEP, then the task's
input alphabet, then its output alphabet.

Lengths are grouped into a few buckets; one compiled program per bucket picks
the length with ``lax.switch`` (a branch per length, each a tiny sampler), so a
sweep over lengths 41..500 compiles a handful of programs, not 460.
"""

from __future__ import annotations

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
  return length + task.output_length(length)


def layout(task: Task, sample: dict, *, causal: bool, padded_length: int) -> dict:
  """Places one task sample into the padded sequence (see the module docstring)."""
  x, y, ymask = sample["input"], sample["target"], sample["target_mask"]
  batch, length = x.shape
  out_len = y.shape[1]
  tokens = x + NUM_SPECIAL
  if causal:
    filler = jnp.concatenate(
        [jnp.full((batch, 1), SEP, jnp.int32),
         y[:, :-1] + NUM_SPECIAL + task.input_vocab_size], axis=1)
  else:
    filler = jnp.full((batch, out_len), BLANK, jnp.int32)
  pad = padded_length - length - out_len
  assert pad >= 0, (padded_length, length, out_len)
  zeros = lambda w, dt: jnp.zeros((batch, w), dt)
  return {
      "tokens": jnp.concatenate([tokens, filler, zeros(pad, jnp.int32)], axis=1),
      "targets": jnp.concatenate([zeros(length, jnp.int32), y, zeros(pad, jnp.int32)], axis=1),
      "loss_mask": jnp.concatenate([zeros(length, bool), ymask, zeros(pad, bool)], axis=1),
      "valid": jnp.concatenate([jnp.ones((batch, length + out_len), bool), zeros(pad, bool)], axis=1),
      "length": jnp.full((), length, jnp.int32),
  }


def make_batch_fn(task: Task, position_sampler: Callable, *, batch_size: int,
                  lengths: Sequence[int], padded_length: int, causal: bool) -> Callable:
  """``f(rng, index) -> batch`` of length ``lengths[index]``, padded to ``padded_length``.

  Pure and jittable; ``index`` may be traced (``lax.switch``).
  """
  lengths = tuple(int(l) for l in lengths)

  def branch(length):
    def f(rng):
      k_task, k_pos = jax.random.split(rng)
      batch = layout(task, task.sample(k_task, batch_size, length), causal=causal,
                     padded_length=padded_length)
      pos = position_sampler(k_pos, batch_size, total_length(task, length), padded_length)
      batch["positions"] = jnp.broadcast_to(pos, (batch_size, padded_length)) if pos.shape[0] > 1 else pos
      return batch
    return f

  branches = [branch(l) for l in lengths]

  def batch_fn(rng, index):
    if len(branches) == 1:
      return branches[0](rng)
    return jax.lax.switch(index, branches, rng)

  return batch_fn


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
