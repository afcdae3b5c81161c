"""Context-sensitive tasks (Chomsky hierarchy level CS)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posenc.tasks.base import Task


class BucketSort(Task):
  """Sort a string over {0..4}.

  Tokens: input 0..4; output 0..4, the input in ascending order.
  ``output_length(l) = l``.
  """

  name = "bucket_sort"
  level = "CS"
  vocab = 5
  input_vocab_size = 5
  output_vocab_size = 5

  def output_length(self, length):
    return length

  def _sample(self, rng, batch_size, length):
    x = jax.random.randint(rng, (batch_size, length), 0, self.vocab)
    return {"input": x, "target": jnp.sort(x, axis=1)}


class MissingDuplicateString(Task):
  """Find the bit hidden in a duplicated string ``ww``.

  An input of length ``l`` holds ``ww`` with ``|w| = l // 2`` bits; one symbol of
  ``ww`` is replaced by MISSING, and for odd ``l`` a final ODD_PAD token follows.
  Tokens: input 0, 1 (bits), 2 (MISSING), 3 (ODD_PAD); output 0, 1 (the hidden
  bit). One answer token. For ``l = 1`` there is no bit to hide: the input is
  ODD_PAD and the answer is masked out (never scored, never in the loss).
  """

  name = "missing_duplicate_string"
  level = "CS"
  MISSING = 2
  ODD_PAD = 3
  input_vocab_size = 4
  output_vocab_size = 2

  def _sample(self, rng, batch_size, length):
    half = length // 2
    if half == 0:
      return {"input": jnp.full((batch_size, length), self.ODD_PAD),
              "target": jnp.zeros((batch_size, 1), jnp.int32),
              "target_mask": jnp.zeros((batch_size, 1), bool)}
    k_bits, k_idx = jax.random.split(rng)
    w = jax.random.randint(k_bits, (batch_size, half), 0, 2)
    ww = jnp.concatenate([w, w], axis=1)
    idx = jax.random.randint(k_idx, (batch_size,), 0, 2 * half)
    rows = jnp.arange(batch_size)
    target = ww[rows, idx][:, None]
    x = ww.at[rows, idx].set(self.MISSING)
    if length % 2:
      x = jnp.concatenate([x, jnp.full((batch_size, 1), self.ODD_PAD, x.dtype)], axis=1)
    return {"input": x, "target": target}


TASKS = (BucketSort, MissingDuplicateString)
